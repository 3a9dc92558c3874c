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


_CLAIM = """
INSERT INTO streams AS s (name, next_seq) VALUES (%(name)s, %(count)s)
ON CONFLICT (name) DO UPDATE SET next_seq = s.next_seq + EXCLUDED.next_seq, updated_at = now()
RETURNING id, next_seq - %(count)s
"""


async def claim(cur: Cursor, name: str, count: int) -> Claim:
    """Claim the next ``count`` sequence numbers of stream ``name`` (created on first use)."""
    if count <= 0:
        raise ValueError("count must be positive")
    await cur.execute(_CLAIM, {"name": name, "count": count})
    stream_id, start = await cur.fetchone()
    return Claim(stream_id=stream_id, name=name, start=start, count=count)


async def ensure_streams(cur: Cursor, names: list[str]) -> None:
    """Register streams by name (no-op for known ones)."""
    await cur.execute(
        "INSERT INTO streams (name) SELECT unnest(%s::text[]) ON CONFLICT (name) DO NOTHING",
        (names,),
    )


async def next_seq(cur: Cursor, name: str) -> int | None:
    """The next unclaimed sequence number of a stream, or ``None`` if it does not exist."""
    await cur.execute("SELECT next_seq FROM streams WHERE name = %s", (name,))
    row = await cur.fetchone()
    return None if row is None else int(row[0])
