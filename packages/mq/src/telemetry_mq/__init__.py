"""telemetry-mq: a durable partitioned log with consumer groups and leases, and its client.

The broker core (``Broker``) runs in the broker service; producers and consumers use the async
HTTP client (``BrokerClient``).
"""

from .client import BrokerClient
from .config import BrokerConfig
from .deadletter import (
    DLQ_SUFFIX,
    DeadLetter,
    DeadLetterReport,
    ErrorCount,
    Origin,
    Selection,
)
from .errors import (
    BacklogFullError,
    BrokerUnavailableError,
    CorruptLogError,
    DeadLetterError,
    GroupNotFoundError,
    LeaseExpiredError,
    LeaseLimitError,
    LimitExceededError,
    MQError,
    ProtocolError,
    RequestTooLargeError,
    ReservedError,
    StorageError,
    TopicNotFoundError,
    UnauthorizedError,
)
from .protocol import Batch, Delivery, partition_for
from .server import Broker
from .stats import GroupPartitionStats, GroupStats, Observer, PartitionStats, TopicStats

__all__ = [
    "DLQ_SUFFIX",
    "BacklogFullError",
    "Batch",
    "Broker",
    "BrokerClient",
    "BrokerConfig",
    "BrokerUnavailableError",
    "CorruptLogError",
    "DeadLetter",
    "DeadLetterError",
    "DeadLetterReport",
    "Delivery",
    "ErrorCount",
    "GroupNotFoundError",
    "GroupPartitionStats",
    "GroupStats",
    "LeaseExpiredError",
    "LeaseLimitError",
    "LimitExceededError",
    "MQError",
    "Observer",
    "Origin",
    "PartitionStats",
    "ProtocolError",
    "RequestTooLargeError",
    "ReservedError",
    "Selection",
    "StorageError",
    "TopicNotFoundError",
    "TopicStats",
    "UnauthorizedError",
    "partition_for",
]
