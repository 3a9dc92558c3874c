"""What the routes share: the open broker, the token check, body parsing, error mapping.

Used by the Quart routes and by the ASGI fast path alike, so both answer the same way.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any, Final

import orjson
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError
from quart import Blueprint, Quart, Response, request
from telemetry_kit import APIError, problem
from telemetry_mq import (
    BacklogFullError,
    Broker,
    BrokerUnavailableError,
    CorruptLogError,
    DeadLetterError,
    GroupNotFoundError,
    LeaseExpiredError,
    LeaseLimitError,
    LimitExceededError,
    MQError,
    ProtocolError,
    ReservedError,
    StorageError,
    TopicNotFoundError,
)

_LIMIT_STATUS = {"NACK_DELAY_TOO_LONG": 400}
"""The status of a ``LimitExceededError`` by code; 409 otherwise (the broker holds too many)."""


def _integral(value: object) -> object:
    # JSON Schema's integer is any number without a fraction: 2.0 is the integer 2.
    return int(value) if isinstance(value, float) and value.is_integer() else value


INTEGRAL: Final = BeforeValidator(_integral)
"""Marks an ``int`` of a request body as JSON Schema's integer: ``2`` or ``2.0``, never
``"2"`` or ``true``. After any ``Field`` constraints: ``Annotated[int, Field(ge=1), INTEGRAL]``
(before them, pydantic leaves the constraints out of the schema)."""

Integer = Annotated[int, INTEGRAL]


class Body(BaseModel):
    """A JSON request body, validated as its schema says: no ``"2"`` for 2, no ``0`` for false.

    pydantic's lax mode would take those, which the schema (and a client reading it) does not.
    """

    # python-re: the name patterns look ahead (no ".dlq" topic, no "_broker" group).
    model_config = ConfigDict(strict=True, regex_engine="python-re")


class Runtime:
    """Holds the broker while the app is serving."""

    def __init__(self) -> None:
        self.broker_or_none: Broker | None = None

    @property
    def broker(self) -> Broker:
        """The open broker, or a 503 problem while starting or stopping."""
        broker = self.broker_or_none
        if broker is None:
            raise APIError(
                503, "NOT_READY", "the broker is starting or stopping", headers={"Retry-After": "1"}
            )
        return broker


def check_token(given: bytes, expected: bytes) -> None:
    """Raise a 401 problem unless the ``Authorization`` value ``given`` is ``expected``."""
    if not hmac.compare_digest(given, expected):
        raise APIError(
            401,
            "UNAUTHORIZED",
            "a valid bearer token is required",
            headers={"WWW-Authenticate": 'Bearer realm="broker"'},
        )


def require_token(bp: Blueprint, token: str | None) -> None:
    """Answer 401 on every route of ``bp`` unless the request carries ``Bearer <token>``."""
    if not token:
        return
    expected = f"Bearer {token}".encode()

    @bp.before_request
    async def _check_token() -> None:
        check_token(request.headers.get("Authorization", "").encode(), expected)


async def request_body() -> bytes:
    """The raw request body (413 past ``MAX_CONTENT_LENGTH``)."""
    data = await request.get_data(cache=False)
    return data if isinstance(data, bytes) else data.encode()


def parse[M: BaseModel](model: type[M], body: bytes) -> M:
    """Validate a JSON body (empty means ``{}``) against ``model``; 400 problem if it fails."""
    try:
        return model.model_validate_json(body or b"{}")
    except ValidationError as e:
        raise APIError(
            400,
            "INVALID_REQUEST",
            "the request does not match the schema",
            # Without the input: a body that is not UTF-8 cannot be rendered in JSON (a 500).
            errors=orjson.loads(
                e.json(include_url=False, include_context=False, include_input=False)
            ),
        ) from e


def json_response(doc: Any, status: int = 200) -> Response:
    """A JSON response serialised by orjson (dataclasses included)."""
    return Response(orjson.dumps(doc), status=status, content_type="application/json")


def mq_problem(error: MQError) -> Response:
    """The problem response for an error of the broker core."""
    if isinstance(error, BacklogFullError):
        return problem(
            429,
            "BACKLOG_FULL",
            str(error),
            headers={"Retry-After": str(max(1, round(error.retry_after)))},
            backlog_bytes=error.backlog_bytes,
            max_backlog_bytes=error.limit,
        )
    if isinstance(error, LeaseLimitError):
        return problem(
            429,
            "TOO_MANY_LEASES",
            str(error),
            headers={"Retry-After": str(max(1, round(error.retry_after)))},
            limit=error.limit,
        )
    if isinstance(error, GroupNotFoundError):
        return problem(404, "GROUP_NOT_FOUND", str(error))
    if isinstance(error, TopicNotFoundError):
        return problem(404, "TOPIC_NOT_FOUND", str(error))
    if isinstance(error, LeaseExpiredError):
        return problem(409, "LEASE_EXPIRED", str(error))
    if isinstance(error, LimitExceededError):
        status = _LIMIT_STATUS.get(error.code, 409)
        return problem(status, error.code, str(error), limit=error.limit)
    if isinstance(error, ReservedError):
        return problem(403, "RESERVED", str(error))
    if isinstance(error, ProtocolError):
        return problem(400, "INVALID_REQUEST", str(error))
    if isinstance(error, StorageError | BrokerUnavailableError):
        if isinstance(error, StorageError):
            code = "STORAGE_ERROR"
        elif isinstance(error, DeadLetterError):
            code = "DEAD_LETTER_FAILED"
        else:
            code = "BROKER_UNAVAILABLE"
        return problem(503, code, str(error), headers={"Retry-After": "1"})
    if isinstance(error, CorruptLogError):
        return problem(500, "CORRUPT_LOG", str(error))
    return problem(500, "INTERNAL_SERVER_ERROR", str(error))


def register_mq_errors(app: Quart) -> None:
    """Map the core's errors to problem responses on the Quart routes."""

    @app.errorhandler(MQError)
    async def _mq_error(error: MQError) -> Response:
        return mq_problem(error)
