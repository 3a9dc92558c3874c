"""Opaque page cursors: a kind tag and the last row's sort key, as URL-safe base64 JSON.

A cursor is only a position. Decoding checks its shape and every value's range, so a
forged or truncated cursor is a 400, never a database error.
"""

from __future__ import annotations

import base64
import binascii
from typing import Final

import orjson
from telemetry_kit import APIError
from telemetry_store import BEGIN_US, END_US, BucketKey, GpuKey, PointKey

MAX_CURSOR_LENGTH: Final = 512
_SMALLINT: Final = (-(2**15), 2**15 - 1)
_BIGINT: Final = (-(2**63), 2**63 - 1)
# Microseconds since the epoch of any time PostgreSQL holds, and of ±infinity (one past).
_TIME: Final = (BEGIN_US - 1, END_US)


def _encode(kind: str, *values: int | str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([kind, *values])).decode().rstrip("=")


def _bad(detail: str) -> APIError:
    return APIError(400, "INVALID_CURSOR", detail)


def _decode(token: str, kind: str, types: tuple[type, ...]) -> list[int | str]:
    if len(token) > MAX_CURSOR_LENGTH:
        raise _bad("cursor is too long")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        body = orjson.loads(raw)
    except (binascii.Error, ValueError) as e:
        raise _bad("cursor is not one this API issued") from e
    if not isinstance(body, list) or len(body) != len(types) + 1 or body[0] != kind:
        raise _bad("cursor does not belong to this listing")
    values = body[1:]
    for value, expected in zip(values, types, strict=True):
        if type(value) is not expected:
            raise _bad("cursor is not one this API issued")
        if isinstance(value, str) and "\x00" in value:
            raise _bad("cursor is not one this API issued")
    return values


def _int(value: int | str, bounds: tuple[int, int]) -> int:
    if not isinstance(value, int) or not bounds[0] <= value <= bounds[1]:
        raise _bad("cursor value out of range")
    return value


def _time(value: int | str) -> int:
    if not isinstance(value, int) or not _TIME[0] <= value <= _TIME[1]:
        raise _bad("cursor time out of range")
    return value


def encode_point(key: PointKey) -> str:
    """The cursor that resumes a window after ``key``."""
    return _encode("p", key.ts_us, key.stream_id, key.seq)


def decode_point(token: str) -> PointKey:
    """Parse a window cursor; raise a 400 ``INVALID_CURSOR`` if it is not one."""
    ts, stream_id, seq = _decode(token, "p", (int, int, int))
    return PointKey(_time(ts), _int(stream_id, _SMALLINT), _int(seq, _BIGINT))


def encode_bucket(key: BucketKey) -> str:
    """The cursor that resumes a bucketed series after ``key``."""
    return _encode("b", key.start_us, key.metric_id)


def decode_bucket(token: str) -> BucketKey:
    """Parse a bucketed-series cursor; raise a 400 ``INVALID_CURSOR`` if it is not one."""
    start, metric_id = _decode(token, "b", (int, int))
    return BucketKey(_time(start), _int(metric_id, _SMALLINT))


def encode_gpu(key: GpuKey) -> str:
    """The cursor that resumes the GPU list after ``key``."""
    return _encode("g", key.hostname, key.index, key.uuid)


def decode_gpu(token: str) -> GpuKey:
    """Parse a GPU-list cursor; raise a 400 ``INVALID_CURSOR`` if it is not one."""
    hostname, index, uuid = _decode(token, "g", (str, int, str))
    return GpuKey(str(hostname), _int(index, _SMALLINT), str(uuid))
