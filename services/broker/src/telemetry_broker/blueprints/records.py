"""Records: publish a batch (a hot route, parsed with orjson rather than a schema)."""

from __future__ import annotations

from typing import Annotated, Any, Final

from pydantic import BaseModel, ConfigDict, Field
from quart import Blueprint
from quart_schema import operation_id, tag_blueprint
from telemetry_kit import APIError, links, path_parameter, problems
from telemetry_mq import ProtocolError
from telemetry_mq.protocol import MAX_KEY_BYTES, decode_publish

from ..fastpath import FastPath, FastRequest, FastResponse
from ..runtime import Runtime
from ..spec import (
    GROUP_ACTIONS,
    INVALID,
    LIVE_TOPIC_PATTERN,
    TOO_LARGE,
    TOPIC_NOT_FOUND,
    UNAUTHORIZED,
    UNAVAILABLE,
)

MAX_PUBLISH_RECORDS: Final = 100_000
"""Records one publish may carry (``decode_publish``'s bound)."""

Position = Annotated[
    list[Annotated[int, Field(ge=0)]],
    Field(min_length=2, max_length=2, description="[partition, offset]."),
]


class PublishRecord(BaseModel):
    """One record: its key picks the partition; its value is any JSON document."""

    key: str = Field(
        max_length=MAX_KEY_BYTES,
        description=f"Partition key (e.g. the GPU uuid), at most {MAX_KEY_BYTES} bytes of UTF-8.",
        examples=["GPU-5fd4f087-86f3-7a43-b711-4771313afc50"],
    )
    value: Any = Field(description="One JSON document, stored and delivered byte for byte.")


class PublishRequest(BaseModel):
    """A batch of records to publish (at least one)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "records": [
                        {
                            "key": "GPU-5fd4f087-86f3-7a43-b711-4771313afc50",
                            "value": {"metric": "DCGM_FI_DEV_GPU_TEMP", "value": 63.0},
                        }
                    ]
                }
            ]
        }
    )

    records: list[PublishRecord] = Field(min_length=1, max_length=MAX_PUBLISH_RECORDS)


class PublishResponse(BaseModel):
    """Where each record landed, in request order; sent only once all are fsynced."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"positions": [[3, 1042]]}]})

    positions: list[Position] = Field(description="[partition, offset] per record.")


def records_blueprint(runtime: Runtime, fast: FastPath) -> Blueprint:
    """Build the records blueprint (its only route is served by the fast path)."""
    bp = Blueprint("records", __name__, url_prefix="/v1/topics")
    tag_blueprint(bp, ["records"])

    @fast.post(bp, "/<topic>/records/", PublishRequest, (PublishResponse, 200))
    @operation_id("publishRecords")
    @path_parameter(
        "topic",
        description="A topic name, not a dead-letter topic's (<topic>.dlq): the broker writes"
        " those.",
        schema={"type": "string", "pattern": LIVE_TOPIC_PATTERN, "examples": ["telemetry"]},
    )
    @links(200, {"fetchRecords": {"topic": "$request.path.topic"}})
    @problems(
        {
            **INVALID,
            **UNAUTHORIZED,
            **GROUP_ACTIONS,
            **TOPIC_NOT_FOUND,
            **TOO_LARGE,
            429: ["BACKLOG_FULL"],
            **UNAVAILABLE,
        }
    )
    async def publish(req: FastRequest, topic: str) -> FastResponse:
        """Publish records; answered after they are durable. 429 + Retry-After when full."""
        broker = runtime.broker
        try:
            records = decode_publish(req.body, MAX_PUBLISH_RECORDS)
        except ProtocolError as e:
            raise APIError(400, "INVALID_REQUEST", str(e)) from e
        positions = await broker.publish(topic, records)
        return FastResponse.json({"positions": positions})

    return bp
