"""Consumer groups: fetch a lease, settle it (ack, nack, reject, extend), group stats.

Fetch and the lease outcomes are hot routes, served by the fast path; group stats by Quart.
Deleting a group is an admin route of the topics blueprint.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue, RootModel
from quart import Blueprint, Response
from quart_schema import document_response, operation_id, tag_blueprint
from telemetry_kit import APIError, empty_response, links, path_parameter, problems
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
from ..runtime import INTEGRAL, Body, Integer, Runtime, json_response, parse, require_token
from ..spec import (
    GROUP_ACTIONS,
    INVALID,
    LEASE_PATTERN,
    LIVE_TOPIC_PATTERN,
    NAME_PATTERN,
    TOO_LARGE,
    TOPIC_NOT_FOUND,
    UNAUTHORIZED,
    UNAVAILABLE,
    bounded,
)

log = logging.getLogger(__name__)

LeaseId = Annotated[str, Field(pattern=LEASE_PATTERN)]
_EXAMPLE_LEASE = "9f86d081-1a"


class FetchRequest(Body):
    """How many records to lease, for how long, and how long to wait for some."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"max_records": 100, "max_wait": 1.0, "ack_wait": 30}]}
    )

    max_records: Annotated[int, Field(ge=1, le=100_000), INTEGRAL] = 1000
    max_wait: float = Field(
        0.0,
        ge=0,
        description="Long-poll: seconds to wait for records; at most BROKER_MAX_FETCH_WAIT"
        " (400 FETCH_WAIT_TOO_LONG past it).",
    )
    ack_wait: float | None = Field(None, gt=0, le=86_400, description="Lease duration (s).")
    max_bytes: Annotated[int, Field(ge=1), INTEGRAL] | None = Field(
        None, description="Bound on the batch size in bytes."
    )
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


_EXAMPLE_BATCH: dict[str, JsonValue] = {
    "topic": "telemetry",
    "group": "collectors",
    "partition": 3,
    "lease": _EXAMPLE_LEASE,
    "ack_wait": 30.0,
    "records": [
        {
            "offset": 1042,
            "key": "GPU-5fd4f087-86f3-7a43-b711-4771313afc50",
            "timestamp_us": 1752871354252000,
            "delivery_count": 1,
            "value": {"metric": "DCGM_FI_DEV_GPU_TEMP", "value": 63.0},
        }
    ],
}


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

    model_config = ConfigDict(json_schema_extra={"examples": [_EXAMPLE_BATCH]})


class Settle(Body):
    """Which records of the lease (default: all that are still leased)."""

    offsets: list[Integer] | None = None


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


class ExtendRequest(Body):
    """Extend the lease."""

    ack_wait: float | None = Field(None, gt=0, le=86_400, description="Seconds from now.")


class Settled(BaseModel):
    """How many records this call settled (0 for a retry of a settled lease)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"records": 100}]})

    records: int


class Extended(BaseModel):
    """The lease now ends ``ack_wait`` seconds from now."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"ack_wait": 30.0}]})

    ack_wait: float


def groups_blueprint(
    runtime: Runtime,
    token: str | None,
    fast: FastPath,
    max_fetch_wait: float,
    max_nack_delay: float,
) -> Blueprint:
    """Build the consumer-groups blueprint and register its hot routes with ``fast``.

    ``max_fetch_wait`` and ``max_nack_delay`` are the deployment's limits, stated in the
    document as the maximum of ``max_wait`` and ``delay``.
    """
    bp = Blueprint("groups", __name__, url_prefix="/v1/topics/<topic>/groups/<group>")
    tag_blueprint(bp, ["consumer_groups"])
    require_token(bp, token)
    on_lease = "/leases/<lease>"
    in_group = {"topic": "$request.path.topic", "group": "$request.path.group"}
    lease_of = {**in_group, "lease": "$response.body#/lease"}
    lease_problems = problems(
        {
            **INVALID,
            **UNAUTHORIZED,
            **GROUP_ACTIONS,
            404: ["TOPIC_NOT_FOUND"],
            409: ["LEASE_EXPIRED"],
            **TOO_LARGE,
            **UNAVAILABLE,
        }
    )
    delay_problems = problems(
        {
            400: ["INVALID_REQUEST", "NACK_DELAY_TOO_LONG"],
            **UNAUTHORIZED,
            **GROUP_ACTIONS,
            404: ["TOPIC_NOT_FOUND"],
            409: ["LEASE_EXPIRED"],
            **TOO_LARGE,
            **UNAVAILABLE,
        }
    )

    @fast.post(bp, "/fetch", bounded(FetchRequest, max_wait=max_fetch_wait), (FetchAnswer, 200))
    @operation_id("fetchRecords")
    @empty_response(204, "No record came within max_wait (or the broker is stopping).")
    @links(
        200,
        {
            "ackLease": lease_of,
            "nackLease": lease_of,
            "releaseLease": lease_of,
            "rejectLease": lease_of,
            "extendLease": lease_of,
            "getGroup": in_group,
        },
    )
    @links(204, {"getGroup": in_group})
    @problems(
        {
            400: ["INVALID_REQUEST", "FETCH_WAIT_TOO_LONG"],
            **UNAUTHORIZED,
            **GROUP_ACTIONS,
            **TOPIC_NOT_FOUND,
            409: ["TOO_MANY_GROUPS"],
            **TOO_LARGE,
            429: ["TOO_MANY_LEASES"],
            **UNAVAILABLE,
        }
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
        if data.max_wait > max_fetch_wait:
            raise APIError(
                400,
                "FETCH_WAIT_TOO_LONG",
                f"max_wait is at most {max_fetch_wait} seconds (BROKER_MAX_FETCH_WAIT)",
                limit=max_fetch_wait,
            )
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
        if not fetched and data.max_wait > 0:
            fetched = await req.unless_disconnected(lease(max_wait=data.max_wait))
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

    @fast.post(bp, f"{on_lease}/ack", Settle, (Settled, 200))
    @operation_id("ackLease")
    @lease_problems
    async def ack(req: FastRequest, topic: str, group: str, lease: str) -> FastResponse:
        """Ack records of the lease; durable before the answer. 409 if the lease expired."""
        data = parse(Settle, req.body)
        n = await runtime.broker.ack(topic, group, lease, data.offsets)
        return FastResponse.json({"records": n})

    @fast.post(bp, f"{on_lease}/nack", bounded(NackRequest, delay=max_nack_delay), (Settled, 200))
    @operation_id("nackLease")
    @delay_problems
    async def nack(req: FastRequest, topic: str, group: str, lease: str) -> FastResponse:
        """Hand records back for redelivery after an optional delay."""
        data = parse(NackRequest, req.body)
        n = await runtime.broker.nack(
            topic, group, lease, data.offsets, delay=data.delay, error=data.error
        )
        return FastResponse.json({"records": n})

    @fast.post(
        bp, f"{on_lease}/release", bounded(ReleaseRequest, delay=max_nack_delay), (Settled, 200)
    )
    @operation_id("releaseLease")
    @delay_problems
    async def release(req: FastRequest, topic: str, group: str, lease: str) -> FastResponse:
        """Hand records back for redelivery without counting a delivery (never dead-letters).

        For a consumer that could not process them for a reason of its own, such as its
        database being away; durable before the answer. 409 if the lease expired.
        """
        data = parse(ReleaseRequest, req.body)
        n = await runtime.broker.release(topic, group, lease, data.offsets, delay=data.delay)
        return FastResponse.json({"records": n})

    @fast.post(bp, f"{on_lease}/reject", RejectRequest, (Settled, 200))
    @operation_id("rejectLease")
    @path_parameter(
        "topic",
        description="A topic name, not a dead-letter topic's (<topic>.dlq): its records stay.",
        schema={"type": "string", "pattern": LIVE_TOPIC_PATTERN, "examples": ["telemetry"]},
    )
    @lease_problems
    async def reject(req: FastRequest, topic: str, group: str, lease: str) -> FastResponse:
        """Move records of the lease to the dead-letter topic now."""
        data = parse(RejectRequest, req.body)
        n = await runtime.broker.reject(topic, group, lease, data.offsets, error=data.error)
        return FastResponse.json({"records": n})

    @fast.post(bp, f"{on_lease}/extend", ExtendRequest, (Extended, 200))
    @operation_id("extendLease")
    @lease_problems
    async def extend(req: FastRequest, topic: str, group: str, lease: str) -> FastResponse:
        """Extend the lease (the consumer is still working on it)."""
        data = parse(ExtendRequest, req.body)
        granted = await runtime.broker.extend(topic, group, lease, data.ack_wait)
        return FastResponse.json({"ack_wait": granted})

    @bp.get("/")
    @operation_id("getGroup")
    @path_parameter(
        "group",
        description="A consumer group name (the broker's own _broker* groups included).",
        schema={"type": "string", "pattern": NAME_PATTERN, "examples": ["collectors"]},
    )
    @document_response(GroupStats)
    @links(200, {"deleteGroup": {"topic": "$request.path.topic", "group": "$response.body#/group"}})
    @problems(
        {**INVALID, **UNAUTHORIZED, 404: ["TOPIC_NOT_FOUND", "GROUP_NOT_FOUND"], **UNAVAILABLE}
    )
    async def group_stats(topic: str, group: str) -> Response:
        """Committed offsets, lag and in-flight records of the group per partition."""
        return json_response(runtime.broker.group_stats(topic, group))

    return bp
