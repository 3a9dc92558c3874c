"""Helpers for tests that talk to real processes: wait on conditions, read metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp


async def wait_for(condition: Callable[[], Awaitable[Any]], *, timeout: float, what: str) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while loop.time() < deadline:
        last = await condition()
        if last:
            return last
        await asyncio.sleep(0.2)  # poll interval of a deadline-bounded condition
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


async def scrape(url: str, name: str, **labels: str) -> float:
    """Sum the samples of metric ``name`` (matching ``labels``) on ``url``/metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as r:
        text = await r.text()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


async def until(
    condition: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.005
) -> Any:
    """Like ``wait_for`` for a cheap in-process condition: checked every few milliseconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (last := condition()):
        if loop.time() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        await asyncio.sleep(interval)  # poll interval of a deadline-bounded condition
    return last


def parked_fetches(topic: str) -> list[asyncio.Task[Any]]:
    """The tasks of this loop whose broker fetch of ``topic`` waits for records.

    Found through each task's await chain: a ``fetch``/``fetch_many`` of the broker core whose
    innermost coroutine is a ``wait`` (the wake-up it sleeps on), not a commit on its way there.
    How a test knows a long-poll reached its wait point, so that what it does next (publish,
    drain, close) is what must end the wait; and that the wait is gone once it was cancelled.
    """
    found = []
    for task in asyncio.all_tasks():
        chain: list[Any] = [task.get_coro()]
        while hasattr(inner := getattr(chain[-1], "cr_await", None), "cr_code"):
            chain.append(inner)  # down to the innermost coroutine (it awaits a plain future)
        fetching = any(
            c.cr_code.co_name in ("fetch", "fetch_many")
            and "telemetry_mq" in c.cr_code.co_filename
            and c.cr_frame.f_locals.get("topic") == topic
            for c in chain
            if getattr(c, "cr_frame", None) is not None
        )
        if fetching and chain[-1].cr_code.co_name == "wait":
            found.append(task)
    return found
