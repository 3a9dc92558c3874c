"""Errors raised by telemetry-mq, by the broker core and by the HTTP client alike.

MQError
 ├── BrokerUnavailableError   the broker cannot take the request now (connection, 503, closing)
 │    ├── BacklogFullError    the topic's unconsumed backlog is over its bound (429)
 │    ├── LeaseLimitError     the group has as many records in flight as it may (429)
 │    └── DeadLetterError     records could not be dead-lettered; they stay deliverable (503)
 ├── ProtocolError            the request or the answer is malformed (400, unexpected status/body)
 │    ├── RequestTooLargeError  the request body is over the broker's limit (413)
 │    ├── UnauthorizedError     a bearer token is required or wrong (401)
 │    ├── ReservedError         the broker's own: a dead-letter topic, a _broker* group (403)
 │    └── LimitExceededError    past a configured limit: topics, groups, nack delay (409/400)
 ├── TopicNotFoundError       the topic does not exist (404)
 │    └── GroupNotFoundError  the consumer group does not exist (404)
 ├── LeaseExpiredError        the lease is unknown or expired; its records are redelivered (409)
 ├── StorageError             the log could not be written (disk full, I/O error)
 └── CorruptLogError          recovery found a corrupt record that is not a torn tail
"""

from __future__ import annotations


class MQError(Exception):
    """Root of every telemetry-mq error."""


class BrokerUnavailableError(MQError):
    """The broker cannot be reached or cannot take the request right now."""


class BacklogFullError(BrokerUnavailableError):
    """Publish refused: the topic's unconsumed backlog is over its bound; retry later."""

    def __init__(self, topic: str, *, backlog_bytes: int, limit: int, retry_after: float) -> None:
        super().__init__(
            f"topic {topic!r}: backlog of {backlog_bytes} bytes is over the bound of {limit} bytes"
        )
        self.topic = topic
        self.backlog_bytes = backlog_bytes
        self.limit = limit
        self.retry_after = retry_after


class LeaseLimitError(BrokerUnavailableError):
    """Fetch refused: the group has ``limit`` records in flight already; ack some, then retry."""

    def __init__(self, topic: str, group: str, *, limit: int, retry_after: float) -> None:
        super().__init__(
            f"group {group!r} of {topic!r} has {limit} records in flight, its limit: ack first"
        )
        self.topic = topic
        self.group = group
        self.limit = limit
        self.retry_after = retry_after


class DeadLetterError(BrokerUnavailableError):
    """Records could not be moved to the dead-letter topic; they stay deliverable (retry)."""

    def __init__(self, message: str, *, topic: str) -> None:
        super().__init__(message)
        self.topic = topic


class ProtocolError(MQError):
    """A request or an answer does not follow the broker protocol."""


class RequestTooLargeError(ProtocolError):
    """The request body is larger than the broker accepts."""


class UnauthorizedError(ProtocolError):
    """The broker requires a bearer token and none, or a wrong one, was given."""


class ReservedError(ProtocolError):
    """The request would write a dead-letter topic or use a ``_broker*`` group: the broker's own."""


class LimitExceededError(ProtocolError):
    """A request past a configured limit; ``code`` names it (``TOO_MANY_TOPICS``, ...)."""

    def __init__(self, code: str, message: str, *, limit: float) -> None:
        super().__init__(message)
        self.code = code
        self.limit = limit


class TopicNotFoundError(MQError):
    """The topic does not exist."""

    def __init__(self, topic: str) -> None:
        super().__init__(f"topic {topic!r} does not exist")
        self.topic = topic


class GroupNotFoundError(TopicNotFoundError):
    """The consumer group does not exist on the topic."""

    def __init__(self, topic: str, group: str) -> None:
        MQError.__init__(self, f"group {group!r} does not exist on topic {topic!r}")
        self.topic = topic
        self.group = group


class LeaseExpiredError(MQError):
    """The lease is unknown or has expired; its unacked records will be redelivered."""

    def __init__(self, topic: str, group: str, lease: str) -> None:
        super().__init__(f"lease {lease!r} of group {group!r} on {topic!r} is unknown or expired")
        self.topic = topic
        self.group = group
        self.lease = lease


class StorageError(MQError):
    """The log could not be written; the partition refuses writes until a restart recovers it."""

    def __init__(self, message: str, *, topic: str, partition: int | None = None) -> None:
        super().__init__(message)
        self.topic = topic
        self.partition = partition


class CorruptLogError(MQError):
    """A record in the middle of a log (or group journal) fails its checksum or framing."""

    def __init__(
        self,
        message: str,
        *,
        path: str,
        position: int,
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
    ) -> None:
        where = f"{path} at byte {position}"
        if offset is not None:
            where += f" (topic {topic!r}, partition {partition}, offset {offset})"
        super().__init__(f"{where}: {message}")
        self.path = path
        self.position = position
        self.topic = topic
        self.partition = partition
        self.offset = offset
