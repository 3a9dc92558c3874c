"""The API's own Prometheus metrics (request metrics come from telemetry-kit)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from telemetry_store import Cursor, bounded
from telemetry_store.timesql import _micros

_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


class ApiMetrics:
    """Metrics bound to one app's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.maintenance = MaintenanceCollector()
        registry.register(self.maintenance)
        self.newest = NewestCollector()
        registry.register(self.newest)
        self.db_query_duration = Histogram(
            "db_query_duration_seconds",
            "Database query latency by query.",
            ["query"],
            namespace="telemetry",
            subsystem="api",
            buckets=_BUCKETS,
            registry=registry,
        )
        self.pool_exhausted = Counter(
            "db_pool_exhausted",
            "Requests answered 503 DATABASE_BUSY: no connection came free within API_POOL_TIMEOUT.",
            namespace="telemetry",
            subsystem="api",
            registry=registry,
        )
        self.query_timeouts = Counter(
            "db_query_timeouts",
            "Requests answered 503 QUERY_TIMEOUT: a statement ran past its timeout and was"
            " cancelled on the server.",
            namespace="telemetry",
            subsystem="api",
            registry=registry,
        )


# What the maintenance job records (maintenance_status) and how far the rollups are
# (telemetry_bounds), read by the API every MAINTENANCE_REFRESH seconds: the job is a CronJob
# with no scrape endpoint of its own, so the API exports its metrics.
_MAINTENANCE_STATE: Final = f"""
SELECT {_micros("s.last_success")}, s.last_duration_s, s.runs, s.failures, s.rows_1m,
       s.rows_1h, s.late_minutes, s.partitions_created, s.partitions_dropped,
       {_micros("b.rollup_1m_to")}, {_micros("b.rollup_1h_to")}, {_micros("b.accept_from")},
       (SELECT count(*) FROM telemetry_late)
FROM maintenance_status s, telemetry_bounds b
"""
MAINTENANCE_REFRESH: Final = 15.0


class MaintenanceCollector(Collector):
    """``telemetry_maintenance_*``: the job's last success, rollup lag, rows and partitions."""

    def __init__(self) -> None:
        self.state: tuple[Any, ...] | None = None

    async def refresh(self, cur: Any) -> None:
        """Read the job's state from the database."""
        await cur.execute(_MAINTENANCE_STATE)
        self.state = await cur.fetchone()

    def collect(self) -> Iterator[Metric]:
        """The metrics, from the last refresh (none before the first)."""
        if self.state is None:
            return
        (success, duration, runs, failures, rows_1m, rows_1h, late, created, dropped,
         to_1m, to_1h, horizon, pending) = self.state  # fmt: skip
        now = time.time()
        yield GaugeMetricFamily(
            "telemetry_maintenance_last_success_timestamp_seconds",
            "Unix time of the maintenance job's last successful run (0: none yet).",
            value=0 if success is None else float(success) / 1e6,
        )
        yield GaugeMetricFamily(
            "telemetry_maintenance_last_duration_seconds",
            "How long the last successful run took.",
            value=float(duration or 0),
        )
        yield CounterMetricFamily(
            "telemetry_maintenance_runs", "Runs of the maintenance job.", value=runs
        )
        yield CounterMetricFamily(
            "telemetry_maintenance_failures", "Runs that failed.", value=failures
        )
        rows = CounterMetricFamily(
            "telemetry_maintenance_rollup_rows",
            "Rollup rows written, by resolution.",
            labels=["resolution"],
        )
        rows.add_metric(["1m"], rows_1m)
        rows.add_metric(["1h"], rows_1h)
        yield rows
        yield CounterMetricFamily(
            "telemetry_maintenance_late_minutes",
            "Minutes aggregated again because datapoints arrived after they were rolled up.",
            value=late,
        )
        yield GaugeMetricFamily(
            "telemetry_maintenance_late_minutes_pending",
            "Late-minute marks not aggregated again yet (raw data serves those minutes).",
            value=pending,
        )
        partitions = CounterMetricFamily(
            "telemetry_maintenance_partitions",
            "Partitions created or dropped by the job.",
            labels=["action"],
        )
        partitions.add_metric(["created"], created)
        partitions.add_metric(["dropped"], dropped)
        yield partitions
        lag = GaugeMetricFamily(
            "telemetry_maintenance_rollup_lag_seconds",
            "Age of the newest complete rollup interval's end, by resolution (-1: none yet).",
            labels=["resolution"],
        )
        for resolution, to in (("1m", to_1m), ("1h", to_1h)):
            lag.add_metric([resolution], -1 if to is None else now - float(to) / 1e6)
        yield lag
        if horizon is not None and float(horizon) > 0:
            yield GaugeMetricFamily(
                "telemetry_maintenance_raw_horizon_timestamp_seconds",
                "Raw datapoints older than this are refused at insert and dropped.",
                value=float(horizon) / 1e6,
            )


# The newest datapoint the API can serve: for each GPU its newest row, read backward through the
# (gpu_id, ts) index of the newest partition that has one (partitions ahead and an idle GPU's
# empty ones cost one index probe each), then the newest of those. No index leads with ts (it
# would slow every insert), so this is one short index probe per known GPU: a few milliseconds
# for hundreds of GPUs. Rows stamped more than a day ahead (refused by the collectors; only a
# hand-written INSERT stores them) are left out, and so are the partitions that hold only such.
_NEWEST: Final = f"""
SELECT {_micros("max(n.ts)")} FROM gpus g
CROSS JOIN LATERAL (
    SELECT t.ts FROM telemetry t
    WHERE t.gpu_id = g.id AND t.ts <= now() + interval '1 day'
    ORDER BY t.ts DESC LIMIT 1
) n
"""
# The refresh runs at each scrape, well inside Prometheus' scrape timeout.
NEWEST_TIMEOUT: Final = 2.0


class NewestCollector(Collector):
    """``telemetry_api_newest_datapoint_age_seconds``: how old the newest datapoint the API can
    serve is, at the scrape (refreshed before each one)."""

    def __init__(self) -> None:
        self.newest_us: int | None = None
        self.refreshed = False

    async def refresh(self, cur: Cursor, timeout: float = NEWEST_TIMEOUT) -> None:
        """Read the newest datapoint's time (cancelled on the server past ``timeout``)."""

        async def newest(c: Cursor) -> Any:
            await c.execute(_NEWEST)
            return (await c.fetchone())[0]

        value = await bounded(cur, newest, timeout=timeout)
        self.newest_us = None if value is None else int(value)
        self.refreshed = True

    def collect(self) -> Iterator[Metric]:
        """The age at this moment (-1: no datapoint yet; none before the first refresh).

        A refresh that failed leaves the last time read: the age then keeps growing, which is
        all the API knows.
        """
        if not self.refreshed:
            return
        yield GaugeMetricFamily(
            "telemetry_api_newest_datapoint_age_seconds",
            "Age of the newest datapoint the API can serve, at the scrape (-1: none yet).",
            value=-1 if self.newest_us is None else time.time() - self.newest_us / 1e6,
        )
