"""Serve a Quart app with Hypercorn, stopping gracefully on SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import logging.config
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hypercorn.asyncio import serve
from hypercorn.config import Config
from quart import Quart

from .logs import logging_config
from .settings import ServiceSettings

log = logging.getLogger(__name__)


async def wait_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to ``seconds``, waking early when ``stop`` is set; True if it was set."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        return False
    return True


def draining(app: Quart) -> asyncio.Event:
    """Set as soon as a stop signal arrives, before Hypercorn drains open requests.

    Long-running handlers (long-polls) wait on it too, so they answer at once
    instead of holding the shutdown until their own timeout.
    """
    event: asyncio.Event = app.extensions.setdefault("telemetry_draining", asyncio.Event())
    return event


@dataclass(frozen=True, slots=True)
class _Exit:
    code: int
    grace: float | None


def _stop_event(app: Quart) -> asyncio.Event:
    event: asyncio.Event = app.extensions.setdefault("telemetry_stop", asyncio.Event())
    return event


def stop(app: Quart, *, exit_code: int = 0, grace: float | None = None) -> None:
    """Stop serving as a stop signal does, then exit the process with ``exit_code``.

    For a service that cannot go on (a fatal error: a non-zero code, so its supervisor
    restarts it): open requests get at most ``grace`` seconds (instead of the graceful
    timeout) before the app's shutdown runs. The first non-zero code asked for wins.
    """
    previous: _Exit | None = app.extensions.get("telemetry_exit")
    if previous is None or (exit_code and not previous.code):
        app.extensions["telemetry_exit"] = _Exit(exit_code, grace)
    draining(app).set()
    _stop_event(app).set()


def exit_code(app: Quart) -> int:
    """The code the process exits with once ``app`` stopped (0 unless ``stop`` said so)."""
    request: _Exit | None = app.extensions.get("telemetry_exit")
    return 0 if request is None else request.code


def hypercorn_config(settings: ServiceSettings) -> Config:
    """The Hypercorn config for a service: one worker, our logging, our graceful timeout."""
    config = Config()
    config.bind = [f"{settings.host}:{settings.port}"]
    config.graceful_timeout = settings.graceful_timeout
    config.logconfig_dict = logging_config(settings.log_level, settings.log_format)
    config.accesslog = None
    config.keep_alive_timeout = 75
    # Hypercorn closes a keep-alive connection after 1000 requests by default; our clients
    # (streamers, collectors) keep a few connections for their whole life, and reconnecting
    # every 1000 requests cost the broker about 8 % of its batch-100 throughput.
    config.keep_alive_max_requests = 1_000_000
    config.include_server_header = False  # one header less to write; nothing to advertise
    return config


def listen(host: str, port: int, backlog: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (port 0: the kernel picks a free one), listening.

    Binding here rather than in Hypercorn tells us the port before Hypercorn takes the socket
    over, and the port is ours from the bind on: a parent that asks for port 0 never races
    another process for it. The options are the ones Hypercorn sets on a socket it binds.
    """
    host = host.strip("[]")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def write_port_file(path: Path, port: int) -> None:
    """Write ``port`` to ``path`` atomically: a reader sees no file or the whole number."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(f"{port}\n")
    tmp.replace(path)


async def serve_until_stopped(app: Quart, settings: ServiceSettings) -> int:
    """Serve ``app`` until SIGTERM/SIGINT (or ``stop``), then drain requests and run the app's
    shutdown. Returns the code the process should exit with (``exit_code``).

    The socket is bound and listening before the app starts up; its port goes to
    ``settings.port_file`` when one is set (connections wait in the backlog until Hypercorn
    accepts them, and ``/readyz`` says when the app can work).
    """
    stopped = _stop_event(app)
    drain = draining(app)

    def on_signal() -> None:
        log.info("stop signal received; draining")
        drain.set()
        stopped.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    config = hypercorn_config(settings)

    async def shutdown_trigger() -> None:
        await stopped.wait()
        request: _Exit | None = app.extensions.get("telemetry_exit")
        if request is not None and request.grace is not None:
            # Read by Hypercorn after the trigger returns: open requests get this long.
            config.graceful_timeout = min(config.graceful_timeout, request.grace)

    sock = listen(settings.host, settings.port, config.backlog)
    port = int(sock.getsockname()[1])
    config.bind = [f"fd://{sock.detach()}"]  # Hypercorn owns (and closes) the socket now
    log.info("listening on %s:%d", settings.host, port)
    if settings.port_file is not None:
        write_port_file(settings.port_file, port)
    try:
        await serve(app, config, shutdown_trigger=shutdown_trigger)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    code = exit_code(app)
    if code:
        log.info("stopped; exiting with code %d", code)
    else:
        log.info("stopped")
    return code


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed (Hypercorn's ``uvloop`` extra), else None.

    Its transports and scheduling in C leave more of the one CPU of a service's event loop
    to the service: about 4 % more broker throughput at 100-record batches.
    """
    try:
        import uvloop
    except ImportError:  # pragma: no cover - a platform without uvloop: the default loop
        return None
    return uvloop.new_event_loop


def run(app: Quart, settings: ServiceSettings) -> None:
    """Configure logging once and serve ``app`` (the body of every ``__main__``)."""
    logging.config.dictConfig(logging_config(settings.log_level, settings.log_format))
    app.config["BACKGROUND_TASK_SHUTDOWN_TIMEOUT"] = settings.shutdown_timeout
    code = asyncio.run(serve_until_stopped(app, settings), loop_factory=loop_factory())
    if code:
        raise SystemExit(code)
