"""telemetry-store: the PostgreSQL schema, migrations, work index, write path and reads."""

from .errors import MigrationError, StoreError, UnknownStreamError
from .migrate import ADVISORY_LOCK_ID, Migration, load_migrations, migrate
from .pool import Cursor, create_pool, cursor, ping, transaction
from .streams import Claim, claim, ensure_streams, next_seq
from .writes import GpuSighting, insert_datapoints, upsert_gpus

__all__ = [
    "ADVISORY_LOCK_ID",
    "Claim",
    "Cursor",
    "GpuSighting",
    "Migration",
    "MigrationError",
    "StoreError",
    "UnknownStreamError",
    "claim",
    "create_pool",
    "cursor",
    "ensure_streams",
    "insert_datapoints",
    "load_migrations",
    "migrate",
    "next_seq",
    "ping",
    "transaction",
    "upsert_gpus",
]
