"""Topics: create, list, per-topic stats (partitions, groups, lag, backlog), delete a group."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field
from quart import Blueprint, Response
from quart_schema import document_request, document_response, operation_id, tag_blueprint
from telemetry_kit import empty_response, links, problems
from telemetry_mq import TopicStats

from ..runtime import INTEGRAL, Body, Runtime, json_response, parse, request_body, require_token
from ..spec import (
    GROUP_ACTIONS,
    INVALID,
    NEW_TOPIC_PATTERN,
    TOO_LARGE,
    TOPIC_NOT_FOUND,
    UNAUTHORIZED,
    UNAVAILABLE,
)

# Where a topic leads: its stats, a publish, a fetch and its dead letters.
_TOPIC_LINKS = {
    "getTopic": {"topic": "$response.body#/name"},
    "publishRecords": {"topic": "$response.body#/name"},
    "fetchRecords": {"topic": "$response.body#/name"},
    "listDeadLetters": {"topic": "$response.body#/name"},
}


class TopicCreate(Body):
    """A topic to create."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"name": "telemetry"}]})

    name: str = Field(
        description="1-196 of [A-Za-z0-9._-], not starting with . or -, not ending in .dlq"
        " (the dead-letter topics' names).",
        pattern=NEW_TOPIC_PATTERN,
    )
    partitions: Annotated[int, Field(ge=1, le=1024), INTEGRAL] | None = Field(
        None, description="Default: BROKER_PARTITIONS.", examples=[16]
    )


class TopicCreated(BaseModel):
    """The topic as it exists now."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"name": "telemetry", "partitions": 16, "created": True}]}
    )

    name: str
    partitions: int
    created: bool = Field(description="False when the topic already existed (kept as it was).")


class TopicList(BaseModel):
    """Every topic with its stats."""

    topics: list[TopicStats]


def topics_blueprint(runtime: Runtime, token: str | None) -> Blueprint:
    """Build the topics blueprint."""
    bp = Blueprint("topics", __name__, url_prefix="/v1/topics")
    tag_blueprint(bp, ["topics"])
    require_token(bp, token)

    @bp.post("/")
    @operation_id("createTopic")
    @document_request(TopicCreate)
    @document_response(TopicCreated, 201)
    @document_response(TopicCreated, 200)
    @links(201, _TOPIC_LINKS)
    @links(200, _TOPIC_LINKS)
    @problems(
        {
            **INVALID,
            **UNAUTHORIZED,
            409: ["TOO_MANY_TOPICS"],
            **TOO_LARGE,
            **UNAVAILABLE,
        }
    )
    async def create_topic() -> Response:
        """Create a topic (idempotent: an existing topic is returned unchanged, status 200)."""
        data = parse(TopicCreate, await request_body())
        topic, created = await runtime.broker.create_topic(data.name, data.partitions)
        body = TopicCreated(name=topic.name, partitions=topic.partitions, created=created)
        return json_response(body.model_dump(), 201 if created else 200)

    @bp.get("/")
    @operation_id("listTopics")
    @document_response(TopicList)
    @problems({**UNAUTHORIZED, **UNAVAILABLE})
    async def list_topics() -> Response:
        """List topics with partitions, groups, lag and backlog."""
        broker = runtime.broker
        return json_response({"topics": [broker.topic_stats(n) for n in sorted(broker.topics)]})

    @bp.get("/<topic>")
    @operation_id("getTopic")
    @document_response(TopicStats)
    @problems({**UNAUTHORIZED, **TOPIC_NOT_FOUND, **UNAVAILABLE})
    async def get_topic(topic: str) -> Response:
        """One topic: partitions (offsets, bytes), groups (committed, lag), backlog."""
        return json_response(runtime.broker.topic_stats(topic))

    @bp.delete("/<topic>/groups/<group>/")
    @operation_id("deleteGroup")
    @empty_response(204, "The group is gone, durably.")
    @links(204, {"getGroup": {"topic": "$request.path.topic", "group": "$request.path.group"}})
    @problems(
        {
            **INVALID,
            **UNAUTHORIZED,
            **GROUP_ACTIONS,
            404: ["TOPIC_NOT_FOUND", "GROUP_NOT_FOUND"],
            **UNAVAILABLE,
        }
    )
    async def delete_group(topic: str, group: str) -> Response:
        """Delete a consumer group: its leases, state and journal (durably). 204; 404 if unknown.

        Its open long-polls answer 204; a later fetch with its name starts a new group at the
        earliest retained offset, so stop the group's consumers first.
        """
        await runtime.broker.delete_group(topic, group)
        return Response(b"", status=204)

    return bp
