"""The API's error vocabulary and the mapping of schema errors to it.

Every error is ``application/problem+json`` (RFC 9457) with a stable ``code``:

| status | code | when |
| --- | --- | --- |
| 400 | INVALID_TIME | ``start_time``/``end_time`` is not an RFC 3339 time (years 0001-9999 UTC) |
| 400 | NAIVE_TIME | the time has no UTC offset |
| 400 | INVALID_TIME_RANGE | ``start_time`` is after ``end_time`` |
| 400 | INVALID_LIMIT | ``limit`` is not an integer from 1 to the maximum |
| 400 | INVALID_CURSOR | ``cursor`` is not one this listing issued |
| 400 | UNKNOWN_METRIC | ``metric`` names no catalog metric |
| 400 | INVALID_STEP | ``step`` is not like ``30s``, ``5m``, ``1h``, ``1d`` |
| 400 | INVALID_AGGREGATE | ``agg`` is not avg/min/max, or is given without ``step`` |
| 400 | INVALID_REQUEST | any other malformed parameter |
| 400 | INVALID_PARAMETER | a value PostgreSQL refuses (a backstop: none is known) |
| 400 | TOO_MANY_BUCKETS | a ``step`` query's window spans more buckets than ``API_MAX_BUCKETS`` |
| 400 | TOO_MANY_ROWS | a ``step`` query would aggregate over ``API_MAX_SCAN_ROWS`` datapoints |
| 401 | UNAUTHORIZED | ``API_TOKEN`` is set and the request does not carry it |
| 404 | GPU_NOT_FOUND | no GPU has this id |
| 404 | NOT_FOUND | no such route |
| 405 | METHOD_NOT_ALLOWED | the route does not take this method |
| 503 | DATABASE_UNAVAILABLE | the database did not answer (``Retry-After``) |
| 503 | DATABASE_BUSY | no database connection came free in time (``Retry-After``) |
| 503 | QUERY_TIMEOUT | the query ran too long and was cancelled (``Retry-After``) |

The body's schema is telemetry-kit's ``Problem`` (one component in the OpenAPI document).
"""

from __future__ import annotations

from typing import Any, Final

import orjson
from quart import Quart, Response
from quart_schema import RequestSchemaValidationError
from telemetry_kit import Problem, problem

__all__ = ["Problem", "register_error_handlers"]

# Which code a schema error gets, by the query parameter it is about.
_CODES_BY_FIELD: Final = {
    "start_time": "INVALID_TIME",
    "end_time": "INVALID_TIME",
    "limit": "INVALID_LIMIT",
    "cursor": "INVALID_CURSOR",
    "metric": "UNKNOWN_METRIC",
    "step": "INVALID_STEP",
    "agg": "INVALID_AGGREGATE",
}


def register_error_handlers(app: Quart) -> None:
    """Refine telemetry-kit's handler of schema errors: a code per query parameter."""

    @app.errorhandler(RequestSchemaValidationError)
    async def _schema_error(error: RequestSchemaValidationError) -> Response:
        validation = error.validation_error
        errors: Any = str(validation)
        code = "INVALID_REQUEST"
        if hasattr(validation, "json"):  # pydantic ValidationError
            errors = orjson.loads(validation.json(include_url=False, include_input=False))
            for item in errors:
                loc = item.get("loc") or [None]
                if loc[0] in _CODES_BY_FIELD:
                    code = _CODES_BY_FIELD[loc[0]]
                    break
        return problem(400, code, "a query parameter is invalid", errors=errors)
