"""The streamers' work index: each claim leases a chunk of sequence numbers in one statement.

A chunk row in ``stream_chunks`` carries its owner, a lease and the time base of its datapoints.
The owner renews the lease while it publishes the chunk and deletes the row (with its next
claim) once every batch is acknowledged. A claim takes over a chunk whose lease has run out
before it advances ``streams.next_seq``, so a streamer that dies leaves no gap.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Final

from telemetry_model import MAX_SEQ, to_micros

from .pool import Cursor


@dataclass(frozen=True, slots=True)
class Claim:
    """Sequence numbers ``start .. start+count-1`` of stream ``name``, leased to ``owner``.

    Datapoint ``seq`` of the chunk has the time ``ts_us(seq)``, fixed when the chunk was
    first claimed: a chunk taken over is published with the same times.
    """

    stream_id: int
    name: str
    start: int
    count: int
    owner: str = ""
    base_us: int = 0
    tick_ns: int = 0
    takeover: bool = False

    @property
    def stop(self) -> int:
        """One past the last claimed sequence number."""
        return self.start + self.count

    def ts_us(self, seq: int) -> int:
        """The time of datapoint ``seq`` (microseconds since the epoch)."""
        return self.base_us + (seq - self.start) * self.tick_ns // 1000


# One round trip: delete the chunk the claimer finished (``done``), then take over the oldest
# chunk of the stream whose lease ran out, or else advance next_seq and insert a new chunk.
# A finished chunk whose lease ran out (the claimer was held up, say by a database outage)
# may be taken over by another claimer meanwhile: the delete skips it rather than wait for
# that claimer's lock (two claimers each holding the other's finished chunk deadlocked), and
# the taker publishes it again (duplicates only).
# UPDATE streams, not an upsert: an INSERT ... ON CONFLICT DO UPDATE draws an identity value
# on every call (streams.id is a smallint; claim 32,768 failed). SKIP LOCKED lets two
# claimers pass each other on the expired chunks; the row lock on streams serialises the
# advances, so no two claims ever overlap. next_seq stops at the limit (the last chunk is
# short), so a later run with a higher limit or none goes on there without a gap; the
# locking sub-select gives the value the advance starts from (RETURNING sees only the new one)
# and takes the lock the UPDATE would take anyway.
_CLAIM: Final = """
WITH finished AS (
    DELETE FROM stream_chunks d
    WHERE (d.stream_id, d.start) IN (
        SELECT f.stream_id, f.start FROM stream_chunks f
        WHERE f.stream_id = %(done_stream)s AND f.start = %(done_start)s
          AND f.owner = %(owner)s
        FOR UPDATE SKIP LOCKED
    )
),
stream AS (
    SELECT id FROM streams WHERE name = %(name)s
),
taken AS (
    UPDATE stream_chunks c
    SET owner = %(owner)s, lease_until = now() + %(lease)s * interval '1 second',
        takeovers = c.takeovers + 1
    WHERE (c.stream_id, c.start) = (
        SELECT o.stream_id, o.start FROM stream_chunks o
        WHERE o.stream_id = (SELECT id FROM stream) AND o.lease_until < now()
          AND o.start < %(limit)s
          AND (o.stream_id, o.start) IS DISTINCT FROM (%(done_stream)s, %(done_start)s)
        ORDER BY o.start
        LIMIT 1
        FOR UPDATE SKIP LOCKED
    )
    RETURNING c.stream_id, c.start, c.count, c.base_ts, c.tick_ns, true AS takeover
),
advanced AS (
    UPDATE streams s
    SET next_seq = s.next_seq + LEAST(%(count)s, %(limit)s - s.next_seq), updated_at = now()
    FROM (
        SELECT id, next_seq FROM streams
        WHERE id = (SELECT id FROM stream) AND next_seq < %(limit)s
          AND NOT EXISTS (SELECT FROM taken)
        FOR NO KEY UPDATE
    ) o
    WHERE s.id = o.id
    RETURNING s.id, o.next_seq AS start
),
fresh AS (
    INSERT INTO stream_chunks AS c
        (stream_id, start, count, owner, lease_until, base_ts, tick_ns)
    SELECT id, start, LEAST(%(count)s, %(limit)s - start), %(owner)s,
           now() + %(lease)s * interval '1 second',
           'epoch'::timestamptz + %(base_us)s * interval '1 microsecond', %(tick_ns)s
    FROM advanced
    RETURNING c.stream_id, c.start, c.count, c.base_ts, c.tick_ns, false AS takeover
)
SELECT * FROM taken UNION ALL SELECT * FROM fresh
"""

# Only names missing from the snapshot reach the INSERT, so only they draw an id; a race
# between two first claims of one name spends one value, once.
_CREATE: Final = """
INSERT INTO streams (name)
SELECT n FROM unnest(%s::text[]) AS n
WHERE NOT EXISTS (SELECT 1 FROM streams s WHERE s.name = n)
ON CONFLICT (name) DO NOTHING
"""

_KEY: Final = "stream_id = %(stream_id)s AND start = %(start)s AND owner = %(owner)s"


async def claim(
    cur: Cursor,
    name: str,
    count: int,
    *,
    owner: str,
    lease: float = 30.0,
    base_us: int | None = None,
    tick_ns: int = 0,
    limit: int | None = None,
    done: Claim | None = None,
) -> Claim | None:
    """Lease a chunk of stream ``name`` (created on first use) to ``owner`` for ``lease`` s.

    A chunk whose lease ran out is taken over first (with its own times); otherwise the next
    ``count`` sequence numbers are claimed, their times based at ``base_us`` (this clock by
    default) ``tick_ns`` apart. Nothing at or past ``limit`` is claimed: ``None`` then means
    the stream is used up (chunks other owners hold may remain, see ``pending_chunks``).
    ``done``, the claimer's finished chunk, is deleted in the same round trip.
    """
    if count <= 0:
        raise ValueError("count must be positive")
    if lease <= 0 or tick_ns < 0:
        raise ValueError("lease must be positive and tick_ns not negative")
    params = {
        "name": name,
        "count": count,
        "owner": owner,
        "lease": lease,
        "base_us": time.time_ns() // 1000 if base_us is None else base_us,
        "tick_ns": tick_ns,
        "limit": MAX_SEQ if limit is None else limit,
        "done_stream": None if done is None else done.stream_id,
        "done_start": None if done is None else done.start,
    }
    await cur.execute(_CLAIM, params)
    row = await cur.fetchone()
    if row is None:
        # The stream may not exist yet (or be used up to the limit): create it, try once more.
        await ensure_streams(cur, [name])
        await cur.execute(_CLAIM, params)
        row = await cur.fetchone()
        if row is None:
            return None
    stream_id, start, size, base_ts, tick, takeover = row
    return Claim(
        stream_id=stream_id,
        name=name,
        start=start,
        count=size,
        owner=owner,
        base_us=to_micros(base_ts),
        tick_ns=tick,
        takeover=takeover,
    )


async def renew(cur: Cursor, chunk: Claim, lease: float) -> bool:
    """Extend the lease on ``chunk`` to ``lease`` s from now; False if it is no longer held."""
    await cur.execute(
        f"UPDATE stream_chunks SET lease_until = now() + %(lease)s * interval '1 second'"
        f" WHERE {_KEY}",
        _key(chunk) | {"lease": lease},
    )
    return bool(cur.rowcount == 1)


async def release(cur: Cursor, chunk: Claim) -> bool:
    """Give ``chunk`` up unfinished, for the next claim to take over; False if not held."""
    await cur.execute(
        f"UPDATE stream_chunks SET lease_until = '-infinity' WHERE {_KEY}", _key(chunk)
    )
    return bool(cur.rowcount == 1)


async def finish(cur: Cursor, chunk: Claim) -> bool:
    """Delete a published chunk (``claim(done=...)`` does it on the way); False if not held."""
    await cur.execute(f"DELETE FROM stream_chunks WHERE {_KEY}", _key(chunk))
    return bool(cur.rowcount == 1)


async def pending_chunks(cur: Cursor, name: str, *, limit: int | None = None) -> int:
    """How many chunks of stream ``name`` below ``limit`` are leased and not yet finished."""
    await cur.execute(
        "SELECT count(*) FROM stream_chunks c JOIN streams s ON s.id = c.stream_id"
        " WHERE s.name = %s AND c.start < %s",
        (name, MAX_SEQ if limit is None else limit),
    )
    row = await cur.fetchone()
    return int(row[0])


def _key(chunk: Claim) -> dict[str, object]:
    return {"stream_id": chunk.stream_id, "start": chunk.start, "owner": chunk.owner}


async def ensure_streams(cur: Cursor, names: list[str]) -> None:
    """Register streams by name (no-op for known ones, which draw no identity value)."""
    await cur.execute(_CREATE, (names,))


async def next_seq(cur: Cursor, name: str) -> int | None:
    """The next unclaimed sequence number of a stream, or ``None`` if it does not exist."""
    await cur.execute("SELECT next_seq FROM streams WHERE name = %s", (name,))
    row = await cur.fetchone()
    return None if row is None else int(row[0])
