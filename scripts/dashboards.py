"""The Grafana dashboards of the pipeline, as code (grafana-foundation-sdk).

Writes helm/telemetry/files/dashboards/<uid>.json, which the chart ships as ConfigMaps for
Grafana's dashboard sidecar (metrics.dashboards.enabled):

- ``telemetry-pipeline``: the pipeline's health on a Prometheus data source: publish, fetch and
  store rates, lag per partition and group, freshness, dead letters, 429s, errors, latencies,
  the broker's disk, and each process's CPU and memory.
- ``telemetry-fleet``: the GPUs themselves on Grafana's PostgreSQL data source, read from the
  pipeline's tables (``gpus``, ``metrics``, ``telemetry``): utilisation, temperature, power and
  memory by host and GPU.

Usage: ``task dashboards`` (write) and ``task dashboards:check`` (fail when the committed JSON is
not what this script generates). Every panel's query runs in the tests: the SQL against a
migrated PostgreSQL with datapoints (tests/ops/test_dashboard_sql.py), the PromQL against a real
Prometheus scraping a running stack (tests/system/test_prometheus.py).
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model

OUT: Final = Path(__file__).resolve().parent.parent / "helm" / "telemetry" / "files" / "dashboards"

PROMETHEUS: Final = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
POSTGRES_TYPE: Final = "grafana-postgresql-datasource"
POSTGRES: Final = model.DataSourceRef(type_val=POSTGRES_TYPE, uid="${datasource}")

# Label filters every pipeline query carries: the release's namespace and the chosen topics.
NS: Final = 'namespace=~"$namespace"'
TOPIC: Final = f'{NS}, topic=~"$topic"'
RATE: Final = "$__rate_interval"
BY_GROUP: Final = "sum by (topic, consumer_group) "


# --- Query builders --------------------------------------------------------------------------


@dataclass
class SqlQuery(cogvariants.Dataquery):
    """A query of Grafana's SQL data sources (the SDK has no builder for them)."""

    raw_sql: str
    format: str = "time_series"
    ref_id: str = "A"
    datasource: model.DataSourceRef = field(default_factory=lambda: POSTGRES)

    def to_json(self) -> dict[str, object]:
        """The target as Grafana stores it."""
        return {
            "datasource": self.datasource,
            "editorMode": "code",
            "format": self.format,
            "rawQuery": True,
            "rawSql": self.raw_sql,
            "refId": self.ref_id,
        }


class Sql(cogbuilder.Builder[SqlQuery]):
    """Builder of a ``SqlQuery``."""

    def __init__(self, raw_sql: str, *, table: bool = False, ref_id: str = "A") -> None:
        self._query = SqlQuery(
            " ".join(line.strip() for line in raw_sql.strip().splitlines()),
            "table" if table else "time_series",
            ref_id,
        )

    def build(self) -> SqlQuery:
        """The query."""
        return self._query


def prom(expr: str, legend: str = "", ref_id: str = "A") -> prometheus.Dataquery:
    """A range query on the dashboard's Prometheus data source."""
    q = prometheus.Dataquery().expr(" ".join(expr.split())).ref_id(ref_id).range()
    if legend:
        q = q.legend_format(legend)
    return q.datasource(PROMETHEUS)


def r(metric: str, fn: str = "rate", labels: str = TOPIC) -> str:
    """``rate(metric{labels}[$__rate_interval])`` (or another range function)."""
    return f"{fn}({metric}{{{labels}}}[{RATE}])"


def refs(*queries: prometheus.Dataquery) -> list[cogbuilder.Builder[cogvariants.Dataquery]]:
    """Queries with the ref ids A, B, C ... in order."""
    return [q.ref_id(chr(ord("A") + i)) for i, q in enumerate(queries)]


# --- Panels -----------------------------------------------------------------------------------


def graph(
    title: str,
    unit: str,
    targets: list[cogbuilder.Builder[cogvariants.Dataquery]],
    *,
    description: str,
    width: int = 12,
    height: int = 8,
    datasource: model.DataSourceRef = PROMETHEUS,
    stack: bool = False,
) -> timeseries.Panel:
    """A time-series panel."""
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(datasource)
        .targets(targets)
        .unit(unit)
        .span(width)
        .height(height)
        .fill_opacity(10)
        .line_width(1)
        .show_points(common.VisibilityMode.NEVER)
    )
    if stack:
        panel = panel.stacking(common_builders.StackingConfig().mode(common.StackingMode.NORMAL))
    return panel


def number(
    title: str,
    unit: str,
    target: cogbuilder.Builder[cogvariants.Dataquery],
    *,
    description: str,
    width: int = 4,
    datasource: model.DataSourceRef = PROMETHEUS,
) -> stat.Panel:
    """A single-number panel with a sparkline."""
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(datasource)
        .with_target(target)
        .unit(unit)
        .span(width)
        .height(4)
    )


def row(title: str) -> dash.Row:
    """A row header."""
    return dash.Row(title)


# --- The pipeline dashboard (Prometheus) ------------------------------------------------------


def pipeline() -> dash.Dashboard:
    """Pipeline health: rates, lag, freshness, dead letters, errors, latencies, processes."""
    jobs = f'{NS}, job=~"$job"'
    d = (
        dash.Dashboard("Telemetry pipeline")
        .uid("telemetry-pipeline")
        .description("Health of the GPU telemetry pipeline: streamers, broker, collectors, API.")
        .tags(["telemetry"])
        .time("now-1h", "now")
        .refresh("30s")
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .with_variable(dash.DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
        .with_variable(
            dash.QueryVariable("namespace")
            .label("Namespace")
            .datasource(PROMETHEUS)
            .query("label_values(telemetry_broker_records_published_total, namespace)")
            .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .multi(True)
            .include_all(True)
            .all_value(".*")
        )
        .with_variable(
            dash.QueryVariable("job")
            .label("Service")
            .datasource(PROMETHEUS)
            .query('label_values(up{namespace=~"$namespace"}, job)')
            .regex("/^.+-(?:broker|streamer|collector|api)$/")
            .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .multi(True)
            .include_all(True)
        )
        .with_variable(
            dash.QueryVariable("topic")
            .label("Topic")
            .datasource(PROMETHEUS)
            .query(
                "label_values(telemetry_broker_records_published_total"
                '{namespace=~"$namespace"}, topic)'
            )
            .regex(r"/^(?!.*\.dlq$).*$/")
            .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .multi(True)
            .include_all(True)
            .all_value(".*")
        )
    )

    d = (
        d.with_row(row("Overview"))
        .with_panel(
            number(
                "Targets up",
                "none",
                prom(f"sum by (job) (up{{{jobs}}})", "{{job}}"),
                description="Scrape targets answering, per service.",
            )
        )
        .with_panel(
            number(
                "Published",
                "rps",
                prom(f"sum({r('telemetry_broker_records_published_total')})"),
                description="Records per second the broker accepted.",
            )
        )
        .with_panel(
            number(
                "Stored",
                "rps",
                prom(f"sum({r('telemetry_collector_datapoints_stored_total')})"),
                description="Datapoints per second newly written to PostgreSQL.",
            )
        )
        .with_panel(
            number(
                "Consumer lag",
                "short",
                prom(f"sum(telemetry_broker_consumer_lag_records{{{TOPIC}}})"),
                description="Records published but not yet acked, all groups and partitions.",
            )
        )
        .with_panel(
            number(
                "Freshness p99",
                "s",
                prom(
                    "histogram_quantile(0.99, sum by (le) "
                    f"({r('telemetry_collector_freshness_seconds_bucket')}))"
                ),
                description="Commit time minus the datapoint's processing time, 99th percentile.",
            )
        )
        .with_panel(
            number(
                "Dead letters",
                "short",
                prom(f"sum(telemetry_broker_dead_letter_records{{{TOPIC}}})"),
                description="Pending records in the dead-letter topics (not yet replayed).",
            )
        )
    )

    d = (
        d.with_row(row("Throughput"))
        .with_panel(
            graph(
                "Broker: published, fetched, acked",
                "rps",
                refs(
                    prom(
                        f"sum by (topic) ({r('telemetry_broker_records_published_total')})",
                        "published {{topic}}",
                    ),
                    prom(
                        f"{BY_GROUP}({r('telemetry_broker_records_fetched_total')})",
                        "fetched {{topic}}/{{consumer_group}}",
                    ),
                    prom(
                        f"{BY_GROUP}({r('telemetry_broker_records_acked_total')})",
                        "acked {{topic}}/{{consumer_group}}",
                    ),
                    prom(
                        f"{BY_GROUP}({r('telemetry_broker_records_redelivered_total')})",
                        "redelivered {{topic}}/{{consumer_group}}",
                    ),
                ),
                description="Records per second through the broker, by topic and consumer group.",
            )
        )
        .with_panel(
            graph(
                "Streamers and collectors: datapoints",
                "rps",
                refs(
                    prom(
                        f"sum by (topic) ({r('telemetry_streamer_datapoints_published_total')})",
                        "published {{topic}}",
                    ),
                    prom(
                        f"sum by (topic) ({r('telemetry_collector_datapoints_stored_total')})",
                        "stored {{topic}}",
                    ),
                    prom(
                        f"sum by (topic) ({r('telemetry_collector_datapoints_duplicate_total')})",
                        "duplicate {{topic}}",
                    ),
                ),
                description=(
                    "Datapoints per second the streamers got acknowledged and the collectors"
                    " stored (duplicates: redeliveries already stored)."
                ),
            )
        )
        .with_panel(
            graph(
                "Collector batches by outcome",
                "ops",
                refs(
                    prom(
                        f"sum by (outcome) ({r('telemetry_collector_batches_total')})",
                        "{{outcome}}",
                    )
                ),
                description="Fetched batches per second, stored or not.",
                stack=True,
            )
        )
        .with_panel(
            graph(
                "Broker backlog",
                "bytes",
                refs(
                    prom(
                        f"sum by (topic) (telemetry_broker_backlog_bytes{{{TOPIC}}})",
                        "backlog {{topic}}",
                    ),
                    prom(
                        f"sum by (topic) (telemetry_broker_log_bytes{{{TOPIC}}})", "log {{topic}}"
                    ),
                ),
                description=(
                    "Unconsumed bytes behind the slowest group (publishes get 429 at"
                    " BROKER_MAX_BACKLOG_BYTES) and bytes retained on disk."
                ),
            )
        )
    )

    d = (
        d.with_row(row("Lag and freshness"))
        .with_panel(
            graph(
                "Consumer lag per partition and group",
                "short",
                refs(
                    prom(
                        "sum by (topic, consumer_group, partition) "
                        f"(telemetry_broker_consumer_lag_records{{{TOPIC}}})",
                        "{{topic}}/{{consumer_group}} p{{partition}}",
                    )
                ),
                description="Records not yet acked (end offset minus committed offset).",
                stack=True,
            )
        )
        .with_panel(
            graph(
                "In-flight records per group",
                "short",
                refs(
                    prom(
                        "sum by (topic, consumer_group) "
                        f"(telemetry_broker_in_flight_records{{{TOPIC}}})",
                        "{{topic}}/{{consumer_group}}",
                    )
                ),
                description="Records under a lease (fetched, not yet acked or nacked).",
            )
        )
        .with_panel(
            graph(
                "Freshness",
                "s",
                refs(
                    *(
                        prom(
                            f"histogram_quantile({q}, sum by (topic, le) "
                            f"({r('telemetry_collector_freshness_seconds_bucket')}))",
                            f"p{int(q * 100)} {{{{topic}}}}",
                        )
                        for q in (0.5, 0.9, 0.99)
                    )
                ),
                description=(
                    "Commit time minus the datapoint's processing time: how long after it was"
                    " sampled a datapoint can be read. The alert fires at p99 > 5 s."
                ),
                width=24,
            )
        )
    )

    d = (
        d.with_row(row("Dead letters, backpressure and errors"))
        .with_panel(
            graph(
                "Dead letters",
                "short",
                refs(
                    prom(
                        f"sum by (topic) (telemetry_broker_dead_letter_records{{{TOPIC}}})",
                        "pending {{topic}}",
                    ),
                    prom(
                        "sum by (topic, reason) "
                        f"({r('telemetry_broker_records_dead_lettered_total', 'increase')})",
                        "new {{topic}} ({{reason}})",
                    ),
                ),
                description=(
                    "Pending dead letters per topic (task dlq:list shows them, task dlq:replay"
                    " sends them back) and new ones per interval by reason."
                ),
            )
        )
        .with_panel(
            graph(
                "Broker 429s",
                "reqps",
                refs(
                    prom(
                        "sum by (route) (rate(telemetry_broker_http_requests_total"
                        f'{{{NS}, status="429"}}[{RATE}]))',
                        "{{route}}",
                    ),
                    prom(
                        f"sum by (topic, reason) ({r('telemetry_broker_publishes_refused_total')})",
                        "refused {{topic}} ({{reason}})",
                    ),
                ),
                description=(
                    "Requests the broker refused with 429 per route (backlog or disk full,"
                    " too many leases), and refused publishes by reason."
                ),
            )
        )
        .with_panel(
            graph(
                "Server errors (5xx) by service and route",
                "reqps",
                refs(
                    prom(
                        "sum by (job, route, status) (rate("
                        f'{{__name__=~"telemetry_.+_http_requests_total", {jobs}, status=~"5.."}}'
                        f"[{RATE}]))",
                        "{{job}} {{route}} {{status}}",
                    )
                ),
                description="HTTP answers with a 5xx status, per service, route and status.",
            )
        )
        .with_panel(
            graph(
                "Publish failures and rejected records",
                "ops",
                refs(
                    prom(
                        f"sum by (topic) ({r('telemetry_streamer_publish_failures_total')})",
                        "publish failures {{topic}}",
                    ),
                    prom(
                        f"sum by (topic) ({r('telemetry_collector_datapoints_rejected_total')})",
                        "rejected {{topic}}",
                    ),
                ),
                description=(
                    "Streamer publish calls that failed after their retries; records the"
                    " collectors sent to the dead-letter topic."
                ),
            )
        )
    )

    d = (
        d.with_row(row("Database"))
        .with_panel(
            graph(
                "Collectors reaching the database",
                "short",
                refs(
                    prom(
                        f"sum by (topic) (telemetry_collector_database_up{{{TOPIC}}})",
                        "fetching {{topic}}",
                    ),
                    prom(
                        f"count by (topic) (telemetry_collector_database_up{{{TOPIC}}})",
                        "collectors {{topic}}",
                    ),
                ),
                description=(
                    "Collectors whose workers fetch (the others wait for the database), out of"
                    " all collectors."
                ),
            )
        )
        .with_panel(
            graph(
                "Database faults",
                "ops",
                refs(
                    prom(
                        f"sum by (topic) ({r('telemetry_collector_database_pauses_total')})",
                        "collector pauses {{topic}}",
                    ),
                    prom(
                        f"sum by (topic) ({r('telemetry_collector_datapoints_released_total')})",
                        "datapoints released {{topic}}",
                    ),
                    prom(
                        f"sum({r('telemetry_api_db_pool_exhausted_total', labels=NS)})",
                        "API 503 DATABASE_BUSY",
                    ),
                    prom(
                        f"sum({r('telemetry_api_db_query_timeouts_total', labels=NS)})",
                        "API 503 QUERY_TIMEOUT",
                    ),
                ),
                description=(
                    "Collector pauses for the database and the records they handed back"
                    " (redelivered later, no delivery spent); API requests refused for a busy"
                    " pool or a query past its timeout."
                ),
            )
        )
    )

    def p99(metric: str, by: str, labels: str = NS) -> str:
        return (
            f"histogram_quantile(0.99, sum by ({by}, le) ({r(metric + '_bucket', labels=labels)}))"
        )

    d = (
        d.with_row(row("Latency (p99)"))
        .with_panel(
            graph(
                "Publish and store",
                "s",
                refs(
                    prom(
                        p99("telemetry_streamer_publish_duration_seconds", "topic", TOPIC),
                        "publish {{topic}}",
                    ),
                    prom(
                        p99("telemetry_collector_batch_duration_seconds", "topic", TOPIC),
                        "batch fetch to ack {{topic}}",
                    ),
                    prom(p99("telemetry_broker_fsync_duration_seconds", "job"), "broker fsync"),
                ),
                description=(
                    "Streamer publish (until the durable acknowledgement), a collector batch from"
                    " fetch to ack, one broker fsync."
                ),
            )
        )
        .with_panel(
            graph(
                "Broker requests",
                "s",
                refs(
                    prom(
                        p99("telemetry_broker_http_request_duration_seconds", "route"), "{{route}}"
                    )
                ),
                description="Broker request latency per route (fetches include their long-poll).",
            )
        )
        .with_panel(
            graph(
                "API requests",
                "s",
                refs(
                    prom(p99("telemetry_api_http_request_duration_seconds", "route"), "{{route}}")
                ),
                description="API request latency per route.",
            )
        )
        .with_panel(
            graph(
                "API database queries",
                "s",
                refs(prom(p99("telemetry_api_db_query_duration_seconds", "query"), "{{query}}")),
                description="API database latency per query.",
            )
        )
    )

    d = d.with_row(row("Broker disk")).with_panel(
        graph(
            "Data volume",
            "bytes",
            refs(
                prom(
                    f"sum by (instance) (telemetry_broker_disk_used_bytes{{{NS}}})",
                    "used {{instance}}",
                ),
                prom(
                    f"sum by (instance) (telemetry_broker_disk_free_bytes{{{NS}}})",
                    "free {{instance}}",
                ),
                prom(
                    f"sum by (instance) (telemetry_broker_disk_watermark_bytes{{{NS}}})",
                    "watermark {{instance}}",
                ),
            ),
            description=(
                "Bytes used and free on the broker's volume; past the watermark publishes"
                " answer 429 DISK_FULL."
            ),
            width=24,
        )
    )

    d = (
        d.with_row(row("Processes"))
        .with_panel(
            graph(
                "CPU",
                "percentunit",
                refs(
                    prom(
                        f"sum by (job, instance) ({r('process_cpu_seconds_total', labels=jobs)})",
                        "{{job}} {{instance}}",
                    )
                ),
                description="CPU seconds per second of each service process (1 = one core).",
            )
        )
        .with_panel(
            graph(
                "Memory",
                "bytes",
                refs(
                    prom(
                        f"sum by (job, instance) (process_resident_memory_bytes{{{jobs}}})",
                        "{{job}} {{instance}}",
                    )
                ),
                description="Resident memory of each service process.",
            )
        )
    )
    return d


# --- The fleet dashboard (PostgreSQL) ---------------------------------------------------------

# The GPUs chosen by the host and GPU variables (multi-value: Grafana quotes and joins them).
GPUS: Final = "g.hostname IN ($host) AND g.uuid IN ($gpu)"
GPU_NAME: Final = "g.hostname || ' GPU ' || g.gpu_index"


def per_gpu(metric: str) -> str:
    """One series per GPU: the metric's average per interval."""
    return f"""
        SELECT $__timeGroupAlias(t.ts, $__interval), {GPU_NAME} AS metric, avg(t.value) AS value
        FROM telemetry t
        JOIN gpus g ON g.id = t.gpu_id
        WHERE {GPUS}
          AND t.metric_id = (SELECT id FROM metrics WHERE name = '{metric}')
          AND $__timeFilter(t.ts)
        GROUP BY 1, 2
        ORDER BY 1, 2
    """


MEMORY_PERCENT: Final = f"""
    SELECT $__timeGroupAlias(t.ts, $__interval), {GPU_NAME} AS metric,
           100 * avg(t.value) FILTER (WHERE m.name = 'DCGM_FI_DEV_FB_USED')
           / nullif(avg(t.value) FILTER (WHERE m.name = 'DCGM_FI_DEV_FB_USED')
                    + avg(t.value) FILTER (WHERE m.name = 'DCGM_FI_DEV_FB_FREE'), 0) AS value
    FROM telemetry t
    JOIN gpus g ON g.id = t.gpu_id
    JOIN metrics m ON m.id = t.metric_id
    WHERE {GPUS}
      AND m.name IN ('DCGM_FI_DEV_FB_USED', 'DCGM_FI_DEV_FB_FREE')
      AND $__timeFilter(t.ts)
    GROUP BY 1, 2
    ORDER BY 1, 2
"""

# The newest value of each metric of each chosen GPU within the range: one backward index scan
# of telemetry_gpu_metric_time per GPU and metric.
LATEST: Final = f"""
    SELECT g.hostname AS "host", g.gpu_index AS "GPU", g.model AS "model",
           max(l.value) FILTER (WHERE m.name = 'DCGM_FI_DEV_GPU_UTIL') AS "utilisation %",
           max(l.value) FILTER (WHERE m.name = 'DCGM_FI_DEV_GPU_TEMP') AS "temperature C",
           max(l.value) FILTER (WHERE m.name = 'DCGM_FI_DEV_POWER_USAGE') AS "power W",
           max(l.value) FILTER (WHERE m.name = 'DCGM_FI_DEV_FB_USED') AS "memory used MiB",
           max(l.value) FILTER (WHERE m.name = 'DCGM_FI_DEV_FB_FREE') AS "memory free MiB",
           max(l.ts) AS "last sample"
    FROM gpus g
    CROSS JOIN metrics m
    CROSS JOIN LATERAL (
        SELECT t.value, t.ts FROM telemetry t
        WHERE t.gpu_id = g.id AND t.metric_id = m.id AND $__timeFilter(t.ts)
        ORDER BY t.ts DESC
        LIMIT 1
    ) l
    WHERE {GPUS}
      AND m.name IN ('DCGM_FI_DEV_GPU_UTIL', 'DCGM_FI_DEV_GPU_TEMP', 'DCGM_FI_DEV_POWER_USAGE',
                     'DCGM_FI_DEV_FB_USED', 'DCGM_FI_DEV_FB_FREE')
    GROUP BY g.id, g.hostname, g.gpu_index, g.model
    ORDER BY g.hostname, g.gpu_index
"""

# Counted from the gpus side: each GPU is one index probe into telemetry, never a scan by time.
REPORTING: Final = f"""
    SELECT count(*) AS "GPUs", count(DISTINCT g.hostname) AS "hosts"
    FROM gpus g
    WHERE {GPUS}
      AND EXISTS (SELECT 1 FROM telemetry t WHERE t.gpu_id = g.id AND $__timeFilter(t.ts))
"""

AVERAGE_UTIL: Final = f"""
    SELECT avg(t.value) AS "utilisation"
    FROM telemetry t
    JOIN gpus g ON g.id = t.gpu_id
    WHERE {GPUS}
      AND t.metric_id = (SELECT id FROM metrics WHERE name = 'DCGM_FI_DEV_GPU_UTIL')
      AND $__timeFilter(t.ts)
"""

HOTTEST: Final = f"""
    SELECT max(t.value) AS "hottest GPU C"
    FROM telemetry t
    JOIN gpus g ON g.id = t.gpu_id
    WHERE {GPUS}
      AND t.metric_id = (SELECT id FROM metrics WHERE name = 'DCGM_FI_DEV_GPU_TEMP')
      AND $__timeFilter(t.ts)
"""

POWER_TOTAL: Final = f"""
    SELECT b.bucket AS "time", g.hostname AS metric, sum(b.value) AS value
    FROM (
        SELECT t.gpu_id, $__timeGroup(t.ts, $__interval) AS bucket, avg(t.value) AS value
        FROM telemetry t
        JOIN gpus g ON g.id = t.gpu_id
        WHERE {GPUS}
          AND t.metric_id = (SELECT id FROM metrics WHERE name = 'DCGM_FI_DEV_POWER_USAGE')
          AND $__timeFilter(t.ts)
        GROUP BY t.gpu_id, bucket
    ) b
    JOIN gpus g ON g.id = b.gpu_id
    GROUP BY 1, 2
    ORDER BY 1, 2
"""


def fleet() -> dash.Dashboard:
    """The GPU fleet from the pipeline's tables: utilisation, temperature, power, memory."""

    def sql_panel(title: str, unit: str, query: str, *, description: str) -> timeseries.Panel:
        return graph(title, unit, [Sql(query)], description=description, datasource=POSTGRES)

    return (
        dash.Dashboard("GPU fleet")
        .uid("telemetry-fleet")
        .description("GPU telemetry stored by the pipeline, by host and GPU (PostgreSQL).")
        .tags(["telemetry", "gpu"])
        .time("now-1h", "now")
        .refresh("1m")
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .with_variable(
            dash.DatasourceVariable("datasource").label("PostgreSQL").type(POSTGRES_TYPE)
        )
        .with_variable(
            dash.QueryVariable("host")
            .label("Host")
            .datasource(POSTGRES)
            .query("SELECT DISTINCT hostname FROM gpus ORDER BY 1")
            .refresh(model.VariableRefresh.ON_DASHBOARD_LOAD)
            .multi(True)
            .include_all(True)
        )
        .with_variable(
            dash.QueryVariable("gpu")
            .label("GPU")
            .datasource(POSTGRES)
            .query(
                "SELECT hostname || ' GPU ' || gpu_index AS __text, uuid AS __value"
                " FROM gpus WHERE hostname IN ($host) ORDER BY hostname, gpu_index"
            )
            .refresh(model.VariableRefresh.ON_DASHBOARD_LOAD)
            .multi(True)
            .include_all(True)
        )
        .with_row(row("Fleet"))
        .with_panel(
            number(
                "GPUs and hosts reporting",
                "none",
                Sql(REPORTING, table=True),
                description="Chosen GPUs (and their hosts) with at least one datapoint in range.",
                width=8,
                datasource=POSTGRES,
            )
        )
        .with_panel(
            number(
                "Average utilisation",
                "percent",
                Sql(AVERAGE_UTIL, table=True),
                description="Mean DCGM_FI_DEV_GPU_UTIL of the chosen GPUs over the range.",
                width=8,
                datasource=POSTGRES,
            )
        )
        .with_panel(
            number(
                "Hottest GPU",
                "celsius",
                Sql(HOTTEST, table=True),
                description="Highest DCGM_FI_DEV_GPU_TEMP of the chosen GPUs in the range.",
                width=8,
                datasource=POSTGRES,
            )
        )
        .with_row(row("By host and GPU"))
        .with_panel(
            sql_panel(
                "GPU utilisation",
                "percent",
                per_gpu("DCGM_FI_DEV_GPU_UTIL"),
                description="DCGM_FI_DEV_GPU_UTIL, average per interval, one series per GPU.",
            )
        )
        .with_panel(
            sql_panel(
                "Temperature",
                "celsius",
                per_gpu("DCGM_FI_DEV_GPU_TEMP"),
                description="DCGM_FI_DEV_GPU_TEMP, average per interval, one series per GPU.",
            )
        )
        .with_panel(
            sql_panel(
                "Power draw",
                "watt",
                per_gpu("DCGM_FI_DEV_POWER_USAGE"),
                description="DCGM_FI_DEV_POWER_USAGE, average per interval, one series per GPU.",
            )
        )
        .with_panel(
            sql_panel(
                "Power draw per host",
                "watt",
                POWER_TOTAL,
                description="Sum over the host's chosen GPUs of their average draw per interval.",
            )
        )
        .with_panel(
            sql_panel(
                "Framebuffer memory used",
                "decmbytes",
                per_gpu("DCGM_FI_DEV_FB_USED"),
                description="DCGM_FI_DEV_FB_USED (MiB), average per interval, one series per GPU.",
            )
        )
        .with_panel(
            sql_panel(
                "Framebuffer memory used %",
                "percent",
                MEMORY_PERCENT,
                description="FB used / (FB used + FB free), one series per GPU.",
            )
        )
        .with_row(row("Latest values"))
        .with_panel(
            table.Panel()
            .title("Latest values per GPU")
            .description("The newest datapoint of each metric of each chosen GPU in the range.")
            .datasource(POSTGRES)
            .with_target(Sql(LATEST, table=True))
            .span(24)
            .height(12)
        )
    )


DASHBOARDS: Final = {"telemetry-pipeline": pipeline, "telemetry-fleet": fleet}


def render(build: Callable[[], dash.Dashboard]) -> str:
    """The dashboard as the JSON committed in the chart (panels numbered 1, 2, ... in order)."""
    board = build().build()
    for number_, panel in enumerate(board.panels or [], start=1):
        panel.id_val = number_
    return json.dumps(board, cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the dashboards, or with ``--check`` report any that differ from the code."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="fail if a committed file differs")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    stale = []
    for uid, build in DASHBOARDS.items():
        path = args.out / f"{uid}.json"
        text = render(build)
        if args.check:
            old = path.read_text() if path.exists() else ""
            if old != text:
                stale.append(path)
                sys.stdout.writelines(
                    difflib.unified_diff(
                        old.splitlines(keepends=True),
                        text.splitlines(keepends=True),
                        str(path),
                        "generated",
                        n=2,
                    )
                )
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(
            f"\n{len(stale)} dashboard(s) differ from scripts/dashboards.py; run `task dashboards`",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
