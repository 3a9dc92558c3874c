"""The broker on a tiny size-limited filesystem at full speed: the disk high watermark answers
429 before ENOSPC, retention makes room, and every acknowledged record is delivered.

A few seconds of ``task soak:broker-disk`` (``scripts/soak_broker_disk.py``) on a 24 MiB tmpfs
with small segments; it needs root to mount the tmpfs.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from scripts.soak_broker_disk import MiB, Options, Soak, run_soak, tmpfs

pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root"),
]


def room_came_back(soak: Soak) -> bool:
    """The watermark answered, then retention made room and publishes went through again."""
    first = soak.acknowledged_at_first_refusal
    return first is not None and soak.acknowledged >= first + 20_000


async def test_watermark_answers_before_enospc_and_nothing_acknowledged_is_lost(
    tmp_path: Path,
) -> None:
    opts = Options(
        seconds=90.0,  # a cap: the feed stops as soon as room_came_back
        size_bytes=24 * MiB,
        partitions=4,
        segment_bytes=1 * MiB,
        wal_segment_bytes=1 * MiB,
        batch=200,
        inflight=2,
        sample_every=1.0,
        maintenance_interval=0.2,
        stop_when=room_came_back,
    )
    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        print(line)  # shown when the run fails before its report

    with tmpfs(opts.size_bytes, tmp_path) as mount:
        result = await run_soak(opts, mount, log)
    report = "\n".join(lines)
    assert result.refused_disk > 0, report  # the watermark answered...
    assert result.enospc == [] and result.min_free_bytes > 0, report  # ...before ENOSPC
    assert result.acknowledged >= (result.acknowledged_at_first_refusal or 0) + 20_000, report
    assert result.missing == 0 and result.mismatched == 0, report  # nothing acknowledged lost
    assert result.errors == [], report
    assert max(s.deleted_disk_mib for s in result.samples) > 0, report  # consumed segments went
    assert result.restart_ready_s < 60, report  # the chart's startup budget
