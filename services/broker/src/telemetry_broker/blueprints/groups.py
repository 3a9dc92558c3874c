"""Consumer groups: fetch a lease, settle it (ack, nack, reject, extend), group stats."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field
from quart import Blueprint, Response, request
from quart_schema import document_request, document_response, tag_blueprint
from telemetry_kit import APIError
from telemetry_mq import GroupStats
from telemetry_mq.protocol import NDJSON, encode_batch_json, encode_batch_ndjson

from ..runtime import Runtime, json_response, parse, request_body, require_token


class FetchRequest(BaseModel):
    """How many records to lease, for how long, and how long to wait for some."""

    max_records: int = Field(1000, ge=1, le=100_000)
    max_wait: float = Field(0.0, ge=0, description="Long-poll: seconds to wait for records.")
    ack_wait: float | None = Field(None, gt=0, le=86_400, description="Lease duration (s).")
    max_bytes: int | None = Field(None, ge=1, description="Bound on the batch size in bytes.")


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
    (``records`` as ``[offset, timestamp_us, delivery_count, key]``) then one value per line.
    """

    topic: str
    group: str
    partition: int
    lease: str
    ack_wait: float
    records: list[FetchedRecord]


class Settle(BaseModel):
    """Which records of the lease (default: all that are still leased)."""

    offsets: list[int] | None = None


class NackRequest(Settle):
    """Hand records back for redelivery."""

    delay: float = Field(0.0, ge=0, le=86_400, description="Seconds before redelivery.")
    error: str | None = Field(None, max_length=4000, description="Kept as the last error.")


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


def groups_blueprint(runtime: Runtime, token: str | None, max_fetch_wait: float) -> Blueprint:
    """Build the consumer-groups blueprint."""
    bp = Blueprint("groups", __name__, url_prefix="/v1/topics/<topic>/groups/<group>")
    tag_blueprint(bp, ["consumer groups"])
    require_token(bp, token)

    @bp.post("/fetch")
    @document_request(FetchRequest)
    @document_response(FetchResponse)
    async def fetch(topic: str, group: str) -> Response:
        """Lease the next records of one partition; 204 when none came within max_wait."""
        broker = runtime.broker
        data = parse(FetchRequest, await request_body())
        batch = await broker.fetch(
            topic,
            group,
            max_records=data.max_records,
            max_wait=min(data.max_wait, max_fetch_wait),
            ack_wait=data.ack_wait,
            max_bytes=data.max_bytes,
        )
        if batch is None:
            return Response(b"", status=204)
        if NDJSON in request.headers.get("Accept", ""):
            return Response(encode_batch_ndjson(batch), content_type=NDJSON)
        return Response(encode_batch_json(batch), content_type="application/json")

    @bp.post("/leases/<lease>/ack")
    @document_request(Settle)
    @document_response(Settled)
    async def ack(topic: str, group: str, lease: str) -> Response:
        """Ack records of the lease; durable before the answer. 409 if the lease expired."""
        data = parse(Settle, await request_body())
        n = await runtime.broker.ack(topic, group, lease, data.offsets)
        return json_response({"records": n})

    @bp.post("/leases/<lease>/nack")
    @document_request(NackRequest)
    @document_response(Settled)
    async def nack(topic: str, group: str, lease: str) -> Response:
        """Hand records back for redelivery after an optional delay."""
        data = parse(NackRequest, await request_body())
        n = await runtime.broker.nack(
            topic, group, lease, data.offsets, delay=data.delay, error=data.error
        )
        return json_response({"records": n})

    @bp.post("/leases/<lease>/reject")
    @document_request(RejectRequest)
    @document_response(Settled)
    async def reject(topic: str, group: str, lease: str) -> Response:
        """Move records of the lease to the dead-letter topic now."""
        data = parse(RejectRequest, await request_body())
        n = await runtime.broker.reject(topic, group, lease, data.offsets, error=data.error)
        return json_response({"records": n})

    @bp.post("/leases/<lease>/extend")
    @document_request(ExtendRequest)
    @document_response(Extended)
    async def extend(topic: str, group: str, lease: str) -> Response:
        """Extend the lease (the consumer is still working on it)."""
        data = parse(ExtendRequest, await request_body())
        granted = await runtime.broker.extend(topic, group, lease, data.ack_wait)
        return json_response({"ack_wait": granted})

    @bp.get("/")
    @document_response(GroupStats)
    async def group_stats(topic: str, group: str) -> Response:
        """Committed offsets, lag and in-flight records of the group per partition."""
        broker = runtime.broker
        if group not in broker.topic(topic).groups:
            raise APIError(404, "GROUP_NOT_FOUND", f"group {group!r} has not fetched {topic!r}")
        return json_response(broker.group_stats(topic, group))

    return bp
