"""The fleet view's pages through the test client: grid, GPU page, the token sign-in."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from quart import Quart
from telemetry_api import create_app
from telemetry_api.blueprints.fleet import CHART_BUCKETS, COOKIE, chart_step
from telemetry_api.charts import line_chart, number

from .conftest import Dataset, settings_for

GPU = "GPU-5fd4f087-86f3-7a43-b711-4771313afc50"
TOKEN = "fleet-token"
CELL = re.compile(r'<a class="gpu( stale)?" href="/gpus/([^"]+)"[^>]*>([^<]*)</a>')


async def test_the_grid_shows_every_gpu_with_the_chosen_metric(client, dataset: Dataset):
    page = await (await client.get("/?metric=DCGM_FI_DEV_POWER_USAGE")).get_data(as_text=True)
    cells = CELL.findall(page)
    assert len(cells) == len({s.gpu.uuid for s in dataset.samples}) == 247
    latest = {s.gpu.uuid: s.value for s in dataset.samples if s.metric == "DCGM_FI_DEV_POWER_USAGE"}
    assert {gpu: label for _, gpu, label in cells} == {u: number(v) for u, v in latest.items()}
    assert "Power draw" in page and "https://" not in page and "http://" not in page


async def test_staleness_is_measured_from_now(client):
    # The dataset's datapoints are from July 2025: stale after two minutes, not after ten years.
    page = await (await client.get("/")).get_data(as_text=True)
    assert {stale for stale, _, _ in CELL.findall(page)} == {" stale"}
    fresh = await (await client.get(f"/?stale_after={10 * 365 * 86400}")).get_data(as_text=True)
    assert {stale for stale, _, _ in CELL.findall(fresh)} == {""}
    assert 'id="stale-count">0<' in fresh


async def test_a_gpu_page_draws_a_chart_per_metric(client):
    response = await client.get(f"/gpus/{GPU}?window=15m&agg=max")
    page = await response.get_data(as_text=True)
    assert response.status_code == 200 and "mtv5-dgx1-hgpu-031" in page
    charts = re.findall(r'data-metric="([A-Z_]+)"', page)
    assert len(charts) == 10 and charts[0] == "DCGM_FI_DEV_GPU_UTIL"
    points = [int(n) for n in re.findall(r'data-points="(\d+)"', page)]
    assert len(points) == 10 and all(n >= 1 for n in points)
    assert page.count('class="series"') >= 10
    assert "buckets of 4s, max of each" in page


async def test_an_unknown_gpu_is_a_404_page(client):
    response = await client.get("/gpus/GPU-nope")
    assert response.status_code == 404 and "No such GPU" in await response.get_data(as_text=True)


def test_long_windows_use_wider_buckets():
    assert chart_step(timedelta(minutes=15), 10_000) == timedelta(seconds=4)
    assert chart_step(timedelta(days=7), 10_000) == timedelta(seconds=2520)
    assert chart_step(timedelta(days=7), 100) == timedelta(seconds=6110)  # API_MAX_BUCKETS=100
    week = timedelta(days=7)
    assert week / chart_step(week, 10_000) <= CHART_BUCKETS


def test_a_gap_breaks_the_line():
    from datetime import UTC, datetime

    t0 = datetime(2025, 7, 18, tzinfo=UTC)
    step = timedelta(seconds=10)
    series = [(t0, 1.0), (t0 + step, 2.0), (t0 + 2 * step, 2.0), (t0 + 9 * step, 3.0)]
    chart = line_chart(series, t0, t0 + 10 * step, step)
    assert len(chart.lines) == 2 and chart.points == 4
    assert [t.label for t in chart.y_ticks] == ["3", "2", "1"]
    # Datapoints sparser than the buckets (a scrape every 3 buckets) are one line.
    sparse = [(t0 + 3 * i * step, float(i)) for i in range(5)]
    assert len(line_chart(sparse, t0, t0 + 15 * step, step).lines) == 1


@pytest.fixture
async def guarded(dataset: Dataset) -> AsyncIterator[Quart]:
    application = create_app(settings_for(dataset.dsn, pool_max_size=2, token=TOKEN))
    async with application.test_app():
        yield application


async def test_with_a_token_the_browser_signs_in_first(guarded: Quart):
    client = guarded.test_client()
    response = await client.get(f"/gpus/{GPU}?window=1h")
    assert response.status_code == 303
    assert response.headers["Location"] == f"/login?next=%2Fgpus%2F{GPU}%3Fwindow%3D1h"
    wrong = await client.post("/login", form={"token": "nope", "next": "/"})
    assert wrong.status_code == 401 and COOKIE not in wrong.headers.get("Set-Cookie", "")
    signed = await client.post("/login", form={"token": TOKEN, "next": "//evil.example/"})
    assert signed.status_code == 303 and signed.headers["Location"] == "/"  # no open redirect
    cookie = signed.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert (await client.get("/")).status_code == 200  # the cookie came back
    assert (await client.post("/logout")).status_code == 303
    assert (await client.get("/")).status_code == 303
    bearer = await guarded.test_client().get("/", headers={"Authorization": f"Bearer {TOKEN}"})
    assert bearer.status_code == 200
