"""``/api/v1/gpus/{gpu_id}/telemetry``: one GPU's datapoints over time, raw or bucketed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Final, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator
from pydantic.json_schema import SkipJsonSchema
from quart import Blueprint, Response
from quart_schema import operation_id, tag_blueprint, validate_querystring
from telemetry_kit import APIError, problems
from telemetry_model import EPOCH, METRICS, METRICS_BY_NAME, to_micros
from telemetry_store import BucketKey, Window, find_gpu_span, read_buckets_json, read_window_json

from ..cursors import decode_bucket, decode_point, encode_bucket, encode_point
from ..db import db, state
from ..params import CURSOR_DOC, LIMIT_DOC, Limit, next_link, page_limit, parse_step, parse_time
from ..responses import documents, json_response
from ..spec import EXAMPLE_GPU, GPU_NOT_FOUND, UNAUTHORIZED, UNAVAILABLE
from .gpus import not_found

bp = Blueprint("telemetry", __name__, url_prefix="/api/v1/gpus")
tag_blueprint(bp, ["telemetry"])

_TIME_DOC: Final = (
    "RFC 3339 time with a UTC offset (Z or +HH:MM) and optional fractional seconds;"
    " the bound is inclusive."
)
_METRIC_NAMES: Final[list[JsonValue]] = [m.name for m in METRICS]
# Bucketed series cover the years the time parameters take (0001-9999 UTC): a time
# PostgreSQL holds outside them (only a row stored before ingestion checked its domain) is
# in the raw datapoints, not in buckets, whose arithmetic it would overflow.
_FIRST: Final = datetime(1, 1, 1, tzinfo=UTC)
_LAST: Final = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)


class TelemetryQuery(BaseModel):
    """The window, metric filter, paging and optional bucketing of a telemetry query."""

    start_time: str | SkipJsonSchema[None] = Field(
        None,
        description=f"Earliest datapoint time. {_TIME_DOC}",
        json_schema_extra={"format": "date-time", "examples": ["2025-07-18T20:42:34Z"]},
    )
    end_time: str | SkipJsonSchema[None] = Field(
        None,
        description=f"Latest datapoint time. {_TIME_DOC}",
        json_schema_extra={"format": "date-time", "examples": ["2025-07-18T21:42:34.5+02:00"]},
    )
    metric: list[str] = Field(
        default_factory=list,
        description="Only these metrics (repeat the parameter for several); default all.",
        json_schema_extra={
            "items": {"type": "string", "enum": _METRIC_NAMES},
            "examples": [["DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_POWER_USAGE"]],
        },
    )
    limit: Limit | SkipJsonSchema[None] = Field(None, description=LIMIT_DOC, examples=[100])
    cursor: str | SkipJsonSchema[None] = Field(None, description=CURSOR_DOC)
    step: str | SkipJsonSchema[None] = Field(
        None,
        description="Bucket width (30s, 5m, 1h, 1d; at most 366d): aggregate per metric and"
        " bucket instead of listing datapoints. Buckets start at start_time (else the epoch)."
        " The window may span at most API_MAX_BUCKETS buckets (default 10000) and read at most"
        " API_MAX_SCAN_ROWS rows (default 1000000; datapoints, or rollup rows where rollups"
        " serve): 400 TOO_MANY_BUCKETS or TOO_MANY_ROWS past either. Resolutions kept (the"
        " defaults; a deployment sets its own): raw datapoints 7 days, 1-minute rollups 90"
        " days, 1-hour rollups 2 years. A step of whole minutes (hours) whose buckets start on"
        " a minute (hour) is served from the 1-minute (1-hour) rollups where they are complete,"
        " with the answer the raw datapoints give; anything else, and the last minutes not"
        " rolled up yet, from the raw datapoints. Data past a resolution's retention is gone"
        " from it: steps under a minute reach back 7 days, whole-minute steps 90 days.",
        json_schema_extra={"pattern": "^[1-9][0-9]{0,7}[smhd]$", "examples": ["5m"]},
    )
    agg: Literal["avg", "min", "max"] | SkipJsonSchema[None] = Field(
        None, description="Aggregate of each bucket (needs step). Default avg.", examples=["max"]
    )

    @field_validator("metric", mode="before")
    @classmethod
    def _repeatable(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value


class Datapoint(BaseModel):
    """One stored datapoint."""

    time: datetime
    metric: str = Field(examples=["DCGM_FI_DEV_GPU_UTIL"])
    unit: str = Field(examples=["%"])
    value: float
    container: str | None = Field(description="The Kubernetes container, if any.")
    pod: str | None = Field(description="The Kubernetes pod, if any.")
    namespace: str | None = Field(description="The Kubernetes namespace, if any.")


class Bucket(BaseModel):
    """The aggregate of one metric over [time, time + step)."""

    time: datetime = Field(description="Start of the bucket.")
    metric: str = Field(examples=["DCGM_FI_DEV_GPU_UTIL"])
    unit: str = Field(examples=["%"])
    value: float = Field(description="The aggregate (agg) of the bucket's values.")
    count: int = Field(description="How many datapoints the bucket holds.")


class TelemetryPage(BaseModel):
    """One page of a GPU's telemetry, oldest first: datapoints, or buckets when step is set."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "gpu_id": EXAMPLE_GPU,
                    "step": "1m",
                    "agg": "max",
                    "items": [
                        {
                            "time": "2025-07-18T20:42:00Z",
                            "metric": "DCGM_FI_DEV_POWER_USAGE",
                            "unit": "W",
                            "value": 156.596,
                            "count": 2,
                        }
                    ],
                    "next_cursor": None,
                    "next": None,
                }
            ]
        }
    )

    gpu_id: str
    step: str | None = Field(description="The bucket width, or null for raw datapoints.")
    agg: str | None = Field(description="The bucket aggregate, or null for raw datapoints.")
    # Buckets first: a generated client tries the members in order, and a bucket has count.
    items: list[Bucket] | list[Datapoint]
    next_cursor: str | None = Field(
        description="Pass as cursor for the next page; null at the end."
    )
    next: str | None = Field(description="URL of the next page; null at the end.")


def _bounds(query: TelemetryQuery) -> tuple[datetime | None, datetime | None, tuple[int, ...]]:
    """The inclusive time bounds and metric ids the query asks for."""
    start = end = None
    if query.start_time is not None:
        start = parse_time("start_time", query.start_time)
    if query.end_time is not None:
        end = parse_time("end_time", query.end_time)
    if start is not None and end is not None and start > end:
        raise APIError(400, "INVALID_TIME_RANGE", "start_time is after end_time")
    unknown = sorted({name for name in query.metric if name not in METRICS_BY_NAME})
    if unknown:
        raise APIError(
            400, "UNKNOWN_METRIC", f"unknown metric {unknown[0][:100]!r}: see /api/v1/metrics"
        )
    ids = tuple(sorted({METRICS_BY_NAME[name].id for name in query.metric}))
    # A bound between two microseconds narrows to the storable times inside the window.
    return (
        start.ceil if start is not None else None,
        end.floor if end is not None else None,
        ids,
    )


@bp.get("/<gpu_id>/telemetry")
@operation_id("getGpuTelemetry")
@validate_querystring(TelemetryQuery)
@documents(TelemetryPage)
@problems(
    {
        400: [
            "INVALID_TIME",
            "NAIVE_TIME",
            "INVALID_TIME_RANGE",
            "INVALID_LIMIT",
            "INVALID_CURSOR",
            "UNKNOWN_METRIC",
            "INVALID_STEP",
            "INVALID_AGGREGATE",
            "TOO_MANY_BUCKETS",
            "TOO_MANY_ROWS",
        ],
        **UNAUTHORIZED,
        **GPU_NOT_FOUND,
        **UNAVAILABLE,
    }
)
async def series(gpu_id: str, query_args: TelemetryQuery) -> Response:
    """List a GPU's datapoints in a time window, oldest first, or aggregate them into buckets.

    start_time and end_time are inclusive. Page with limit and cursor (or follow next):
    every datapoint is on exactly one page. A known GPU with nothing in the window gives
    an empty list; an unknown GPU a 404.
    """
    limit = page_limit(query_args.limit)
    start, end, metric_ids = _bounds(query_args)
    if query_args.agg is not None and query_args.step is None:
        raise APIError(400, "INVALID_AGGREGATE", "agg needs step")
    if query_args.step is None:
        return await _datapoints(gpu_id, query_args, limit, start, end, metric_ids)
    step = parse_step(query_args.step)
    agg = query_args.agg or "avg"
    after = decode_bucket(query_args.cursor) if query_args.cursor is not None else None
    settings = state().settings
    async with db() as q:
        gpu = await q.run("find_gpu", find_gpu_span, gpu_id) if "\x00" not in gpu_id else None
        if gpu is None:
            raise not_found(gpu_id)
        origin = start or EPOCH
        window = Window(gpu.id, start or _FIRST, end or _LAST, metric_ids)
        _check_buckets(window, origin, step, gpu.first_us, gpu.last_us, after, settings.max_buckets)
        page = await q.run(
            "read_buckets",
            read_buckets_json,
            window,
            step=step,
            origin=origin,
            aggregate=agg,
            limit=limit,
            max_rows=settings.max_scan_rows,
            after=after,
        )
    if page.scanned > settings.max_scan_rows:
        raise APIError(
            400,
            "TOO_MANY_ROWS",
            f"the window holds more than {settings.max_scan_rows} datapoints to aggregate;"
            " narrow it with start_time and end_time, or filter metrics",
            max_rows=settings.max_scan_rows,
        )
    cursor = encode_bucket(page.last) if page.last is not None else None
    return json_response(
        {
            "gpu_id": gpu_id,
            "step": query_args.step,
            "agg": agg,
            "items": orjson.Fragment(f"[{page.items}]"),
            "next_cursor": cursor,
            "next": next_link(cursor),
        }
    )


def _check_buckets(
    window: Window,
    origin: datetime,
    step: timedelta,
    first_us: int,
    last_us: int,
    after: BucketKey | None,
    max_buckets: int,
) -> None:
    """A 400 ``TOO_MANY_BUCKETS`` when the window, narrowed to the GPU's data, spans more
    buckets than allowed (whatever the page size: each page aggregates the rest of it)."""
    assert window.start is not None and window.end is not None
    low = max(to_micros(window.start), first_us)
    high = min(to_micros(window.end), last_us)
    if after is not None:
        low = max(low, after.start_us)
    if high < low:
        return
    base, width = to_micros(origin), step // timedelta(microseconds=1)
    buckets = (high - base) // width - (low - base) // width + 1
    if buckets > max_buckets:
        raise APIError(
            400,
            "TOO_MANY_BUCKETS",
            f"the window spans {buckets} buckets of {step}; at most {max_buckets}:"
            " widen step or narrow start_time and end_time",
            max_buckets=max_buckets,
        )


async def _datapoints(
    gpu_id: str,
    query_args: TelemetryQuery,
    limit: int,
    start: datetime | None,
    end: datetime | None,
    metric_ids: tuple[int, ...],
) -> Response:
    """A page of raw datapoints: the API's hot path, so PostgreSQL looks the GPU up and
    renders the items' JSON in one query (``read_window_json``), and this process only
    splices that text into the page."""
    after = decode_point(query_args.cursor) if query_args.cursor is not None else None
    page = None
    if "\x00" not in gpu_id:  # no stored uuid has a NUL, and PostgreSQL refuses one
        async with db() as q:
            page = await q.run(
                "read_window",
                read_window_json,
                gpu_id,
                start=start,
                end=end,
                metric_ids=metric_ids,
                limit=limit,
                after=after,
            )
    if page is None:
        raise not_found(gpu_id)
    cursor = encode_point(page.last) if page.last is not None else None
    return json_response(
        {
            "gpu_id": gpu_id,
            "step": None,
            "agg": None,
            "items": orjson.Fragment(f"[{page.items}]"),
            "next_cursor": cursor,
            "next": next_link(cursor),
        }
    )
