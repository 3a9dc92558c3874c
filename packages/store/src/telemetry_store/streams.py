"""The streamers' work index: claim a chunk of sequence numbers in one statement."""

from __future__ import annotations

from dataclasses import dataclass

from .pool import Cursor


@dataclass(frozen=True, slots=True)
class Claim:
    """Sequence numbers ``start .. start+count-1`` of stream ``name`` now belong to the claimer."""

    stream_id: int
    name: str
    start: int
    count: int

    @property
    def stop(self) -> int:
        """One past the last claimed sequence number."""
        return self.start + self.count


# Update first: an existing stream's claim draws no identity value. (An
# ``INSERT ... ON CONFLICT DO UPDATE`` evaluates the id default before it finds the conflict,
# so every claim spent one value of the smallint sequence, and claim 32,768 failed.)
_CLAIM = """
UPDATE streams SET next_seq = next_seq + %(count)s, updated_at = now()
WHERE name = %(name)s
RETURNING id, next_seq - %(count)s
"""

# Only names missing from the snapshot reach the INSERT, so only they draw an id; a race
# between two first claims of one name spends one value, once.
_CREATE = """
INSERT INTO streams (name)
SELECT n FROM unnest(%s::text[]) AS n
WHERE NOT EXISTS (SELECT 1 FROM streams s WHERE s.name = n)
ON CONFLICT (name) DO NOTHING
"""


async def claim(cur: Cursor, name: str, count: int) -> Claim:
    """Claim the next ``count`` sequence numbers of stream ``name`` (created on first use)."""
    if count <= 0:
        raise ValueError("count must be positive")
    await cur.execute(_CLAIM, {"name": name, "count": count})
    row = await cur.fetchone()
    if row is None:
        await ensure_streams(cur, [name])
        await cur.execute(_CLAIM, {"name": name, "count": count})
        row = await cur.fetchone()
    stream_id, start = row
    return Claim(stream_id=stream_id, name=name, start=start, count=count)


async def ensure_streams(cur: Cursor, names: list[str]) -> None:
    """Register streams by name (no-op for known ones, which draw no identity value)."""
    await cur.execute(_CREATE, (names,))


async def next_seq(cur: Cursor, name: str) -> int | None:
    """The next unclaimed sequence number of a stream, or ``None`` if it does not exist."""
    await cur.execute("SELECT next_seq FROM streams WHERE name = %s", (name,))
    row = await cur.fetchone()
    return None if row is None else int(row[0])
