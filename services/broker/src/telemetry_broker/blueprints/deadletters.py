"""Dead letters of a topic: list them with counts by reason and error, replay them (admin)."""

from __future__ import annotations

from typing import Annotated, Any, Self

import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.json_schema import SkipJsonSchema
from quart import Blueprint, Response
from quart_schema import (
    document_request,
    document_response,
    operation_id,
    tag_blueprint,
    validate_querystring,
)
from telemetry_kit import problems
from telemetry_mq import DeadLetter, DeadLetterReport, Selection

from ..runtime import INTEGRAL, Body, Runtime, json_response, parse, request_body, require_token
from ..spec import INVALID, TOO_LARGE, TOPIC_NOT_FOUND, UNAUTHORIZED, UNAVAILABLE

Origin = Annotated[
    list[Annotated[int, Field(ge=0), INTEGRAL]],
    Field(min_length=2, max_length=2, description="[partition, offset] in the topic."),
]


def _exactly_one_selection(schema: dict[str, Any]) -> None:
    """State in the schema what the broker checks: exactly one of all, reason, origins.

    As a ``not`` (none, or two at once), which generators leave alone: they would turn a
    ``oneOf`` into a union of partial models.
    """
    selected = {
        "all": {"required": ["all"], "properties": {"all": {"const": True}}},
        "reason": {"required": ["reason"], "properties": {"reason": {"type": "string"}}},
        "origins": {"required": ["origins"], "properties": {"origins": {"type": "array"}}},
    }
    pairs = [("all", "reason"), ("all", "origins"), ("reason", "origins")]
    schema["not"] = {
        "anyOf": [
            {"not": {"anyOf": list(selected.values())}},
            *({"allOf": [selected[a], selected[b]]} for a, b in pairs),
        ]
    }
    schema["examples"] = [{"reason": "max_deliveries", "max_records": 1000}]


class DeadLetterQuery(BaseModel):
    """Which page of the pending dead letters to show."""

    limit: int = Field(100, ge=0, le=1000, description="Dead letters in the page.", examples=[10])
    after: Annotated[str, Field(pattern=r"^[0-9]{1,10}:[0-9]{1,20}$")] | SkipJsonSchema[None] = (
        Field(
            None,
            description="partition:offset in the dead-letter topic to start after (a page's next).",
            examples=["0:41"],
        )
    )
    reason: str | SkipJsonSchema[None] = Field(
        None,
        max_length=200,
        description="Only letters of this reason in the page.",
        examples=["max_deliveries"],
    )


class OriginDoc(BaseModel):
    """Where the record came from."""

    topic: str
    group: str = Field(description="The group that gave up on it.")
    partition: int
    offset: int
    timestamp_us: int
    delivery_count: int


class DeadLetterDoc(BaseModel):
    """One pending dead letter."""

    partition: int = Field(description="Its partition in the dead-letter topic.")
    offset: int = Field(description="Its offset in the dead-letter topic.")
    key: str
    reason: str = Field(description="max_deliveries, rejected (unreadable: not a letter).")
    error: str | None = Field(description="The last error a consumer reported.")
    origin: OriginDoc | None
    value: Any = Field(description="The record as published.")


class ErrorCountDoc(BaseModel):
    """Pending dead letters with this reason and last error."""

    reason: str
    error: str | None
    records: int


class DeadLetterList(BaseModel):
    """The pending (not replayed) dead letters of a topic."""

    topic: str
    dead_letter_topic: str
    records: int = Field(description="Pending dead letters in all.")
    by_reason: dict[str, int]
    by_error: list[ErrorCountDoc] = Field(description="The 100 most frequent, by count.")
    letters: list[DeadLetterDoc]
    next: str | None = Field(description="Pass as after for the next page; null at the end.")


class ReplayRequest(Body):
    """Which dead letters to move back to their topic: exactly one of all, reason, origins."""

    model_config = ConfigDict(json_schema_extra=_exactly_one_selection)

    all: bool = Field(False, description="Every pending dead letter.")
    reason: str | None = Field(None, max_length=200, description="Those of this reason.")
    origins: list[Origin] | None = Field(
        None,
        max_length=100_000,
        description="Those of these records: [partition, offset] in the topic.",
    )
    max_records: Annotated[int, Field(ge=1, le=100_000), INTEGRAL] = Field(
        10_000, description="At most this many now."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if sum((self.all, self.reason is not None, self.origins is not None)) != 1:
            raise ValueError("select exactly one of: all, reason, origins")
        return self


class Replayed(BaseModel):
    """What the replay did."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"replayed": 12, "remaining": 0}]})

    replayed: int = Field(description="Records published to the topic again now.")
    remaining: int = Field(description="Selected dead letters still pending (past max_records).")


def _letter_doc(letter: DeadLetter) -> dict[str, Any]:
    return {
        "partition": letter.partition,
        "offset": letter.offset,
        "key": letter.key,
        "reason": letter.reason,
        "error": letter.error,
        "origin": letter.origin,
        "value": orjson.Fragment(letter.value) if letter.origin is not None else None,
    }


def _report_doc(report: DeadLetterReport) -> dict[str, Any]:
    return {
        "topic": report.topic,
        "dead_letter_topic": report.dead_letter_topic,
        "records": report.records,
        "by_reason": report.by_reason,
        "by_error": report.by_error,
        "letters": [_letter_doc(letter) for letter in report.letters],
        "next": report.next,
    }


def dead_letters_blueprint(runtime: Runtime, token: str | None) -> Blueprint:
    """Build the dead-letters blueprint (admin routes, behind the token)."""
    bp = Blueprint("dead_letters", __name__, url_prefix="/v1/topics/<topic>/dead-letters")
    tag_blueprint(bp, ["dead_letters"])
    require_token(bp, token)

    @bp.get("/")
    @operation_id("listDeadLetters")
    @validate_querystring(DeadLetterQuery)
    @document_response(DeadLetterList)
    @problems({**INVALID, **UNAUTHORIZED, **TOPIC_NOT_FOUND, **UNAVAILABLE})
    async def list_dead_letters(topic: str, query_args: DeadLetterQuery) -> Response:
        """Pending dead letters of the topic: counts by reason and error, and one page.

        Pending: in <topic>.dlq and not replayed yet. Reads every pending letter to count.
        """
        report = await runtime.broker.dead_letters(
            topic, limit=query_args.limit, after=query_args.after, reason=query_args.reason
        )
        return json_response(_report_doc(report))

    @bp.post("/replay")
    @operation_id("replayDeadLetters")
    @document_request(ReplayRequest)
    @document_response(Replayed)
    @problems(
        {
            **INVALID,
            **UNAUTHORIZED,
            **TOPIC_NOT_FOUND,
            **TOO_LARGE,
            429: ["BACKLOG_FULL"],
            **UNAVAILABLE,
        }
    )
    async def replay(topic: str) -> Response:
        """Publish selected dead letters' records to the topic again, byte for byte.

        Each is a new record (every group of the topic sees it again), durable before its
        letter stops being pending: a crash can duplicate a record, never lose it. 429 when
        the topic's backlog is full (what was replayed before stays replayed).
        """
        data = parse(ReplayRequest, await request_body())
        selection = Selection(
            all=data.all,
            reason=data.reason,
            origins=frozenset((p, o) for p, o in data.origins)
            if data.origins is not None
            else None,
        )
        replayed, remaining = await runtime.broker.replay_dead_letters(
            topic, selection, max_records=data.max_records
        )
        return json_response({"replayed": replayed, "remaining": remaining})

    return bp
