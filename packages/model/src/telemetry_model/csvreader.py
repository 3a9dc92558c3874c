"""Reader for the DCGM CSV scrape format (every field quoted, labels in ``labels_raw``)."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Final, TextIO

from .catalog import METRICS_BY_NAME
from .errors import CsvFormatError, LabelsError
from .labels import parse_labels
from .records import Gpu, Sample

COLUMNS: Final = (
    "timestamp",
    "metric_name",
    "gpu_id",
    "device",
    "uuid",
    "modelName",
    "Hostname",
    "container",
    "pod",
    "namespace",
    "value",
    "labels_raw",
)
# Labels already carried by a column (or by the driver version) are not kept twice.
_COLUMN_LABELS: Final = frozenset(
    {
        "__name__",
        "gpu",
        "device",
        "UUID",
        "modelName",
        "Hostname",
        "container",
        "pod",
        "namespace",
        "DCGM_FI_DRIVER_VERSION",
    }
)


class DcgmCsvReader:
    """Iterate the samples of a DCGM CSV file.

    With ``skip_bad_rows=False`` (the default) the first malformed row raises
    ``CsvFormatError`` naming its line and field. With ``skip_bad_rows=True`` bad
    rows are skipped and collected in ``errors``.
    """

    def __init__(self, source: TextIO, *, skip_bad_rows: bool = False) -> None:
        self._source = source
        self._skip = skip_bad_rows
        self.errors: list[CsvFormatError] = []
        self.rows_read = 0

    @property
    def skipped(self) -> int:
        """How many malformed rows were skipped."""
        return len(self.errors)

    def __iter__(self) -> Iterator[Sample]:
        reader = csv.reader(self._source, strict=True)
        try:
            header = next(reader)
        except StopIteration:
            raise CsvFormatError("empty file: no header", line=1) from None
        except csv.Error as e:
            raise CsvFormatError(f"broken quoting in header: {e}", line=reader.line_num) from e
        if tuple(h.strip() for h in header) != COLUMNS:
            raise CsvFormatError(f"unexpected header {header!r}", line=1)
        while True:
            start = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                self._fail(CsvFormatError(f"broken quoting: {e}", line=start))
                continue
            if not row:
                continue
            self.rows_read += 1
            try:
                yield parse_row(row, line=start)
            except CsvFormatError as e:
                self._fail(e)

    def _fail(self, error: CsvFormatError) -> None:
        if not self._skip:
            raise error
        self.errors.append(error)


def parse_row(row: list[str], *, line: int) -> Sample:
    """Turn one CSV row into a ``Sample``; raise ``CsvFormatError`` naming the bad field."""
    if len(row) != len(COLUMNS):
        raise CsvFormatError(f"expected {len(COLUMNS)} columns, found {len(row)}", line=line)
    ts, metric, gpu_id, device, uuid, model, host, container, pod, namespace, value, raw = row
    try:
        timestamp = datetime.fromisoformat(ts)
    except ValueError:
        raise CsvFormatError(
            f"not an ISO 8601 time: {ts!r}", line=line, field="timestamp"
        ) from None
    if timestamp.tzinfo is None:
        raise CsvFormatError(f"time has no offset: {ts!r}", line=line, field="timestamp")
    if metric not in METRICS_BY_NAME:
        raise CsvFormatError(f"unknown metric {metric!r}", line=line, field="metric_name")
    if not gpu_id.isdigit():
        raise CsvFormatError(f"not a GPU index: {gpu_id!r}", line=line, field="gpu_id")
    if not uuid:
        raise CsvFormatError("empty GPU uuid", line=line, field="uuid")
    if not host:
        raise CsvFormatError("empty hostname", line=line, field="Hostname")
    try:
        number = float(value)
    except ValueError:
        raise CsvFormatError(f"not a number: {value!r}", line=line, field="value") from None
    if not math.isfinite(number):
        raise CsvFormatError(f"not a finite number: {value!r}", line=line, field="value")
    try:
        labels = parse_labels(raw)
    except LabelsError as e:
        raise CsvFormatError(str(e), line=line, field="labels_raw") from e
    gpu = Gpu(
        uuid=uuid,
        hostname=host,
        index=int(gpu_id),
        device=device,
        model=model,
        driver_version=labels.get("DCGM_FI_DRIVER_VERSION") or None,
    )
    return Sample(
        line=line,
        timestamp=timestamp,
        metric=metric,
        value=number,
        gpu=gpu,
        container=container or None,
        pod=pod or None,
        namespace=namespace or None,
        labels={k: v for k, v in labels.items() if k not in _COLUMN_LABELS},
    )


def read_samples(path: str | Path, *, skip_bad_rows: bool = False) -> list[Sample]:
    """Read every sample of the CSV at ``path`` (see ``DcgmCsvReader``)."""
    with open(path, newline="", encoding="utf-8") as f:
        return list(DcgmCsvReader(f, skip_bad_rows=skip_bad_rows))


def reader_from_text(text: str, *, skip_bad_rows: bool = False) -> DcgmCsvReader:
    """A reader over CSV text held in memory."""
    return DcgmCsvReader(io.StringIO(text, newline=""), skip_bad_rows=skip_bad_rows)
