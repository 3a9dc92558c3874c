from __future__ import annotations

import pytest
from telemetry_model import read_samples
from telemetry_streamer.replay import Pacer, prepare

from conftest import CSV_PATH


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_unlimited_rate_never_waits():
    pacer = Pacer(0)
    assert all(pacer.delay(10_000) == 0 for _ in range(100))


def test_pacer_spaces_batches_to_the_rate():
    clock = Clock()
    pacer = Pacer(1000, clock)
    assert pacer.delay(500) == 0  # first batch goes at once
    assert pacer.delay(500) == pytest.approx(0.5)
    clock.now += 0.5
    assert pacer.delay(500) == pytest.approx(0.5)


def test_pacer_burst_after_idle_is_bounded():
    clock = Clock()
    pacer = Pacer(1000, clock)
    clock.now += 3600  # idle for an hour must not bank an hour of credit
    waits = [pacer.delay(500) for _ in range(4)]
    assert waits[:2] == [0, 0]
    assert waits[3] > 0


def test_prepare_keys_rows_by_gpu_uuid():
    samples = read_samples(CSV_PATH)
    rows = prepare(samples)
    assert len(rows) == 2470
    assert [r.key for r in rows] == [s.gpu.uuid for s in samples]
