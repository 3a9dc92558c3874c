"""A randomized checker for the broker process, in the spirit of Jepsen.

Producers and consumers work concurrently against a real ``python -m telemetry_broker``
through the real HTTP client, while a nemesis kills the broker (SIGKILL, sometimes while it
recovers, sometimes a clean SIGTERM) and restarts it on the same data directory. Every
operation and its outcome goes to a history (``history.py``); after a final restart and a
drain the history is checked (``checker.py`` lists the properties). ``workload.py`` says what
the seed decides and what it cannot.

``python -m telemetry_devstack.brokercheck --minutes N --seed S --kills K`` runs it; a failing
run keeps its directory (history, broker log, data) and prints the seed to replay it.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .checker import Summary, Violation, check
from .history import History, load
from .workload import CheckConfig, Run

__all__ = [
    "CheckConfig",
    "Outcome",
    "Summary",
    "Violation",
    "check",
    "check_file",
    "describe",
    "load",
    "new_seed",
    "run_check",
]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a run found: its figures, the violations, and where its files are (if kept)."""

    config: CheckConfig
    summary: Summary
    violations: list[Violation]
    directory: Path
    kept: bool

    @property
    def failures(self) -> list[Violation]:
        """The violations of properties not in ``config.allow``."""
        return [v for v in self.violations if v.prop not in self.config.allow]

    @property
    def ok(self) -> bool:
        """Whether every property held (the allowed ones aside)."""
        return not self.failures

    @property
    def history(self) -> Path:
        """The history file (gone unless ``kept``)."""
        return self.directory / "history.jsonl"

    def report(self, limit: int = 10) -> str:
        """The seed, the figures and the violations (at most ``limit`` per property)."""
        return "\n".join(
            [f"seed: {self.config.seed}", *self.summary.lines()]
            + describe(self.violations, self.config.allow, limit)
            + (
                [f"history: {self.history}", f"broker log: {self.directory / 'broker.log'}"]
                if self.kept
                else []
            )
        )


def describe(violations: list[Violation], allow: tuple[str, ...], limit: int = 10) -> list[str]:
    """Violations grouped by property, at most ``limit`` each; allowed ones marked as such."""
    by_prop: dict[str, list[Violation]] = {}
    for v in violations:
        by_prop.setdefault(v.prop, []).append(v)
    failed = sum(len(vs) for prop, vs in by_prop.items() if prop not in allow)
    lines = [f"FAILED: {failed} violations" if failed else "every property held"]
    for prop, vs in by_prop.items():
        note = " (allowed: a known defect)" if prop in allow else ""
        lines.append(f"[{prop}] {len(vs)}{note}")
        lines.extend(f"  - {v.message}" for v in vs[: limit if not note else 3])
    return lines


def new_seed() -> int:
    """A fresh seed (printed by every run, so any run can be replayed)."""
    return random.SystemRandom().randrange(1, 2**31)


async def run_check(
    config: CheckConfig, *, directory: Path | None = None, keep: bool = False
) -> Outcome:
    """Run the workload and the faults of ``config``, then check the history.

    The run's files (``history.jsonl``, ``broker.log``, ``data/``) go to ``directory`` (a new
    temporary one by default); they are deleted after a run that passed unless ``keep``.
    """
    base = directory or Path(tempfile.mkdtemp(prefix=f"brokercheck-{config.seed}-"))
    base.mkdir(parents=True, exist_ok=True)
    history = History(base / "history.jsonl", {"config": config.to_json()})
    try:
        with open(base / "broker.log", "w") as broker_log:
            await Run(config, history, base / "data", broker_log).execute()
    finally:
        history.close()
    violations, summary = check(*load(history.path))
    kept = keep or any(v.prop not in config.allow for v in violations)
    if not kept:
        shutil.rmtree(base, ignore_errors=True)
    return Outcome(config, summary, violations, base, kept)


def check_file(path: Path) -> tuple[CheckConfig, list[Violation], Summary]:
    """Check a saved history again (after changing the checker, or to read it)."""
    header, ops = load(path)
    violations, summary = check(header, ops)
    return CheckConfig.from_json(header["config"]), violations, summary
