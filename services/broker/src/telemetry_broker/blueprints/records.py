"""Records: publish a batch (a hot route, parsed with orjson rather than a schema)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field
from quart import Blueprint
from quart_schema import tag_blueprint
from telemetry_kit import APIError
from telemetry_mq import ProtocolError
from telemetry_mq.protocol import decode_publish

from ..fastpath import FastPath, FastRequest, FastResponse
from ..runtime import Runtime


class PublishRecord(BaseModel):
    """One record: its key picks the partition; its value is any JSON document."""

    key: str = Field(description="Partition key (e.g. the GPU uuid), at most 1024 bytes.")
    value: Any = Field(description="One JSON document, stored and delivered byte for byte.")


class PublishRequest(BaseModel):
    """A batch of records to publish."""

    records: list[PublishRecord]


class PublishResponse(BaseModel):
    """Where each record landed, in request order; sent only once all are fsynced."""

    positions: list[tuple[int, int]] = Field(description="[partition, offset] per record.")


def records_blueprint(runtime: Runtime, fast: FastPath) -> Blueprint:
    """Build the records blueprint (its only route is served by the fast path)."""
    bp = Blueprint("records", __name__, url_prefix="/v1/topics")
    tag_blueprint(bp, ["records"])

    @fast.post(bp, "/<topic>/records/", PublishRequest, (PublishResponse, 200))
    async def publish(req: FastRequest, topic: str) -> FastResponse:
        """Publish records; answered after they are durable.

        429 + Retry-After when the topic's backlog (``BACKLOG_FULL``) or the broker's data
        volume (``DISK_FULL``) is full.
        """
        broker = runtime.broker
        try:
            records = decode_publish(req.body)
        except ProtocolError as e:
            raise APIError(400, "INVALID_REQUEST", str(e)) from e
        positions = await broker.publish(topic, records)
        return FastResponse.json({"positions": positions})

    return bp
