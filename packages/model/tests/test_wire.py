from __future__ import annotations

import re
from datetime import UTC, datetime

import orjson
import pytest
import telemetry_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from telemetry_model import (
    DEFAULT_MAX_FUTURE_SKEW,
    EPOCH,
    MAX_TS_US,
    METRICS_BY_ID,
    Datapoint,
    DecodeError,
    Gpu,
    WireTemplate,
    decode,
    encode,
    metric,
    read_samples,
    to_micros,
)
from telemetry_model.wire import _checked, _stamped, _typical

from conftest import CSV_PATH

GPU = Gpu("GPU-1", "host-1", 3, "nvidia3", "NVIDIA H100 80GB HBM3", "535.129.03")


def test_round_trip_keeps_every_field():
    dp = Datapoint(
        "s",
        7,
        1_752_871_354_123_456,
        "DCGM_FI_DEV_POWER_USAGE",
        312.5,
        GPU,
        container="c",
        pod="p",
        namespace="n",
        labels={"job": "j"},
    )
    back = decode(encode(dp))
    assert back == dp
    assert back.timestamp == datetime(2025, 7, 18, 20, 42, 34, 123456, tzinfo=UTC)
    assert back.id == "s:7"
    assert to_micros(back.timestamp) == dp.ts_us


def test_template_matches_full_encoding_for_every_real_row():
    for i, sample in enumerate(read_samples(CSV_PATH)):
        wire = WireTemplate(sample).encode(orjson.dumps("dcgm"), i, 1_000 + i)
        dp = decode(wire)
        assert (dp.stream, dp.seq, dp.ts_us, dp.metric, dp.value, dp.gpu) == (
            "dcgm",
            i,
            1_000 + i,
            sample.metric,
            sample.value,
            sample.gpu,
        )
        assert encode(dp) == wire


def test_records_are_compact():
    sample = read_samples(CSV_PATH)[0]
    assert len(WireTemplate(sample).encode(b'"dcgm"', 10**9, 1_800_000_000_000_000)) < 340


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "not JSON"),
        (b"[1]", "JSON object"),
        (b'{"metric": "X"}', "unknown metric"),
        (b'{"metric": "DCGM_FI_DEV_GPU_UTIL", "value": "1"}', "finite number"),
        (b'{"metric": "DCGM_FI_DEV_GPU_UTIL", "value": 1, "labels": {"a": 1}}', "labels"),
        (b'{"metric": "DCGM_FI_DEV_GPU_UTIL", "value": 1, "uuid": ""}', "uuid"),
        (b'{"metric": "DCGM_FI_DEV_GPU_UTIL", "value": true}', "finite number"),
    ],
)
def test_decode_rejects(body, message):
    with pytest.raises(DecodeError, match=message):
        decode(body)


def test_a_mig_instance_round_trips_and_its_fields_come_together():
    mig = Gpu(
        "GPU-1:mig3", "host-1", 3, "nvidia3", "NVIDIA A100-SXM4-80GB", "550.54.15", "2g.20gb", 3
    )
    dp = Datapoint("s", 1, 1, "DCGM_FI_DEV_FB_USED", 9.0, mig)
    assert decode(encode(dp)) == dp
    assert (mig.parent_uuid, mig.physical_uuid, GPU.parent_uuid) == ("GPU-1", "GPU-1", None)
    body = orjson.loads(encode(dp))
    assert (body["mig_profile"], body["mig"]) == ("2g.20gb", 3)
    del body["mig"]
    with pytest.raises(DecodeError, match="together"):
        decode(orjson.dumps(body))


def test_a_dcgm_field_outside_the_catalog_decodes_and_anything_else_does_not():
    good = orjson.loads(encode(Datapoint("s", 1, 1, "DCGM_FI_DEV_GPU_UTIL", 1.0, GPU)))
    assert decode(orjson.dumps(good | {"metric": "DCGM_FI_DEV_PCIE_TX_THROUGHPUT"})).metric == (
        "DCGM_FI_DEV_PCIE_TX_THROUGHPUT"
    )
    for name in ("DCGM_EXP_XID_ERRORS_COUNT", "dcgm_fi_dev_gpu_util", "DCGM_FI_", "go_gc"):
        with pytest.raises(DecodeError, match="unknown metric"):
            decode(orjson.dumps(good | {"metric": name}))


def test_decode_rejects_negative_seq():
    good = orjson.loads(encode(Datapoint("s", 1, 1, "DCGM_FI_DEV_GPU_UTIL", 1.0, GPU)))
    good["seq"] = -1
    with pytest.raises(DecodeError, match="seq"):
        decode(orjson.dumps(good))


def test_catalog():
    # The CSV's ten keep their ids for good; every other field has its own, never reused.
    first = ["GPU_UTIL", "MEM_COPY_UTIL", "ENC_UTIL", "DEC_UTIL", "POWER_USAGE", "GPU_TEMP"]
    first += ["FB_USED", "FB_FREE", "SM_CLOCK", "MEM_CLOCK"]
    assert [METRICS_BY_ID[i].name for i in range(1, 11)] == [f"DCGM_FI_DEV_{n}" for n in first]
    assert sorted(METRICS_BY_ID) == list(range(1, len(METRICS_BY_ID) + 1))
    assert len({m.name for m in METRICS_BY_ID.values()}) == len(METRICS_BY_ID) == 48
    assert all(m.unit and m.kind in ("gauge", "counter") for m in METRICS_BY_ID.values())
    assert metric("DCGM_FI_DEV_FB_USED").unit == "MiB"
    with pytest.raises(KeyError):
        metric("nope")
    with pytest.raises(ValueError):
        to_micros(datetime(2025, 1, 1))


def test_public_surface():
    assert sorted(telemetry_model.__all__) == sorted(
        n
        for n in dir(telemetry_model)
        if not n.startswith("_")
        and n
        not in {
            "catalog",
            "csvreader",
            "domain",
            "errors",
            "exposition",
            "labels",
            "records",
            "wire",
        }
    )


NOW_US = 1_800_000_000_000_000


def wire(**changes) -> bytes:
    """A valid datapoint's wire form with some fields replaced (``None`` drops a field)."""
    body = orjson.loads(encode(Datapoint("s", 1, NOW_US, "DCGM_FI_DEV_GPU_UTIL", 1.0, GPU)))
    for key, value in changes.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    return orjson.dumps(body)


FOUR_BYTES = "\U0001d11e"  # MUSICAL SYMBOL G CLEF: four bytes of UTF-8

OUTSIDE_THE_DOMAIN = [
    ("seq past bigint", {"seq": 2**63}, "'seq' must be an integer from 0 to"),
    ("negative seq", {"seq": -1}, "'seq'"),
    ("float seq", {"seq": 1.0}, "'seq'"),
    ("gpu past smallint", {"gpu": 32768}, "'gpu' must be an integer from 0 to 32767"),
    ("negative gpu", {"gpu": -1}, "'gpu'"),
    ("ts past year 9999", {"ts": 2**63 - 1}, "'ts' must be an integer from 0 to"),
    ("ts in year 20983", {"ts": 600_000_000_000_000_000}, "'ts'"),
    ("ts before the epoch", {"ts": -1}, "'ts'"),
    ("ts two days ahead", {"ts": NOW_US + 2 * 86_400_000_000}, "172800 s ahead"),
    ("NUL in uuid", {"uuid": "GPU-\x001"}, "NUL"),
    ("NUL in a label value", {"labels": {"job": "a\x00"}}, "NUL"),
    ("NUL in a label name", {"labels": {"j\x00b": "a"}}, "NUL"),
    ("NUL in an unknown field", {"extra": ["x", {"y": "\x00"}]}, "NUL"),
    ("NUL in an unknown key", {"extra": {"\x00": 1}}, "NUL"),
    ("3 kB uuid", {"uuid": "G" * 3000}, "'uuid' is 3000 bytes long (at most 256)"),
    ("long hostname", {"host": "h" * 257}, "'host' is 257 bytes"),
    ("long device", {"device": "d" * 257}, "'device'"),
    ("long model", {"model": "m" * 257}, "'model'"),
    ("long driver", {"driver": "1" * 257}, "'driver'"),
    ("long stream", {"stream": "s" * 201}, "'stream' is 201 bytes long (at most 200)"),
    ("long container", {"container": "c" * 257}, "'container'"),
    ("long pod", {"pod": FOUR_BYTES * 65}, "'pod' is 260 bytes"),
    ("long namespace", {"namespace": "n" * 257}, "'namespace'"),
    ("long label name", {"labels": {"l" * 257: "v"}}, "label name"),
    ("long label value", {"labels": {"job": "v" * 1025}}, "value of label 'job'"),
    ("too many labels", {"labels": {f"l{i}": "v" for i in range(65)}}, "65 labels"),
    ("empty container", {"container": ""}, "'container' must be a non-empty string"),
]


@pytest.mark.parametrize(
    ("case", "changes", "message"), OUTSIDE_THE_DOMAIN, ids=[c[0] for c in OUTSIDE_THE_DOMAIN]
)
def test_decode_refuses_what_the_database_cannot_store(case, changes, message):
    with pytest.raises(DecodeError, match=re.escape(message)):
        decode(wire(**changes), now_us=NOW_US)


def test_decode_accepts_the_edges_of_the_domain():
    dp = decode(
        wire(
            seq=2**63 - 1,
            gpu=32767,
            ts=NOW_US + 86_400_000_000,
            uuid=FOUR_BYTES * 64,
            stream="s" * 200,
            container="c" * 256,
            labels={f"l{i}": "v" * 1024 for i in range(64)},
        ),
        now_us=NOW_US,
    )
    assert (dp.seq, dp.gpu.index, dp.ts_us) == (2**63 - 1, 32767, NOW_US + 86_400_000_000)
    assert decode(wire(ts=0), now_us=NOW_US).timestamp == EPOCH


def test_the_future_skew_is_configurable_and_defaults_to_one_day_of_this_clock():
    ahead = wire(ts=NOW_US + 3_600_000_000)  # an hour ahead of NOW_US
    assert decode(ahead, now_us=NOW_US).ts_us == NOW_US + 3_600_000_000
    with pytest.raises(DecodeError, match="3600 s ahead"):
        decode(ahead, now_us=NOW_US, max_future_skew=60)
    assert DEFAULT_MAX_FUTURE_SKEW == 86_400
    # Without now_us the decoder reads the clock: NOW_US (2027) + two days is the future still.
    with pytest.raises(DecodeError, match="ahead"):
        decode(wire(ts=to_micros(datetime.now(UTC)) + 2 * 86_400_000_000))
    # None keeps only the hard ceiling, the end of year 9999 in every time zone.
    far = wire(ts=MAX_TS_US)
    assert decode(far, max_future_skew=None).timestamp.year == 9999
    with pytest.raises(DecodeError, match="'ts'"):
        decode(wire(ts=MAX_TS_US + 1), max_future_skew=None)


def test_a_literal_backslash_u0000_is_text_not_a_nul():
    dp = decode(wire(model="model \\u0000"), now_us=NOW_US)  # the six characters \u0000
    assert dp.gpu.model == "model \\u0000"
    assert decode(wire(model="model \\u0000").decode(), now_us=NOW_US) == dp


# --- the typical datapoint's fast path decides exactly as the full checks --------------------


# Values around every edge the checks draw: lengths either side of the fast path's limit (a
# quarter of the byte limit) and of the byte limit itself, in 1- and 4-byte characters, wrong
# types, the integer ranges' ends, NUL.
_TEXTS = st.sampled_from(
    ["", "a", "a" * 64, "a" * 65, "a" * 256, "a" * 257, FOUR_BYTES * 64, FOUR_BYTES * 65,
     "x\x00y", "\\u0000"]
)  # fmt: skip
_ODD = st.sampled_from([None, 0, 1, -1, True, 1.5, [], {}, "1"])
_INTS = st.sampled_from(
    [0, 1, -1, 32767, 32768, 2**63 - 1, 2**63, NOW_US, MAX_TS_US, MAX_TS_US + 1,
     NOW_US + 86_400_000_000, NOW_US + 86_400_000_001]
)  # fmt: skip
_FIELDS = {
    "stream": st.one_of(_TEXTS, _ODD, st.sampled_from(["s" * 50, "s" * 51, "s" * 200, "s" * 201])),
    "seq": st.one_of(_INTS, _ODD),
    "ts": st.one_of(_INTS, _ODD),
    "metric": st.one_of(st.sampled_from(["DCGM_FI_DEV_GPU_UTIL", "NOT_A_METRIC"]), _ODD),
    "value": st.one_of(st.sampled_from([0, 1, -0.0, 1e308, 2.5, 2**63 - 1]), _ODD),
    "uuid": st.one_of(_TEXTS, _ODD),
    "host": st.one_of(_TEXTS, _ODD),
    "gpu": st.one_of(_INTS, _ODD),
    "device": st.one_of(_TEXTS, _ODD),
    "model": st.one_of(_TEXTS, _ODD),
    "driver": st.one_of(_TEXTS, _ODD),
    "container": st.one_of(_TEXTS, _ODD),
    "pod": st.one_of(_TEXTS, _ODD),
    "namespace": st.one_of(_TEXTS, _ODD),
    "labels": st.one_of(
        _ODD,
        st.dictionaries(
            _TEXTS, st.one_of(_TEXTS, _ODD, st.just("v" * 256), st.just("v" * 257)), max_size=3
        ),
        st.just({f"l{i}": "v" for i in range(64)}),
        st.just({f"l{i}": "v" for i in range(65)}),
    ),  # fmt: skip
    "extra": st.one_of(_TEXTS, _ODD),
}


def _outcome(call):
    try:
        return ("datapoint", call())
    except DecodeError as e:
        return ("refused", str(e))


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    changes=st.fixed_dictionaries(
        {}, optional={k: st.one_of(st.just(None), v) for k, v in _FIELDS.items()}
    ),
    skew=st.sampled_from([DEFAULT_MAX_FUTURE_SKEW, None, 0.0]),
)
def test_the_fast_path_decides_every_record_as_the_full_checks_do(changes, skew):
    body = orjson.loads(encode(Datapoint("s", 1, NOW_US, "DCGM_FI_DEV_GPU_UTIL", 1.0, GPU)))
    for key, value in changes.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    data = orjson.dumps(body)
    fast = _outcome(lambda: decode(data, max_future_skew=skew, now_us=NOW_US))
    full = _outcome(lambda: _checked(orjson.loads(data), data, skew, NOW_US))
    assert fast == full


def test_every_real_record_takes_the_fast_path():
    stream = orjson.dumps("dcgm")
    for i, sample in enumerate(read_samples(CSV_PATH)):
        data = WireTemplate(sample).encode(stream, i, NOW_US)
        point = _typical(orjson.loads(data), DEFAULT_MAX_FUTURE_SKEW, NOW_US)
        assert point is not None, data
        assert point == _checked(orjson.loads(data), data, DEFAULT_MAX_FUTURE_SKEW, NOW_US)


# --- a streamer's record: the stamp, then a static part checked once and kept ----------------

_STREAMS = st.one_of(
    st.sampled_from(["dcgm", "s" * 200, "s" * 201, "", 'a"b', "a\\b", "é", "a/b", "a\tb"]),
    st.text(max_size=8),
)
_STAMP_INTS = st.one_of(_INTS, st.integers(min_value=-5, max_value=2**64))


def _stamp(stream: str, seq: int, ts: int) -> bytes:
    return b'{"stream":%b,"seq":%d,"ts":%d,' % (orjson.dumps(stream), seq, ts)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    stream=_STREAMS,
    seq=_STAMP_INTS,
    ts=_STAMP_INTS,
    changes=st.fixed_dictionaries(
        {}, optional={k: v for k, v in _FIELDS.items() if k not in ("stream", "seq", "ts")}
    ),
    again=st.sampled_from([b"", b'"ts":5,', b'"seq":5,', b'"stream":"x",', b'"t\\u0073":5,']),
    skew=st.sampled_from([DEFAULT_MAX_FUTURE_SKEW, None, 0.0]),
)
def test_a_stamped_record_decodes_as_the_full_checks_decide(stream, seq, ts, changes, again, skew):
    static = orjson.loads(encode(Datapoint("s", 1, NOW_US, "DCGM_FI_DEV_GPU_UTIL", 1.0, GPU)))
    for key in ("stream", "seq", "ts"):
        del static[key]
    static.update(changes)
    data = _stamp(stream, seq, ts) + again + orjson.dumps(static)[1:]
    full = _outcome(lambda: _checked(orjson.loads(data), data, skew, NOW_US))
    for _ in range(2):  # the static part unknown, then known
        assert _outcome(lambda: decode(data, max_future_skew=skew, now_us=NOW_US)) == full


def test_a_key_of_the_stamp_repeated_in_the_static_part_wins_as_in_json():
    static = orjson.dumps({"metric": "DCGM_FI_DEV_GPU_UTIL", "value": 1.0, "uuid": "u",
                           "host": "h", "gpu": 0, "device": "d", "model": "m"})  # fmt: skip
    for again, field, expected in [
        (b'"ts":5,', "ts_us", 5),
        (b'"t\\u0073":6,', "ts_us", 6),
        (b'"seq":7,', "seq", 7),
        (b'"stream":"x",', "stream", "x"),
    ]:
        data = _stamp("dcgm", 1, NOW_US) + again + static[1:]
        for _ in range(2):
            assert getattr(decode(data, now_us=NOW_US), field) == expected


def test_every_real_record_takes_the_stamped_path_once_its_template_is_known():
    stream = orjson.dumps("dcgm")
    for i, sample in enumerate(read_samples(CSV_PATH)):
        data = WireTemplate(sample).encode(stream, i, NOW_US)
        decode(data, now_us=NOW_US)  # learns the template's static part
        point = _stamped(data, DEFAULT_MAX_FUTURE_SKEW, NOW_US)
        assert point is not None, data
        assert point == _checked(orjson.loads(data), data, DEFAULT_MAX_FUTURE_SKEW, NOW_US)
        assert point == Datapoint(point.stream, point.seq, point.ts_us, point.metric,
                                  point.value, point.gpu, point.container, point.pod,
                                  point.namespace, point.labels)  # fmt: skip


def test_a_stamp_out_of_range_is_refused_with_its_reason_after_the_template_is_known():
    data = WireTemplate(read_samples(CSV_PATH)[0]).encode(orjson.dumps("dcgm"), 1, NOW_US)
    decode(data, now_us=NOW_US)
    for seq, ts, message in [
        (2**63, NOW_US, "field 'seq' must be an integer"),
        (1, MAX_TS_US + 1, "field 'ts' must be an integer"),
        (1, NOW_US + 86_400_000_001, "ahead of the clock"),
    ]:
        bad = data.replace(b'"seq":1,"ts":%d' % NOW_US, b'"seq":%d,"ts":%d' % (seq, ts))
        with pytest.raises(DecodeError, match=re.escape(message)):
            decode(bad, now_us=NOW_US)
