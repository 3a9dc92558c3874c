"""One HTTP scrape of an exporter's ``/metrics``, its failures sorted by kind."""

from __future__ import annotations

import asyncio
from typing import Final

import aiohttp

# Why a scrape failed (the ``kind`` label of the failure metrics).
TIMEOUT: Final = "timeout"  # no whole answer within the scrape timeout
CONNECTION: Final = "connection"  # refused, reset, unreachable, DNS
HTTP_STATUS: Final = "http_status"  # an answer other than 200
TOO_LARGE: Final = "too_large"  # a body past the limit
FAILURE_KINDS: Final = (TIMEOUT, CONNECTION, HTTP_STATUS, TOO_LARGE)

# What dcgm-exporter serves (Prometheus text format 0.0.4); gzip is welcome.
_HEADERS: Final = {"Accept": "text/plain;version=0.0.4;q=1,*/*;q=0.1"}


class ScrapeError(Exception):
    """A scrape that brought no exposition back; ``kind`` is one of ``FAILURE_KINDS``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


async def fetch(session: aiohttp.ClientSession, url: str, *, timeout: float, max_bytes: int) -> str:
    """The exposition text at ``url``; raise ``ScrapeError`` for anything else.

    Bytes that are not UTF-8 are kept as lone surrogates: the sample holding one is dropped
    as outside the data's domain, not the whole scrape.
    """
    try:
        async with asyncio.timeout(timeout):
            async with session.get(url, headers=_HEADERS, allow_redirects=False) as r:
                if r.status != 200:
                    raise ScrapeError(HTTP_STATUS, f"{url} answered {r.status} {r.reason}")
                if (r.content_length or 0) > max_bytes:
                    raise ScrapeError(TOO_LARGE, f"{url} sent {r.content_length} bytes")
                body = bytearray()
                async for chunk in r.content.iter_chunked(65536):
                    body += chunk
                    if len(body) > max_bytes:
                        raise ScrapeError(TOO_LARGE, f"{url} sent more than {max_bytes} bytes")
    except TimeoutError:
        raise ScrapeError(TIMEOUT, f"{url} did not answer within {timeout:g} s") from None
    except aiohttp.ClientError as e:
        raise ScrapeError(CONNECTION, f"{url}: {type(e).__name__}: {e}") from None
    except OSError as e:
        raise ScrapeError(CONNECTION, f"{url}: {e}") from None
    return bytes(body).decode("utf-8", errors="surrogateescape")
