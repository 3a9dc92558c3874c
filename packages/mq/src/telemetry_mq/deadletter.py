"""Dead letters: the envelope a record gets when it moves to ``<topic>.dlq``."""

from __future__ import annotations

from typing import Final

import orjson

from .groups import Dead, Group
from .log import Record

DLQ_SUFFIX: Final = ".dlq"


def dlq_name(topic: str) -> str:
    """The dead-letter topic of ``topic``."""
    return topic + DLQ_SUFFIX


def envelopes(
    topic: str, group: Group, dead: Dead, records: list[Record], reason: str
) -> list[tuple[str, bytes]]:
    """``(key, value)`` of each dead letter: the reason, last error, origin and the record.

    ``{"reason", "error", "origin": {"topic", "group", "partition", "offset", "timestamp_us",
    "delivery_count"}, "value": <the record, byte for byte>}``
    """
    p = dead[0]
    cur = group.cursors[p]
    fragment = orjson.Fragment
    return [
        (
            key,
            orjson.dumps(
                {
                    "reason": reason,
                    "error": cur.errors.get(o),
                    "origin": {
                        "topic": topic,
                        "group": group.name,
                        "partition": p,
                        "offset": o,
                        "timestamp_us": ts,
                        "delivery_count": cur.counts.get(o, 0),
                    },
                    "value": fragment(value),
                }
            ),
        )
        for o, ts, key, value in records
    ]
