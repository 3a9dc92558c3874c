"""Service processes on loopback: start, wait until ready, stop gracefully, prefix their logs."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
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
    """A TCP port that was free a moment ago (another process may take it before you bind it).

    Only for a process that cannot report the port it bound (Prometheus, ``prometheus.py``) or
    must come back on the same port across restarts while its clients keep the URL (the broker
    checker restarts the broker so); even then, prefer to start it once with
    ``ServiceProcess(prefix=..., port=0)`` and reuse the port it reports. Our services never
    need it.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def refused_port(host: str = "127.0.0.1") -> Iterator[int]:
    """A port that refuses connections while the block runs (bound by us, never listening).

    For tests of an unreachable peer: holding the port keeps any other process off it, which
    a port that was merely free a moment ago would not.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        yield int(s.getsockname()[1])


def print_sink(name: str, line: str) -> None:
    """Write a child's line to stdout behind its name."""
    sys.stdout.write(f"{name:<12} | {line}\n")
    sys.stdout.flush()


class ServiceProcess:
    """One service (``python -m <module>``) as a child process on 127.0.0.1:<port>.

    With ``prefix`` (the env prefix of the service's settings, e.g. ``BROKER``) the child
    binds ``port`` itself, 0 by default so the kernel picks a free one, and writes the port
    it bound to ``<PREFIX>_PORT_FILE`` (``telemetry_kit.serve``); :meth:`wait_port` reads it.
    Nothing can take the port between choosing and binding it, as it could if the parent
    picked a free port and passed it on. Without ``prefix``, ``port`` is where the child
    serves (0: nowhere known).
    With ``command`` the child runs that program instead (``module`` is then only a label), and
    ``ready_path`` names its readiness route.
    """

    def __init__(
        self,
        name: str,
        module: str,
        *,
        env: Mapping[str, str],
        prefix: str | None = None,
        port: int = 0,
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
        self._prefix = prefix
        self._port_file: Path | None = None
        self.lines: list[str] = []
        if prefix is not None:
            self.env[f"{prefix}_PORT"] = str(port)
            self.port = 0  # known once the child reports it

    @property
    def url(self) -> str:
        """The service's base URL (once its port is known: after :meth:`wait_port`)."""
        if not self.port:
            raise RuntimeError(f"{self.name}: the port is not known yet (await wait_port())")
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
        if self._prefix is not None:
            self._port_file = Path(tempfile.mkdtemp(prefix=f"telemetry-{self.name}-")) / "port"
            env[f"{self._prefix}_PORT_FILE"] = str(self._port_file)
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

    def _exited(self) -> RuntimeError:
        tail = "\n".join(self.lines[-30:])
        return RuntimeError(f"{self.name} exited with {self.returncode}:\n{tail}")

    def _late(self, what: str, timeout: float) -> TimeoutError:
        tail = "\n".join(self.lines[-30:])
        return TimeoutError(f"{self.name} {what} after {timeout}s:\n{tail}")

    async def wait_port(self, timeout: float = 30.0) -> int:
        """Wait until the child reports the port it bound; raise if it dies or time runs out."""
        if self.port or self._port_file is None:
            return self.port
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            with contextlib.suppress(FileNotFoundError):
                self.port = int(self._port_file.read_text())  # written whole (a rename)
                return self.port
            if self.returncode is not None:
                raise self._exited()
            if asyncio.get_running_loop().time() > deadline:
                raise self._late("reported no port", timeout)
            await asyncio.sleep(0.02)  # polling interval of a condition with a deadline

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Poll the ready route until it answers 200; raise if the process dies or time runs out."""
        deadline = asyncio.get_running_loop().time() + timeout
        await self.wait_port(timeout)
        async with aiohttp.ClientSession() as session:
            while True:
                if self.returncode is not None:
                    raise self._exited()
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(
                        f"{self.url}{self.ready_path}", timeout=aiohttp.ClientTimeout(total=2)
                    ) as r:
                        if r.status == 200:
                            return
                if asyncio.get_running_loop().time() > deadline:
                    raise self._late("not ready", timeout)
                await asyncio.sleep(0.1)  # polling interval of a condition with a deadline

    async def wait(self) -> int:
        """Wait for the process to exit; return its code."""
        assert self._proc is not None
        code = await self._proc.wait()
        if self._pump is not None:
            await self._pump
        if self._port_file is not None:
            shutil.rmtree(self._port_file.parent, ignore_errors=True)
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
