"""Fast JSON responses for the list routes, documented in OpenAPI like validated ones.

A page of a thousand datapoints costs about 3 ms to build through pydantic models and
``@validate_response``; the list routes' hot path does better still: PostgreSQL renders the
items (``telemetry_store.reads.read_window_json``, ``list_gpus_json``) and the route splices
that text into the body. So the list routes build their bodies directly and declare their
schemas, problem responses included, with ``documents`` (no validation wrapper at all); the
contract tests and the schemathesis run check those bodies against the schema instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import orjson
from quart import Response
from quart_schema.validation import QUART_SCHEMA_RESPONSE_ATTRIBUTE

_OPTIONS: Final = orjson.OPT_UTC_Z | orjson.OPT_NON_STR_KEYS


def documents[F: Callable[..., Any]](model: type[Any], status: int = 200) -> Callable[[F], F]:
    """Declare ``model`` as the route's ``status`` response in OpenAPI, without validating."""

    def decorator(func: F) -> F:
        schemas = dict(getattr(func, QUART_SCHEMA_RESPONSE_ATTRIBUTE, {}))
        schemas[status] = (model, None)
        setattr(func, QUART_SCHEMA_RESPONSE_ATTRIBUTE, schemas)
        return func

    return decorator


def json_response(body: dict[str, Any]) -> Response:
    """``body`` as an ``application/json`` response (datetimes as RFC 3339, UTC as ``Z``)."""
    return Response(orjson.dumps(body, option=_OPTIONS), content_type="application/json")
