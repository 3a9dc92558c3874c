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
from .domain import MAX_GPU_INDEX, labels_problem, text_problem
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

    Columns are found by their header name, in any order; a column the reader does not know is
    ignored (``ignored_columns``), a missing or doubled one is an error. A UTF-8 byte order mark
    and CRLF line ends are accepted. With ``skip_bad_rows=False`` (the default) the first
    malformed row raises ``CsvFormatError`` naming its line and field. With
    ``skip_bad_rows=True`` bad rows are skipped and collected in ``errors``: malformed ones,
    ones outside the data's domain (``telemetry_model.domain``) and ones that are not valid
    UTF-8 (open the file with ``open_csv`` so they reach the reader). A bad header always
    raises.
    """

    def __init__(self, source: TextIO, *, skip_bad_rows: bool = False) -> None:
        self._source = source
        self._skip = skip_bad_rows
        self.errors: list[CsvFormatError] = []
        self.rows_read = 0
        self.ignored_columns: list[str] = []

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
        positions = self._columns(header)
        width = len(header)
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
                if len(row) != width:
                    raise CsvFormatError(f"expected {width} columns, found {len(row)}", line=start)
                _check_utf8(row, start)
                yield parse_row([row[i] for i in positions], line=start)
            except CsvFormatError as e:
                self._fail(e)

    def _columns(self, header: list[str]) -> list[int]:
        names = [h.strip() for h in header]
        if names:
            names[0] = names[0].removeprefix("\ufeff")  # a BOM the file was not opened to skip
        _check_utf8(names, 1)
        missing = [c for c in COLUMNS if c not in names]
        if missing:
            raise CsvFormatError(
                f"header lacks the column(s) {', '.join(missing)} (found {', '.join(names)})",
                line=1,
            )
        doubled = sorted({c for c in COLUMNS if names.count(c) > 1})
        if doubled:
            raise CsvFormatError(f"header repeats the column(s) {', '.join(doubled)}", line=1)
        self.ignored_columns = [n for n in names if n not in COLUMNS]
        return [names.index(c) for c in COLUMNS]

    def _fail(self, error: CsvFormatError) -> None:
        if not self._skip:
            raise error
        self.errors.append(error)


def _check_utf8(fields: list[str], line: int) -> None:
    """Refuse the bytes ``open_csv`` could not decode (kept as lone surrogates)."""
    try:
        "".join(fields).encode("utf-8")
    except UnicodeEncodeError as e:
        byte = ord(e.object[e.start]) - 0xDC00  # surrogateescape maps byte b to U+DC00 + b
        detail = f" (byte 0x{byte:02x})" if 0x80 <= byte <= 0xFF else ""
        raise CsvFormatError(f"not valid UTF-8{detail}", line=line) from None


def _text(value: str, line: int, field: str, *, required: str | None = None) -> str:
    if required is not None and not value:
        raise CsvFormatError(f"empty {required}", line=line, field=field)
    reason = text_problem(value)
    if reason is not None:
        raise CsvFormatError(f"the value {reason}", line=line, field=field)
    return value


def parse_row(row: list[str], *, line: int) -> Sample:
    """Turn one CSV row into a ``Sample``; raise ``CsvFormatError`` naming the bad field.

    ``row`` holds the fields in ``COLUMNS`` order. A row outside the data's domain
    (``telemetry_model.domain``: a GPU index past 32767, a NUL, an over-long string) is
    malformed too: it could never be stored.
    """
    if len(row) != len(COLUMNS):
        raise CsvFormatError(f"expected {len(COLUMNS)} columns, found {len(row)}", line=line)
    ts, metric, gpu_id, device, uuid, model, host, container, pod, namespace, value, raw = row
    try:
        timestamp = datetime.fromisoformat(ts)
    except ValueError:
        raise CsvFormatError(
            f"not an ISO 8601 time: {ts[:40]!r}", line=line, field="timestamp"
        ) from None
    if timestamp.tzinfo is None:
        raise CsvFormatError(f"time has no offset: {ts!r}", line=line, field="timestamp")
    if metric not in METRICS_BY_NAME:
        raise CsvFormatError(f"unknown metric {metric[:80]!r}", line=line, field="metric_name")
    # ASCII digits only: str.isdigit() also takes "²" (which int() refuses) and "٣" (which
    # int() reads as 3).
    if not (gpu_id.isascii() and gpu_id.isdigit()) or int(gpu_id) > MAX_GPU_INDEX:
        raise CsvFormatError(
            f"not a GPU index (0..{MAX_GPU_INDEX}): {gpu_id[:40]!r}", line=line, field="gpu_id"
        )
    _text(uuid, line, "uuid", required="GPU uuid")
    _text(host, line, "Hostname", required="hostname")
    _text(device, line, "device")
    _text(model, line, "modelName")
    for name, dimension in (("container", container), ("pod", pod), ("namespace", namespace)):
        _text(dimension, line, name)
    try:
        number = float(value)
    except ValueError:
        raise CsvFormatError(f"not a number: {value[:40]!r}", line=line, field="value") from None
    if not math.isfinite(number):
        raise CsvFormatError(f"not a finite number: {value!r}", line=line, field="value")
    try:
        labels = parse_labels(raw)
    except LabelsError as e:
        raise CsvFormatError(str(e), line=line, field="labels_raw") from e
    kept = {k: v for k, v in labels.items() if k not in _COLUMN_LABELS}
    driver = labels.get("DCGM_FI_DRIVER_VERSION") or None
    reason = labels_problem(kept) or (None if driver is None else text_problem(driver))
    if reason is not None:
        raise CsvFormatError(f"the label set {reason}", line=line, field="labels_raw")
    gpu = Gpu(
        uuid=uuid,
        hostname=host,
        index=int(gpu_id),
        device=device,
        model=model,
        driver_version=driver,
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
        labels=kept,
    )


def open_csv(path: str | Path) -> TextIO:
    """Open a DCGM CSV for ``DcgmCsvReader``: a UTF-8 BOM is skipped, invalid bytes are kept."""
    # surrogateescape carries a byte that is not UTF-8 to the reader as a lone surrogate, so
    # the reader skips that row instead of the whole file failing with UnicodeDecodeError.
    return open(path, newline="", encoding="utf-8-sig", errors="surrogateescape")


def read_samples(path: str | Path, *, skip_bad_rows: bool = False) -> list[Sample]:
    """Read every sample of the CSV at ``path`` (see ``DcgmCsvReader``)."""
    with open_csv(path) as f:
        return list(DcgmCsvReader(f, skip_bad_rows=skip_bad_rows))


def reader_from_text(text: str, *, skip_bad_rows: bool = False) -> DcgmCsvReader:
    """A reader over CSV text held in memory."""
    return DcgmCsvReader(io.StringIO(text, newline=""), skip_bad_rows=skip_bad_rows)
