"""Consumer groups: fetch a lease, settle it (ack, nack, reject, extend), group stats.

Fetch and the lease outcomes are hot routes, served by the fast path; group stats by Quart.
Deleting a group is an admin route of the topics blueprint.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Annotated, Any

from pydantic import BaseModel, Field, RootModel
from quart import Blueprint, Response
from quart_schema import document_response, tag_blueprint
from telemetry_mq import GroupStats
from telemetry_mq.protocol import (
    ACKED_RECORDS,
    EXPIRED_LEASES,
    NDJSON,
    encode_batch_json,
    encode_batch_ndjson,
    encode_batches_json,
    encode_batches_ndjson,
)

from ..fastpath import FastPath, FastRequest, FastResponse
from ..runtime import Runtime, json_response, parse, require_token

log = logging.getLogger(__name__)

LeaseId = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,100}$")]


class FetchRequest(BaseModel):
    """How many records to lease, for how long, and how long to wait for some."""

    max_records: int = Field(1000, ge=1, le=100_000)
    max_wait: float = Field(0.0, ge=0, description="Long-poll: seconds to wait for records.")
    ack_wait: float | None = Field(None, gt=0, le=86_400, description="Lease duration (s).")
    max_bytes: int | None = Field(None, ge=1, description="Bound on the batch size in bytes.")
    ack: list[LeaseId] | None = Field(
        None,
        max_length=1000,
        description="Leases of this group to ack in full first, durably, as with /ack. The"
        " answer (200 or 204) carries Acked-Records (records acked now) and, if some of these"
        " leases were unknown or expired, Expired-Leases (comma-separated): that never fails"
        " the fetch.",
    )
    multi: bool = Field(
        False,
        description="Lease records of several partitions, one lease per partition, round"
        " robin, up to max_records and about max_bytes in all; the answer is then a"
        " MultiFetchResponse (a list of batches) instead of one batch.",
    )


class FetchedRecord(BaseModel):
    """One leased record."""

    offset: int
    key: str
    timestamp_us: int = Field(description="When the broker appended it (µs since the epoch).")
    delivery_count: int = Field(description="1 on the first delivery.")
    value: Any = Field(description="The JSON document as published.")


class FetchResponse(BaseModel):
    """A lease over records of one partition.

    With ``Accept: application/x-ndjson`` the body is instead a JSON header line
    (``records`` as ``[offset, timestamp_us, delivery_count, key]``) then one value per line;
    a value spanning lines adds its length in bytes as a fifth element and takes that many bytes.
    """

    topic: str
    group: str
    partition: int
    lease: str
    ack_wait: float
    records: list[FetchedRecord]


class MultiFetchResponse(BaseModel):
    """The answer to a fetch with ``multi``: one lease per partition that had records.

    With ``Accept: application/x-ndjson`` the body is instead each batch's NDJSON form (its
    header line, then its values), one batch after another.
    """

    batches: list[FetchResponse]


class FetchAnswer(RootModel[FetchResponse | MultiFetchResponse]):
    """One batch (FetchResponse), or with ``multi: true`` a list of them (MultiFetchResponse)."""


class Settle(BaseModel):
    """Which records of the lease (default: all that are still leased)."""

    offsets: list[int] | None = None


class NackRequest(Settle):
    """Hand records back for redelivery."""

    delay: float = Field(
        0.0,
        ge=0,
        le=86_400,
        description="Seconds before redelivery; past BROKER_MAX_NACK_DELAY: 400"
        " NACK_DELAY_TOO_LONG.",
    )
    error: str | None = Field(None, max_length=4000, description="Kept as the last error.")


class ReleaseRequest(Settle):
    """Hand records back without spending a delivery (the consumer could not try them)."""

    delay: float = Field(
        0.0, ge=0, le=86_400, description="Seconds before redelivery (as for nack)."
    )


class RejectRequest(Settle):
    """Move records to ``<topic>.dlq`` now."""

    error: str | None = Field(None, max_length=4000)


class ExtendRequest(BaseModel):
    """Extend the lease."""

    ack_wait: float | None = Field(None, gt=0, le=86_400, description="Seconds from now.")


class Settled(BaseModel):
    """How many records this call settled (0 for a retry of a settled lease)."""

    records: int


class Extended(BaseModel):
    """The lease now ends ``ack_wait`` seconds from now."""

    ack_wait: float


def groups_blueprint(
    runtime: Runtime, token: str | None, fast: FastPath, max_fetch_wait: float
) -> Blueprint:
    """Build the consumer-groups blueprint and register its hot routes with ``fast``."""
    bp = Blueprint("groups", __name__, url_prefix="/v1/topics/<topic>/groups/<group>")
    tag_blueprint(bp, ["consumer groups"])
    require_token(bp, token)

    @fast.post(
        bp,
        "/fetch",
        FetchRequest,
        (FetchAnswer, 200),
    )
    async def fetch(req: FastRequest, topic: str, group: str) -> FastResponse:
        """Lease the next records of one partition; 204 when none came within max_wait.

        With ``ack``, the leases of the consumer's previous batches are acked first (durable
        before the answer), so a consumer loop needs one round trip per batch. With
        ``multi: true`` it leases records of several partitions (one lease each, round robin)
        and answers a MultiFetchResponse (a list of batches) instead of one batch.
        """
        broker = runtime.broker
        data = parse(FetchRequest, req.body)
        headers: list[tuple[str, str]] = []
        if data.ack:
            acked, expired = await broker.ack_leases(topic, group, data.ack)
            headers.append((ACKED_RECORDS, str(acked)))
            if expired:
                headers.append((EXPIRED_LEASES, ",".join(expired)))
        lease = partial(
            broker.fetch_many if data.multi else broker.fetch,
            topic,
            group,
            max_records=data.max_records,
            ack_wait=data.ack_wait,
            max_bytes=data.max_bytes,
        )
        fetched = await lease(max_wait=0.0)  # records at hand: no need to watch the client
        max_wait = min(data.max_wait, max_fetch_wait)
        if not fetched and max_wait > 0:
            fetched = await req.unless_disconnected(lease(max_wait=max_wait))
        ndjson = NDJSON in req.header(b"accept")
        # Encoding cannot fail: values go out as their stored bytes (a value spanning lines
        # with its length in the NDJSON header), so no leased record is lost to an answer.
        if isinstance(fetched, list):
            if not fetched:
                return FastResponse(status=204, headers=headers)
            body = encode_batches_ndjson(fetched) if ndjson else encode_batches_json(fetched)
        else:
            if fetched is None:
                return FastResponse(status=204, headers=headers)
            body = encode_batch_ndjson(fetched) if ndjson else encode_batch_json(fetched)
        if ndjson:
            return FastResponse(body, content_type=NDJSON, headers=headers)
        return FastResponse(body, headers=headers)

    on_lease = "/leases/<lease>"

    @fast.post(bp, f"{on_lease}/ack", Settle, (Settled, 200))
    async def ack(req: FastRequest, topic: str, group: str, lease: str) -> FastResponse:
        """Ack records of the lease; durable before the answer. 409 if the lease expired."""
        data = parse(Settle, req.body)
        n = await runtime.broker.ack(topic, group, lease, data.offsets)
        return FastResponse.json({"records": n})

    @fast.post(bp, f"{on_lease}/nack", NackRequest, (Settled, 200))
    async def nack(req: FastRequest, topic: str, group: str, lease: str) -> FastResponse:
        """Hand records back for redelivery after an optional delay."""
        data = parse(NackRequest, req.body)
        n = await runtime.broker.nack(
            topic, group, lease, data.offsets, delay=data.delay, error=data.error
        )
        return FastResponse.json({"records": n})

    @fast.post(bp, f"{on_lease}/release", ReleaseRequest, (Settled, 200))
    async def release(req: FastRequest, topic: str, group: str, lease: str) -> FastResponse:
        """Hand records back for redelivery without counting a delivery (never dead-letters).

        For a consumer that could not process them for a reason of its own, such as its
        database being away; durable before the answer. 409 if the lease expired.
        """
        data = parse(ReleaseRequest, req.body)
        n = await runtime.broker.release(topic, group, lease, data.offsets, delay=data.delay)
        return FastResponse.json({"records": n})

    @fast.post(bp, f"{on_lease}/reject", RejectRequest, (Settled, 200))
    async def reject(req: FastRequest, topic: str, group: str, lease: str) -> FastResponse:
        """Move records of the lease to the dead-letter topic now."""
        data = parse(RejectRequest, req.body)
        n = await runtime.broker.reject(topic, group, lease, data.offsets, error=data.error)
        return FastResponse.json({"records": n})

    @fast.post(bp, f"{on_lease}/extend", ExtendRequest, (Extended, 200))
    async def extend(req: FastRequest, topic: str, group: str, lease: str) -> FastResponse:
        """Extend the lease (the consumer is still working on it)."""
        data = parse(ExtendRequest, req.body)
        granted = await runtime.broker.extend(topic, group, lease, data.ack_wait)
        return FastResponse.json({"ack_wait": granted})

    @bp.get("/")
    @document_response(GroupStats)
    async def group_stats(topic: str, group: str) -> Response:
        """Committed offsets, lag and in-flight records of the group per partition."""
        return json_response(runtime.broker.group_stats(topic, group))

    return bp
