from __future__ import annotations

from telemetry_collector.store import LAST_SEEN_REFRESH_US, Registry
from telemetry_model import Datapoint, Gpu

GPU = Gpu("GPU-1", "host-1", 0, "nvidia0", "H100", "535")


def point(ts: int, gpu: Gpu = GPU) -> Datapoint:
    return Datapoint("s", ts, ts, "DCGM_FI_DEV_GPU_UTIL", 1.0, gpu)


def test_new_gpu_is_upserted_with_its_seen_range():
    reg = Registry()
    [s] = reg.stale_gpus([point(20), point(10), point(30)])
    assert (s.uuid, s.first_us, s.last_us) == ("GPU-1", 10, 30)


def test_known_gpu_is_skipped_until_last_seen_is_stale():
    reg = Registry()
    reg.remember(reg.stale_gpus([point(1_000)]), {"s"})
    assert reg.stale_gpus([point(2_000)]) == []
    assert len(reg.stale_gpus([point(1_000 + LAST_SEEN_REFRESH_US)])) == 1
    assert reg.streams == {"s"}


def test_changed_metadata_is_upserted_at_once():
    reg = Registry()
    reg.remember(reg.stale_gpus([point(1_000)]), set())
    moved = Gpu("GPU-1", "host-2", 0, "nvidia0", "H100", "550")
    [s] = reg.stale_gpus([point(1_001, moved)])
    assert s.hostname == "host-2" and s.driver_version == "550"
