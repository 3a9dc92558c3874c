"""The compact wire encoding of a datapoint on the broker: one JSON object (orjson).

``{"stream","seq","ts","metric","value","uuid","host","gpu","device","model",
"driver","labels"}`` plus ``container``/``pod``/``namespace`` when present, and
``mig_profile``/``mig`` (the GPU instance id) for a MIG instance; ``ts`` is microseconds since
the Unix epoch.
"""

from __future__ import annotations

import math
import re
import time
from typing import Any, Final, TypeIs

import orjson

from .catalog import METRICS_BY_NAME, is_dcgm_field
from .domain import (
    DEFAULT_MAX_FUTURE_SKEW,
    MAX_GPU_INDEX,
    MAX_LABEL_VALUE_BYTES,
    MAX_LABELS,
    MAX_SEQ,
    MAX_STREAM_BYTES,
    MAX_TEXT_BYTES,
    MAX_TS_US,
    labels_problem,
    text_problem,
)
from .errors import DecodeError
from .records import Datapoint, Gpu, Sample

_OPTIONAL: Final = ("container", "pod", "namespace")


def _static_fields(
    metric: str,
    value: float,
    gpu: Gpu,
    container: str | None,
    pod: str | None,
    namespace: str | None,
    labels: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "metric": metric,
        "value": value,
        "uuid": gpu.uuid,
        "host": gpu.hostname,
        "gpu": gpu.index,
        "device": gpu.device,
        "model": gpu.model,
        "driver": gpu.driver_version,
    }
    for name, v in zip(_OPTIONAL, (container, pod, namespace), strict=True):
        if v is not None:
            body[name] = v
    if gpu.mig_instance is not None:
        body["mig_profile"] = gpu.mig_profile
        body["mig"] = gpu.mig_instance
    body["labels"] = dict(labels)
    return body


def encode(dp: Datapoint) -> bytes:
    """Encode a datapoint to its wire form."""
    body = {"stream": dp.stream, "seq": dp.seq, "ts": dp.ts_us}
    body.update(
        _static_fields(dp.metric, dp.value, dp.gpu, dp.container, dp.pod, dp.namespace, dp.labels)
    )
    return orjson.dumps(body)


class WireTemplate:
    """Pre-encodes the part of a sample that never changes, so stamping is a string join."""

    __slots__ = ("_suffix",)

    def __init__(self, sample: Sample | None = None, *, suffix: bytes | None = None) -> None:
        if suffix is not None:
            self._suffix = suffix
            return
        if sample is None:
            raise TypeError("WireTemplate needs a sample or a suffix")
        static = orjson.dumps(
            _static_fields(
                sample.metric,
                sample.value,
                sample.gpu,
                sample.container,
                sample.pod,
                sample.namespace,
                sample.labels,
            )
        )
        self._suffix = b"," + static[1:]

    @property
    def suffix(self) -> bytes:
        """The pre-encoded static part (``WireTemplate(suffix=...)`` rebuilds the template)."""
        return self._suffix

    def encode(self, stream_json: bytes, seq: int, ts_us: int) -> bytes:
        """The wire form of this sample stamped with ``stream``/``seq``/``ts``.

        ``stream_json`` is the stream id already JSON-encoded (``orjson.dumps(stream)``).
        """
        return b'{"stream":%b,"seq":%d,"ts":%d%b' % (stream_json, seq, ts_us, self._suffix)


def _str(
    body: dict[str, Any], key: str, *, optional: bool = False, limit: int = MAX_TEXT_BYTES
) -> str | None:
    v = body.get(key)
    if v is None and optional:
        return None
    if not isinstance(v, str) or not v:
        raise DecodeError(f"field {key!r} must be a non-empty string")
    # decode() has ruled out NUL for the whole record; only a string that may be too long
    # (4 bytes of UTF-8 a code point at most) needs its bytes counted.
    if len(v) * 4 > limit and (reason := text_problem(v, limit)) is not None:
        raise DecodeError(f"field {key!r} {reason}")
    return v


def _int(body: dict[str, Any], key: str, maximum: int) -> int:
    v = body.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= maximum:
        raise DecodeError(f"field {key!r} must be an integer from 0 to {maximum}")
    return v


def _holds_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any("\x00" in k or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_nul(v) for v in value)
    return False


def decode(
    data: bytes | str,
    *,
    max_future_skew: float | None = DEFAULT_MAX_FUTURE_SKEW,
    now_us: int | None = None,
) -> Datapoint:
    """Decode and validate one wire-encoded datapoint; raise ``DecodeError`` if invalid.

    Valid means inside the domain PostgreSQL and the API accept (``telemetry_model.domain``):
    integer ranges, string lengths, no NUL anywhere, a finite value, and a ``ts`` no more than
    ``max_future_skew`` seconds ahead of ``now_us`` (this clock by default; ``None`` allows
    any time up to year 9999).
    """
    if type(data) is bytes and (point := _stamped(data, max_future_skew, now_us)) is not None:
        return point
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise DecodeError(f"not JSON: {e}") from e
    if type(body) is dict:
        escaped = b"\\u0000" in data if isinstance(data, bytes) else "\\u0000" in data
        if not escaped:
            point = _typical(body, max_future_skew, now_us)
            if point is not None:
                return point
    return _checked(body, data, max_future_skew, now_us)


# The typical datapoint, checked in one expression: every string short enough that it cannot
# pass its byte limit (4 bytes of UTF-8 a code point at most), every field of its exact type.
_STREAM_CHARS: Final = MAX_STREAM_BYTES // 4
_TEXT_CHARS: Final = MAX_TEXT_BYTES // 4
_LABEL_CHARS: Final = MAX_LABEL_VALUE_BYTES // 4
# GPUs repeat in every batch: one frozen Gpu per distinct identity and metadata, shared.
_GPUS: dict[tuple[str, str, int, str, str, str | None], Gpu] = {}
_MAX_GPUS: Final = 100_000


def _short(v: Any) -> TypeIs[str]:
    return type(v) is str and 0 < len(v) <= _TEXT_CHARS


def _typical(
    body: dict[str, Any], max_future_skew: float | None, now_us: int | None
) -> Datapoint | None:
    """The datapoint of ``body`` when it is plainly valid; ``None`` when it needs the full
    checks of ``_checked`` (which give the reason if it is invalid).

    Accepts only what ``_checked`` accepts, and builds the same datapoint: a fast path for
    the collector, which decodes every record it stores (about 3 µs a record against 9).
    """
    get = body.get
    stream, seq, ts, metric, value = (
        get("stream"),
        get("seq"),
        get("ts"),
        get("metric"),
        get("value"),
    )
    uuid, host, index, device, model = (
        get("uuid"),
        get("host"),
        get("gpu"),
        get("device"),
        get("model"),
    )
    driver, container, pod, namespace = (
        get("driver"),
        get("container"),
        get("pod"),
        get("namespace"),
    )
    labels = get("labels", {})
    if not (
        # a MIG instance (``mig_profile`` and ``mig``) takes the full checks
        get("mig") is None
        and get("mig_profile") is None
        and type(stream) is str
        and 0 < len(stream) <= _STREAM_CHARS
        and type(seq) is int
        and 0 <= seq <= MAX_SEQ
        and type(ts) is int
        and 0 <= ts <= MAX_TS_US
        and type(metric) is str
        and metric in METRICS_BY_NAME
        and (type(value) is float or type(value) is int)
        and math.isfinite(value)
        and _short(uuid)
        and _short(host)
        and type(index) is int
        and 0 <= index <= MAX_GPU_INDEX
        and _short(device)
        and _short(model)
        and (driver is None or _short(driver))
        and (container is None or _short(container))
        and (pod is None or _short(pod))
        and (namespace is None or _short(namespace))
        and type(labels) is dict
        and len(labels) <= MAX_LABELS
        and all(
            len(k) <= _TEXT_CHARS and type(v) is str and len(v) <= _LABEL_CHARS
            for k, v in labels.items()
        )
    ):
        return None
    if max_future_skew is not None:
        now = time.time_ns() // 1000 if now_us is None else now_us
        if (ts - now) / 1e6 > max_future_skew:
            return None
    key = (uuid, host, index, device, model, driver)
    gpu = _GPUS.get(key)
    if gpu is None:
        if len(_GPUS) >= _MAX_GPUS:
            _GPUS.clear()
        gpu = _GPUS[key] = Gpu(uuid, host, index, device, model, driver)
    return Datapoint(stream, seq, ts, metric, float(value), gpu, container, pod, namespace, labels)


# A streamer's record is its template's stamp (stream, seq, ts; ``WireTemplate.encode``) before
# the static part the template repeats byte for byte. The static part is checked once, the full
# way, and kept; a record whose static part is known then costs a match and a lookup. The stamp
# is matched strictly: ASCII stream names without escapes, JSON integers without sign or leading
# zeros; anything else takes the paths above.
_STAMP: Final = re.compile(
    rb'\{"stream":"([ !#-\[\]-~]{1,%d})","seq":(0|[1-9][0-9]{0,18}),"ts":(0|[1-9][0-9]{0,17}),'
    % MAX_STREAM_BYTES
)
_PROBE: Final = b'{"stream":"s","seq":0,"ts":0,'
# static part -> (metric, value, gpu, container, pod, namespace, labels); the labels are shared
# by every datapoint of the template (nothing changes a decoded datapoint's labels).
_STATIC: dict[bytes, tuple[str, float, Gpu, str | None, str | None, str | None, Any]] = {}
_MAX_STATIC: Final = 10_000
_STREAM_NAMES: dict[bytes, str] = {}


def _stamped(data: bytes, max_future_skew: float | None, now_us: int | None) -> Datapoint | None:
    """The datapoint of a template-encoded record whose static part is known valid, else
    ``None`` (the full decode then decides, and learns the static part if it is valid)."""
    m = _STAMP.match(data)
    if m is None:
        return None
    rest = data[m.end() :]
    static = _STATIC.get(rest)
    if static is None:
        static = _learn(rest)
        if static is None:
            return None
    raw_stream, raw_seq, raw_ts = m.groups()
    seq, ts = int(raw_seq), int(raw_ts)
    if seq > MAX_SEQ or ts > MAX_TS_US:
        return None
    if max_future_skew is not None:
        now = time.time_ns() // 1000 if now_us is None else now_us
        if (ts - now) / 1e6 > max_future_skew:
            return None
    stream = _STREAM_NAMES.get(raw_stream)
    if stream is None:
        if len(_STREAM_NAMES) >= _MAX_STATIC:
            _STREAM_NAMES.clear()
        stream = _STREAM_NAMES[raw_stream] = raw_stream.decode("ascii")
    metric, value, gpu, container, pod, namespace, labels = static
    return _new_datapoint(stream, seq, ts, metric, value, gpu, container, pod, namespace, labels)


def _learn(rest: bytes) -> tuple[str, float, Gpu, str | None, str | None, str | None, Any] | None:
    """Check a static part once (after a neutral stamp); keep and return it if valid."""
    # A key of the stamp again would override it (the last of a duplicate key wins); an escape
    # could spell one (``"t\u0073"``): such records are rare, leave them to the full decode.
    if b"\\" in rest or b'"stream"' in rest or b'"seq"' in rest or b'"ts"' in rest:
        return None
    probe = _PROBE + rest
    try:
        dp = _checked(orjson.loads(probe), probe, None, None)
    except (orjson.JSONDecodeError, DecodeError):
        return None
    if len(_STATIC) >= _MAX_STATIC:
        _STATIC.clear()
    static = (dp.metric, dp.value, dp.gpu, dp.container, dp.pod, dp.namespace, dp.labels)
    _STATIC[rest] = static
    return static


# A frozen dataclass's __init__ sets each field through object.__setattr__ (2 µs for the ten of
# a Datapoint); its slots' own setters do the same in half the time.
_SLOTS: Final = tuple(
    getattr(Datapoint, name).__set__
    for name in (
        "stream", "seq", "ts_us", "metric", "value", "gpu", "container", "pod", "namespace",
        "labels",
    )
)  # fmt: skip


def _new_datapoint(
    stream: str,
    seq: int,
    ts_us: int,
    metric: str,
    value: float,
    gpu: Gpu,
    container: str | None,
    pod: str | None,
    namespace: str | None,
    labels: Any,
) -> Datapoint:
    """``Datapoint(...)`` of values already checked, built faster."""
    dp = object.__new__(Datapoint)
    s_stream, s_seq, s_ts, s_metric, s_value, s_gpu, s_container, s_pod, s_ns, s_labels = _SLOTS
    s_stream(dp, stream)
    s_seq(dp, seq)
    s_ts(dp, ts_us)
    s_metric(dp, metric)
    s_value(dp, value)
    s_gpu(dp, gpu)
    s_container(dp, container)
    s_pod(dp, pod)
    s_ns(dp, namespace)
    s_labels(dp, labels)
    return dp


def _checked(
    body: Any, data: bytes | str, max_future_skew: float | None, now_us: int | None
) -> Datapoint:
    """``decode`` with every check spelled out, raising ``DecodeError`` with its reason."""
    if not isinstance(body, dict):
        raise DecodeError("a datapoint must be a JSON object")
    # JSON writes a NUL only as the escape \u0000; a cheap search first, the walk only then.
    escaped = b"\\u0000" in data if isinstance(data, bytes) else "\\u0000" in data
    if escaped and _holds_nul(body):
        raise DecodeError("a string holds a NUL character (U+0000), which PostgreSQL refuses")
    metric = _str(body, "metric")
    # A catalog metric, or a DCGM field outside it that a streamer's allow-list kept (the
    # collector registers it on first sight).
    if metric not in METRICS_BY_NAME and not is_dcgm_field(metric or ""):
        raise DecodeError(f"unknown metric {metric!r}")
    value = body.get("value")
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise DecodeError("field 'value' must be a finite number")
    labels = body.get("labels", {})
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise DecodeError("field 'labels' must map names to strings")
    if (
        len(labels) > MAX_LABELS
        or any(
            len(k) * 4 > MAX_TEXT_BYTES or len(v) * 4 > MAX_LABEL_VALUE_BYTES
            for k, v in labels.items()
        )
    ) and (reason := labels_problem(labels)) is not None:
        raise DecodeError(f"field 'labels' {reason}")
    mig_profile = _str(body, "mig_profile", optional=True)
    mig = None if body.get("mig") is None else _int(body, "mig", MAX_GPU_INDEX)
    if (mig_profile is None) != (mig is None):
        raise DecodeError("fields 'mig_profile' and 'mig' come together or not at all")
    gpu = Gpu(
        uuid=_str(body, "uuid") or "",
        hostname=_str(body, "host") or "",
        index=_int(body, "gpu", MAX_GPU_INDEX),
        device=_str(body, "device") or "",
        model=_str(body, "model") or "",
        driver_version=_str(body, "driver", optional=True),
        mig_profile=mig_profile,
        mig_instance=mig,
    )
    ts_us = _int(body, "ts", MAX_TS_US)
    if max_future_skew is not None:
        now = time.time_ns() // 1000 if now_us is None else now_us
        ahead = (ts_us - now) / 1e6
        if ahead > max_future_skew:
            raise DecodeError(
                f"field 'ts' is {ahead:.0f} s ahead of the clock (at most {max_future_skew:g} s)"
            )
    return Datapoint(
        stream=_str(body, "stream", limit=MAX_STREAM_BYTES) or "",
        seq=_int(body, "seq", MAX_SEQ),
        ts_us=ts_us,
        metric=metric or "",
        value=float(value),
        gpu=gpu,
        container=_str(body, "container", optional=True),
        pod=_str(body, "pod", optional=True),
        namespace=_str(body, "namespace", optional=True),
        labels=labels,
    )
