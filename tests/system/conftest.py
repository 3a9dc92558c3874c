"""Fixtures that run the real pipeline as processes on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiopg
import pytest
from telemetry_devstack import Stack, StackConfig

from conftest import CSV_PATH


@pytest.fixture
async def make_stack(
    fresh_database_url: str, db: aiopg.Pool, tmp_path: Path
) -> AsyncIterator[Callable[..., Awaitable[Stack]]]:
    """Start a whole stack on this test's database; everything is stopped afterwards."""
    stacks: list[Stack] = []

    async def start(**overrides: Any) -> Stack:
        env = overrides.pop("env", {})
        config = StackConfig(
            database_url=fresh_database_url,
            data_dir=tmp_path,
            csv_path=CSV_PATH,
            api_port=0,
            log_format="json",
            extra_env=env,
            **overrides,
        )
        stack = Stack(config, sink=None)
        stacks.append(stack)
        await stack.start()
        return stack

    yield start
    for stack in stacks:
        await stack.stop()
