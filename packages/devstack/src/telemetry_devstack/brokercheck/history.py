"""The history of a broker check: every operation, its arguments and its outcome, as JSON lines.

The first line is a header (``{"brokercheck": 1, "config": ..., "wall_start": ...}``); each
further line is one operation, written when its outcome is known::

    {"i": 17, "p": "consumer-g0-1", "f": "ack", "t0": 3.21, "t1": 3.24, "type": "ok",
     "args": {...}, "res": {...}, "err": null}

``i`` numbers operations in the order they were invoked; ``t0``/``t1`` are seconds since the
run started (monotonic clock). ``type`` is Jepsen's: ``ok`` (the broker answered and the
operation took effect), ``fail`` (it certainly did not: a 4xx answer, or no connection was
made) or ``info`` (indeterminate: a timeout, a connection lost mid-request, a cancelled
long-poll, a 5xx answer).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

import orjson

FORMAT: Final = 1

OK: Final = "ok"
FAIL: Final = "fail"
INFO: Final = "info"


@dataclass(slots=True)
class Op:
    """One operation of the history."""

    index: int
    process: str
    kind: str
    t0: float
    args: dict[str, Any]
    t1: float | None = None
    type: str = INFO
    result: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The operation's JSON line (as a document)."""
        return {
            "i": self.index,
            "p": self.process,
            "f": self.kind,
            "t0": round(self.t0, 6),
            "t1": None if self.t1 is None else round(self.t1, 6),
            "type": self.type,
            "args": self.args,
            "res": self.result,
            "err": self.error,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Op:
        """Parse one operation line."""
        return cls(
            index=doc["i"],
            process=doc["p"],
            kind=doc["f"],
            t0=doc["t0"],
            args=doc["args"],
            t1=doc["t1"],
            type=doc["type"],
            result=doc["res"] or {},
            error=doc["err"],
        )

    def __str__(self) -> str:
        t1 = "?" if self.t1 is None else f"{self.t1:.3f}"
        return f"#{self.index} {self.kind} by {self.process} [{self.t0:.3f}-{t1} s, {self.type}]"


class History:
    """Records operations to a JSON-lines file as they complete."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        self._start = time.monotonic()
        self.wall_start = time.time()
        self._next = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[bytes] | None = open(path, "wb")  # noqa: SIM115 - closed by close()
        doc = {"brokercheck": FORMAT, **header, "wall_start": self.wall_start}
        self._file.write(orjson.dumps(doc) + b"\n")

    def now(self) -> float:
        """Seconds since the run started."""
        return time.monotonic() - self._start

    def begin(self, process: str, kind: str, args: dict[str, Any]) -> Op:
        """An operation is invoked now."""
        op = Op(self._next, process, kind, self.now(), args)
        self._next += 1
        return op

    def end(
        self,
        op: Op,
        type_: str,
        result: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        """The operation's outcome is known now: write it."""
        op.t1 = self.now()
        op.type = type_
        if result:
            op.result.update(result)
        op.error = error
        if self._file is not None:
            self._file.write(orjson.dumps(op.to_json()) + b"\n")

    def close(self) -> None:
        """Flush and close the file."""
        if self._file is not None:
            self._file.close()
            self._file = None


def load(path: Path) -> tuple[dict[str, Any], list[Op]]:
    """The header and the operations of a history file, in invocation order.

    A torn last line (the checker itself was killed) is ignored.
    """
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    header: dict[str, Any] = orjson.loads(lines[0])
    if header.get("brokercheck") != FORMAT:
        raise ValueError(f"{path} is not a broker check history (format {FORMAT})")
    ops: list[Op] = []
    for n, line in enumerate(lines[1:], start=2):
        if not line:
            continue
        try:
            ops.append(Op.from_json(orjson.loads(line)))
        except orjson.JSONDecodeError:
            if n < len(lines):  # only the last line may be torn
                raise ValueError(f"{path}:{n}: not a JSON line") from None
    ops.sort(key=lambda op: op.index)
    return header, ops
