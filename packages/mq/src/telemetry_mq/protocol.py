"""Wire formats shared by the broker and its client: record framing, names, batches.

Record frame on disk (little endian)::

    size   u32   length of the body that follows the 8-byte prefix
    crc    u32   CRC-32 (zlib) of the body
    body:  offset u64 | timestamp_us i64 | key_len u16 | key (UTF-8) | value

Fetched batches travel over HTTP either as one JSON document, or (``Accept:
application/x-ndjson``, what the client uses) as a JSON header line followed by one line per
record value, so a value is handed over as the exact bytes that were stored. A value is stored
as the exact bytes it was published with. A value that spans lines (a newline between its
tokens; inside a JSON string a newline is always escaped) carries its length in bytes as a
fifth element of its header entry, and the reader takes that many bytes (the lines it spans)
as the value: so delivery is byte for byte for every value, and encoding a fetch never fails.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

import msgspec
import orjson

from .errors import ProtocolError

PREFIX: Final = struct.Struct("<II")
BODY_HEAD: Final = struct.Struct("<QqH")
FRAME_HEAD: Final = struct.Struct("<IIQqH")
FRAME_OVERHEAD: Final = FRAME_HEAD.size
MAX_KEY_BYTES: Final = 1024
NDJSON: Final = "application/x-ndjson"
ACKED_RECORDS: Final = "Acked-Records"
"""Fetch response header: records acked now by the leases the fetch carried in ``ack``."""
EXPIRED_LEASES: Final = "Expired-Leases"
"""Fetch response header: the carried leases that were unknown or expired (comma-separated)."""
_NAME: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,199}")


def check_name(kind: str, name: str) -> str:
    """Return ``name`` if it is a valid topic or group name, else raise ``ProtocolError``."""
    if not _NAME.fullmatch(name):
        raise ProtocolError(
            f"invalid {kind} name {name!r}: 1-200 of [A-Za-z0-9._-], not starting with '.' or '-'"
        )
    return name


def partition_for(key: bytes, partitions: int) -> int:
    """The partition of ``key``: CRC-32 of its UTF-8 bytes modulo the partition count (stable)."""
    return zlib.crc32(key) % partitions


def encode_frame(offset: int, timestamp_us: int, key: bytes, value: bytes) -> bytes:
    """Frame one record."""
    body = BODY_HEAD.pack(offset, timestamp_us, len(key)) + key + value
    return PREFIX.pack(len(body), zlib.crc32(body)) + body


def decode_frames(buf: bytes, count: int) -> Iterator[tuple[int, int, str, bytes]]:
    """Decode ``count`` consecutive frames from ``buf``: ``(offset, timestamp_us, key, value)``.

    Raises ``ValueError`` on a checksum or framing mismatch (the caller names the place).
    """
    pos = 0
    unpack = FRAME_HEAD.unpack_from
    crc32 = zlib.crc32
    for _ in range(count):
        size, crc, offset, ts, key_len = unpack(buf, pos)
        body_end = pos + 8 + size
        if body_end > len(buf) or crc32(buf[pos + 8 : body_end]) != crc:
            raise ValueError(f"bad frame at buffer position {pos}")
        key_end = pos + FRAME_OVERHEAD + key_len
        yield offset, ts, buf[pos + FRAME_OVERHEAD : key_end].decode(), buf[key_end:body_end]
        pos = body_end


def decode_frame_list(buf: bytes, count: int) -> tuple[list[tuple[int, int, str, bytes]], int]:
    """``decode_frames`` as a list, and where the frame after them starts in ``buf``."""
    out = []
    pos = 0
    unpack = FRAME_HEAD.unpack_from
    crc32 = zlib.crc32
    for _ in range(count):
        size, crc, offset, ts, key_len = unpack(buf, pos)
        body_end = pos + 8 + size
        if body_end > len(buf) or crc32(buf[pos + 8 : body_end]) != crc:
            raise ValueError(f"bad frame at buffer position {pos}")
        key_end = pos + FRAME_OVERHEAD + key_len
        out.append(
            (offset, ts, buf[pos + FRAME_OVERHEAD : key_end].decode(), buf[key_end:body_end])
        )
        pos = body_end
    return out, pos


class Delivery(NamedTuple):
    """One fetched record: where it sits, what it holds, and how often it was delivered.

    A named tuple: a fetch builds thousands of them, and a tuple is built several times
    faster than a frozen dataclass.
    """

    offset: int
    key: str
    value: bytes
    timestamp_us: int
    delivery_count: int


@dataclass(frozen=True, slots=True)
class Batch:
    """A lease over records of one partition, fetched by one consumer of a group."""

    topic: str
    group: str
    partition: int
    lease: str
    ack_wait: float
    records: list[Delivery]

    @property
    def offsets(self) -> list[int]:
        """The offsets of the leased records."""
        return [d.offset for d in self.records]


def encode_publish(records: Sequence[tuple[str, bytes]]) -> bytes:
    """The publish request body: ``{"records": [{"key": k, "value": <JSON>}, ...]}``."""
    fragment = orjson.Fragment
    return orjson.dumps({"records": [{"key": k, "value": fragment(v)} for k, v in records]})


class _PublishedRecord(msgspec.Struct):
    key: str
    value: msgspec.Raw


class _PublishBody(msgspec.Struct):
    records: list[_PublishedRecord]


_decode_publish_body = msgspec.json.Decoder(_PublishBody).decode


def decode_publish(body: bytes, max_records: int = 100_000) -> list[tuple[str, bytes]]:
    """Parse a publish body into ``(key, value)`` pairs.

    The whole body is validated as JSON, but the values are not turned into Python objects:
    each is kept as the exact bytes of its JSON text (what the client sent, normally compact).
    """
    try:
        records = _decode_publish_body(body).records
    except msgspec.ValidationError as e:
        raise ProtocolError(
            f'body must be {{"records": [{{"key": str, "value": JSON}}, ...]}}: {e}'
        ) from e
    except msgspec.DecodeError as e:
        raise ProtocolError(f"body is not JSON: {e}") from e
    if not records:
        raise ProtocolError("records must not be empty")
    if len(records) > max_records:
        raise ProtocolError(f"at most {max_records} records per publish")
    out: list[tuple[str, bytes]] = []
    for i, rec in enumerate(records):
        key = rec.key
        try:
            too_long = len(key.encode()) > MAX_KEY_BYTES
        except UnicodeEncodeError as e:
            raise ProtocolError(f"records[{i}].key is not valid UTF-8") from e
        if too_long:
            raise ProtocolError(f"records[{i}].key is longer than {MAX_KEY_BYTES} bytes")
        out.append((key, bytes(rec.value)))
    return out


def parse_expired_leases(header: str | None) -> list[str]:
    """The lease ids of an ``Expired-Leases`` header (none when it is absent)."""
    return [lease for lease in (header or "").replace(" ", "").split(",") if lease]


def _batch_doc(batch: Batch) -> dict[str, Any]:
    fragment = orjson.Fragment
    return {
        "topic": batch.topic,
        "group": batch.group,
        "partition": batch.partition,
        "lease": batch.lease,
        "ack_wait": batch.ack_wait,
        "records": [
            {
                "offset": d.offset,
                "key": d.key,
                "timestamp_us": d.timestamp_us,
                "delivery_count": d.delivery_count,
                "value": fragment(d.value),
            }
            for d in batch.records
        ],
    }


def encode_batch_json(batch: Batch) -> bytes:
    """A fetched batch as one JSON document (values embedded as JSON)."""
    return orjson.dumps(_batch_doc(batch))


def encode_batches_json(batches: Sequence[Batch]) -> bytes:
    """The batches of a multi fetch as one JSON document: ``{"batches": [<batch>, ...]}``."""
    return orjson.dumps({"batches": [_batch_doc(b) for b in batches]})


def encode_batch_ndjson(batch: Batch) -> bytes:
    """A fetched batch as a JSON header line then one line per record value.

    Each header entry is ``[offset, timestamp_us, delivery_count, key]``; a value spanning lines
    adds its length in bytes as a fifth element (the reader then takes that many bytes).
    """
    values = [d.value for d in batch.records]
    lines = b"\n".join(values)
    if lines.count(b"\n") == len(values) - 1:  # the usual case: every value is one line
        meta: list[list[Any]] = [
            [d.offset, d.timestamp_us, d.delivery_count, d.key] for d in batch.records
        ]
    else:
        meta = [
            [d.offset, d.timestamp_us, d.delivery_count, d.key, len(d.value)]
            if b"\n" in d.value
            else [d.offset, d.timestamp_us, d.delivery_count, d.key]
            for d in batch.records
        ]
    head = orjson.dumps(
        {
            "topic": batch.topic,
            "group": batch.group,
            "partition": batch.partition,
            "lease": batch.lease,
            "ack_wait": batch.ack_wait,
            "records": meta,
        }
    )
    return head + b"\n" + lines + b"\n"


def encode_batches_ndjson(batches: Sequence[Batch]) -> bytes:
    """The batches of a multi fetch in NDJSON: each batch's NDJSON form, one after another."""
    return b"".join(encode_batch_ndjson(b) for b in batches)


def decode_batch_ndjson(body: bytes) -> Batch:
    """Parse the NDJSON form of a fetched batch."""
    try:
        lines = body.split(b"\n")
        batch, _ = _decode_ndjson_at(lines, 0)
        return batch
    except (ValueError, KeyError, TypeError) as e:
        raise ProtocolError(f"malformed fetch answer: {e}") from e


def decode_batches_ndjson(body: bytes) -> list[Batch]:
    """Parse the NDJSON form of a multi fetch's answer (batches one after another)."""
    try:
        lines = body.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        batches: list[Batch] = []
        i = 0
        while i < len(lines):
            batch, i = _decode_ndjson_at(lines, i)
            batches.append(batch)
        return batches
    except (ValueError, KeyError, TypeError) as e:
        raise ProtocolError(f"malformed fetch answer: {e}") from e


def _decode_ndjson_at(lines: list[bytes], i: int) -> tuple[Batch, int]:
    """The batch whose header is ``lines[i]``, and the index of the line after its values."""
    head: dict[str, Any] = orjson.loads(lines[i])
    meta = head["records"]
    i += 1
    records: list[Delivery] = []
    if all(len(m) == 4 for m in meta):  # the usual case: one line per value
        end = i + len(meta)
        if len(lines) < end:
            raise ValueError("fewer value lines than records")
        records = [
            Delivery(offset, key, value, ts, count)
            for (offset, ts, count, key), value in zip(meta, lines[i:end], strict=True)
        ]
        i = end
    else:
        for m in meta:
            offset, ts, count, key = m[:4]
            if len(m) == 4:
                value = lines[i]
                i += 1
            else:  # a value spanning lines: as many lines as make up its length
                size = int(m[4])
                j, taken = i + 1, len(lines[i])
                while taken < size:
                    if j >= len(lines):
                        raise ValueError("a value is shorter than its stated length")
                    taken += 1 + len(lines[j])
                    j += 1
                if taken != size:
                    raise ValueError("a value does not end where its stated length says")
                value = b"\n".join(lines[i:j])
                i = j
            records.append(Delivery(offset, key, value, ts, count))
    batch = Batch(
        head["topic"], head["group"], head["partition"], head["lease"], head["ack_wait"], records
    )
    return batch, i
