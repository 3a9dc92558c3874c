"""Where the streamer's data comes from: the CSV it replays (loaded once at start, bad rows
skipped and counted), or the exporters it scrapes (``discovery``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Final

from telemetry_model import CsvFormatError, DcgmCsvReader, open_csv

from .metrics import StreamerMetrics
from .replay import Row, prepare
from .targets import Discovery, TargetError, parse_dns, split_list

log = logging.getLogger(__name__)

# Each skipped row is logged up to this many; a summary line counts the rest.
_LOGGED_ROWS: Final = 20


class SourceError(Exception):
    """The source cannot work at all: a CSV that is unreadable, empty, with a bad header or no
    valid row; a scrape source without targets, or with a target that is not an address."""


def discovery(
    *, targets: str, targets_file: Path | None, dns: str, path: str = "/metrics"
) -> Discovery:
    """The scrape source's discovery; raise ``SourceError`` naming what is wrong."""
    try:
        found = Discovery(
            static=split_list(targets),
            file=targets_file,
            dns=[parse_dns(d) for d in split_list(dns)],
            path=path,
        )
    except TargetError as e:
        raise SourceError(f"cannot scrape: {e}") from e
    if not found.configured:
        raise SourceError(
            "cannot scrape: no targets (set STREAMER_SCRAPE_TARGETS, STREAMER_SCRAPE_TARGETS_FILE"
            " or STREAMER_SCRAPE_DNS)"
        )
    return found


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
