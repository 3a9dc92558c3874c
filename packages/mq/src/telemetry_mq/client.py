"""The async HTTP client of the broker: pooled connections, orjson bodies, retries.

Connection errors and 429/503 answers are retried with exponential backoff and full jitter,
never shorter than the broker's ``Retry-After`` (except a failed dead-lettering: the records
are back for redelivery, so retrying the reject or nack would only answer 0). A retried
publish may store its records twice (at-least-once delivery): consumers write idempotently.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping, Sequence
from importlib.metadata import version
from types import TracebackType
from typing import Any, Final, Self
from urllib.parse import quote

import aiohttp
import orjson

from .deadletter import Selection
from .errors import (
    BacklogFullError,
    BrokerUnavailableError,
    DeadLetterError,
    GroupNotFoundError,
    LeaseExpiredError,
    LeaseLimitError,
    LimitExceededError,
    MQError,
    ProtocolError,
    RequestTooLargeError,
    ReservedError,
    TopicNotFoundError,
    UnauthorizedError,
)
from .protocol import (
    EXPIRED_LEASES,
    NDJSON,
    Batch,
    decode_batch_ndjson,
    decode_batches_ndjson,
    encode_publish,
    parse_expired_leases,
)

log = logging.getLogger(__name__)

_JSON: Final = "application/json"
_USER_AGENT: Final = f"telemetry-mq/{version('telemetry-mq')}"
_RETRY_STATUSES: Final = frozenset({429, 503})
_RETRY_EXCEPTIONS: Final = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError)
_FINAL_CODES: Final = (b'"DEAD_LETTER_FAILED"',)
"""Problem codes of a 429/503 not worth retrying (the request cannot succeed again)."""


class BrokerClient:
    """An async client for one broker; use it as ``async with BrokerClient(url) as mq``.

    Arguments:
        url: the broker's base URL, e.g. ``http://127.0.0.1:8001``.
        token: bearer token, when the broker requires one.
        timeout: seconds for one request (a fetch adds its ``max_wait``).
        max_retries: retries on connection errors and 429/503 before giving up.
        pool_size: connections kept to the broker.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        max_retries: int = 8,
        backoff: float = 0.05,
        max_backoff: float = 5.0,
        pool_size: int = 64,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._pool_size = pool_size
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        self._open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._pool_size, keepalive_timeout=30.0)
            # No Accept-Encoding: the broker does not compress, and every header costs the
            # broker's one event loop parsing time on each request.
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers={"User-Agent": _USER_AGENT, **self._headers},
                skip_auto_headers=("Accept-Encoding",),
                auto_decompress=False,
            )
        return self._session

    async def close(self) -> None:
        """Close the connection pool."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- transport -------------------------------------------------------------------------

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        delay = random.uniform(0, min(self.max_backoff, self.backoff * 2**attempt))
        if retry_after:
            try:
                delay = max(delay, float(retry_after))
            except ValueError:
                pass
        return delay

    async def _request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        accept: str = _JSON,
        extra_time: float = 0.0,
        topic: str | None = None,
        group: str | None = None,
    ) -> tuple[int, bytes, Mapping[str, str]]:
        session = self._open()
        headers = {"Accept": accept}
        if body is not None:
            headers["Content-Type"] = _JSON
        timeout = aiohttp.ClientTimeout(total=self.timeout + extra_time)
        url = self.url + path
        attempt = 0
        while True:
            try:
                async with session.request(
                    method, url, data=body, headers=headers, timeout=timeout
                ) as resp:
                    data = await resp.read()
                    status = resp.status
                    resp_headers = resp.headers
                    retry_after = resp_headers.get("Retry-After")
            except _RETRY_EXCEPTIONS as e:
                if attempt >= self.max_retries:
                    raise BrokerUnavailableError(f"{method} {path}: {e!r}") from e
                delay = self._delay(attempt, None)
                log.debug("%s %s failed (%r), retry in %.3fs", method, path, e, delay)
            else:
                if status < 300:
                    return status, data, resp_headers
                if (
                    status not in _RETRY_STATUSES
                    or attempt >= self.max_retries
                    or any(code in data for code in _FINAL_CODES)
                ):
                    raise _error(status, data, topic, retry_after, group)
                delay = self._delay(attempt, retry_after)
                log.debug("%s %s answered %d, retry in %.3fs", method, path, status, delay)
            attempt += 1
            await asyncio.sleep(delay)

    async def _json(self, method: str, path: str, doc: Any = None, **kw: Any) -> Any:
        body = None if doc is None else orjson.dumps(doc)
        _, data, _ = await self._request(method, path, body, **kw)
        return orjson.loads(data) if data else None

    # -- API ---------------------------------------------------------------------------------

    async def create_topic(self, name: str, partitions: int | None = None) -> dict[str, Any]:
        """Create a topic if it does not exist (idempotent); return its description."""
        doc: dict[str, Any] = {"name": name}
        if partitions is not None:
            doc["partitions"] = partitions
        result: dict[str, Any] = await self._json("POST", "/v1/topics/", doc, topic=name)
        return result

    async def publish(
        self, topic: str, records: Sequence[tuple[str, bytes]]
    ) -> list[tuple[int, int]]:
        """Publish ``(key, value)`` records (value: one JSON document as bytes).

        Returns ``(partition, offset)`` per record, once they are durable on the broker.
        """
        if not records:
            return []
        _, data, _ = await self._request(
            "POST", f"/v1/topics/{topic}/records/", encode_publish(records), topic=topic
        )
        return [(p, o) for p, o in orjson.loads(data)["positions"]]

    async def fetch(
        self,
        topic: str,
        group: str,
        *,
        max_records: int = 1000,
        max_wait: float = 1.0,
        ack_wait: float | None = None,
        ack: Batch | Sequence[Batch] | None = None,
    ) -> Batch | None:
        """Lease the next records for ``group``, waiting up to ``max_wait``; None if none came.

        ``ack``: earlier batches of this topic and group to ack in the same round trip (all of
        their records still leased), durably before the fetch, so a consumer loop needs one
        request per batch. A lease that expired meanwhile does not fail the fetch: it is logged
        (its records are redelivered, as after ``ack`` raised ``LeaseExpiredError``).
        """
        data = await self._fetch(topic, group, max_records, max_wait, ack_wait, ack, multi=False)
        return decode_batch_ndjson(data) if data else None

    async def fetch_many(
        self,
        topic: str,
        group: str,
        *,
        max_records: int = 1000,
        max_wait: float = 1.0,
        ack_wait: float | None = 30.0,
        ack: Batch | Sequence[Batch] | None = None,
    ) -> list[Batch]:
        """Like ``fetch``, but lease records of several partitions: one batch (lease) each.

        Up to ``max_records`` in all; ``[]`` if none came within ``max_wait``. Each batch is
        acked, nacked, extended or rejected on its own; ``ack`` works as with ``fetch`` (pass
        the previous call's batches to ack them all in the same round trip).
        """
        data = await self._fetch(topic, group, max_records, max_wait, ack_wait, ack, multi=True)
        return decode_batches_ndjson(data) if data else []

    async def _fetch(
        self,
        topic: str,
        group: str,
        max_records: int,
        max_wait: float,
        ack_wait: float | None,
        ack: Batch | Sequence[Batch] | None,
        *,
        multi: bool,
    ) -> bytes:
        """POST a fetch (``multi``: of several partitions); the NDJSON body, b"" for none."""
        doc: dict[str, Any] = {"max_records": max_records, "max_wait": max_wait}
        if ack_wait is not None:
            doc["ack_wait"] = ack_wait
        if multi:
            doc["multi"] = True
        if ack is not None:
            acked = [ack] if isinstance(ack, Batch) else list(ack)
            for b in acked:
                if b.topic != topic or b.group != group:
                    raise ValueError(
                        f"cannot ack a batch of {b.topic}/{b.group} with a fetch of {topic}/{group}"
                    )
            doc["ack"] = [b.lease for b in acked]
        status, data, headers = await self._request(
            "POST",
            f"/v1/topics/{topic}/groups/{group}/fetch",
            orjson.dumps(doc),
            accept=NDJSON,
            extra_time=max_wait,
            topic=topic,
            group=group,
        )
        expired = parse_expired_leases(headers.get(EXPIRED_LEASES))
        if expired:
            log.warning(
                "%s/%s: %d acked leases had expired; their records are redelivered: %s",
                topic,
                group,
                len(expired),
                ", ".join(expired),
            )
        return b"" if status == 204 else data

    def _lease_path(self, batch: Batch, action: str) -> str:
        return f"/v1/topics/{batch.topic}/groups/{batch.group}/leases/{batch.lease}/{action}"

    async def _settle(self, batch: Batch, action: str, doc: dict[str, Any]) -> int:
        try:
            result = await self._json(
                "POST", self._lease_path(batch, action), doc, topic=batch.topic, group=batch.group
            )
        except _LeaseGoneError as e:
            raise LeaseExpiredError(batch.topic, batch.group, batch.lease) from e
        return int(result["records"])

    async def ack(self, batch: Batch, offsets: Sequence[int] | None = None) -> int:
        """Ack the lease's records (all, or ``offsets``); return how many were acked now."""
        doc: dict[str, Any] = {} if offsets is None else {"offsets": list(offsets)}
        return await self._settle(batch, "ack", doc)

    async def nack(
        self,
        batch: Batch,
        offsets: Sequence[int] | None = None,
        *,
        delay: float = 0.0,
        error: str | None = None,
    ) -> int:
        """Hand records back for redelivery after ``delay`` seconds."""
        doc: dict[str, Any] = {"delay": delay}
        if offsets is not None:
            doc["offsets"] = list(offsets)
        if error is not None:
            doc["error"] = error
        return await self._settle(batch, "nack", doc)

    async def release(
        self, batch: Batch, offsets: Sequence[int] | None = None, *, delay: float = 0.0
    ) -> int:
        """Hand records back for redelivery after ``delay`` without spending a delivery.

        For records the consumer could not even try (its database is away): unlike ``nack``,
        releasing never brings a record closer to the dead-letter topic.
        """
        doc: dict[str, Any] = {"delay": delay}
        if offsets is not None:
            doc["offsets"] = list(offsets)
        return await self._settle(batch, "release", doc)

    async def reject(
        self, batch: Batch, offsets: Sequence[int] | None = None, *, error: str | None = None
    ) -> int:
        """Move records to the dead-letter topic ``<topic>.dlq`` now."""
        doc: dict[str, Any] = {}
        if offsets is not None:
            doc["offsets"] = list(offsets)
        if error is not None:
            doc["error"] = error
        return await self._settle(batch, "reject", doc)

    async def extend(self, batch: Batch, ack_wait: float | None = None) -> float:
        """Extend the lease by ``ack_wait`` seconds from now; return the seconds granted."""
        doc: dict[str, Any] = {} if ack_wait is None else {"ack_wait": ack_wait}
        try:
            result = await self._json(
                "POST", self._lease_path(batch, "extend"), doc, topic=batch.topic
            )
        except _LeaseGoneError as e:
            raise LeaseExpiredError(batch.topic, batch.group, batch.lease) from e
        return float(result["ack_wait"])

    async def delete_group(self, topic: str, group: str) -> None:
        """Delete a consumer group (its leases, state and journal); ``GroupNotFoundError``."""
        await self._request(
            "DELETE", f"/v1/topics/{topic}/groups/{group}/", topic=topic, group=group
        )

    async def dead_letters(
        self, topic: str, *, limit: int = 100, after: str | None = None, reason: str | None = None
    ) -> dict[str, Any]:
        """The topic's pending dead letters: ``records``, ``by_reason``, ``by_error``, a page.

        The page (``letters``) holds up to ``limit`` letters after ``after`` (a previous
        page's ``next``), of ``reason`` only if given. See ``DeadLetterList`` in the broker's
        OpenAPI spec for the fields.
        """
        params = [f"limit={limit}"]
        if after is not None:
            params.append(f"after={quote(after)}")
        if reason is not None:
            params.append(f"reason={quote(reason)}")
        path = f"/v1/topics/{topic}/dead-letters/?{'&'.join(params)}"
        result: dict[str, Any] = await self._json("GET", path, topic=topic)
        return result

    async def replay_dead_letters(
        self, topic: str, selection: Selection, *, max_records: int = 10_000
    ) -> tuple[int, int]:
        """Publish the selected dead letters' records to ``topic`` again (byte for byte).

        Returns ``(replayed, remaining)``: records moved now and selected letters still
        pending (past ``max_records``: call again). A crash of the broker in between can
        duplicate a record, never lose one.
        """
        doc: dict[str, Any] = {"max_records": max_records}
        if selection.all:
            doc["all"] = True
        if selection.reason is not None:
            doc["reason"] = selection.reason
        if selection.origins is not None:
            doc["origins"] = sorted(selection.origins)
        result = await self._json(
            "POST", f"/v1/topics/{topic}/dead-letters/replay", doc, topic=topic
        )
        return int(result["replayed"]), int(result["remaining"])

    async def topic_stats(self, topic: str) -> dict[str, Any]:
        """The topic's partitions, groups, lag and backlog."""
        result: dict[str, Any] = await self._json("GET", f"/v1/topics/{topic}", topic=topic)
        return result

    async def topics(self) -> list[dict[str, Any]]:
        """Every topic with its stats."""
        result: dict[str, Any] = await self._json("GET", "/v1/topics/")
        topics: list[dict[str, Any]] = result["topics"]
        return topics


class _LeaseGoneError(MQError):
    """The broker answered 409 LEASE_EXPIRED (turned into ``LeaseExpiredError`` with context)."""


def _error(
    status: int, data: bytes, topic: str | None, retry_after: str | None, group: str | None
) -> MQError:
    try:
        body = orjson.loads(data) if data else {}
        if not isinstance(body, dict):
            body = {}
    except orjson.JSONDecodeError:
        body = {}
    code = body.get("code")
    detail = str(body.get("detail") or code or data[:200])
    if code in ("TOO_MANY_TOPICS", "TOO_MANY_GROUPS", "NACK_DELAY_TOO_LONG", "FETCH_WAIT_TOO_LONG"):
        return LimitExceededError(code, detail, limit=float(body.get("limit", 0)))
    if status == 400:
        return ProtocolError(f"broker refused the request: {detail} {body.get('errors', '')}")
    if status == 401:
        return UnauthorizedError(detail)
    if status == 403:
        return ReservedError(detail)
    if status == 404 and code == "GROUP_NOT_FOUND":
        return GroupNotFoundError(topic or "?", group or "?")
    if status == 404:
        return TopicNotFoundError(topic or "?")
    if status == 409 and code == "LEASE_EXPIRED":
        return _LeaseGoneError(detail)
    if status == 413:
        return RequestTooLargeError(detail)
    if status == 429 and code == "TOO_MANY_LEASES":
        return LeaseLimitError(
            topic or "?",
            group or "?",
            limit=int(body.get("limit", 0)),
            retry_after=float(retry_after or 1.0),
        )
    if status == 503 and code == "DEAD_LETTER_FAILED":
        return DeadLetterError(detail, topic=topic or "?")
    if status == 429:
        return BacklogFullError(
            topic or "?",
            backlog_bytes=int(body.get("backlog_bytes", 0)),
            limit=int(body.get("max_backlog_bytes", 0)),
            retry_after=float(retry_after or 1.0),
        )
    if status == 503:
        return BrokerUnavailableError(detail)
    return ProtocolError(f"unexpected answer {status}: {detail}")
