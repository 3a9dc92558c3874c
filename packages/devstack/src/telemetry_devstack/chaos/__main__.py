"""``python -m telemetry_devstack.chaos``: a chaos run; exit status 1 if anything was wrong."""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
import signal
import sys
from pathlib import Path

from .runner import run_chaos
from .schedule import ChaosConfig


def parse_args(argv: list[str] | None = None) -> tuple[ChaosConfig, argparse.Namespace]:
    """The command line, as the run's settings."""
    d = ChaosConfig()
    p = argparse.ArgumentParser(prog="task chaos --", description=__doc__)
    p.add_argument("--minutes", type=float, default=d.minutes, help="faulted phase (producing)")
    p.add_argument("--seed", type=int, default=None, help="random by default; printed")
    p.add_argument("--outage-seconds", type=float, default=d.outage_seconds)
    p.add_argument("--rate", type=float, default=d.rate, help="datapoints/s a streamer")
    p.add_argument("--chunk-size", type=int, default=d.chunk_size)
    p.add_argument("--max-streamers", type=int, default=d.max_streamers)
    p.add_argument("--max-collectors", type=int, default=d.max_collectors)
    per = "(default: %s per 10 minutes, at least 1)"
    p.add_argument("--broker-kills", type=int, help=per % 4)
    p.add_argument("--collector-kills", type=int, help=per % 4)
    p.add_argument("--streamer-kills", type=int, help=per % 4)
    p.add_argument("--pg-crashes", type=int, help=per % 1)
    p.add_argument("--pg-outages", type=int, help=per % 1)
    p.add_argument("--scale-cycles", type=int, help="1 -> max -> 1 on each side " + per % 1)
    p.add_argument("--graceful-share", type=float, default=d.graceful_share)
    p.add_argument("--chunk-lease", type=float, default=d.chunk_lease)
    p.add_argument("--ack-wait", type=float, default=d.ack_wait)
    p.add_argument("--csv", type=Path, default=d.csv_path)
    p.add_argument("--dir", type=Path, default=None, help="for logs and data (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the data of a run that passed")
    args = p.parse_args(argv)
    if not (1 <= args.max_streamers <= 10 and 1 <= args.max_collectors <= 10):
        p.error("--max-streamers and --max-collectors take 1..10")
    config = ChaosConfig(
        minutes=args.minutes,
        seed=args.seed if args.seed is not None else secrets.randbelow(2**31),
        outage_seconds=args.outage_seconds,
        rate=args.rate,
        chunk_size=args.chunk_size,
        max_streamers=args.max_streamers,
        max_collectors=args.max_collectors,
        broker_kills=args.broker_kills,
        collector_kills=args.collector_kills,
        streamer_kills=args.streamer_kills,
        pg_crashes=args.pg_crashes,
        pg_outages=args.pg_outages,
        scale_cycles=args.scale_cycles,
        graceful_share=args.graceful_share,
        chunk_lease=args.chunk_lease,
        ack_wait=args.ack_wait,
        csv_path=args.csv,
    )
    return config, args


async def _run(config: ChaosConfig, args: argparse.Namespace) -> int:
    # SIGINT or SIGTERM ends the run early: every process is stopped, the database too.
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        outcome = await run_chaos(config, directory=args.dir, keep=args.keep)
    except asyncio.CancelledError:
        return 130
    return 0 if outcome.ok else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    config, args = parse_args(argv)
    return asyncio.run(_run(config, args))


if __name__ == "__main__":
    sys.exit(main())
