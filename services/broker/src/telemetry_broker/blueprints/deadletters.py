"""Dead letters of a topic: list them with counts by reason and error, replay them (admin)."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel, Field
from quart import Blueprint, Response
from quart_schema import document_request, document_response, tag_blueprint, validate_querystring
from telemetry_mq import DeadLetter, DeadLetterReport, Selection

from ..runtime import Runtime, json_response, parse, request_body, require_token


class DeadLetterQuery(BaseModel):
    """Which page of the pending dead letters to show."""

    limit: int = Field(100, ge=0, le=1000, description="Dead letters in the page.")
    after: str | None = Field(
        None,
        pattern=r"^\d{1,10}:\d{1,20}$",
        description="partition:offset in the dead-letter topic to start after (a page's next).",
    )
    reason: str | None = Field(
        None, max_length=200, description="Only letters of this reason in the page."
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


class ReplayRequest(BaseModel):
    """Which dead letters to move back to their topic: exactly one of all, reason, origins."""

    all: bool = Field(False, description="Every pending dead letter.")
    reason: str | None = Field(None, max_length=200, description="Those of this reason.")
    origins: list[tuple[int, int]] | None = Field(
        None,
        max_length=100_000,
        description="Those of these records: [partition, offset] in the topic.",
    )
    max_records: int = Field(10_000, ge=1, le=100_000, description="At most this many now.")


class Replayed(BaseModel):
    """What the replay did."""

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
    tag_blueprint(bp, ["dead letters"])
    require_token(bp, token)

    @bp.get("/")
    @validate_querystring(DeadLetterQuery)
    @document_response(DeadLetterList)
    async def list_dead_letters(topic: str, query_args: DeadLetterQuery) -> Response:
        """Pending dead letters of the topic: counts by reason and error, and one page.

        Pending: in <topic>.dlq and not replayed yet. Reads every pending letter to count.
        """
        report = await runtime.broker.dead_letters(
            topic, limit=query_args.limit, after=query_args.after, reason=query_args.reason
        )
        return json_response(_report_doc(report))

    @bp.post("/replay")
    @document_request(ReplayRequest)
    @document_response(Replayed)
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
            origins=frozenset(data.origins) if data.origins is not None else None,
        )
        replayed, remaining = await runtime.broker.replay_dead_letters(
            topic, selection, max_records=data.max_records
        )
        return json_response({"replayed": replayed, "remaining": remaining})

    return bp
