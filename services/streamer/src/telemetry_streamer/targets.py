"""Where the exporters are: a static list, a file, and DNS names resolved to every address.

A DNS name is how Kubernetes lists a DaemonSet: a headless Service (``clusterIP: None``) has
one A/AAAA record per ready pod, so resolving it gives every dcgm-exporter. Discovery runs
again every refresh; a source that fails then (a file being rewritten, DNS away) keeps what
it found before, so a hiccup does not drop targets.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

log = logging.getLogger(__name__)


class TargetError(ValueError):
    """A target or DNS name that is not an address."""


def normalize(target: str, path: str = "/metrics") -> str:
    """The URL of a target given as ``host:port`` or as a URL (``path`` when it has none)."""
    text = target.strip()
    if "://" not in text:
        text = f"http://{text}"
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TargetError(f"not an exporter address: {target!r}")
    try:
        port = parts.port
    except ValueError as e:
        raise TargetError(f"bad port in {target!r}") from e
    host = parts.hostname
    if ":" in host:  # an IPv6 literal goes back in brackets
        host = f"[{host}]"
    netloc = host if port is None else f"{host}:{port}"
    return f"{parts.scheme}://{netloc}{parts.path or path}"


def split_list(text: str) -> list[str]:
    """Entries of a comma- or newline-separated list, without blanks and ``#`` comments."""
    entries = []
    for line in text.replace(",", "\n").splitlines():
        entry = line.split("#", 1)[0].strip()
        if entry:
            entries.append(entry)
    return entries


def parse_dns(entry: str) -> tuple[str, int]:
    """``name:port`` (a DNS name and the exporters' port)."""
    name, sep, port = entry.strip().rpartition(":")
    if not sep or not name or not port.isdigit() or not 0 < int(port) < 65536:
        raise TargetError(f"a DNS target is name:port, not {entry!r}")
    return name.strip("[]"), int(port)


def _url(address: str, port: int, path: str) -> str:
    host = f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
    return f"http://{host}:{port}{path}"


@dataclass
class Discovery:
    """Every target the configured sources list, as URLs."""

    static: Sequence[str] = ()
    file: Path | None = None
    dns: Sequence[tuple[str, int]] = ()
    path: str = "/metrics"
    _known: dict[str, list[str]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.static = [normalize(t, self.path) for t in self.static]

    @property
    def configured(self) -> bool:
        """Whether any source is configured."""
        return bool(self.static or self.file or self.dns)

    async def resolve(self) -> list[str]:
        """The targets listed now (sorted, each once)."""
        found = set(self.static)
        if self.file is not None:
            found.update(self._from_file(self.file))
        for name, port in self.dns:
            found.update(await self._from_dns(name, port))
        return sorted(found)

    def _from_file(self, path: Path) -> list[str]:
        key = f"file:{path}"
        try:
            entries = split_list(path.read_text())
            urls = [normalize(e, self.path) for e in entries]
        except (OSError, UnicodeDecodeError, TargetError) as e:
            log.warning("cannot read the targets file %s (%s); keeping its last list", path, e)
            return self._known.get(key, [])
        self._known[key] = urls
        return urls

    async def _from_dns(self, name: str, port: int) -> list[str]:
        key = f"dns:{name}:{port}"
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(name, port, type=socket.SOCK_STREAM)
        except OSError as e:
            log.warning(
                "cannot resolve %s (%s); keeping its last %d address(es)",
                name,
                e,
                len(self._known.get(key, [])),
            )
            return self._known.get(key, [])
        urls = sorted({_url(str(info[4][0]).split("%", 1)[0], port, self.path) for info in infos})
        self._known[key] = urls
        return urls
