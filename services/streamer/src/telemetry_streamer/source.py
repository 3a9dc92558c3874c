"""The CSV the streamer replays: loaded once at start, bad rows skipped and counted."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Final

from telemetry_model import CsvFormatError, DcgmCsvReader, open_csv

from .metrics import StreamerMetrics
from .replay import Row, prepare

log = logging.getLogger(__name__)

# Each skipped row is logged up to this many; a summary line counts the rest.
_LOGGED_ROWS: Final = 20


class SourceError(Exception):
    """The CSV cannot be replayed at all: unreadable, empty, a bad header, or no valid row."""


def load(path: Path, metrics: StreamerMetrics) -> list[Row]:
    """Read and pre-encode the CSV's valid rows; raise ``SourceError`` naming the file."""
    try:
        with open_csv(path) as f:
            reader = DcgmCsvReader(f, skip_bad_rows=True)
            samples = list(reader)
    except OSError as e:
        raise SourceError(f"cannot read the CSV file {str(path)!r}: {e.strerror or e}") from e
    except CsvFormatError as e:
        raise SourceError(f"cannot replay the CSV file {str(path)!r}: {e}") from e
    for error in reader.errors[:_LOGGED_ROWS]:
        log.warning("skipping a CSV row of %s: %s", path, error)
    if reader.skipped > _LOGGED_ROWS:
        log.warning("skipping %d more CSV rows of %s", reader.skipped - _LOGGED_ROWS, path)
    metrics.rows_skipped.inc(reader.skipped)
    if reader.ignored_columns:
        log.info("ignoring the unknown CSV column(s) %s", ", ".join(reader.ignored_columns))
    if not samples:
        raise SourceError(
            f"nothing to replay in the CSV file {str(path)!r}: no valid row"
            f" ({reader.skipped} skipped)"
        )
    log.info("loaded %d rows from %s (%d skipped)", len(samples), path, reader.skipped)
    return prepare(samples)
