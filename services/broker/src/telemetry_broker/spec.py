"""The broker's OpenAPI contract: telemetry-kit's provider, the path parameters, shared errors."""

from __future__ import annotations

from typing import Annotated, Any, Final, cast

from annotated_types import Le
from pydantic import BaseModel, Field, create_model
from quart_schema import Tag
from telemetry_kit import ContractProvider

NAME_PATTERN: Final = "^[A-Za-z0-9_][A-Za-z0-9._-]{0,199}$"
# A group clients may name: _broker* groups are the broker's own.
GROUP_PATTERN: Final = "^(?!_broker)[A-Za-z0-9_][A-Za-z0-9._-]{0,199}$"
# A topic clients write (publish, reject): not a dead-letter topic.
LIVE_TOPIC_PATTERN: Final = r"^(?!.*\.dlq$)[A-Za-z0-9_][A-Za-z0-9._-]{0,199}$"
# A topic a client may create: room left for the ".dlq" of its dead-letter topic.
NEW_TOPIC_PATTERN: Final = r"^(?!.*\.dlq$)[A-Za-z0-9_][A-Za-z0-9._-]{0,195}$"
LEASE_PATTERN: Final = "^[A-Za-z0-9._-]{1,100}$"

TAGS: Final = [
    Tag(name="topics", description="Create and list topics; partitions, groups, lag, backlog."),
    Tag(name="records", description="Publish records: durable before the answer."),
    Tag(
        name="consumer_groups",
        description="Lease records for a consumer group, then ack, nack, release, reject or"
        " extend the lease.",
    ),
    Tag(name="dead_letters", description="Records given up on: list and replay them."),
]
SECURITY_SCHEMES: Final[dict[str, Any]] = {"bearer": {"type": "http", "scheme": "bearer"}}
# BROKER_TOKEN is optional: no security ({}) or a bearer token, as the deployment says.
SECURITY: Final[list[dict[str, list[str]]]] = [{}, {"bearer": []}]

# Problem codes by status that several routes share.
UNAUTHORIZED: Final = {401: ["UNAUTHORIZED"]}
UNAVAILABLE: Final = {503: ["NOT_READY", "STORAGE_ERROR", "BROKER_UNAVAILABLE"]}
TOO_LARGE: Final = {413: ["PAYLOAD_TOO_LARGE"]}
INVALID: Final = {400: ["INVALID_REQUEST"]}
TOPIC_NOT_FOUND: Final = {404: ["TOPIC_NOT_FOUND"]}
# A group or topic the broker keeps for itself (a _broker* group, a dead-letter topic).
GROUP_ACTIONS: Final = {403: ["RESERVED"]}


class BrokerOpenAPIProvider(ContractProvider):
    """The contract provider, knowing the broker's path parameters."""

    path_parameters = {
        "topic": {
            "description": "A topic name: 1-200 of [A-Za-z0-9._-], not starting with . or -.",
            "schema": {"type": "string", "pattern": NAME_PATTERN, "examples": ["telemetry"]},
            "example": "telemetry",
        },
        "group": {
            "description": "A consumer group name (as a topic name; _broker* names are the"
            " broker's own).",
            "schema": {"type": "string", "pattern": GROUP_PATTERN, "examples": ["collectors"]},
            "example": "collectors",
        },
        "lease": {
            "description": "A lease id, as a fetch answered it.",
            "schema": {"type": "string", "pattern": LEASE_PATTERN, "examples": ["9f86d081-1a"]},
            "example": "9f86d081-1a",
        },
    }


def bounded[M: BaseModel](model: type[M], **maximum: float) -> type[M]:
    """``model`` with these fields' documented maximum set to a deployment's limit.

    For the document only (the routes still validate with ``model``, then check the limit
    themselves, so the problem says which limit): a client reads the limit that applies.
    """
    fields: dict[str, Any] = {}
    for name, limit in maximum.items():
        info = model.model_fields[name]
        upper = min([limit, *(cast(float, m.le) for m in info.metadata if isinstance(m, Le))])
        metadata = [m for m in info.metadata if not isinstance(m, Le)]
        annotation: Any = Annotated[info.annotation, *metadata, Le(upper)]
        fields[name] = (annotation, Field(info.default, description=info.description))
    documented: type[M] = create_model(
        model.__name__, __base__=model, __doc__=model.__doc__, **fields
    )
    return documented
