"""What Grafana does to a dashboard's queries before they reach the data source, for the tests.

The committed dashboards (helm/telemetry/files/dashboards/*.json) are read as Grafana would read
them; their queries are expanded the way Grafana expands them:

- template variables in the browser (``$host``, ``${gpu}``, ``$__interval``): for SQL data
  sources a multi-value or include-all variable becomes a list of quoted literals
  (``'a','b'``, quotes doubled), as ``SqlDatasource.interpolateVariable`` does; for Prometheus,
  "All" without an all value becomes ``(a|b)`` of the regex-escaped values;
- then the PostgreSQL data source's macros on the server (``$__timeFilter(col)``,
  ``$__timeGroup(col, 1m)``, ...), written after Grafana's
  pkg/tsdb/grafana-postgresql-datasource/macros.go.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "helm" / "telemetry" / "files" / "dashboards"

_MACRO = re.compile(r"\$([_a-zA-Z0-9]+)\(([^\)]*)\)")
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def load(uid: str) -> dict[str, Any]:
    """The committed dashboard ``uid``."""
    board: dict[str, Any] = json.loads((DASHBOARDS / f"{uid}.json").read_text())
    return board


def panels(board: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested panels included."""
    for panel in board.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def targets(board: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(panel title / refId, target)`` of every query of every panel."""
    return [
        (f"{p['title']} / {t['refId']}", t) for p in panels(board) for t in p.get("targets", [])
    ]


def variables(board: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The dashboard's template variables, in order."""
    return list(board.get("templating", {}).get("list", []))


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _rfc3339(t: datetime) -> str:
    # Go's time.RFC3339Nano in UTC: no trailing zeros in the fraction, "Z".
    text = t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f").rstrip("0").rstrip(".")
    return text + "Z"


def seconds(interval: str) -> float:
    """A Grafana interval (``30s``, ``1m``, ``2h``) in seconds."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)", interval.strip().strip("'"))
    if m is None:
        raise ValueError(f"not an interval: {interval!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _number(x: float) -> str:
    # Go's %v of a float64: 60 -> "60", 0.5 -> "0.5".
    return str(int(x)) if x == int(x) else repr(x)


def _macro(name: str, args: list[str], start: datetime, end: datetime) -> str:
    if name == "__time":
        return f'{args[0]} AS "time"'
    if name == "__timeEpoch":
        return f'extract(epoch from {args[0]}) as "time"'
    if name == "__timeFilter":
        return f"{args[0]} BETWEEN '{_rfc3339(start)}' AND '{_rfc3339(end)}'"
    if name == "__timeFrom":
        return f"'{_rfc3339(start)}'"
    if name == "__timeTo":
        return f"'{_rfc3339(end)}'"
    if name in ("__timeGroup", "__timeGroupAlias"):
        step = _number(seconds(args[1]))
        group = f"floor(extract(epoch from {args[0]})/{step})*{step}"
        return group + (' AS "time"' if name == "__timeGroupAlias" else "")
    if name == "__unixEpochFilter":
        lo, hi = int(start.timestamp()), int(end.timestamp())
        return f"{args[0]} >= {lo} AND {args[0]} <= {hi}"
    raise ValueError(f"unknown macro ${name}")


def expand_sql(
    sql: str,
    *,
    start: datetime,
    end: datetime,
    interval: str,
    values: Mapping[str, Sequence[str]],
) -> str:
    """``sql`` as PostgreSQL receives it from Grafana for this range, interval and variables."""

    def variable(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name == "__interval":
            return interval
        if name == "__interval_ms":
            return str(int(seconds(interval) * 1000))
        if name in values:
            return ",".join(_quote(v) for v in values[name])
        return m.group(0)  # a macro such as $__timeFilter: the server's part

    text = _VARIABLE.sub(variable, sql)

    def macro(m: re.Match[str]) -> str:
        name = m.group(1)
        # Grafana before 5.3 aliased $__timeGroup itself; it still does when a comma follows.
        if name == "__timeGroup" and text[m.end() : m.end() + 1] == ",":
            name = "__timeGroupAlias"
        return _macro(name, [a.strip() for a in m.group(2).split(",")], start, end)

    return _MACRO.sub(macro, text)


def expand_promql(expr: str, *, rate_interval: str, values: Mapping[str, str]) -> str:
    """``expr`` as Prometheus receives it: variables and ``$__rate_interval`` replaced."""

    def variable(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name in ("__rate_interval", "__interval"):
            return rate_interval
        if name in values:
            return values[name]
        raise KeyError(f"no value for ${name} in {expr!r}")

    return _VARIABLE.sub(variable, expr)


def all_of(options: Sequence[str]) -> str:
    """What "All" stands for in a Prometheus regex matcher when the variable has no all value.

    As Grafana's ``prometheusSpecialRegexEscape``: regex specials get two backslashes, one for
    the PromQL string and one for the regex.
    """

    def escape(value: str) -> str:
        value = value.replace("\\", "\\\\\\\\")
        return re.sub(r"[$^*{}\[\]'+?.()|]", lambda m: "\\\\" + m.group(0), value)

    return "(" + "|".join(escape(o) for o in options) + ")"
