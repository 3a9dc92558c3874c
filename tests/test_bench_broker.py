"""``scripts/bench_broker.py``: sizing from a calibration, finding servers, writing its section."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from conftest import ROOT


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_broker", ROOT / "scripts/bench_broker.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_broker"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


# records/s at batch 1 and 100 on the machine the defaults were tuned on (docs/benchmarks.md)
TUNED = {
    "ours": (1_190, 63_778),
    "jetstream": (7_443, 30_135),
    "redis-everysec": (4_608, 63_583),
    "redis-always": (3_109, 62_343),
}


def calibration(bench: ModuleType, slower: float, overhead: float = 3.0):
    cal = bench.Calibration(seconds=30.0)
    for system, (b1, b100) in TUNED.items():
        cal.rate[(system, 1)] = b1 / slower
        cal.rate[(system, 100)] = b100 / slower
        cal.overhead[system] = overhead * slower
    return cal


@pytest.mark.parametrize("slower", [1.0, 2.0])
def test_the_tuned_machine_keeps_the_default_sizes(bench: ModuleType, slower: float) -> None:
    args = bench.parse_args([])
    sizing = bench.size_run(args, calibration(bench, slower), list(TUNED), left=510.0)
    assert (sizing.scale, sizing.records, sizing.batch1_records, sizing.rate) == (
        1.0,
        200_000,
        5_000,
        20_000.0,
    )
    assert sizing.notes == []


@pytest.mark.parametrize("slower", [2.5, 3.0])
def test_a_slower_machine_gets_smaller_cases_that_fit_the_budget(
    bench: ModuleType, slower: float
) -> None:
    args = bench.parse_args([])
    sizing = bench.size_run(args, calibration(bench, slower), list(TUNED), left=480.0)
    assert 0 < sizing.scale < 1
    assert 50_000 <= sizing.records < 200_000  # still long enough to be more than start-up
    assert sizing.estimate <= bench.BUDGET_SHARE * 480.0
    if slower >= 3:  # telemetry-broker's 21,000/s cannot pace 20,000/s without saturating
        assert sizing.rate < 20_000 and any("paced runs go at" in n for n in sizing.notes)


def test_a_hopeless_machine_still_runs_every_row_at_the_smallest_sizes(bench: ModuleType) -> None:
    args = bench.parse_args([])
    sizing = bench.size_run(args, calibration(bench, 50.0), list(TUNED), left=480.0)
    assert (sizing.scale, sizing.records) == (bench.MIN_SCALE, bench.MIN_RECORDS)
    assert any("still runs once" in n for n in sizing.notes)


def test_scale_by_hand(bench: ModuleType) -> None:
    args = bench.parse_args(["--scale", "0.25"])
    sizing = bench.size_run(args, None, list(TUNED), left=480.0)
    assert (sizing.records, sizing.batch1_records, sizing.rate) == (50_000, 1_200, 20_000.0)
    with pytest.raises(SystemExit):
        bench.parse_args(["--scale", "0"])


def test_servers_are_found_in_sbin_and_a_missing_one_is_explained(
    bench: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sbin = tmp_path / "sbin"
    sbin.mkdir()
    nats = sbin / "nats-server"
    nats.write_text("#!/bin/sh\n")
    nats.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # neither is on PATH
    monkeypatch.delenv("NATS_SERVER", raising=False)
    monkeypatch.delenv("REDIS_SERVER", raising=False)
    monkeypatch.setattr(bench, "SBIN_DIRS", (str(sbin),))
    found, missing = bench.find_binaries(["nats-server", "redis-server"], {}, install=False)
    assert found == {"nats-server": str(nats)}
    assert "not found on PATH" in missing["redis-server"]
    found, missing = bench.find_binaries(
        ["redis-server"], {"redis-server": str(tmp_path / "nope")}, install=False
    )
    assert found == {} and "is not an executable" in missing["redis-server"]


def test_a_named_section_goes_after_the_headline_one(bench: ModuleType, tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Broker\n\nheadline\n\n## API\n\napi\n")
    bench.write_section(
        doc, "## Broker on a loaded machine\n\nfirst\n", "## Broker on a loaded machine"
    )
    bench.write_section(
        doc, "## Broker on a loaded machine\n\nsecond\n", "## Broker on a loaded machine"
    )
    assert doc.read_text() == (
        "# Benchmarks\n\n## Broker\n\nheadline\n\n## Broker on a loaded machine\n\nsecond\n"
        "\n## API\n\napi\n"
    )
