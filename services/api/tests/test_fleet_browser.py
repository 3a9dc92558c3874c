"""The fleet view in a real headless browser with no internet, on a fleet that reports now.

The CSV's 247 GPUs report every 10 s for five minutes up to now, but one, whose datapoints
stopped an hour ago: the grid shows all 247 and marks that one stale; its page draws a chart
per metric. Screenshots of both pages go to tmp_path, and to docs/ with
``UPDATE_SCREENSHOTS=1`` (the README shows those).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import re
import struct
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from psycopg2.extensions import parse_dsn
from telemetry_api import create_app
from telemetry_devstack import create_database, drop_database
from telemetry_model import Sample, WireTemplate, read_samples
from telemetry_store import (
    GpuSighting,
    create_pool,
    ensure_streams,
    insert_datapoints,
    migrate,
    transaction,
    upsert_gpus,
)

from conftest import CSV_PATH, ROOT

from .conftest import LiveServer, settings_for

CHROMIUM = Path("/usr/bin/chromium")
STALE_GPU = "GPU-bc7a12ab-4998-fdc5-0785-2678a929a142"  # mtv5-dgx1-hgpu-031, GPU 1
SCRAPES = 30
EVERY_US = 10_000_000
HOUR_US = 3600_000_000

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install -y chromium)"
)


def varied(sample: Sample, k: int) -> Sample:
    """The CSV's one value per GPU and metric, moving a little from scrape to scrape."""
    if not sample.value:
        return sample
    phase = zlib.crc32(sample.gpu.uuid.encode()) % 100 / 10
    return dataclasses.replace(
        sample, value=round(sample.value * (1 + 0.08 * math.sin(k / 3 + phase)), 3)
    )


async def load_now(dsn: str, samples: list[Sample]) -> None:
    pool = await create_pool(dsn, maxsize=1)
    try:
        await migrate(pool)
        async with transaction(pool) as cur:
            now_us = int(await _now_us(cur))
            await ensure_streams(cur, ["fleet"])
            sightings: dict[str, GpuSighting] = {}
            encoded: list[bytes] = []
            for k in range(SCRAPES):
                for seq, sample in enumerate(samples):
                    g = sample.gpu
                    shift = HOUR_US if g.uuid == STALE_GPU else 0
                    ts = now_us - shift - (SCRAPES - 1 - k) * EVERY_US - 5_000_000
                    first = sightings[g.uuid].first_us if g.uuid in sightings else ts
                    sightings[g.uuid] = GpuSighting(
                        g.uuid, g.hostname, g.index, g.device, g.model, g.driver_version, first, ts
                    )
                    template = WireTemplate(varied(sample, k))
                    encoded.append(template.encode(b'"fleet"', k * len(samples) + seq, ts))
            await upsert_gpus(cur, sightings.values())
            assert await insert_datapoints(cur, encoded) == len(encoded)
            await cur.execute("ANALYZE")
    finally:
        pool.close()
        await pool.wait_closed()


async def _now_us(cur) -> float:
    await cur.execute("SELECT extract(epoch FROM clock_timestamp()) * 1000000")
    (value,) = await cur.fetchone()
    return float(value)


@pytest.fixture(scope="module")
def fleet(pg_server: str) -> Iterator[LiveServer]:
    dsn = create_database(pg_server)
    try:
        asyncio.run(load_now(dsn, read_samples(CSV_PATH)))
        app = create_app(settings_for(dsn, pool_max_size=4, fleet_stale_after=60))
        with LiveServer(app) as server:
            yield server
    finally:
        drop_database(pg_server, parse_dsn(dsn)["dbname"])


def chromium(url: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",  # tests run as root in CI
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            # Offline: no name resolves, and anything not on loopback goes to a dead proxy.
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--proxy-server=http://127.0.0.1:9",
            "--virtual-time-budget=10000",
            *args,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def screenshot(url: str, tmp_path: Path, name: str, size: str) -> Path:
    shot = tmp_path / name
    chromium(
        url,
        tmp_path / f"profile-{name}",
        "--run-all-compositor-stages-before-draw",  # the whole page painted, not a part
        f"--screenshot={shot}",
        f"--window-size={size}",
    )
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, len(data)
    width, height = struct.unpack(">II", data[16:24])
    assert f"{width},{height}" == size
    if os.environ.get("UPDATE_SCREENSHOTS"):
        (ROOT / "docs" / name).write_bytes(data)
    return shot


def test_the_grid_shows_every_gpu_and_marks_the_stale_one(fleet: LiveServer, tmp_path: Path):
    dom = chromium(f"{fleet.url}/", tmp_path / "profile", "--dump-dom").stdout
    cells = re.findall(r'<a class="gpu( stale)?" href="/gpus/([^"]+)"', dom)
    assert len(cells) == 247, dom[:3000]
    assert [gpu for stale, gpu in cells if stale] == [STALE_GPU]
    assert 'id="stale-count">1<' in dom
    assert "GPU temperature" in dom
    screenshot(f"{fleet.url}/", tmp_path, "fleet-grid.png", "1400,1420")


def test_a_gpu_page_draws_its_charts(fleet: LiveServer, tmp_path: Path):
    gpu = "GPU-5fd4f087-86f3-7a43-b711-4771313afc50"
    url = f"{fleet.url}/gpus/{gpu}?window=15m"
    dom = chromium(url, tmp_path / "profile", "--dump-dom").stdout
    assert len(re.findall(r'<section class="card"', dom)) == 10, dom[:3000]
    points = [int(n) for n in re.findall(r'data-points="(\d+)"', dom)]
    # Five minutes of 10 s scrapes in 4 s buckets: a bucket per scrape, every metric.
    assert points == [SCRAPES] * 10, points
    assert dom.count('<polyline class="series"') == 10
    assert 'class="badge fresh"' in dom
    screenshot(url, tmp_path, "fleet-gpu.png", "1400,1380")
    stale = chromium(f"{fleet.url}/gpus/{STALE_GPU}", tmp_path / "profile2", "--dump-dom").stdout
    assert 'class="badge stale"' in stale
