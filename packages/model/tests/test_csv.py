from __future__ import annotations

import csv

import pytest
from telemetry_model import (
    COLUMNS,
    CSV_METRICS,
    CsvFormatError,
    DcgmCsvReader,
    open_csv,
    parse_labels,
    read_samples,
    reader_from_text,
)

from conftest import CSV_PATH

HEADER = ",".join(COLUMNS)
GOOD = (
    '"2025-07-18T20:42:34Z","DCGM_FI_DEV_GPU_UTIL","0","nvidia0","GPU-1","NVIDIA H100 80GB HBM3",'
    '"host-1","","","","42","DCGM_FI_DRIVER_VERSION=""535.129.03"",instance=""host-1:9400"",'
    'job=""dcgm"",gpu=""0"""'
)


def test_real_file_shape():
    samples = read_samples(CSV_PATH)
    assert len(samples) == 2470
    assert len({s.gpu.uuid for s in samples}) == 247
    hosts = {s.gpu.hostname for s in samples}
    assert len(hosts) == 31
    assert "mtv5-dgx1-hgpu-002" not in hosts
    assert {s.gpu.driver_version for s in samples} == {"535.129.03"}
    assert {s.metric for s in samples} == {m.name for m in CSV_METRICS}
    per_host = {h: len({s.gpu.uuid for s in samples if s.gpu.hostname == h}) for h in hosts}
    assert per_host["mtv5-dgx1-hgpu-012"] == 7
    assert all(s.container is None and s.pod is None and s.namespace is None for s in samples)
    first = samples[0]
    assert first.line == 2
    assert first.gpu.index == 0 and first.gpu.device == "nvidia0"
    assert first.labels == {"instance": "mtv5-dgx1-hgpu-031:9400", "job": "dgx_dcgm_exporter"}


def test_gpu_index_is_only_unique_per_host():
    samples = read_samples(CSV_PATH)
    by_index = {s.gpu.index for s in samples}
    assert by_index == set(range(8))
    pairs = {(s.gpu.hostname, s.gpu.index): s.gpu.uuid for s in samples}
    assert len(pairs) == 247


def test_good_row_parses_with_labels_and_empty_dimensions_absent():
    [s] = list(reader_from_text(f"{HEADER}\n{GOOD}\n"))
    assert s.value == 42.0
    assert s.gpu.driver_version == "535.129.03"
    assert s.labels == {"instance": "host-1:9400", "job": "dcgm"}
    assert (s.container, s.pod, s.namespace) == (None, None, None)


def test_production_dimensions_are_kept():
    row = GOOD.replace('"host-1","","",""', '"host-1","trainer","pod-7","ml"')
    [s] = list(reader_from_text(f"{HEADER}\n{row}\n"))
    assert (s.container, s.pod, s.namespace) == ("trainer", "pod-7", "ml")


BAD_ROWS = [
    ("wrong column count", GOOD.rsplit(',"DCGM', 1)[0], None, "expected 12 columns"),
    ("non-numeric value", GOOD.replace('"42"', '"forty"'), "value", "not a number"),
    ("non-finite value", GOOD.replace('"42"', '"nan"'), "value", "finite"),
    (
        "unknown metric",
        GOOD.replace("DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_BOGUS"),
        "metric_name",
        "unknown",
    ),
    ("bad timestamp", GOOD.replace("2025-07-18T20:42:34Z", "yesterday"), "timestamp", "ISO"),
    (
        "naive timestamp",
        GOOD.replace("2025-07-18T20:42:34Z", "2025-07-18T20:42:34"),
        "timestamp",
        "offset",
    ),
    ("bad gpu index", GOOD.replace('"0","nvidia0"', '"x","nvidia0"'), "gpu_id", "GPU index"),
    ("empty uuid", GOOD.replace('"GPU-1"', '""'), "uuid", "uuid"),
    ("empty hostname", GOOD.replace('"host-1",""', '"",""', 1), "Hostname", "hostname"),
    ("broken labels", GOOD.replace('job=""dcgm""', "job=dcgm"), "labels_raw", "not quoted"),
    ("broken quoting", GOOD.replace('"42"', '"4"2'), None, "broken quoting"),
    # Outside the data's domain: PostgreSQL could not store these.
    (
        "gpu index past smallint",
        GOOD.replace('"0","nvidia0"', '"99999","nvidia0"'),
        "gpu_id",
        "0..32767",
    ),
    (
        "superscript gpu index",
        GOOD.replace('"0","nvidia0"', '"\u00b2","nvidia0"'),
        "gpu_id",
        "GPU index",
    ),
    (
        "arabic-indic gpu index",
        GOOD.replace('"0","nvidia0"', '"\u0663","nvidia0"'),
        "gpu_id",
        "GPU index",
    ),
    ("NUL in uuid", GOOD.replace('"GPU-1"', '"GPU-\x001"'), "uuid", "NUL"),
    ("3 kB uuid", GOOD.replace('"GPU-1"', '"' + "G" * 3000 + '"'), "uuid", "3000 bytes"),
    (
        "long hostname",
        GOOD.replace('"host-1",""', '"' + "h" * 300 + '",""', 1),
        "Hostname",
        "300 bytes",
    ),
    (
        "long pod",
        GOOD.replace('"host-1","","",""', '"host-1","","' + "p" * 257 + '",""'),
        "pod",
        "257 bytes",
    ),
    (
        "long label value",
        GOOD.replace('job=""dcgm""', 'job=""' + "j" * 1025 + '""'),
        "labels_raw",
        "1025 bytes",
    ),
    ("NUL in a label", GOOD.replace('job=""dcgm""', 'job=""dc\x00gm""'), "labels_raw", "NUL"),
]


@pytest.mark.parametrize(
    ("case", "row", "field", "message"), BAD_ROWS, ids=[c[0] for c in BAD_ROWS]
)
def test_malformed_row_error_names_line_and_field(case, row, field, message):
    text = f"{HEADER}\n{GOOD}\n{row}\n"
    with pytest.raises(CsvFormatError) as info:
        list(reader_from_text(text))
    assert info.value.line == 3
    assert info.value.field == field
    assert message in str(info.value)
    assert str(info.value).startswith("line 3")


def test_skip_mode_skips_and_counts_every_bad_row():
    text = "\n".join([HEADER, GOOD, *(r for _, r, _, _ in BAD_ROWS), GOOD]) + "\n"
    reader = reader_from_text(text, skip_bad_rows=True)
    samples = list(reader)
    assert len(samples) == 2
    assert reader.skipped == len(BAD_ROWS)
    assert [e.line for e in reader.errors] == list(range(3, 3 + len(BAD_ROWS)))


def test_header_is_checked():
    with pytest.raises(CsvFormatError, match="line 1"):
        list(reader_from_text("a,b,c\n"))
    with pytest.raises(CsvFormatError, match="empty file"):
        list(reader_from_text(""))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", {}),
        ('a="1"', {"a": "1"}),
        ('a="x,y=z",b=""', {"a": "x,y=z", "b": ""}),
        (r'a="q\"uote\\ \n"', {"a": 'q"uote\\ \n'}),
    ],
)
def test_parse_labels(text, expected):
    assert parse_labels(text) == expected


@pytest.mark.parametrize(
    "text",
    ["a", "a=1", 'a="1', 'a="1"b="2"', '1a="x"', 'a="1",a="2"', 'a="\\q"', 'a-b="1"', '="1"'],
)
def test_parse_labels_rejects(text):
    from telemetry_model import LabelsError

    with pytest.raises(LabelsError):
        parse_labels(text)


def test_columns_are_found_by_name_and_unknown_ones_ignored():
    [fields] = csv.reader([GOOD])
    by_name = {**dict(zip(COLUMNS, fields, strict=True)), "extra_column": "ignored"}
    order = ["uuid", "extra_column", *(c for c in COLUMNS if c != "uuid")]
    header = ",".join(order)
    row = ",".join(_quote(by_name[c]) for c in order)
    reader = reader_from_text(f"{header}\n{row}\n")
    [expected] = list(reader_from_text(f"{HEADER}\n{GOOD}\n"))
    assert list(reader) == [expected]
    assert reader.ignored_columns == ["extra_column"]
    # A row must still have as many fields as the header.
    with pytest.raises(CsvFormatError, match="line 2: expected 13 columns, found 12"):
        list(reader_from_text(f"{header}\n{GOOD}\n"))


def _quote(field: str) -> str:
    return '"' + field.replace('"', '""') + '"'


def test_a_header_without_a_needed_column_or_with_one_twice_is_refused():
    with pytest.raises(CsvFormatError, match="line 1.*lacks the column.*uuid"):
        list(reader_from_text(HEADER.replace(",uuid", "") + "\n"))
    with pytest.raises(CsvFormatError, match="line 1.*repeats the column.*uuid"):
        list(reader_from_text(HEADER + ",uuid\n"))


def test_bom_and_crlf_are_accepted(tmp_path):
    path = tmp_path / "windows.csv"
    path.write_bytes(b"\xef\xbb\xbf" + f"{HEADER}\r\n{GOOD}\r\n{GOOD}\r\n".encode())
    samples = read_samples(path)
    assert [s.line for s in samples] == [2, 3]
    assert samples[0].labels == {"instance": "host-1:9400", "job": "dcgm"}
    # A BOM left in text read some other way is dropped from the header too.
    assert len(list(reader_from_text(f"\ufeff{HEADER}\n{GOOD}\n"))) == 1


def test_a_row_that_is_not_utf8_is_skipped_with_its_line(tmp_path):
    path = tmp_path / "latin1.csv"
    bad = GOOD.replace("host-1", "h\u00f6st").encode("latin-1")  # 0xf6: not UTF-8
    path.write_bytes(f"{HEADER}\n{GOOD}\n".encode() + bad + f"\n{GOOD}\n".encode())
    with open_csv(path) as f:
        reader = DcgmCsvReader(f, skip_bad_rows=True)
        samples = list(reader)
    assert [s.line for s in samples] == [2, 4]
    [error] = reader.errors
    assert error.line == 3 and "not valid UTF-8 (byte 0xf6)" in str(error)
    with pytest.raises(CsvFormatError, match="line 3: not valid UTF-8"):
        read_samples(path)


def test_a_header_only_file_has_no_samples_and_an_empty_one_is_refused(tmp_path):
    assert list(reader_from_text(f"{HEADER}\r\n")) == []
    with pytest.raises(CsvFormatError, match="empty file"):
        read_samples(_write(tmp_path / "empty.csv", b""))
    with pytest.raises(CsvFormatError, match="empty file"):
        read_samples(_write(tmp_path / "bom-only.csv", b"\xef\xbb\xbf"))


def _write(path, data: bytes):
    path.write_bytes(data)
    return path
