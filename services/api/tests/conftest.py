"""The API under test: the real CSV loaded into a real PostgreSQL, the app, a live server."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypercorn.asyncio import serve
from hypercorn.config import Config
from psycopg2.extensions import parse_dsn
from quart import Quart
from telemetry_api import Settings, create_app
from telemetry_devstack import create_database, drop_database
from telemetry_model import EPOCH, Sample, WireTemplate, read_samples, to_micros
from telemetry_store import (
    GpuSighting,
    create_pool,
    ensure_streams,
    insert_datapoints,
    migrate,
    transaction,
    upsert_gpus,
)

from conftest import CSV_PATH

# The CSV replayed the way streamers do: two streams, each looping over the file twice.
# A hundred consecutive rows share one timestamp, and both streams stamp the same times,
# so every GPU has datapoints that tie on time (the keyset must break the tie).
STREAMS = ("replay-a", "replay-b")
LOOPS = 2
BASE = datetime(2025, 7, 18, 20, 42, 34, 123456, tzinfo=UTC)
TICK_US = 1_000_000


@dataclass(frozen=True)
class Stored:
    """One datapoint as loaded: what the API must give back."""

    uuid: str
    metric: str
    value: float
    ts: datetime
    stream: str
    seq: int


@dataclass(frozen=True)
class Dataset:
    """The loaded database: its DSN, the CSV samples and every stored datapoint."""

    dsn: str
    samples: list[Sample]
    points: list[Stored]

    def of_gpu(self, uuid: str) -> list[Stored]:
        return [p for p in self.points if p.uuid == uuid]


def stamp(seq: int) -> int:
    return to_micros(BASE) + (seq // 100) * TICK_US


async def load(dsn: str, samples: list[Sample]) -> list[Stored]:
    pool = await create_pool(dsn, maxsize=1)
    points: list[Stored] = []
    try:
        await migrate(pool)
        rows = len(samples)
        sightings: dict[str, GpuSighting] = {}
        for seq in range(rows * LOOPS):
            g = samples[seq % rows].gpu
            ts = stamp(seq)
            old = sightings.get(g.uuid)
            first = ts if old is None else min(old.first_us, ts)
            sightings[g.uuid] = GpuSighting(
                g.uuid, g.hostname, g.index, g.device, g.model, g.driver_version, first, ts
            )
        templates = [WireTemplate(s) for s in samples]
        async with transaction(pool) as cur:
            await ensure_streams(cur, list(STREAMS))
            await upsert_gpus(cur, sightings.values())
            for stream in STREAMS:
                name = b'"%s"' % stream.encode()
                encoded = [
                    templates[seq % rows].encode(name, seq, stamp(seq))
                    for seq in range(rows * LOOPS)
                ]
                assert await insert_datapoints(cur, encoded) == len(encoded)
                for seq in range(rows * LOOPS):
                    s = samples[seq % rows]
                    points.append(
                        Stored(
                            s.gpu.uuid,
                            s.metric,
                            s.value,
                            EPOCH + timedelta(microseconds=stamp(seq)),
                            stream,
                            seq,
                        )
                    )
            await cur.execute("ANALYZE")
    finally:
        pool.close()
        await pool.wait_closed()
    return points


@pytest.fixture(scope="session")
def dataset(pg_server: str) -> Iterator[Dataset]:
    """A database of its own holding the whole CSV, committed (the live server sees it)."""
    dsn = create_database(pg_server)
    try:
        samples = read_samples(CSV_PATH)
        points = asyncio.run(load(dsn, samples))
        yield Dataset(dsn, samples, points)
    finally:
        drop_database(pg_server, parse_dsn(dsn)["dbname"])


def settings_for(dsn: str, **overrides: Any) -> Settings:
    return Settings(database_url=dsn, log_format="text", **overrides)


@pytest.fixture
async def app(dataset: Dataset) -> AsyncIterator[Quart]:
    """The app, serving (its pool open) on the loaded database."""
    application = create_app(settings_for(dataset.dsn, pool_max_size=2))
    async with application.test_app():
        yield application


@pytest.fixture
def client(app: Quart) -> Any:
    return app.test_client()


class LiveServer:
    """The app served by Hypercorn on 127.0.0.1 in a thread with its own event loop."""

    def __init__(self, app: Quart) -> None:
        self.app = app
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="api-live-server", daemon=True)

    def _run(self) -> None:
        config = Config()
        config.bind = [f"fd://{os.dup(self.sock.fileno())}"]  # Hypercorn closes its copy
        config.accesslog = None
        config.graceful_timeout = 1

        async def main() -> None:
            self._loop.call_soon(self._started.set)
            await serve(self.app, config, shutdown_trigger=self._stop.wait)  # type: ignore[arg-type,unused-ignore]

        self._loop.run_until_complete(main())
        self._loop.close()

    def __enter__(self) -> LiveServer:
        self._thread.start()
        self._started.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self.sock.close()


@pytest.fixture(scope="module")
def live_server(dataset: Dataset) -> Iterator[LiveServer]:
    """A real HTTP server of the API on a free loopback port."""
    with LiveServer(create_app(settings_for(dataset.dsn, pool_max_size=4))) as server:
        yield server
