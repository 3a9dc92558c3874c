"""The fleet view: HTML pages for people, at ``/`` (the grid) and ``/gpus/<id>`` (one GPU).

Server-rendered with Quart's Jinja templates; charts are inline SVG (``charts.py``), so the
pages need no script and nothing from outside the API. They read through the same store
functions as the JSON routes, with the same bounds (``db()``: pool timeout, statement and
query timeouts; ``API_MAX_LIMIT``, ``API_MAX_BUCKETS``, ``API_MAX_SCAN_ROWS``):

- the grid is one page of ``list_gpus_json`` (at most ``GRID_PAGE`` GPUs, then a next link)
  plus ``find_gpu_json`` per GPU on that page for its latest values, as ``GET /api/v1/gpus``
  and ``GET /api/v1/gpus/{id}`` read them;
- a GPU page is ``find_gpu_json`` and ``find_gpu_span`` and one ``read_buckets_json`` over the
  chosen window with a step that keeps it to ``CHART_BUCKETS`` buckets per metric, as a
  ``step`` query of ``GET /api/v1/gpus/{id}/telemetry`` reads it.

With ``API_TOKEN`` set, a browser signs in once at ``/login`` with the token, which is kept in
an HttpOnly, SameSite=Strict cookie (Secure over HTTPS) and compared in constant time on every
page; ``Authorization: Bearer`` works too. Without the token the pages are as open as the API.
"""

from __future__ import annotations

import hmac
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal
from urllib.parse import urlencode

import orjson
from quart import Blueprint, Response, redirect, render_template, request
from quart_schema import hide
from telemetry_model import EPOCH, METRICS, METRICS_BY_NAME
from telemetry_store import Window, find_gpu_json, find_gpu_span, list_gpus_json, read_buckets_json
from werkzeug.wrappers.response import Response as WerkzeugResponse

from ..charts import Chart, colour, line_chart, number
from ..cursors import decode_gpu, encode_gpu
from ..db import db, state

bp = Blueprint("fleet", __name__, template_folder="../templates")

GRID_PAGE: Final = 512
"""GPUs on one page of the grid (each costs one latest-values query)."""
CHART_BUCKETS: Final = 240
"""Buckets per metric a chart draws, whatever the window: the step grows with it."""
WINDOWS: Final = {
    "15m": timedelta(minutes=15),
    "1h": timedelta(hours=1),
    "6h": timedelta(hours=6),
    "24h": timedelta(days=1),
    "7d": timedelta(days=7),
}
AGGREGATES: Final = ("avg", "min", "max")
DEFAULT_METRIC: Final = "DCGM_FI_DEV_GPU_TEMP"
COOKIE: Final = "telemetry_api_token"
_LAST: Final = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)

Redirect = WerkzeugResponse | Response


@dataclass(frozen=True, slots=True)
class Cell:
    """One GPU in the grid."""

    id: str
    hostname: str
    index: int
    model: str
    value: float | None
    label: str
    colour: str
    stale: bool
    seen: str


@dataclass(frozen=True, slots=True)
class Host:
    """A row of the grid: a host's GPUs by index (None where it has none)."""

    name: str
    cells: list[Cell | None]


@dataclass(frozen=True, slots=True)
class MetricChart:
    """One metric's chart on a GPU page."""

    name: str
    description: str
    unit: str
    latest: str
    chart: Chart


def parse_time(text: object) -> datetime | None:
    """A time the store rendered, or None if Python cannot hold it (years past 9999...)."""
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def ago(at: datetime | None, now: datetime) -> str:
    """How long ago ``at`` was, for people: 12 s, 3 min, 5 h, 2 d."""
    if at is None:
        return "unknown"
    seconds = (now - at).total_seconds()
    if seconds < 0:
        return "in the future"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


@bp.context_processor
async def _signed_in() -> dict[str, bool]:
    # "sign out" only means something when there is a token to sign in with.
    return {"signed_in": state().settings.token is not None}


def _authorized(token: str) -> bool:
    expected = token.encode()
    cookie = request.cookies.get(COOKIE, "").encode()
    header = request.headers.get("Authorization", "")
    bearer = header.removeprefix("Bearer ").encode() if header.startswith("Bearer ") else b""
    # Both compared, in constant time, whichever is given.
    return hmac.compare_digest(cookie, expected) | hmac.compare_digest(bearer, expected)


@bp.before_request
async def _sign_in_first() -> Redirect | None:
    token = state().settings.token
    if token is None or request.endpoint in ("fleet.login", "fleet.sign_in"):
        return None
    if _authorized(token.get_secret_value()):
        return None
    query = urlencode({"next": request.full_path.rstrip("?")})
    return redirect(f"/login?{query}", 303)


def _local(target: str | None) -> str:
    """``target`` if it is a path of this site, else ``/`` (no open redirect)."""
    if target and target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return "/"


@bp.get("/login")
@hide
async def login() -> str:
    """The sign-in form (only needed when API_TOKEN is set)."""
    return await render_template("fleet/login.html", next=_local(request.args.get("next")))


@bp.post("/login")
@hide
async def sign_in() -> Redirect | tuple[str, int]:
    """Check the token; keep it in a cookie and go on, or show the form again with a 401."""
    form = await request.form
    target = _local(form.get("next"))
    token = state().settings.token
    given = form.get("token", "")
    if token is not None and not hmac.compare_digest(
        given.encode(), token.get_secret_value().encode()
    ):
        page = await render_template("fleet/login.html", next=target, wrong=True)
        return page, 401
    response = redirect(target, 303)
    response.set_cookie(
        COOKIE,
        given,
        httponly=True,
        samesite="Strict",
        secure=request.scheme == "https",
        path="/",
    )
    return response


@bp.post("/logout")
@hide
async def sign_out() -> Redirect:
    """Forget the token cookie."""
    response = redirect("/login", 303)
    response.delete_cookie(COOKIE, path="/")
    return response


def _stale_after(default: float) -> float:
    try:
        value = float(request.args.get("stale_after", default))
    except ValueError:
        return default
    return value if math.isfinite(value) and 1 <= value <= 10 * 365 * 86400 else default


@bp.get("/")
@hide
async def grid() -> str:
    """The fleet: a host x GPU grid coloured by one metric's latest value, stale GPUs marked."""
    settings = state().settings
    metric = request.args.get("metric", DEFAULT_METRIC)
    if metric not in METRICS_BY_NAME:
        metric = DEFAULT_METRIC
    stale_after = _stale_after(settings.fleet_stale_after)
    after = None
    cursor = request.args.get("cursor")
    if cursor:
        after = decode_gpu(cursor)  # a 400 problem if it is not one this view issued
    states: list[dict[str, Any]] = []
    async with db() as q:
        page = await q.run("list_gpus", list_gpus_json, limit=GRID_PAGE, after=after)
        for gpu in orjson.loads(f"[{page.items}]"):
            body = await q.run("find_gpu", find_gpu_json, gpu["id"])
            if body is not None:  # gone since the list was read
                states.append(orjson.loads(body))
    now = datetime.now(UTC)
    unit = METRICS_BY_NAME[metric].unit
    values = [_latest(s, metric) for s in states]
    known = [v for v in values if v is not None]
    low, high = (0.0, 100.0) if unit == "%" else (min(known, default=0), max(known, default=0))
    hosts: dict[str, dict[int, Cell]] = {}
    stale = 0
    for gpu, value in zip(states, values, strict=True):
        seen = parse_time(gpu["last_seen"])
        is_stale = seen is None or (now - seen).total_seconds() > stale_after
        stale += is_stale
        fraction = None if value is None else (value - low) / (high - low) if high > low else 0.5
        hosts.setdefault(gpu["hostname"], {})[gpu["index"]] = Cell(
            id=gpu["id"],
            hostname=gpu["hostname"],
            index=gpu["index"],
            model=gpu["model"],
            value=value,
            label="—" if value is None else number(value),
            colour=colour(fraction),
            stale=is_stale,
            seen=ago(seen, now),
        )
    indexes = sorted({i for cells in hosts.values() for i in cells})
    rows = [Host(name, [cells.get(i) for i in indexes]) for name, cells in hosts.items()]
    newest = max((t for s in states if (t := parse_time(s["last_seen"]))), default=None)
    next_cursor = encode_gpu(page.last) if page.last is not None else None
    return await render_template(
        "fleet/grid.html",
        metrics=METRICS,
        metric=METRICS_BY_NAME[metric],
        stale_after=f"{stale_after:g}",
        hosts=rows,
        indexes=indexes,
        gpus=len(states),
        stale=stale,
        newest=ago(newest, now),
        scale=(number(low), number(high), unit),
        legend=[colour(f / 10) for f in range(11)],
        next=None if next_cursor is None else _with(cursor=next_cursor),
    )


def _latest(gpu: dict[str, Any], metric: str) -> float | None:
    for item in gpu["metrics"]:
        if item["metric"] == metric:
            value = item["value"]
            return float(value) if isinstance(value, int | float) else None
    return None


def _with(**changes: str) -> str:
    """This page's URL with these query parameters set."""
    args = {k: v for k, v in request.args.items() if k not in changes}
    args.update(changes)
    return f"{request.path}?{urlencode(args)}"


def chart_step(window: timedelta, max_buckets: int) -> timedelta:
    """Whole seconds, so that ``window`` spans at most ``CHART_BUCKETS`` buckets (and no more
    than the API allows, ``API_MAX_BUCKETS``)."""
    buckets = max(1, min(CHART_BUCKETS, max_buckets - 1))
    return timedelta(seconds=max(1, math.ceil(window.total_seconds() / buckets)))


@bp.get("/gpus/<gpu_id>")
@hide
async def gpu_page(gpu_id: str) -> str | tuple[str, int]:
    """One GPU: its latest values and a chart per metric over the chosen window."""
    settings = state().settings
    window_name = request.args.get("window", "1h")
    window = WINDOWS.get(window_name) or WINDOWS["1h"]
    window_name = next(k for k, v in WINDOWS.items() if v == window)
    agg_arg = request.args.get("agg", "avg")
    agg: Literal["avg", "min", "max"] = agg_arg if agg_arg in AGGREGATES else "avg"  # type: ignore[assignment]
    step = chart_step(window, settings.max_buckets)
    body = None
    items: list[dict[str, Any]] = []
    too_many = partial = False
    async with db() as q:
        if "\x00" not in gpu_id:  # no stored uuid has a NUL, and PostgreSQL refuses one
            body = await q.run("find_gpu", find_gpu_json, gpu_id)
        span = await q.run("find_gpu", find_gpu_span, gpu_id) if body is not None else None
        if body is None or span is None:
            page = await render_template("fleet/missing.html", gpu_id=gpu_id[:100])
            return page, 404
        end = min(EPOCH + timedelta(microseconds=span.last_us), _LAST)
        start = end - window
        buckets = await q.run(
            "read_buckets",
            read_buckets_json,
            Window(span.id, start, end, ()),
            step=step,
            origin=start,
            aggregate=agg,
            limit=settings.max_limit,
            max_rows=settings.max_scan_rows,
        )
        too_many = buckets.scanned > settings.max_scan_rows
        partial = buckets.last is not None
        if not too_many:
            items = orjson.loads(f"[{buckets.items}]")
    gpu = orjson.loads(body)
    now = datetime.now(UTC)
    seen = parse_time(gpu["last_seen"])
    series: dict[str, list[tuple[datetime, float]]] = {}
    for item in items:
        at = parse_time(item["time"])
        if at is not None and isinstance(item["value"], int | float):
            series.setdefault(item["metric"], []).append((at, float(item["value"])))
    latest = {m["metric"]: m for m in gpu["metrics"]}
    charts = [
        MetricChart(
            m.name,
            m.description,
            m.unit,
            _latest_label(latest.get(m.name)),
            line_chart(series.get(m.name, []), start, end, step),
        )
        for m in METRICS
        if m.name in latest or m.name in series
    ]
    return await render_template(
        "fleet/gpu.html",
        gpu=gpu,
        charts=charts,
        windows=[(name, _with(window=name)) for name in WINDOWS],
        window=window_name,
        aggregates=[(name, _with(agg=name)) for name in AGGREGATES],
        agg=agg,
        step=_duration(step),
        start=start.strftime("%Y-%m-%d %H:%M:%S"),
        end=end.strftime("%Y-%m-%d %H:%M:%S"),
        seen=ago(seen, now),
        stale=seen is None or (now - seen).total_seconds() > settings.fleet_stale_after,
        too_many=too_many,
        partial=partial,
        max_rows=settings.max_scan_rows,
    )


def _latest_label(item: dict[str, Any] | None) -> str:
    if item is None or not isinstance(item.get("value"), int | float):
        return "—"
    return f"{number(float(item['value']))} {item['unit']}".strip()


def _duration(step: timedelta) -> str:
    seconds = int(step.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0 and seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
