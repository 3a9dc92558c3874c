"""``python -m telemetry_api.maintenance`` (``telemetry-maintenance``): the storage's upkeep job.

Creates raw partitions ahead, builds the 1-minute and 1-hour rollups, applies retention
(``telemetry_store.maintenance``). One run by default, the way a Kubernetes CronJob runs it;
``--every SECONDS`` repeats it until SIGTERM or SIGINT. Several may run at once anywhere: a run
that finds another one working (advisory lock) does nothing and exits 0. Settings come from
``MAINTENANCE_*`` variables; exit status 1 when the run failed (the failure is recorded in
``maintenance_status`` too, which the API exports as metrics).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import logging.config
import signal
import sys
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Literal

import psycopg2
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from telemetry_kit import logging_config, wait_or_stop
from telemetry_store import Policy, Report, create_pool, run_maintenance

log = logging.getLogger(__name__)

# The database being away (refused, lost, timed out): expected during an outage, and said in
# one line; anything else is logged with its traceback.
_UNAVAILABLE = (psycopg2.OperationalError, psycopg2.InterfaceError, OSError, TimeoutError)


class MaintenanceSettings(BaseSettings):
    """Retention of each resolution and how the job cuts its work (``MAINTENANCE_*``)."""

    model_config = SettingsConfigDict(env_prefix="MAINTENANCE_", frozen=True, extra="ignore")

    database_url: SecretStr | None = Field(
        None, description="libpq DSN of the database (the API's own when it runs the job)."
    )
    raw_retention_days: float = Field(7, gt=0, description="Days raw datapoints are kept.")
    rollup_1m_retention_days: float = Field(90, gt=0, description="Days of 1-minute rollups.")
    rollup_1h_retention_days: float = Field(730, gt=0, description="Days of 1-hour rollups.")
    partition_hours: int = Field(24, ge=1, description="Width of a raw partition (hours).")
    ahead_days: float = Field(3, ge=0, description="Days of raw partitions created ahead.")
    rollup_delay_seconds: float = Field(
        60, ge=0, description="A minute is rolled up this long after it ends."
    )
    chunk_minutes: int = Field(15, ge=1, description="Raw minutes rolled up per transaction.")
    lock_timeout_seconds: float = Field(
        1, gt=0, description="Longest wait for the insert transactions in flight (bounds move)."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["auto", "json", "text"] = "auto"

    def policy(self) -> Policy:
        """The store's policy from these settings (raises ValueError when inconsistent)."""
        return Policy(
            raw_retention=timedelta(days=self.raw_retention_days),
            rollup_1m_retention=timedelta(days=self.rollup_1m_retention_days),
            rollup_1h_retention=timedelta(days=self.rollup_1h_retention_days),
            partition_width=timedelta(hours=self.partition_hours),
            ahead=timedelta(days=self.ahead_days),
            rollup_delay=timedelta(seconds=self.rollup_delay_seconds),
            chunk=timedelta(minutes=self.chunk_minutes),
            lock_timeout=timedelta(seconds=self.lock_timeout_seconds),
        )


def describe(report: Report) -> str:
    """One line about a run."""
    if report.skipped:
        return "another run holds the lock; skipped"
    slowest = max(report.drop_seconds, default=0.0)
    return (
        f"done in {report.seconds:.2f}s: {len(report.created)} partitions created,"
        f" {len(report.dropped)} dropped (slowest {slowest:.3f}s), {report.rows_1m} minute"
        f" and {report.rows_1h} hour rollup rows written, {report.late_minutes} late minutes"
    )


async def run_once(dsn: str, policy: Policy) -> Report:
    """One run on a connection of its own (no statement timeout: a long backlog takes long)."""
    pool = await create_pool(dsn, minsize=0, maxsize=1, timeout=3600.0)
    try:
        return await run_maintenance(pool, policy)
    finally:
        pool.close()
        await pool.wait_closed()


async def run_every(
    dsn: str,
    policy: Policy,
    every: float,
    stop: asyncio.Event,
    after: Callable[[], Awaitable[None]] | None = None,
) -> int:
    """Run, then wait ``every`` seconds, until ``stop``; a failed run is logged and retried.
    ``after`` is awaited after each run (the API refreshes the job's metrics)."""
    while not stop.is_set():
        try:
            log.info("maintenance %s", describe(await run_once(dsn, policy)))
        except _UNAVAILABLE as e:
            first = str(e).strip().split("\n")[0] or type(e).__name__
            log.warning("maintenance: database unavailable (%s); next run in %.0fs", first, every)
        except Exception:
            log.exception("maintenance failed; next run in %.0fs", every)
        if after is not None:
            await after()
        if await wait_or_stop(stop, every):
            break
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: one run, or ``--every SECONDS``."""
    parser = argparse.ArgumentParser(prog="telemetry-maintenance", description=__doc__)
    parser.add_argument("--every", type=float, help="repeat every this many seconds")
    args = parser.parse_args(argv)
    settings = MaintenanceSettings()
    logging.config.dictConfig(logging_config(settings.log_level, settings.log_format))
    if settings.database_url is None:
        log.error("MAINTENANCE_DATABASE_URL is not set")
        return 2
    try:
        policy = settings.policy()
    except ValueError as e:
        log.error("invalid maintenance settings: %s", e)
        return 2
    dsn = settings.database_url.get_secret_value()
    if args.every is None:
        try:
            report = asyncio.run(run_once(dsn, policy))
        except Exception:
            log.exception("maintenance failed")
            return 1
        log.info("maintenance %s", describe(report))
        return 0

    async def loop() -> int:
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        return await run_every(dsn, policy, args.every, stop)

    return asyncio.run(loop())


if __name__ == "__main__":
    sys.exit(main())
