"""The whole pipeline as child processes: broker, streamers, collectors and the API."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .procs import LogSink, ServiceProcess, print_sink

log = logging.getLogger(__name__)


@dataclass
class StackConfig:
    """What to run and where."""

    database_url: str
    data_dir: Path
    csv_path: Path
    streamers: int = 1
    collectors: int = 1
    api_port: int = 8000  # 0: the API binds a free port and reports it (as every other one)
    broker_port: int = 0
    rate: float = 2470.0
    topic: str = "telemetry"
    log_format: str = "text"
    # The API runs the storage's maintenance job (partitions ahead, rollups, retention) this
    # often; 0 turns it off.
    maintenance_interval: float = 60.0
    extra_env: Mapping[str, str] = field(default_factory=dict)


class Stack:
    """Starts the services in dependency order and stops them in reverse."""

    def __init__(self, config: StackConfig, *, sink: LogSink | None = print_sink) -> None:
        self.config = config
        self._sink = sink
        self.broker: ServiceProcess | None = None
        self.api: ServiceProcess | None = None
        self.collectors: list[ServiceProcess] = []
        self.streamers: list[ServiceProcess] = []

    @property
    def processes(self) -> list[ServiceProcess]:
        """Every process, in start order."""
        head = [p for p in (self.broker,) if p is not None]
        tail = [p for p in (self.api,) if p is not None]
        return head + self.collectors + tail + self.streamers

    def _common(self) -> dict[str, str]:
        return dict(self.config.extra_env)

    def _service(
        self, name: str, module: str, prefix: str, env: Mapping[str, str], port: int = 0
    ) -> ServiceProcess:
        """A service on ``port``; 0: it binds a free port itself and reports it."""
        values = {
            f"{prefix}_HOST": "127.0.0.1",
            f"{prefix}_LOG_FORMAT": self.config.log_format,
            **{f"{prefix}_{k.upper()}": v for k, v in env.items()},
            **self._common(),
        }
        return ServiceProcess(name, module, prefix=prefix, port=port, env=values, sink=self._sink)

    async def start(self, timeout: float = 60.0) -> None:
        """Start everything and wait until each service is ready."""
        c = self.config
        self.broker = self._service(
            "broker",
            "telemetry_broker",
            "BROKER",
            {"data_dir": str(c.data_dir / "broker"), "topics": c.topic},
            c.broker_port,
        )
        # Everything starts at once: the services wait for the broker (and the database)
        # themselves and report ready only once they can work, so nothing waits in line. Only
        # the broker's port comes first (it binds before its recovery): the others need its URL.
        await self.broker.start()
        await self.broker.wait_port(timeout)
        for _ in range(c.collectors):
            self.collectors.append(self._collector())
        self.api = self._service(
            "api",
            "telemetry_api",
            "API",
            {
                "database_url": c.database_url,
                "maintenance_interval": str(c.maintenance_interval),
            },
            c.api_port,
        )
        for _ in range(c.streamers):
            self.streamers.append(self._streamer())
        rest = [*self.collectors, self.api, *self.streamers]
        for p in rest:
            await p.start()
        await asyncio.gather(*(p.wait_ready(timeout) for p in [self.broker, *rest]))

    def _shared(self) -> dict[str, str]:
        assert self.broker is not None, "start the stack first"
        c = self.config
        return {"database_url": c.database_url, "broker_url": self.broker.url, "topic": c.topic}

    def _collector(self) -> ServiceProcess:
        name = f"collector-{len(self.collectors)}"
        return self._service(name, "telemetry_collector", "COLLECTOR", self._shared())

    def _streamer(self) -> ServiceProcess:
        c = self.config
        return self._service(
            f"streamer-{len(self.streamers)}",
            "telemetry_streamer",
            "STREAMER",
            {"csv_path": str(c.csv_path), "rate": str(c.rate), **self._shared()},
        )

    async def add_collector(self, timeout: float = 60.0) -> ServiceProcess:
        """Scale out: start one more collector and wait until it is ready."""
        proc = self._collector()
        self.collectors.append(proc)
        await proc.start()
        await proc.wait_ready(timeout)
        return proc

    async def add_streamer(self, timeout: float = 60.0) -> ServiceProcess:
        """Scale out: start one more streamer and wait until it is ready."""
        proc = self._streamer()
        self.streamers.append(proc)
        await proc.start()
        await proc.wait_ready(timeout)
        return proc

    async def stop(self, timeout: float = 20.0) -> dict[str, int]:
        """Stop producers first, then consumers, the API and the broker; return exit codes."""
        codes: dict[str, int] = {}
        stages: list[list[ServiceProcess | None]] = [
            list(self.streamers),
            list(self.collectors),
            [self.api],
            [self.broker],
        ]
        for stage in stages:
            procs = [p for p in stage if p is not None]
            results = await asyncio.gather(*(p.stop(timeout) for p in procs))
            codes.update({p.name: code for p, code in zip(procs, results, strict=True)})
        return codes

    async def watch(self) -> ServiceProcess:
        """Return the first process that exits on its own."""
        waits = {asyncio.create_task(p.wait()): p for p in self.processes}
        done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        return waits[next(iter(done))]
