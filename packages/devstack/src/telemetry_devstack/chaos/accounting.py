"""Exact accounting of a run's stream in PostgreSQL: every sequence number once, as in the CSV.

Sequence ``s`` of the stream is CSV row ``s mod rows``; the stream's ``next_seq`` is one past
the last number ever claimed. Once nothing is in flight, every ``s`` in ``0 .. next_seq-1``
must be stored exactly once with its row's GPU, metric and value, and with the time its chunk
fixed when it was first claimed: ``ts = base + (s - start) * tick`` within each chunk, so a
chunk published twice (taken over from a streamer that died) sent the same times again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import psycopg2
from psycopg2.extras import execute_values
from telemetry_model import Sample

# How many offending sequence numbers (or chunks) a report names.
SHOWN: Final = 10


@dataclass
class Accounting:
    """What the database holds for the stream, and every way it departs from the CSV."""

    next_seq: int = 0
    stored: int = 0
    pending_chunks: int = 0
    missing: int = 0
    first_missing: list[int] = field(default_factory=list)
    duplicated: int = 0
    first_duplicated: list[int] = field(default_factory=list)
    out_of_range: int = 0
    first_out_of_range: list[int] = field(default_factory=list)
    wrong_values: int = 0
    first_wrong_values: list[int] = field(default_factory=list)
    inconsistent_chunks: int = 0
    first_inconsistent_chunks: list[int] = field(default_factory=list)
    ts_outside_run: int = 0
    other_streams: int = 0

    @property
    def problems(self) -> list[str]:
        """Each departure from exact storage, in words (empty when the stream is exact)."""
        out = []
        if self.pending_chunks:
            out.append(f"{self.pending_chunks} chunks still claimed in the work index")
        if self.missing:
            out.append(f"{self.missing} seqs missing, first {self.first_missing}")
        if self.duplicated:
            out.append(f"{self.duplicated} seqs stored twice, first {self.first_duplicated}")
        if self.out_of_range:
            out.append(
                f"{self.out_of_range} seqs past next_seq {self.next_seq},"
                f" first {self.first_out_of_range}"
            )
        if self.wrong_values:
            out.append(
                f"{self.wrong_values} seqs differ from their CSV row, first"
                f" {self.first_wrong_values}"
            )
        if self.inconsistent_chunks:
            out.append(
                f"{self.inconsistent_chunks} chunks with times off their base and tick,"
                f" first chunk starts {self.first_inconsistent_chunks}"
            )
        if self.ts_outside_run:
            out.append(f"{self.ts_outside_run} datapoints stamped outside the run")
        if self.other_streams:
            out.append(f"{self.other_streams} datapoints of other streams")
        return out


def account(
    dsn: str,
    *,
    stream: str,
    samples: list[Sample],
    chunk_size: int,
    tick_ns: int,
    since_us: int,
    until_us: int,
) -> Accounting:
    """Check the stream ``stream`` against ``samples`` (blocking; run it in a thread).

    ``chunk_size`` and ``tick_ns`` are the streamers' (every chunk starts at a multiple of the
    chunk size); ``since_us .. until_us`` bounds the times a datapoint of the run may carry.
    """
    conn = psycopg2.connect(dsn)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            return _account(cur, stream, samples, chunk_size, tick_ns, since_us, until_us)
    finally:
        conn.close()


def _account(
    cur: Any,
    stream: str,
    samples: list[Sample],
    chunk_size: int,
    tick_ns: int,
    since_us: int,
    until_us: int,
) -> Accounting:
    result = Accounting()
    cur.execute("SELECT id, next_seq FROM streams WHERE name = %s", (stream,))
    row = cur.fetchone()
    if row is None:
        result.missing = 1
        result.first_missing = [0]
        return result
    sid, result.next_seq = int(row[0]), int(row[1])
    n = result.next_seq
    cur.execute("SELECT count(*) FROM stream_chunks WHERE stream_id = %s", (sid,))
    result.pending_chunks = int(cur.fetchone()[0])
    cur.execute("SELECT count(*) FROM telemetry WHERE stream_id <> %s", (sid,))
    result.other_streams = int(cur.fetchone()[0])
    cur.execute("SELECT count(*) FROM telemetry WHERE stream_id = %s", (sid,))
    result.stored = int(cur.fetchone()[0])

    result.missing, result.first_missing = _counted(
        cur,
        "SELECT s FROM generate_series(0::bigint, %(n)s - 1) AS s WHERE NOT EXISTS"
        " (SELECT FROM telemetry t WHERE t.stream_id = %(sid)s AND t.seq = s)",
        {"n": n, "sid": sid},
    )
    # The primary key is (stream_id, seq, ts): a number published twice with different times
    # (a chunk taken over that did not keep its times) would pass it, so count by seq alone.
    result.duplicated, result.first_duplicated = _counted(
        cur,
        "SELECT seq FROM telemetry WHERE stream_id = %(sid)s GROUP BY seq HAVING count(*) > 1",
        {"sid": sid},
    )
    result.out_of_range, result.first_out_of_range = _counted(
        cur,
        "SELECT seq FROM telemetry WHERE stream_id = %(sid)s AND (seq < 0 OR seq >= %(n)s)",
        {"n": n, "sid": sid},
    )

    cur.execute(
        "CREATE TEMP TABLE expected (row_index int PRIMARY KEY, uuid text, hostname text,"
        " gpu_index int, metric text, value float8, container text, pod text, namespace text)"
    )
    execute_values(
        cur,
        "INSERT INTO expected VALUES %s",
        [
            (i, s.gpu.uuid, s.gpu.hostname, s.gpu.index, s.metric, s.value)
            + (s.container or None, s.pod or None, s.namespace or None)
            for i, s in enumerate(samples)
        ],
        page_size=1000,
    )
    result.wrong_values, result.first_wrong_values = _counted(
        cur,
        "SELECT t.seq FROM telemetry t JOIN gpus g ON g.id = t.gpu_id"
        " JOIN metrics m ON m.id = t.metric_id"
        " LEFT JOIN expected e ON e.row_index = t.seq %% %(rows)s"
        " WHERE t.stream_id = %(sid)s AND (g.uuid, g.hostname, g.gpu_index, m.name, t.value,"
        "  nullif(t.container, ''), nullif(t.pod, ''), nullif(t.namespace, ''))"
        " IS DISTINCT FROM (e.uuid, e.hostname, e.gpu_index, e.metric, e.value,"
        "  e.container, e.pod, e.namespace)",
        {"rows": len(samples), "sid": sid},
    )
    # A datapoint without its GPU or metric row would escape the join above.
    cur.execute(
        "SELECT count(*) FROM telemetry t WHERE t.stream_id = %s AND"
        " (NOT EXISTS (SELECT FROM gpus g WHERE g.id = t.gpu_id)"
        "  OR NOT EXISTS (SELECT FROM metrics m WHERE m.id = t.metric_id))",
        (sid,),
    )
    result.wrong_values += int(cur.fetchone()[0])

    epoch_us = "(extract(epoch FROM ts) * 1000000)::bigint"
    result.inconsistent_chunks, result.first_inconsistent_chunks = _counted(
        cur,
        f"SELECT (seq / %(c)s) * %(c)s FROM telemetry WHERE stream_id = %(sid)s"
        f" GROUP BY seq / %(c)s"
        f" HAVING count(DISTINCT {epoch_us} - ((seq %% %(c)s) * %(tick)s) / 1000) > 1",
        {"c": chunk_size, "tick": tick_ns, "sid": sid},
    )
    cur.execute(
        f"SELECT count(*) FROM telemetry WHERE stream_id = %(sid)s"
        f" AND NOT ({epoch_us} BETWEEN %(since)s AND %(until)s)",
        {"sid": sid, "since": since_us, "until": until_us},
    )
    result.ts_outside_run = int(cur.fetchone()[0])
    return result


def _counted(cur: Any, query: str, params: dict[str, Any]) -> tuple[int, list[int]]:
    """How many rows ``query`` returns, and the first few (by value)."""
    cur.execute(f"SELECT count(*) FROM ({query}) AS q", params)
    count = int(cur.fetchone()[0])
    if not count:
        return 0, []
    cur.execute(f"SELECT * FROM ({query}) AS q ORDER BY 1 LIMIT {SHOWN}", params)
    return count, [int(r[0]) for r in cur.fetchall()]
