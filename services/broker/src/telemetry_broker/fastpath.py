"""The ASGI fast path: the hot routes (publish, fetch, lease outcomes) served without Quart.

Quart costs a few hundred µs of CPU per request (request and response objects, contexts, two
tasks, hooks), as much as the broker core spends on 100 records. ``FastPath`` wraps the app's
``asgi_app`` and answers the hot routes itself: match the path, check the bearer token, read
the body (413 past the limit), call the handler, send the bytes, count the request in the kit's
per-route metrics. Everything else (admin routes, control routes, ``/openapi.json``, unmatched
paths and methods) goes on to Quart.

Each hot handler is written once, as a plain ``async (FastRequest, **path params) ->
FastResponse`` function registered with ``FastPath.post``. Registering also adds a
documentation-only view under the same rule to the resource's blueprint, so quart-schema
documents the route (summary from the handler's docstring, request and response models) and
Quart's router still answers 405 for other methods; the dispatcher shadows that view.

Errors are rendered by the same code as on the Quart routes: ``APIError`` by the kit's
``problem``, the core's ``MQError`` by ``mq_problem``, anything else as a logged 500.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any, Final

import orjson
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, HTTPScope, Scope
from pydantic import BaseModel
from quart import Blueprint, Quart, Response
from quart_schema import document_request, document_response
from telemetry_kit import APIError, http_metrics, problem
from telemetry_mq import MQError

from .runtime import check_token, mq_problem

log = logging.getLogger(__name__)

JSON: Final = "application/json"


class ClientGoneError(Exception):
    """The client disconnected while its request waited (no answer is sent)."""


@dataclass(frozen=True, slots=True)
class FastRequest:
    """The request as a hot handler sees it: the whole body and the raw ASGI headers."""

    body: bytes
    headers: Iterable[tuple[bytes, bytes]]
    receive: ASGIReceiveCallable

    def header(self, name: bytes) -> str:
        """The value of header ``name`` (lower case), or ``""``."""
        return _header(self.headers, name).decode("latin-1")

    async def unless_disconnected[T](self, call: Coroutine[Any, Any, T]) -> T:
        """Await ``call`` (a long wait); cancel it if the client disconnects first.

        Raises ``ClientGoneError`` then: the dispatcher sends nothing (as Quart does). Watching
        the connection costs two tasks, so handlers use it only around a wait that may last.
        """
        handler = asyncio.ensure_future(call)
        watcher = asyncio.ensure_future(self.receive())
        try:
            await asyncio.wait((handler, watcher), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not handler.done():
                handler.cancel()
                await asyncio.wait((handler,))
            watcher.cancel()
        if handler.cancelled():
            raise ClientGoneError
        return handler.result()


@dataclass(frozen=True, slots=True)
class FastResponse:
    """A hot handler's answer: status, body, content type and extra headers."""

    body: bytes = b""
    status: int = 200
    content_type: str = JSON
    headers: Sequence[tuple[str, str]] = ()

    @classmethod
    def json(cls, doc: Any, status: int = 200) -> FastResponse:
        """A JSON answer serialised by orjson (dataclasses included)."""
        return cls(orjson.dumps(doc), status)


FastHandler = Callable[..., Coroutine[Any, Any, FastResponse]]


@dataclass(slots=True)
class _Route:
    method: str
    rule: str  # the Quart rule, e.g. /v1/topics/<topic>/records/: also the metrics label
    handler: FastHandler
    segments: tuple[str | None, ...]  # a literal path segment, or None for a variable
    names: tuple[str, ...]
    counters: dict[int, Any] = field(default_factory=dict)  # status -> counter child
    latency: Any = None


class FastPath:
    """The raw ASGI dispatcher in front of a Quart app (installed by the constructor).

    Arguments:
        app: the Quart app; its ``asgi_app`` becomes this dispatcher's fallback.
        token: bearer token every fast route requires (401 otherwise), or None.
        max_body: request body limit in bytes (413 past it).
    """

    def __init__(self, app: Quart, *, token: str | None, max_body: int) -> None:
        self._next = app.asgi_app
        self._expected = f"Bearer {token}".encode() if token else None
        self._max_body = max_body
        metrics = http_metrics(app)
        self._requests, self._latency = metrics.requests, metrics.latency
        self._routes: dict[tuple[str, int], list[_Route]] = {}
        app.asgi_app = self  # type: ignore[method-assign]  # Quart's documented middleware hook

    # -- registration --------------------------------------------------------------------------

    def post(
        self,
        bp: Blueprint,
        rule: str,
        request: type[BaseModel],
        *responses: tuple[type[BaseModel], int],
    ) -> Callable[[FastHandler], FastHandler]:
        """Serve ``POST <bp prefix><rule>`` with the decorated handler; document it on ``bp``.

        A handler that may wait long wraps the wait in ``FastRequest.unless_disconnected``.
        """

        def register(handler: FastHandler) -> FastHandler:
            full = (bp.url_prefix or "") + rule
            parts = tuple(full.split("/"))
            route = _Route(
                "POST",
                full,
                handler,
                tuple(None if p.startswith("<") else p for p in parts),
                tuple(p[1:-1] for p in parts if p.startswith("<")),
            )
            route.latency = self._latency.labels("POST", full)
            self._routes.setdefault(("POST", len(parts)), []).append(route)
            bp.add_url_rule(
                rule, view_func=_documentation(handler, full, request, responses), methods=["POST"]
            )
            return handler

        return register

    def match(self, method: str, path: str) -> tuple[_Route, dict[str, str]] | None:
        """The fast route serving ``method path`` and its path parameters, if any."""
        parts = path.split("/")
        for route in self._routes.get((method, len(parts)), ()):
            values: list[str] = []
            for want, got in zip(route.segments, parts, strict=True):
                if want is None:
                    if not got:
                        break
                    values.append(got)
                elif want != got:
                    break
            else:
                return route, dict(zip(route.names, values, strict=True))
        return None

    # -- serving ---------------------------------------------------------------------------------

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] == "http":
            found = self.match(scope["method"], scope["path"])
            if found is not None:
                await self._serve(scope, receive, send, *found)
                return
        await self._next(scope, receive, send)

    async def _serve(
        self,
        scope: HTTPScope,
        receive: ASGIReceiveCallable,
        send: ASGISendCallable,
        route: _Route,
        params: dict[str, str],
    ) -> None:
        started = perf_counter()
        headers = scope["headers"]
        try:
            if self._expected is not None:
                check_token(_header(headers, b"authorization"), self._expected)
            body = await self._body(headers, receive)
            if body is None:
                return  # the client went away
            answer = await route.handler(FastRequest(body, headers, receive), **params)
        except ClientGoneError:
            return
        except Exception as e:
            answer = await _error_answer(e)
        out = (
            []  # no content
            if answer.status == 204
            else [
                (b"content-type", answer.content_type.encode()),
                (b"content-length", str(len(answer.body)).encode()),
            ]
        )
        out.extend((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in answer.headers)
        await send({"type": "http.response.start", "status": answer.status, "headers": out})
        await send({"type": "http.response.body", "body": answer.body, "more_body": False})
        counter = route.counters.get(answer.status)
        if counter is None:
            counter = self._requests.labels(route.method, route.rule, str(answer.status))
            route.counters[answer.status] = counter
        counter.inc()
        route.latency.observe(perf_counter() - started)

    async def _body(
        self, headers: Iterable[tuple[bytes, bytes]], receive: ASGIReceiveCallable
    ) -> bytes | None:
        limit = self._max_body
        length = _header(headers, b"content-length")  # the server has validated it
        if length and int(length) > limit:
            raise _too_large(limit)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None  # http.disconnect
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes:
    for key, value in headers:
        if key == name:
            return value
    return b""


def _too_large(limit: int) -> APIError:
    return APIError(413, "PAYLOAD_TOO_LARGE", f"the request body is over {limit} bytes")


async def _error_answer(error: Exception) -> FastResponse:
    if isinstance(error, APIError):
        response = problem(
            error.status, error.code, error.detail, headers=error.headers, **error.extra
        )
    elif isinstance(error, MQError):
        response = mq_problem(error)
    else:
        log.exception("unhandled error", exc_info=error)
        response = problem(500, "INTERNAL_SERVER_ERROR")
    return _from_quart(response, await response.get_data())


def _from_quart(response: Response, body: bytes | str) -> FastResponse:
    skip = {"content-type", "content-length"}
    return FastResponse(
        body if isinstance(body, bytes) else body.encode(),
        response.status_code,
        response.content_type or JSON,
        [(k, v) for k, v in response.headers.items() if k.lower() not in skip],
    )


def _documentation(
    handler: FastHandler,
    rule: str,
    request: type[BaseModel],
    responses: Sequence[tuple[type[BaseModel], int]],
) -> Callable[..., Awaitable[Response]]:
    """A view that only documents ``handler`` for quart-schema; FastPath serves the route."""

    async def view(**params: str) -> Response:
        raise RuntimeError(f"POST {rule} is served by FastPath, never by this view")

    # What the handler's decorators declared (operationId, problems, links) documents it.
    for name, value in vars(handler).items():
        setattr(view, name, value)
    view.__name__ = handler.__name__
    view.__qualname__ = handler.__qualname__
    view.__doc__ = handler.__doc__
    documented = document_request(request)(view)
    for model, status in responses:
        documented = document_response(model, status)(documented)
    return documented
