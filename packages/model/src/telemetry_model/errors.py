"""Errors raised by telemetry-model.

ModelError
 ├── LabelsError      a Prometheus label set could not be parsed
 ├── CsvFormatError   a DCGM CSV row is malformed (carries line and field)
 └── DecodeError      a wire-encoded datapoint could not be decoded
"""

from __future__ import annotations


class ModelError(Exception):
    """Root of every telemetry-model error."""


class LabelsError(ModelError):
    """A Prometheus label set is malformed."""

    def __init__(self, message: str, *, position: int) -> None:
        super().__init__(message)
        self.position = position


class CsvFormatError(ModelError):
    """A row of a DCGM CSV file is malformed; names the line and the field."""

    def __init__(self, message: str, *, line: int, field: str | None = None) -> None:
        where = f"line {line}" + (f", field {field!r}" if field else "")
        super().__init__(f"{where}: {message}")
        self.line = line
        self.field = field
        self.reason = message


class DecodeError(ModelError):
    """A wire-encoded datapoint is not valid."""
