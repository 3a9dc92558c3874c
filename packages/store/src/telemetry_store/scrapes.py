"""The scrape source's work index: exporter targets shared by the streamers through leases.

- ``scrape_members``: the streamers scraping now, each renewing its row (``join_members``).
  Every streamer derives the owner of each target from the live members the same way
  (rendezvous hashing, in the streamer), so they agree without talking to each other.
- ``scrape_targets``: one row per exporter endpoint, held by one streamer at a time with a
  lease (``acquire_targets``, ``renew_targets``, ``release_targets``). A target whose holder
  died is acquired again once its lease runs out.
- ``scrape_slots``: one row per scrape stored. A scrape belongs to a slot, the interval it was
  scheduled in (its start time); ``claim_slot`` stores the scrape's datapoints in the row and
  draws their sequence numbers in one statement, and only past the target's watermark
  (``last_slot``), so a slot is claimed once whoever scraped it. The row keeps the payload
  until the broker acknowledged every record (``finish_slot``); a slot whose publisher died is
  published again from the payload by the target's next holder, the same bytes. Slots skipped
  between two claims are counted in ``scrape_targets.missed``.

Times cross the boundary as microseconds since the Unix epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from .pool import Cursor
from .streams import ensure_streams

_US: Final = "'epoch'::timestamptz + %({})s * interval '1 microsecond'"
_LEASE: Final = "now() + %(lease)s * interval '1 second'"


def _at(name: str) -> str:
    return _US.format(name)


def _micros(column: str) -> str:
    return f"(extract(epoch FROM {column}) * 1000000)::bigint"


@dataclass(frozen=True, slots=True)
class TargetRow:
    """A target of the work index: ``listed`` while discovery lists it, ``leased`` while a
    holder's lease runs, ``pending`` while a slot of it awaits publishing."""

    id: int
    address: str
    owner: str | None
    leased: bool
    listed: bool
    pending: bool


@dataclass(frozen=True, slots=True)
class AcquiredTarget:
    """A target now held; ``takeover`` when its previous holder's lease had run out."""

    id: int
    address: str
    last_slot_us: int | None
    takeover: bool


@dataclass(frozen=True, slots=True)
class SlotClaim:
    """A claimed slot: its datapoints are ``start .. start+count-1`` of the stream; ``missed``
    slots of the target were skipped since the one claimed before it."""

    start: int
    count: int
    missed: int


@dataclass(frozen=True, slots=True)
class PendingSlot:
    """A claimed slot whose payload the broker has not acknowledged yet."""

    target_id: int
    slot_us: int
    stream: str
    start: int
    count: int
    scraped_at_us: int
    payload: bytes


# The member's own row is written by the CTE, which the SELECT's snapshot does not see: it is
# added to the result by the UNION.
_JOIN = """
WITH me AS (
    INSERT INTO scrape_members (owner, lease_until) VALUES (%(owner)s, now() + %(lease)s
        * interval '1 second')
    ON CONFLICT (owner) DO UPDATE SET lease_until = EXCLUDED.lease_until
    RETURNING owner
)
SELECT owner FROM scrape_members WHERE lease_until > now() AND owner <> %(owner)s
UNION SELECT owner FROM me
"""


async def join_members(cur: Cursor, owner: str, lease: float) -> list[str]:
    """Renew ``owner``'s membership for ``lease`` s; return every live member, sorted."""
    await cur.execute(_JOIN, {"owner": owner, "lease": lease})
    return sorted(row[0] for row in await cur.fetchall())


async def leave_members(cur: Cursor, owner: str) -> None:
    """End ``owner``'s membership and release its targets at once (a graceful stop)."""
    await cur.execute("DELETE FROM scrape_members WHERE owner = %s", (owner,))
    await cur.execute(
        "UPDATE scrape_targets SET lease_until = '-infinity' WHERE owner = %s", (owner,)
    )


# Known addresses are updated, only new ones inserted (and only they draw an id).
_UPSERT_TARGETS = """
WITH seen AS (
    UPDATE scrape_targets SET last_seen = now() WHERE address = ANY(%(addresses)s)
    RETURNING address
)
INSERT INTO scrape_targets (address, last_seen)
SELECT a, now() FROM unnest(%(addresses)s::text[]) AS a
WHERE NOT EXISTS (SELECT 1 FROM scrape_targets t WHERE t.address = a)
  AND a NOT IN (SELECT address FROM seen)
ON CONFLICT (address) DO NOTHING
"""


async def upsert_targets(cur: Cursor, addresses: Sequence[str]) -> None:
    """Record that discovery lists ``addresses`` now (new ones are added)."""
    if addresses:
        await cur.execute(_UPSERT_TARGETS, {"addresses": sorted(set(addresses))})


_LIVE = """
SELECT t.id, t.address, t.owner, t.lease_until > now(),
       t.last_seen > now() - %(ttl)s * interval '1 second',
       EXISTS (SELECT 1 FROM scrape_slots s WHERE s.target_id = t.id AND s.payload IS NOT NULL)
FROM scrape_targets t
WHERE t.last_seen > now() - %(ttl)s * interval '1 second'
   OR EXISTS (SELECT 1 FROM scrape_slots s WHERE s.target_id = t.id AND s.payload IS NOT NULL)
ORDER BY t.id
"""


async def live_targets(cur: Cursor, ttl: float) -> list[TargetRow]:
    """Targets listed in the last ``ttl`` s, and older ones with a slot still to publish."""
    await cur.execute(_LIVE, {"ttl": ttl})
    return [TargetRow(*row) for row in await cur.fetchall()]


# SKIP LOCKED: a target whose row another statement holds (its owner claiming a slot) is not
# free anyway. The CTE reads the previous holder, which RETURNING (new values) cannot.
_ACQUIRE = f"""
WITH free AS (
    SELECT id, owner, lease_until FROM scrape_targets
    WHERE id = ANY(%(ids)s)
      AND (owner IS NULL OR owner = %(owner)s OR lease_until < now())
    FOR UPDATE SKIP LOCKED
)
UPDATE scrape_targets t
SET owner = %(owner)s, lease_until = {_LEASE},
    takeovers = t.takeovers + (f.owner <> %(owner)s AND f.lease_until > '-infinity')::int
FROM free f
WHERE t.id = f.id
RETURNING t.id, t.address, {_micros("t.last_slot")},
          coalesce(f.owner <> %(owner)s AND f.lease_until > '-infinity', false)
"""


async def acquire_targets(
    cur: Cursor, owner: str, ids: Sequence[int], lease: float
) -> list[AcquiredTarget]:
    """Take the targets of ``ids`` that are free (never held, released, or their lease ran
    out) for ``lease`` s; return those now held."""
    if not ids:
        return []
    await cur.execute(_ACQUIRE, {"ids": list(ids), "owner": owner, "lease": lease})
    return [AcquiredTarget(*row) for row in await cur.fetchall()]


async def renew_targets(cur: Cursor, owner: str, ids: Sequence[int], lease: float) -> set[int]:
    """Extend ``owner``'s leases on ``ids``; return the ids it still holds."""
    if not ids:
        return set()
    await cur.execute(
        f"UPDATE scrape_targets SET lease_until = {_LEASE}"
        " WHERE id = ANY(%(ids)s) AND owner = %(owner)s AND lease_until > '-infinity'"
        " RETURNING id",
        {"ids": list(ids), "owner": owner, "lease": lease},
    )
    return {row[0] for row in await cur.fetchall()}


async def release_targets(cur: Cursor, owner: str, ids: Sequence[int]) -> None:
    """Give targets up for any member to acquire at once."""
    if ids:
        await cur.execute(
            "UPDATE scrape_targets SET lease_until = '-infinity' WHERE id = ANY(%s) AND owner = %s",
            (list(ids), owner),
        )


_MISSED = (
    "coalesce(greatest(round(extract(epoch FROM {slot} - o.last_slot)"
    " / %(interval)s)::bigint - 1, 0), 0)"
)

# One round trip: mark the claimer's previous slot published (``done``), then, only while the
# claimer holds the target and the slot is past the watermark, move the watermark, draw the
# sequence numbers (the row lock on streams serialises every claimer of the stream) and store
# the slot with its payload. FOR UPDATE in ``old``: a concurrent claim of the same target
# waits, then finds the watermark moved. "Holds" is the owner column, not an unexpired lease:
# a lease that ran out while nobody took the target over still lets its holder store (its
# renewal was only late); once another streamer has acquired it, the owner is that one. A
# released target (-infinity) is not claimed.
_CLAIM = f"""
WITH done AS (
    UPDATE scrape_slots SET payload = NULL, published_at = now()
    WHERE target_id = %(target)s AND slot = {_at("done_us")} AND payload IS NOT NULL
),
old AS (
    SELECT t.id, t.last_slot FROM scrape_targets t
    WHERE t.id = %(target)s AND t.owner = %(owner)s AND t.lease_until > '-infinity'
      AND (t.last_slot IS NULL OR t.last_slot < {_at("slot_us")})
    FOR UPDATE
),
target AS (
    UPDATE scrape_targets t
    SET last_slot = {_at("slot_us")}, slots = t.slots + 1,
        missed = t.missed + {_MISSED.format(slot=_at("slot_us"))}
    FROM old o
    WHERE t.id = o.id
    RETURNING {_MISSED.format(slot=_at("slot_us"))} AS missed
),
advanced AS (
    UPDATE streams s SET next_seq = s.next_seq + %(count)s, updated_at = now()
    WHERE s.id = %(stream_id)s AND EXISTS (SELECT FROM target)
    RETURNING s.next_seq - %(count)s AS start
),
saved AS (
    INSERT INTO scrape_slots
        (target_id, slot, owner, stream_id, start, count, scraped_at, payload, published_at)
    SELECT %(target)s, {_at("slot_us")}, %(owner)s, %(stream_id)s, a.start, %(count)s,
           {_at("scraped_at_us")}, %(payload)s,
           CASE WHEN %(empty)s THEN now() END
    FROM advanced a
    RETURNING start
)
SELECT s.start, (SELECT missed FROM target) FROM saved s
"""


async def claim_slot(
    cur: Cursor,
    *,
    target_id: int,
    owner: str,
    slot_us: int,
    interval: float,
    stream_id: int,
    count: int,
    scraped_at_us: int,
    payload: bytes | None,
    done_us: int | None = None,
) -> SlotClaim | None:
    """Claim slot ``slot_us`` of a target ``owner`` holds, with ``count`` datapoints.

    Returns their sequence numbers and how many slots (``interval`` s apart) were skipped
    since the last claim; ``None`` when the target is held by another streamer or released,
    or the slot is not past its watermark (claimed before, by this or another streamer).
    ``payload`` (``None`` for an empty scrape: nothing to publish) is kept until
    ``finish_slot``; ``done_us`` finishes the claimer's previous slot in the same round trip.
    """
    if count < 0 or interval <= 0:
        raise ValueError("count must not be negative and interval must be positive")
    await cur.execute(
        _CLAIM,
        {
            "target": target_id,
            "owner": owner,
            "slot_us": slot_us,
            "interval": interval,
            "stream_id": stream_id,
            "count": count,
            "scraped_at_us": scraped_at_us,
            "payload": payload,
            "empty": payload is None,
            "done_us": done_us,
        },
    )
    row = await cur.fetchone()
    if row is None:
        return None
    return SlotClaim(start=int(row[0]), count=count, missed=int(row[1]))


async def finish_slot(cur: Cursor, target_id: int, slot_us: int) -> bool:
    """Mark a slot published (its payload is dropped, the row stays as history)."""
    await cur.execute(
        "UPDATE scrape_slots SET payload = NULL, published_at = now()"
        f" WHERE target_id = %(target)s AND slot = {_at('slot_us')} AND payload IS NOT NULL",
        {"target": target_id, "slot_us": slot_us},
    )
    return bool(cur.rowcount == 1)


async def pending_slots(cur: Cursor, target_id: int) -> list[PendingSlot]:
    """The target's claimed slots still to publish, oldest first."""
    await cur.execute(
        f"SELECT s.target_id, {_micros('s.slot')}, st.name, s.start, s.count,"
        f" {_micros('s.scraped_at')}, s.payload"
        " FROM scrape_slots s JOIN streams st ON st.id = s.stream_id"
        " WHERE s.target_id = %s AND s.payload IS NOT NULL ORDER BY s.slot",
        (target_id,),
    )
    return [
        PendingSlot(t, slot, name, start, count, at, bytes(payload))
        for t, slot, name, start, count, at, payload in await cur.fetchall()
    ]


async def prune_scrapes(cur: Cursor, *, history: float, forget: float) -> None:
    """Delete slot history older than ``history`` s, targets unlisted for ``forget`` s (with
    nothing left to publish), and members gone for an hour."""
    await cur.execute(
        "DELETE FROM scrape_slots WHERE payload IS NULL"
        " AND published_at < now() - %s * interval '1 second'",
        (history,),
    )
    await cur.execute(
        "DELETE FROM scrape_targets t WHERE t.last_seen < now() - %s * interval '1 second'"
        " AND NOT EXISTS (SELECT 1 FROM scrape_slots s"
        "  WHERE s.target_id = t.id AND s.payload IS NOT NULL)",
        (forget,),
    )
    await cur.execute("DELETE FROM scrape_members WHERE lease_until < now() - interval '1 hour'")


async def stream_id(cur: Cursor, name: str) -> int:
    """The id of stream ``name``, registered on first use."""
    await ensure_streams(cur, [name])
    await cur.execute("SELECT id FROM streams WHERE name = %s", (name,))
    row = await cur.fetchone()
    return int(row[0])
