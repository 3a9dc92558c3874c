"""``python -m telemetry_api``: serves from API_* settings and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from .conftest import Dataset


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return e.code


@pytest.mark.system
def test_module_serves_until_sigterm(dataset: Dataset, tmp_path: Path):
    port_file = tmp_path / "port"
    env = {
        **os.environ,
        "API_DATABASE_URL": dataset.dsn,
        "API_PORT": "0",  # it binds a free port itself and writes it to API_PORT_FILE
        "API_PORT_FILE": str(port_file),
        "API_LOG_FORMAT": "json",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "telemetry_api"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the API did not report its port"
            time.sleep(0.05)
        base = f"http://127.0.0.1:{int(port_file.read_text())}"
        while True:
            try:
                if get(f"{base}/readyz") == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the API did not become ready"
            time.sleep(0.1)
        assert get(f"{base}/api/v1/gpus?limit=1") == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
