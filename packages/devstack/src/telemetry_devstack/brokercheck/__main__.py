"""``python -m telemetry_devstack.brokercheck``: run the broker checker; exit 1 on a violation."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from . import CheckConfig, check_file, describe, new_seed, run_check


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    d = CheckConfig(seed=0)
    p = argparse.ArgumentParser(
        prog="python -m telemetry_devstack.brokercheck",
        description="Concurrent producers and consumers against a broker killed at random; "
        "every operation recorded, then checked.",
    )
    p.add_argument("--minutes", type=float, default=1.0, help="length of the workload")
    p.add_argument("--seed", type=int, default=None, help="replay a run (default: a new seed)")
    p.add_argument(
        "--kills",
        type=int,
        default=None,
        help="SIGKILLs spread over the run (default: one per 15 s)",
    )
    p.add_argument("--terms", type=int, default=None, help="SIGTERMs (default: kills / 5)")
    p.add_argument("--topic", default=d.topic, help="the topic to use (created at start)")
    p.add_argument("--startup-kill-rate", type=float, default=d.startup_kill_rate)
    p.add_argument("--partitions", type=int, default=d.partitions)
    p.add_argument("--groups", type=int, default=d.groups)
    p.add_argument("--producers", type=int, default=d.producers)
    p.add_argument("--consumers", type=int, default=d.consumers, help="per group")
    p.add_argument("--rate", type=float, default=d.rate, help="records/s, all producers")
    p.add_argument("--batch", type=int, default=d.batch, help="largest publish")
    p.add_argument("--max-deliveries", type=int, default=d.max_deliveries)
    p.add_argument("--ack-wait", type=float, default=d.ack_wait, help="longest lease (s)")
    p.add_argument("--cancel-rate", type=float, default=d.cancel_rate)
    p.add_argument("--values", choices=("plain", "multiline", "hostile"), default=d.values)
    p.add_argument("--max-fetch-bytes", type=int, default=d.max_fetch_bytes)
    p.add_argument("--max-backlog-bytes", type=int, default=d.max_backlog_bytes)
    p.add_argument("--segment-bytes", type=int, default=d.segment_bytes)
    p.add_argument("--wal-segment-bytes", type=int, default=d.wal_segment_bytes)
    p.add_argument("--retention-age", type=float, default=d.retention_age)
    p.add_argument(
        "--broker-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra broker setting (repeatable)",
    )
    p.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="PROPERTY",
        help="report violations of this property without failing (a known defect; repeatable)",
    )
    p.add_argument("--dir", type=Path, default=None, help="where the run's files go")
    p.add_argument("--keep", action="store_true", help="keep the files of a passing run too")
    p.add_argument(
        "--check", type=Path, default=None, metavar="HISTORY", help="only check a saved history"
    )
    args = p.parse_args(argv)
    if args.minutes <= 0:
        p.error("--minutes must be positive")
    for item in args.broker_env:
        if "=" not in item:
            p.error(f"--broker-env takes KEY=VALUE, not {item!r}")
    return args


def config_from(args: argparse.Namespace) -> CheckConfig:
    """The run's configuration from the command line."""
    seconds = args.minutes * 60
    kills = args.kills if args.kills is not None else max(1, round(seconds / 15))
    return CheckConfig(
        seed=args.seed if args.seed is not None else new_seed(),
        topic=args.topic,
        seconds=seconds,
        kills=kills,
        terms=args.terms if args.terms is not None else kills // 5,
        startup_kill_rate=args.startup_kill_rate,
        partitions=args.partitions,
        groups=args.groups,
        producers=args.producers,
        consumers=args.consumers,
        rate=args.rate,
        batch=args.batch,
        max_deliveries=args.max_deliveries,
        ack_wait=args.ack_wait,
        cancel_rate=args.cancel_rate,
        values=args.values,
        max_fetch_bytes=args.max_fetch_bytes,
        max_backlog_bytes=args.max_backlog_bytes,
        segment_bytes=args.segment_bytes,
        wal_segment_bytes=args.wal_segment_bytes,
        retention_age=args.retention_age,
        broker_env=tuple(
            sorted((k, v) for k, _, v in (kv.partition("=") for kv in args.broker_env))
        ),
        allow=tuple(args.allow),
    )


def replay_command(config: CheckConfig) -> str:
    """The command line that replays ``config``'s run (its seed and every setting)."""
    d = CheckConfig(seed=0)
    parts = [
        "python -m telemetry_devstack.brokercheck",
        f"--seed {config.seed}",
        f"--minutes {config.seconds / 60:g}",
        f"--kills {config.kills}",
        f"--terms {config.terms}",
    ]
    for name in (
        "topic", "startup_kill_rate", "partitions", "groups", "producers", "consumers", "rate",
        "batch", "max_deliveries", "ack_wait", "cancel_rate", "values", "max_fetch_bytes",
        "max_backlog_bytes", "segment_bytes", "wal_segment_bytes", "retention_age",
    ):  # fmt: skip
        value = getattr(config, name)
        if value != getattr(d, name):
            parts.append(f"--{name.replace('_', '-')} {value}")
    parts.extend(f"--broker-env {k}={v}" for k, v in config.broker_env)
    parts.extend(f"--allow {prop}" for prop in config.allow)
    return " ".join(parts)


def main(argv: list[str] | None = None) -> int:
    """Entry point: 0 when every property held, 1 otherwise."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    if args.check is not None:
        config, violations, summary = check_file(args.check)
        allow = tuple(args.allow) or config.allow
        print(f"seed: {config.seed} (history {args.check})")
        print("\n".join(summary.lines() + describe(violations, allow, limit=1000)))
        return 1 if any(v.prop not in allow for v in violations) else 0
    config = config_from(args)
    print(
        f"seed {config.seed}: {config.seconds:g} s, {config.kills} kills, {config.terms} "
        f"terms; replay with: {replay_command(config)}",
        flush=True,
    )
    outcome = asyncio.run(run_check(config, directory=args.dir, keep=args.keep))
    print(outcome.report(), flush=True)
    if not outcome.ok:
        print(f"replay: {replay_command(config)}")
        print(f"re-check: python -m telemetry_devstack.brokercheck --check {outcome.history}")
    return 0 if outcome.ok else 1


if __name__ == "__main__":
    sys.exit(main())
