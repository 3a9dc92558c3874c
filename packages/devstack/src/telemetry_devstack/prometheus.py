"""A real Prometheus beside the local stack: Debian's ``prometheus`` scraping every service.

The scrape jobs are named as in a cluster with the chart's ServiceMonitors and as the alert rules
expect: ``telemetry-broker``, ``telemetry-streamer``, ``telemetry-collector``, ``telemetry-api``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from .procs import LogSink, ServiceProcess, free_port, print_sink
from .stack import Stack

# The alert rules the chart ships, relative to a checkout's root.
RULES: Final = Path("helm/telemetry/files/alerts.yaml")


def find_prometheus() -> str | None:
    """The ``prometheus`` binary on PATH (Debian: /usr/bin/prometheus), or ``None``."""
    return shutil.which("prometheus")


def _duration(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


def scrape_config(
    stack: Stack, *, interval: float = 5.0, rules: Sequence[Path] = ()
) -> dict[str, Any]:
    """A Prometheus configuration scraping every process of ``stack``, with ``rules`` loaded."""
    groups = {
        "broker": [stack.broker] if stack.broker else [],
        "streamer": stack.streamers,
        "collector": stack.collectors,
        "api": [stack.api] if stack.api else [],
    }
    every = _duration(interval)
    return {
        "global": {
            "scrape_interval": every,
            "scrape_timeout": _duration(min(interval, 10.0)),
            "evaluation_interval": every,
        },
        "rule_files": [str(Path(r).resolve()) for r in rules],
        "scrape_configs": [
            {
                "job_name": f"telemetry-{service}",
                "static_configs": [{"targets": [f"127.0.0.1:{p.port}" for p in procs]}],
            }
            for service, procs in groups.items()
            if procs
        ],
    }


class Prometheus(ServiceProcess):
    """``prometheus`` as a child process on 127.0.0.1:<port>, its data in ``data_dir``."""

    def __init__(
        self,
        data_dir: Path,
        *,
        binary: str | None = None,
        port: int = 0,
        sink: LogSink | None = print_sink,
    ) -> None:
        found = binary or find_prometheus()
        if found is None:
            raise FileNotFoundError(
                "prometheus is not installed (Debian: apt-get install prometheus)"
            )
        self.data_dir = data_dir
        self.config_path = data_dir / "prometheus.yml"
        port = port or free_port()
        super().__init__(
            "prometheus",
            "prometheus",
            port=port,
            env={},
            command=[
                found,
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={data_dir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--web.enable-lifecycle",
            ],
            ready_path="/-/ready",
            sink=sink,
        )

    async def start_with(self, config: dict[str, Any]) -> None:
        """Write ``config`` (JSON is YAML) and start Prometheus on it."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(config, indent=2))
        await self.start()
