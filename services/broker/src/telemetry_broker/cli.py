"""Broker admin from a shell: list and replay dead letters, delete a consumer group.

``python -m telemetry_broker.cli dlq list telemetry`` (``task dlq:list -- telemetry``),
``python -m telemetry_broker.cli dlq replay telemetry --all`` (``task dlq:replay -- ...``),
``python -m telemetry_broker.cli group delete telemetry old-group``. The broker's URL and token
default to what ``BROKER_HOST``, ``BROKER_PORT`` and ``BROKER_TOKEN`` say (the broker's own
settings), or ``--url`` and ``--token``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import Any

import orjson
from telemetry_mq import BrokerClient, MQError, Selection

from .settings import BrokerSettings


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    settings = BrokerSettings()
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    token = settings.token.get_secret_value() if settings.token else None
    parser = argparse.ArgumentParser(prog="python -m telemetry_broker.cli", description=__doc__)
    parser.add_argument("--url", default=f"http://{host}:{settings.port}", help="broker URL")
    parser.add_argument("--token", default=token, help="bearer token (default: BROKER_TOKEN)")
    what = parser.add_subparsers(dest="what", required=True)

    dlq = what.add_parser("dlq", help="dead letters").add_subparsers(dest="action", required=True)
    show = dlq.add_parser("list", help="counts by reason and error, and a page of letters")
    show.add_argument("topic")
    show.add_argument("--limit", type=int, default=20, help="letters to show (default 20)")
    show.add_argument("--after", help="partition:offset a previous page ended at")
    show.add_argument("--reason", help="show only letters of this reason")
    show.add_argument("--json", action="store_true", help="print the broker's answer as JSON")

    replay = dlq.add_parser("replay", help="publish dead letters' records to their topic again")
    replay.add_argument("topic")
    pick = replay.add_mutually_exclusive_group(required=True)
    pick.add_argument("--all", action="store_true", help="every pending dead letter")
    pick.add_argument("--reason", help="those of this reason (e.g. max_deliveries)")
    pick.add_argument(
        "--origin",
        action="append",
        metavar="PARTITION:OFFSET",
        help="the letter of this record of the topic (repeatable)",
    )
    replay.add_argument(
        "--max-records", type=int, default=10_000, help="per request (it repeats until done)"
    )

    group = what.add_parser("group", help="consumer groups").add_subparsers(
        dest="action", required=True
    )
    delete = group.add_parser("delete", help="delete a consumer group and its state")
    delete.add_argument("topic")
    delete.add_argument("group")
    return parser.parse_args(argv)


def _origins(values: list[str] | None) -> frozenset[tuple[int, int]] | None:
    if values is None:
        return None
    out: set[tuple[int, int]] = set()
    for value in values:
        p, sep, o = value.partition(":")
        if not sep or not p.isdigit() or not o.isdigit():
            raise SystemExit(f"--origin takes PARTITION:OFFSET, not {value!r}")
        out.add((int(p), int(o)))
    return frozenset(out)


def _print_report(report: dict[str, Any]) -> None:
    print(f"{report['records']} dead letters pending in {report['dead_letter_topic']}")
    for reason, n in report["by_reason"].items():
        print(f"  {n:>10}  {reason}")
    if report["by_error"]:
        print("by error (most frequent first):")
        for row in report["by_error"]:
            print(f"  {row['records']:>10}  {row['reason']}: {row['error']}")
    for letter in report["letters"]:
        origin = letter["origin"] or {}
        value = orjson.dumps(letter["value"]).decode()
        print(
            f"{letter['partition']}:{letter['offset']}  origin "
            f"{origin.get('partition')}:{origin.get('offset')}  {letter['reason']}  "
            f"{letter['error']}  {value[:200]}"
        )
    if report["next"]:
        print(f"more: --after {report['next']}")


async def run(args: argparse.Namespace) -> int:
    """Do what ``args`` say; the exit status."""
    async with BrokerClient(args.url, token=args.token, max_retries=2) as mq:
        if args.what == "group":
            await mq.delete_group(args.topic, args.group)
            print(f"deleted group {args.group} of {args.topic}")
            return 0
        if args.action == "list":
            report = await mq.dead_letters(
                args.topic, limit=args.limit, after=args.after, reason=args.reason
            )
            if args.json:
                print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
            else:
                _print_report(report)
            return 0
        selection = Selection(all=args.all, reason=args.reason, origins=_origins(args.origin))
        total = 0
        while True:
            replayed, remaining = await mq.replay_dead_letters(
                args.topic, selection, max_records=args.max_records
            )
            total += replayed
            if not remaining or not replayed:
                break
        print(f"replayed {total} records to {args.topic}; {remaining} selected still pending")
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m telemetry_broker.cli``."""
    args = parse_args(argv)
    try:
        return asyncio.run(run(args))
    except MQError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
