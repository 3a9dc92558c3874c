"""``/api/v1/gpus``: the GPUs with stored telemetry, and one GPU's latest state."""

from __future__ import annotations

from datetime import datetime

import orjson
from pydantic import BaseModel, ConfigDict, Field, JsonValue
from pydantic.json_schema import SkipJsonSchema
from quart import Blueprint, Response
from quart_schema import operation_id, tag_blueprint, validate_querystring
from telemetry_kit import APIError, problems
from telemetry_store import GpuJsonPage, find_gpu_json, list_gpus_json

from ..cursors import decode_gpu, encode_gpu
from ..db import db
from ..params import CURSOR_DOC, LIMIT_DOC, Limit, next_link, page_limit
from ..responses import documents, json_response
from ..spec import EXAMPLE_GPU, GPU_NOT_FOUND, UNAUTHORIZED, UNAVAILABLE

bp = Blueprint("gpus", __name__, url_prefix="/api/v1/gpus")
tag_blueprint(bp, ["gpus"])

_GPU_EXAMPLE: dict[str, JsonValue] = {
    "id": EXAMPLE_GPU,
    "hostname": "mtv5-dgx1-hgpu-031",
    "index": 0,
    "device": "nvidia0",
    "model": "NVIDIA H100 80GB HBM3",
    "driver_version": "535.129.03",
    "first_seen": "2025-07-18T20:42:34.250000Z",
    "last_seen": "2025-07-18T20:42:44.250000Z",
}


class GpuQuery(BaseModel):
    """Filters and paging of the GPU list."""

    hostname: str | SkipJsonSchema[None] = Field(
        None,
        description="Only the GPUs of this host (exact match).",
        examples=["mtv5-dgx1-hgpu-031"],
    )
    limit: Limit | SkipJsonSchema[None] = Field(None, description=LIMIT_DOC, examples=[100])
    cursor: str | SkipJsonSchema[None] = Field(None, description=CURSOR_DOC)


class Gpu(BaseModel):
    """A GPU: ``id`` is its uuid; ``index`` is only unique per host."""

    id: str = Field(description="The GPU uuid, its identity.", examples=[EXAMPLE_GPU])
    hostname: str
    index: int = Field(description="The GPU's index on its host (DCGM gpu label).")
    device: str = Field(examples=["nvidia0"])
    model: str = Field(examples=["NVIDIA H100 80GB HBM3"])
    driver_version: str | None
    first_seen: datetime = Field(description="Time of its first stored datapoint.")
    last_seen: datetime = Field(description="Time of its latest stored datapoint.")


class GpuPage(BaseModel):
    """One page of GPUs, ordered by hostname, index, id."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [_GPU_EXAMPLE],
                    "next_cursor": "WyJnIiwibXR2NS1kZ3gxLWhncHUtMDMxIiwwLCJHUFUtNWZkNCJd",
                    "next": "/api/v1/gpus?limit=1"
                    "&cursor=WyJnIiwibXR2NS1kZ3gxLWhncHUtMDMxIiwwLCJHUFUtNWZkNCJd",
                }
            ]
        }
    )

    items: list[Gpu]
    next_cursor: str | None = Field(
        description="Pass as cursor for the next page; null at the end."
    )
    next: str | None = Field(description="URL of the next page; null at the end.")


class LatestValue(BaseModel):
    """The latest datapoint of one metric."""

    metric: str = Field(examples=["DCGM_FI_DEV_GPU_TEMP"])
    unit: str = Field(examples=["C"])
    value: float
    time: datetime


class GpuState(Gpu):
    """A GPU with the latest value of each metric it reports."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                _GPU_EXAMPLE
                | {
                    "metrics": [
                        {
                            "metric": "DCGM_FI_DEV_GPU_TEMP",
                            "unit": "C",
                            "value": 63.0,
                            "time": "2025-07-18T20:42:44.253000Z",
                        },
                        {
                            "metric": "DCGM_FI_DEV_POWER_USAGE",
                            "unit": "W",
                            "value": 156.596,
                            "time": "2025-07-18T20:42:44.252000Z",
                        },
                    ]
                }
            ]
        }
    )

    metrics: list[LatestValue]


@bp.get("", strict_slashes=False)
@operation_id("listGpus")
@validate_querystring(GpuQuery)
@documents(GpuPage)
@problems({400: ["INVALID_LIMIT", "INVALID_CURSOR"], **UNAUTHORIZED, **UNAVAILABLE})
async def list_all(query_args: GpuQuery) -> Response:
    """List the GPUs that have telemetry, optionally of one host.

    Ordered by hostname, per-host index and id; paged with limit and cursor.
    """
    limit = page_limit(query_args.limit)
    after = decode_gpu(query_args.cursor) if query_args.cursor is not None else None
    if query_args.hostname is not None and "\x00" in query_args.hostname:
        page = GpuJsonPage("", None)  # no stored hostname has a NUL, and PostgreSQL refuses one
    else:
        async with db() as q:
            page = await q.run(
                "list_gpus", list_gpus_json, limit=limit, hostname=query_args.hostname, after=after
            )
    # PostgreSQL rendered the items (list_gpus_json): no row parsing or encoding here.
    cursor = encode_gpu(page.last) if page.last is not None else None
    return json_response(
        {
            "items": orjson.Fragment(f"[{page.items}]"),
            "next_cursor": cursor,
            "next": next_link(cursor),
        }
    )


def not_found(gpu_id: str) -> APIError:
    """The 404 ``GPU_NOT_FOUND`` of a GPU id no GPU has."""
    return APIError(404, "GPU_NOT_FOUND", f"no GPU has id {gpu_id[:100]!r}")


@bp.get("/<gpu_id>")
@operation_id("getGpu")
@documents(GpuState)
@problems({**UNAUTHORIZED, **GPU_NOT_FOUND, **UNAVAILABLE})
async def show(gpu_id: str) -> Response:
    """Show one GPU with the latest value, unit and time of each metric."""
    # PostgreSQL renders the whole object (find_gpu_json), times included: whatever time a
    # row holds renders, none is parsed into a Python datetime here.
    body = None
    if "\x00" not in gpu_id:  # no stored uuid has a NUL, and PostgreSQL refuses one
        async with db() as q:
            body = await q.run("find_gpu", find_gpu_json, gpu_id)
    if body is None:
        raise not_found(gpu_id)
    return Response(body, content_type="application/json")
