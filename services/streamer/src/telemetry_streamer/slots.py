"""Slots, owners and payloads: the arithmetic of sharing targets without talking.

- A target's slots are ``interval`` apart at a phase of its own (a hash of its address), so the
  scrapes of a streamer's targets spread over the interval instead of coming all at once.
- The owner of a target is the live member with the highest hash of (member, target)
  (rendezvous hashing): every streamer computes the same owner from the same members, and a
  member that comes or goes moves only its own share of the targets.
- A claimed slot's payload is what its records need besides ``seq`` and ``ts``: each record's
  partition key and pre-encoded static part, one per line, zlib-compressed.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Sequence
from typing import Final

import orjson

_SEPARATOR: Final = b"\t"  # neither a JSON string nor orjson's output holds a raw tab


def _hash(*parts: str) -> int:
    digest = hashlib.blake2b("\x00".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner_of(target: str, members: Sequence[str]) -> str:
    """The member that should scrape ``target`` (``members`` must not be empty)."""
    return max(members, key=lambda m: (_hash(m, target), m))


def phase_us(target: str, interval_us: int) -> int:
    """Where in each interval the target's slots start (0 <= phase < interval)."""
    return _hash(target) % interval_us


def slot_at(now_us: int, interval_us: int, phase: int) -> int:
    """The start of the slot ``now_us`` falls in (the latest slot start at or before it)."""
    return (now_us - phase) // interval_us * interval_us + phase


def pack(records: Sequence[tuple[str, bytes]]) -> bytes:
    """The payload of ``(partition key, static part)`` pairs."""
    lines = b"\n".join(orjson.dumps(key) + _SEPARATOR + suffix for key, suffix in records)
    return zlib.compress(lines, 1)


def unpack(payload: bytes) -> list[tuple[str, bytes]]:
    """The pairs of a payload, in order."""
    data = zlib.decompress(payload)
    if not data:
        return []
    pairs = []
    for line in data.split(b"\n"):
        key, _, suffix = line.partition(_SEPARATOR)
        pairs.append((str(orjson.loads(key)), suffix))
    return pairs
