"""The API's error vocabulary: the problem body's schema and the mapping of schema errors.

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
| 404 | GPU_NOT_FOUND | no GPU has this id |
| 404 | NOT_FOUND | no such route |
| 405 | METHOD_NOT_ALLOWED | the route does not take this method |
| 503 | DATABASE_UNAVAILABLE | the database did not answer (``Retry-After``) |
| 503 | DATABASE_BUSY | no database connection came free in time (``Retry-After``) |
| 503 | QUERY_TIMEOUT | the query ran too long and was cancelled (``Retry-After``) |
"""

from __future__ import annotations

from typing import Any, Final

import orjson
from pydantic import BaseModel, ConfigDict, Field
from quart import Quart, Response
from quart_schema import RequestSchemaValidationError
from telemetry_kit import problem
from werkzeug.exceptions import MethodNotAllowed

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


class Problem(BaseModel):
    """An error: RFC 9457 problem details with a stable machine-readable ``code``."""

    model_config = ConfigDict(extra="allow")

    type: str = Field("about:blank", description="Always about:blank: see code.")
    title: str = Field(description="The HTTP status phrase.")
    status: int = Field(description="The HTTP status code.")
    code: str = Field(
        description="Stable SCREAMING_SNAKE_CASE error code.", examples=["NAIVE_TIME"]
    )
    detail: str | None = Field(None, description="What was wrong, for humans.")


def register_error_handlers(app: Quart) -> None:
    """Refine telemetry-kit's handlers: per-parameter codes, and ``Allow`` on 405."""

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

    @app.errorhandler(MethodNotAllowed)
    async def _method_not_allowed(error: MethodNotAllowed) -> Response:
        allowed = ", ".join(sorted(error.valid_methods or ()))
        return problem(405, "METHOD_NOT_ALLOWED", error.description, headers={"Allow": allowed})
