"""The API's own Prometheus metrics (request metrics come from telemetry-kit)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from telemetry_store.timesql import _micros

_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


class ApiMetrics:
    """Metrics bound to one app's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.maintenance = MaintenanceCollector()
        registry.register(self.maintenance)
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
