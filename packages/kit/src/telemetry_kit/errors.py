"""HTTP problem responses (RFC 9457) with a stable machine-readable ``code``."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any, Final

import orjson
from pydantic import ValidationError
from quart import Quart, Response
from quart_schema import RequestSchemaValidationError
from werkzeug.exceptions import HTTPException, MethodNotAllowed

log = logging.getLogger(__name__)

PROBLEM_JSON: Final = "application/problem+json"

_HTTP_CODES: Final = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    408: "REQUEST_TIMEOUT",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    429: "TOO_MANY_REQUESTS",
    503: "SERVICE_UNAVAILABLE",
}


class APIError(Exception):
    """An error answered as a problem body: ``status``, a SCREAMING_SNAKE ``code`` and detail."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail or code)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra


def problem(
    status: int,
    code: str,
    detail: str | None = None,
    *,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    """Build a problem+json response."""
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "code": code,
    }
    if detail:
        body["detail"] = detail
    body.update(extra)
    response = Response(orjson.dumps(body), status=status, content_type=PROBLEM_JSON)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def register_error_handlers(app: Quart) -> None:
    """Answer every error, expected or not, with a problem body; never an HTML page."""

    @app.errorhandler(APIError)
    async def _api_error(error: APIError) -> Response:
        return problem(error.status, error.code, error.detail, headers=error.headers, **error.extra)

    @app.errorhandler(RequestSchemaValidationError)
    async def _validation_error(error: RequestSchemaValidationError) -> Response:
        validation = error.validation_error
        errors: Any
        if isinstance(validation, ValidationError):
            errors = orjson.loads(validation.json())
        else:
            errors = str(validation)
        return problem(
            400, "INVALID_REQUEST", "the request does not match the schema", errors=errors
        )

    @app.errorhandler(HTTPException)
    async def _http_error(error: HTTPException) -> Response:
        status = error.code or 500
        code = _HTTP_CODES.get(status, HTTPStatus(status).name)
        headers = {}
        if isinstance(error, MethodNotAllowed):  # RFC 9110: a 405 lists the allowed methods
            headers["Allow"] = ", ".join(sorted(error.valid_methods or ()))
        return problem(status, code, error.description, headers=headers)

    @app.errorhandler(Exception)
    async def _unexpected(error: Exception) -> Response:
        log.exception("unhandled error", exc_info=error)
        return problem(500, "INTERNAL_SERVER_ERROR")
