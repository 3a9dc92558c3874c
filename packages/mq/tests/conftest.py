"""Fixtures of the broker-core tests: a broker in a temp dir with a clock the test moves."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from telemetry_mq import Broker, BrokerConfig


class Clock:
    """A manual clock: ``now`` moves only when the test says so."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


OpenBroker = Callable[..., Awaitable[Broker]]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def wall() -> Clock:
    return Clock(1_750_000_000.0)


@pytest.fixture
async def open_broker(tmp_path: Path, clock: Clock, wall: Clock) -> AsyncIterator[OpenBroker]:
    """Open brokers on ``tmp_path / "data"`` (several in turn, to test restarts); all closed."""
    opened: list[Broker] = []

    async def _open(**config: object) -> Broker:
        cfg = BrokerConfig(**{"maintenance_interval": None, **config})  # type: ignore[arg-type]
        b = await Broker.open(tmp_path / "data", cfg, clock=clock, wall_clock=wall)
        opened.append(b)
        return b

    yield _open
    for b in opened:
        await b.close()
