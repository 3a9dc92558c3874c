"""CSV files a user will have: what the streamer replays, skips and counts, or refuses."""

from __future__ import annotations

import asyncio
import csv
import os
import sys
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError
from telemetry_model import COLUMNS, decode
from telemetry_streamer import Settings, SourceError
from telemetry_streamer.metrics import StreamerMetrics
from telemetry_streamer.source import load

from conftest import CSV_PATH, ROOT

LINES = CSV_PATH.read_text().splitlines()
HEADER, GOOD = LINES[0], LINES[1:11]


def loaded(path: Path) -> tuple[list[dict[str, object]], float | None]:
    """The rows ``load`` keeps (as wire bodies) and the skipped-rows counter."""
    registry = CollectorRegistry()
    rows = load(path, StreamerMetrics.create(registry))
    bodies = [orjson.loads(r.template.encode(b'"s"', 0, 0)) for r in rows]
    return bodies, registry.get_sample_value("telemetry_streamer_csv_rows_skipped_total")


@pytest.fixture
def expected(tmp_path) -> list[dict[str, object]]:
    """What the ten good rows of a plain file load as."""
    path = tmp_path / "plain.csv"
    path.write_text("\n".join([HEADER, *GOOD]) + "\n")
    bodies, skipped = loaded(path)
    assert len(bodies) == 10 and skipped == 0
    return bodies


def replace_field(line: str, column: str, value: str) -> str:
    [fields] = csv.reader([line])
    fields[COLUMNS.index(column)] = value
    return ",".join('"' + f.replace('"', '""') + '"' for f in fields)


def test_bom_and_crlf_are_replayed_like_any_file(tmp_path, expected):
    path = tmp_path / "windows.csv"
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join([HEADER, *GOOD, ""]).encode())
    assert loaded(path) == (expected, 0)


def test_an_extra_header_column_is_ignored_and_columns_go_by_name(tmp_path, expected):
    path = tmp_path / "extra-column.csv"
    [header] = csv.reader([HEADER])
    order = [*reversed(header), "scrape_job"]
    lines = [",".join(order)]
    for line in GOOD:
        [fields] = csv.reader([line])
        by_name = {**dict(zip(header, fields, strict=True)), "scrape_job": "dcgm"}
        lines.append(",".join('"' + by_name[c].replace('"', '""') + '"' for c in order))
    path.write_text("\n".join(lines) + "\n")
    assert loaded(path) == (expected, 0)


BAD_ROWS = {
    "gpu index past smallint": replace_field(GOOD[0], "gpu_id", "99999"),
    "superscript two as gpu index": replace_field(GOOD[0], "gpu_id", "\u00b2"),
    "NUL in the uuid": replace_field(GOOD[0], "uuid", "GPU-\x00"),
    "3 kB uuid": replace_field(GOOD[0], "uuid", "GPU-" + "f" * 3000),
    "NUL in the model": replace_field(GOOD[0], "modelName", "H100\x00"),
    "extra field in a row": GOOD[0] + ',"surplus"',
    "broken quoting": '"2025-07-18T20:42:34Z","DCGM_FI_DEV_GPU_UTIL","0"broken',
}


def test_rows_outside_the_domain_or_malformed_are_skipped_and_counted(tmp_path, expected):
    path = tmp_path / "bad-rows.csv"
    latin1 = replace_field(GOOD[1], "Hostname", "h\u00f6st").encode("latin-1")  # not UTF-8
    body = "\n".join([HEADER, *GOOD[:5], *BAD_ROWS.values()]).encode()
    path.write_bytes(body + b"\n" + latin1 + b"\n" + "\n".join(GOOD[5:]).encode() + b"\n")
    assert loaded(path) == (expected, len(BAD_ROWS) + 1)


UNREPLAYABLE = {
    "missing": (None, "No such file or directory"),
    "a directory": ("dir", "Is a directory"),
    "empty": (b"", "empty file: no header"),
    "BOM only": (b"\xef\xbb\xbf", "empty file: no header"),
    "header only": (f"{HEADER}\r\n".encode(), "no valid row (0 skipped)"),
    "no valid row": (f"{HEADER}\n{BAD_ROWS['3 kB uuid']}\n".encode(), "no valid row (1 skipped)"),
    "another header": (b"time,gpu,value\n1,2,3\n", "header lacks the column(s) timestamp"),
    "not UTF-8 header": (b"\xfftimestamp,x\n", "not valid UTF-8 (byte 0xff)"),
}


def unreplayable(tmp_path: Path, case: str) -> tuple[Path, str]:
    content, message = UNREPLAYABLE[case]
    path = tmp_path / f"{case.replace(' ', '-')}.csv"
    if content == "dir":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    return path, message


@pytest.mark.parametrize("case", UNREPLAYABLE)
def test_a_file_that_cannot_be_replayed_is_one_error_naming_it(tmp_path, case):
    path, message = unreplayable(tmp_path, case)
    with pytest.raises(SourceError) as info:
        load(path, StreamerMetrics.create(CollectorRegistry()))
    assert str(path) in str(info.value) and message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("case", ["missing", "a directory", "header only", "not UTF-8 header"])
async def test_the_streamer_exits_non_zero_with_one_log_line(tmp_path, case):
    path, message = unreplayable(tmp_path, case)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "telemetry_streamer",
        cwd=ROOT,
        env={
            **os.environ,
            "STREAMER_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
            "STREAMER_CSV_PATH": str(path),
            "STREAMER_PORT": "0",
            "STREAMER_LOG_FORMAT": "json",
        },
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 2
    [line] = output.decode().splitlines()
    record = orjson.loads(line)
    assert record["level"] == "ERROR" and "exception" not in record
    assert str(path) in record["message"] and message in record["message"]


def test_the_stream_name_must_fit_the_domain():
    dsn = "postgresql://nobody@127.0.0.1:1/none"
    assert Settings(database_url=dsn, stream="é" * 100).stream == "é" * 100  # 200 bytes
    with pytest.raises(ValidationError, match="201 bytes"):
        Settings(database_url=dsn, stream="é" * 100 + "x")
    with pytest.raises(ValidationError, match="NUL"):
        Settings(database_url=dsn, stream="dc\x00gm")


def test_what_is_loaded_decodes():
    registry = CollectorRegistry()
    rows = load(CSV_PATH, StreamerMetrics.create(registry))
    assert len(rows) == 2470
    assert registry.get_sample_value("telemetry_streamer_csv_rows_skipped_total") == 0
    assert decode(rows[0].template.encode(b'"dcgm"', 0, 0)).gpu.uuid == rows[0].key
