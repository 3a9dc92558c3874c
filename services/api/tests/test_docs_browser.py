"""Swagger UI at /docs renders every operation in a real headless browser with no internet."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from .conftest import LiveServer

CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install -y chromium)"
)
def test_docs_render_the_operations_offline(live_server: LiveServer, tmp_path: Path):
    result = subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",  # tests run as root in CI
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            # Offline: no name resolves, and anything not on loopback goes to a dead proxy.
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--proxy-server=http://127.0.0.1:9",
            "--virtual-time-budget=20000",
            "--dump-dom",
            f"{live_server.url}/docs",
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    dom = result.stdout
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'class="swagger-ui' in dom, dom[:2000]
    paths = set(re.findall(r'data-path="([^"]+)"', dom))
    assert paths == {
        "/api/v1/gpus",
        "/api/v1/gpus/{gpu_id}",
        "/api/v1/gpus/{gpu_id}/telemetry",
        "/api/v1/metrics",
    }, dom[:4000]
    assert "List a GPU's datapoints in a time window" in dom.replace("&#39;", "'")
    assert "Failed to load API definition" not in dom
