"""The API app factory: routes, OpenAPI, the database pool for the serving lifetime."""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import AsyncGenerator
from typing import Any, Final

import orjson
import psycopg2
from prometheus_client import CollectorRegistry
from pydantic_core import to_jsonable_python
from quart import Quart, Response, request
from quart.json.provider import DefaultJSONProvider
from telemetry_kit import APIError, base_app
from telemetry_store import (
    Probe,
    QueryCancelledError,
    QueryTimeoutError,
    create_pool,
    ping,
)

from .blueprints import assets, catalog, fleet, gpus, telemetry
from .db import STATE_KEY, ApiState
from .maintenance import MaintenanceSettings, run_every
from .metrics import MAINTENANCE_REFRESH, ApiMetrics
from .problems import register_error_handlers
from .settings import Settings
from .spec import SECURITY, SECURITY_SCHEMES, TAGS, ApiOpenAPIProvider

log = logging.getLogger(__name__)

API_VERSION: Final = "1.0.0"
DESCRIPTION: Final = """\
Read the GPU fleet telemetry the pipeline stores: the GPUs, each GPU's latest state,
time windows of datapoints (raw or bucketed), and the metric catalog.

Times are RFC 3339 with a UTC offset. Lists are paged: pass `next_cursor` back as
`cursor`, or follow `next`. Errors are `application/problem+json` with a stable `code`.

Retention (defaults; a deployment sets its own): raw datapoints are kept 7 days, 1-minute
aggregates 90 days and 1-hour aggregates 2 years. Bucketed queries (`step`) of whole minutes
or hours read the aggregates where they can, with the same answer as the raw datapoints.

When the deployment sets `API_TOKEN`, the `/api` routes need `Authorization: Bearer <token>`.
"""


_OPTIONS: Final = orjson.OPT_NON_STR_KEYS


class OrjsonProvider(DefaultJSONProvider):
    """JSON through orjson: responses of a thousand datapoints are the hot path."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return orjson.dumps(obj, default=to_jsonable_python, option=_OPTIONS).decode()

    def response(self, *args: Any, **kwargs: Any) -> Response:
        obj = self._prepare_response_obj(args, kwargs)
        body = orjson.dumps(obj, default=to_jsonable_python, option=_OPTIONS)
        return Response(body, mimetype=self.mimetype)


def create_app(settings: Settings, *, maintenance: MaintenanceSettings | None = None) -> Quart:
    """Build the API app; the database pool opens when serving starts.

    With ``settings.maintenance_interval`` the app also runs the maintenance job that often,
    with ``maintenance``'s policy (defaults when ``None``).
    """
    registry = CollectorRegistry()
    api = ApiState(settings=settings, metrics=ApiMetrics(registry))
    app = base_app(
        "api",
        title="GPU Telemetry API",
        version=API_VERSION,
        registry=registry,
        readiness=api.readiness,
        on_scrape=lambda: _refresh_newest(api),
        tags=TAGS,
        security_schemes=SECURITY_SCHEMES,
        security=SECURITY,
        openapi_provider_class=ApiOpenAPIProvider,
    )
    app.extensions[STATE_KEY] = api
    app.extensions["QUART_SCHEMA"].info.description = DESCRIPTION
    app.json = OrjsonProvider(app)
    app.config.update(
        QUART_SCHEMA_PYDANTIC_DUMP_OPTIONS={"mode": "json"},
        QUART_SCHEMA_SWAGGER_JS_URL=assets.JS_URL,
        QUART_SCHEMA_SWAGGER_CSS_URL=assets.CSS_URL,
    )
    register_error_handlers(app)
    for blueprint in (gpus.bp, telemetry.bp, catalog.bp, assets.bp, fleet.bp):
        app.register_blueprint(blueprint)
    if settings.token is not None:
        require_token(app, settings.token.get_secret_value())

    @app.while_serving
    async def database() -> AsyncGenerator[None]:
        # minsize 0: the app starts (and /readyz says why it is not ready) while the
        # database is down; the warm-up below opens the first connections when it is up.
        # aiopg's own timeout (connect, acquire, statement) only backs up the bounds db()
        # sets, which cancel on the server: it would close the connection without that.
        dsn = settings.database_url.get_secret_value()
        api.pool = await create_pool(
            dsn,
            minsize=0,
            maxsize=settings.pool_max_size,
            timeout=settings.query_timeout + settings.statement_timeout + 5.0,
            statement_timeout=settings.statement_timeout,
        )
        api.probe = Probe(dsn, timeout=settings.ready_timeout)
        stopping = asyncio.Event()
        try:
            # Concurrent pings hold pool_min_size connections at once, so that many stay open.
            await asyncio.gather(*(ping(api.pool) for _ in range(settings.pool_min_size)))
        except (psycopg2.Error, OSError, TimeoutError) as e:
            log.warning("database not reachable at start: %s", e)
        tasks: list[asyncio.Task[Any]] = [asyncio.create_task(_export_maintenance(api))]
        if settings.maintenance_interval:
            upkeep = maintenance or MaintenanceSettings()
            dsn_m = upkeep.database_url.get_secret_value() if upkeep.database_url else dsn
            tasks.append(
                asyncio.create_task(
                    run_every(
                        dsn_m,
                        upkeep.policy(),
                        settings.maintenance_interval,
                        stopping,
                        after=lambda: _refresh_maintenance(api),
                    )
                )
            )
        try:
            yield
        finally:
            stopping.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            pool, api.pool = api.pool, None
            api.probe.close()
            pool.close()
            await pool.wait_closed()

    return app


async def _export_maintenance(api: ApiState) -> None:
    """Refresh the maintenance job's metrics from the database every MAINTENANCE_REFRESH s."""
    while True:
        await _refresh_maintenance(api)
        await asyncio.sleep(MAINTENANCE_REFRESH)


async def _refresh_maintenance(api: ApiState) -> None:
    pool = api.pool
    if pool is None:
        return
    try:
        async with pool.acquire() as conn, conn.cursor() as cur:
            await api.metrics.maintenance.refresh(cur)
    except (psycopg2.Error, OSError, TimeoutError) as e:
        log.debug("maintenance metrics not refreshed: %s", e)


async def _refresh_newest(api: ApiState) -> None:
    """Before a scrape: read the newest datapoint the API can serve (bounded; skipped when no
    connection comes free within the pool timeout: the last value then stands)."""
    pool = api.pool
    if pool is None:
        return
    try:
        async with asyncio.timeout(api.settings.pool_timeout):
            conn = await pool.acquire()
    except (psycopg2.Error, OSError, TimeoutError) as e:
        log.debug("newest datapoint not refreshed: %s", e)
        return
    try:
        async with conn.cursor() as cur:
            await api.metrics.newest.refresh(cur)
    except (psycopg2.Error, OSError, TimeoutError, QueryCancelledError, QueryTimeoutError) as e:
        log.debug("newest datapoint not refreshed: %s", e)
    finally:
        await pool.release(conn)


def require_token(app: Quart, token: str) -> None:
    """Answer 401 on /api routes unless the request carries ``Authorization: Bearer <token>``.

    Only the data routes: /healthz, /readyz and /metrics stay open for probes and Prometheus,
    /openapi.json and /docs for readers of the spec.
    """
    expected = f"Bearer {token}".encode()

    @app.before_request
    async def _check_token() -> None:
        if not request.path.startswith("/api/"):
            return
        given = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            raise APIError(
                401,
                "UNAUTHORIZED",
                "a valid bearer token is required",
                headers={"WWW-Authenticate": 'Bearer realm="api"'},
            )
