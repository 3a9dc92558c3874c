from __future__ import annotations

import pytest
from telemetry_model import (
    COLUMNS,
    METRICS,
    CsvFormatError,
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
    assert {s.metric for s in samples} == {m.name for m in METRICS}
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
