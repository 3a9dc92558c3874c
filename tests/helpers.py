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
