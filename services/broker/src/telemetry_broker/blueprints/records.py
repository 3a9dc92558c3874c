"""Records: publish a batch (the hot path, parsed with orjson rather than a schema)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field
from quart import Blueprint, Response
from quart_schema import document_request, document_response, tag_blueprint
from telemetry_kit import APIError
from telemetry_mq import ProtocolError
from telemetry_mq.protocol import decode_publish

from ..runtime import Runtime, json_response, request_body, require_token


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


def records_blueprint(runtime: Runtime, token: str | None) -> Blueprint:
    """Build the records blueprint."""
    bp = Blueprint("records", __name__, url_prefix="/v1/topics")
    tag_blueprint(bp, ["records"])
    require_token(bp, token)

    @bp.post("/<topic>/records/")
    @document_request(PublishRequest)
    @document_response(PublishResponse)
    async def publish(topic: str) -> Response:
        """Publish records; answered after they are durable. 429 + Retry-After when full."""
        broker = runtime.broker
        body = await request_body()
        try:
            records = decode_publish(body)
        except ProtocolError as e:
            raise APIError(400, "INVALID_REQUEST", str(e)) from e
        positions = await broker.publish(topic, records)
        return json_response({"positions": positions})

    return bp
