"""Service processes on loopback: start, wait until ready, stop gracefully, prefix their logs."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import aiohttp

log = logging.getLogger(__name__)

LogSink = Callable[[str, str], None]

_PR_SET_PDEATHSIG = 1
_prctl: Callable[..., int] | None
try:  # loaded here, not in the child between fork and exec
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # pragma: no cover - not Linux
    _prctl = None


def die_with_parent() -> None:
    """A ``preexec_fn``: the child gets SIGTERM when its parent dies, even by SIGKILL."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (an exited process not yet reaped counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def print_sink(name: str, line: str) -> None:
    """Write a child's line to stdout behind its name."""
    sys.stdout.write(f"{name:<12} | {line}\n")
    sys.stdout.flush()


class ServiceProcess:
    """One service (``python -m <module>``) as a child process on 127.0.0.1:<port>.

    With ``command`` the child runs that program instead (``module`` is then only a label), and
    ``ready_path`` names its readiness route.
    """

    def __init__(
        self,
        name: str,
        module: str,
        *,
        port: int,
        env: Mapping[str, str],
        args: Sequence[str] = (),
        sink: LogSink | None = print_sink,
        command: Sequence[str] | None = None,
        ready_path: str = "/readyz",
    ) -> None:
        self.name = name
        self.module = module
        self.port = port
        self.env = dict(env)
        self.args = list(args)
        self.command = list(command) if command is not None else [sys.executable, "-m", module]
        self.ready_path = ready_path
        self._sink = sink
        self._proc: asyncio.subprocess.Process | None = None
        self._pump: asyncio.Task[None] | None = None
        self.lines: list[str] = []

    @property
    def url(self) -> str:
        """The service's base URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The child's process id."""
        assert self._proc is not None
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        """The exit code, or ``None`` while running."""
        return None if self._proc is None else self._proc.returncode

    async def start(self) -> None:
        """Spawn the process with the current environment plus ``env``."""
        env = {**os.environ, **self.env}
        self._proc = await asyncio.create_subprocess_exec(
            *self.command,
            *self.args,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            # A process group of its own: a terminal's Ctrl-C reaches only this parent, which
            # stops the services in order (producers first, the broker last); the parent's
            # death still ends it.
            process_group=0,
            preexec_fn=die_with_parent,
        )
        self._pump = asyncio.create_task(self._read_output())

    async def _read_output(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        while line := await self._proc.stdout.readline():
            text = line.decode(errors="replace").rstrip()
            self.lines.append(text)
            if len(self.lines) > 5000:
                del self.lines[:1000]
            if self._sink is not None:
                self._sink(self.name, text)

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Poll the ready route until it answers 200; raise if the process dies or time runs out."""
        deadline = asyncio.get_running_loop().time() + timeout
        async with aiohttp.ClientSession() as session:
            while True:
                if self.returncode is not None:
                    tail = "\n".join(self.lines[-30:])
                    raise RuntimeError(f"{self.name} exited with {self.returncode}:\n{tail}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(
                        f"{self.url}{self.ready_path}", timeout=aiohttp.ClientTimeout(total=2)
                    ) as r:
                        if r.status == 200:
                            return
                if asyncio.get_running_loop().time() > deadline:
                    tail = "\n".join(self.lines[-30:])
                    raise TimeoutError(f"{self.name} not ready after {timeout}s:\n{tail}")
                await asyncio.sleep(0.1)  # polling interval of a condition with a deadline

    async def wait(self) -> int:
        """Wait for the process to exit; return its code."""
        assert self._proc is not None
        code = await self._proc.wait()
        if self._pump is not None:
            await self._pump
        return code

    async def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, wait up to ``timeout``, then SIGKILL; return the exit code."""
        if self._proc is None:
            return 0
        if self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signal.SIGTERM)
            try:
                return await asyncio.wait_for(self.wait(), timeout)
            except TimeoutError:
                log.warning("%s did not stop in %ss; killing it", self.name, timeout)
                self.kill()
        return await self.wait()

    def kill(self) -> None:
        """SIGKILL the process (a crash, as far as it can tell)."""
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
