"""The compact wire encoding of a datapoint on the broker: one JSON object (orjson).

``{"stream","seq","ts","metric","value","uuid","host","gpu","device","model",
"driver","labels"}`` plus ``container``/``pod``/``namespace`` when present;
``ts`` is microseconds since the Unix epoch.
"""

from __future__ import annotations

import math
from typing import Any, Final

import orjson

from .catalog import METRICS_BY_NAME
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

    def __init__(self, sample: Sample) -> None:
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

    def encode(self, stream_json: bytes, seq: int, ts_us: int) -> bytes:
        """The wire form of this sample stamped with ``stream``/``seq``/``ts``.

        ``stream_json`` is the stream id already JSON-encoded (``orjson.dumps(stream)``).
        """
        return b'{"stream":%b,"seq":%d,"ts":%d%b' % (stream_json, seq, ts_us, self._suffix)


def _str(body: dict[str, Any], key: str, *, optional: bool = False) -> str | None:
    v = body.get(key)
    if v is None and optional:
        return None
    if not isinstance(v, str) or not v:
        raise DecodeError(f"field {key!r} must be a non-empty string")
    return v


def _int(body: dict[str, Any], key: str) -> int:
    v = body.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise DecodeError(f"field {key!r} must be a non-negative integer")
    return v


def decode(data: bytes | str) -> Datapoint:
    """Decode and validate one wire-encoded datapoint; raise ``DecodeError`` if invalid."""
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise DecodeError(f"not JSON: {e}") from e
    if not isinstance(body, dict):
        raise DecodeError("a datapoint must be a JSON object")
    metric = _str(body, "metric")
    if metric not in METRICS_BY_NAME:
        raise DecodeError(f"unknown metric {metric!r}")
    value = body.get("value")
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise DecodeError("field 'value' must be a finite number")
    labels = body.get("labels", {})
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise DecodeError("field 'labels' must map names to strings")
    gpu = Gpu(
        uuid=_str(body, "uuid") or "",
        hostname=_str(body, "host") or "",
        index=_int(body, "gpu"),
        device=_str(body, "device") or "",
        model=_str(body, "model") or "",
        driver_version=_str(body, "driver", optional=True),
    )
    return Datapoint(
        stream=_str(body, "stream") or "",
        seq=_int(body, "seq"),
        ts_us=_int(body, "ts"),
        metric=metric or "",
        value=float(value),
        gpu=gpu,
        container=_str(body, "container", optional=True),
        pod=_str(body, "pod", optional=True),
        namespace=_str(body, "namespace", optional=True),
        labels=labels,
    )
