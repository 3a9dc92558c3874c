"""Topics: create, list, per-topic stats (partitions, groups, lag, backlog), delete a group."""

from __future__ import annotations

from pydantic import BaseModel, Field
from quart import Blueprint, Response
from quart_schema import document_request, document_response, tag_blueprint
from telemetry_mq import TopicStats

from ..runtime import Runtime, json_response, parse, request_body, require_token


class TopicCreate(BaseModel):
    """A topic to create."""

    name: str = Field(description="1-200 of [A-Za-z0-9._-].")
    partitions: int | None = Field(None, ge=1, le=1024, description="Default: BROKER_PARTITIONS.")


class TopicCreated(BaseModel):
    """The topic as it exists now."""

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
    @document_request(TopicCreate)
    @document_response(TopicCreated, 201)
    @document_response(TopicCreated, 200)
    async def create_topic() -> Response:
        """Create a topic (idempotent: an existing topic is returned unchanged, status 200)."""
        data = parse(TopicCreate, await request_body())
        topic, created = await runtime.broker.create_topic(data.name, data.partitions)
        body = TopicCreated(name=topic.name, partitions=topic.partitions, created=created)
        return json_response(body.model_dump(), 201 if created else 200)

    @bp.get("/")
    @document_response(TopicList)
    async def list_topics() -> Response:
        """List topics with partitions, groups, lag and backlog."""
        broker = runtime.broker
        return json_response({"topics": [broker.topic_stats(n) for n in sorted(broker.topics)]})

    @bp.get("/<topic>")
    @document_response(TopicStats)
    async def get_topic(topic: str) -> Response:
        """One topic: partitions (offsets, bytes), groups (committed, lag), backlog."""
        return json_response(runtime.broker.topic_stats(topic))

    @bp.delete("/<topic>/groups/<group>/")
    async def delete_group(topic: str, group: str) -> Response:
        """Delete a consumer group: its leases, state and journal (durably). 204; 404 if unknown.

        Its open long-polls answer 204; a later fetch with its name starts a new group at the
        earliest retained offset, so stop the group's consumers first.
        """
        await runtime.broker.delete_group(topic, group)
        return Response(b"", status=204)

    return bp
