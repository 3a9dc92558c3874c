"""Faults of the database are not faults of the data: real PostgreSQL faults, a real broker.

A transient fault (here a read-only database, as after a failover to a standby, and
terminated sessions) hands every lease back without spending a delivery and pauses the
workers until the database takes writes again. Records the database refuses are isolated
by splitting the round, and only they reach the dead-letter topic, with the database's
message; the refusals are made by the real database, including ones no decoder can predict
(a CHECK constraint, a trigger).
"""

from __future__ import annotations

import asyncio
import secrets

import orjson
import psycopg2
import pytest
from prometheus_client import CollectorRegistry
from psycopg2.extensions import parse_dsn
from telemetry_collector.consume import Consumer
from telemetry_collector.faults import Fault, classify, reason
from telemetry_collector.metrics import CollectorMetrics
from telemetry_model import DecodeError, decode
from telemetry_mq import BrokerClient
from telemetry_store import QueryCancelledError, QueryTimeoutError, cursor

from tests.helpers import wait_for

from .test_consume import count, records

TOPIC = "telemetry"
GROUP = "collectors"


@pytest.fixture
async def mq(broker):
    async with BrokerClient(broker.url) as client:
        await client.create_topic(TOPIC, partitions=1)
        yield client


def make_consumer(mq, db, topic: str = TOPIC) -> tuple[Consumer, CollectorRegistry]:
    registry = CollectorRegistry()
    consumer = Consumer(
        broker=mq,
        pool=db,
        metrics=CollectorMetrics.create(registry),
        topic=topic,
        group=GROUP,
        batch_size=1000,
        max_wait=0.5,
        ack_wait=30.0,
        max_backoff=0.5,
    )
    return consumer, registry


def metric(registry: CollectorRegistry, name: str, topic: str = TOPIC, **labels: str) -> float:
    return registry.get_sample_value(name, {"topic": topic, **labels}) or 0.0


async def sql(dsn: str, statement: str) -> None:
    """Run one statement on a connection of its own (autocommit, writable)."""
    conn = await asyncio.to_thread(
        psycopg2.connect, dsn, options="-c default_transaction_read_only=off"
    )
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            await asyncio.to_thread(cur.execute, statement)
    finally:
        conn.close()


async def stored(dsn: str) -> int:
    """How many datapoints are stored (on a connection of its own: the test ends sessions)."""
    conn = await asyncio.to_thread(psycopg2.connect, dsn)
    try:
        with conn.cursor() as cur:
            await asyncio.to_thread(cur.execute, "SELECT count(*) FROM telemetry")
            return int(cur.fetchone()[0])
    finally:
        conn.close()


async def make_read_only(dsn: str, on: bool) -> None:
    """Make the database refuse writes (like a standby) and end the sessions open on it."""
    name = parse_dsn(dsn)["dbname"]
    setting = (
        "SET default_transaction_read_only = on" if on else "RESET default_transaction_read_only"
    )
    await sql(dsn, f'ALTER DATABASE "{name}" {setting}')
    await sql(
        dsn,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )


async def dead_letters(mq: BrokerClient) -> list[dict]:
    topics = {t["name"] for t in await mq.topics()}
    if f"{TOPIC}.dlq" not in topics:
        return []
    batch = await mq.fetch(f"{TOPIC}.dlq", "inspect", max_records=1000, max_wait=1.0)
    return [] if batch is None else [orjson.loads(r.value) for r in batch.records]


# --- transient faults -------------------------------------------------------------------------


async def test_a_read_only_database_releases_the_round_without_spending_a_delivery(
    mq, db, fresh_database_url
):
    consumer, registry = make_consumer(mq, db)
    await mq.publish(TOPIC, records(50))
    batch = await mq.fetch(TOPIC, GROUP, max_records=1000, max_wait=2.0)
    assert batch is not None and all(r.delivery_count == 1 for r in batch.records)
    await make_read_only(fresh_database_url, True)
    stop = asyncio.Event()
    try:
        # The sessions were ended and new ones are read-only: either way a fault of the database.
        assert not await consumer.handle(batch)
        assert consumer.unavailable is not None
        assert metric(registry, "telemetry_collector_datapoints_released_total") == 50
        assert metric(registry, "telemetry_collector_database_up") == 0
        recovering = asyncio.create_task(consumer.wait_for_database(stop))

        async def probed_read_only() -> bool:
            return consumer.unavailable == "the database is read-only"

        await wait_for(probed_read_only, timeout=30, what="the probe to find it read-only")
        assert not recovering.done()
        # Handed back with the delivery taken back: the same records, still at delivery 1.
        again = await mq.fetch(TOPIC, GROUP, max_records=1000, max_wait=5.0)
        assert again is not None
        assert [r.offset for r in again.records] == [r.offset for r in batch.records]
        assert all(r.delivery_count == 1 for r in again.records)
        # While paused, a round is handed back untried.
        assert not await consumer.handle(again)
        third = await mq.fetch(TOPIC, GROUP, max_records=1000, max_wait=5.0)
        assert third is not None and all(r.delivery_count == 1 for r in third.records)
    finally:
        await make_read_only(fresh_database_url, False)
    await asyncio.wait_for(recovering, timeout=30)
    assert consumer.unavailable is None
    assert await consumer.handle(third)
    assert await stored(fresh_database_url) == 50
    assert await dead_letters(mq) == []


async def test_workers_stop_fetching_while_the_database_is_away_and_resume(
    mq, db, fresh_database_url
):
    await mq.create_topic("wide", partitions=4)
    consumer, registry = make_consumer(mq, db, topic="wide")
    stop = asyncio.Event()
    await mq.publish("wide", records(400))
    run = asyncio.create_task(consumer.run(stop, workers=3, migrate=False))
    try:
        await wait_for(
            lambda: stored(fresh_database_url), timeout=30, what="the first stored datapoints"
        )
        await make_read_only(fresh_database_url, True)
        await mq.publish("wide", records(400, start=400))

        async def paused() -> bool:
            return consumer.unavailable is not None

        await wait_for(paused, timeout=30, what="the workers to pause")
        await asyncio.sleep(1.5)  # fetches in flight at the pause (max_wait 0.5 s) come back
        stored_before = await stored(fresh_database_url)
        released = {"consumer_group": GROUP, "outcome": "released"}
        rounds = metric(registry, "telemetry_collector_batches_total", "wide", **released)
        assert rounds >= 1
        # Paused workers do not fetch: three seconds later not one more round was handed
        # back, where a fetch loop retrying every second would have made several.
        await asyncio.sleep(3)  # the interval being checked, not a synchronization
        assert metric(registry, "telemetry_collector_batches_total", "wide", **released) == rounds
        assert await stored(fresh_database_url) == stored_before < 800
    finally:
        await make_read_only(fresh_database_url, False)
    try:

        async def all_stored() -> bool:
            return await stored(fresh_database_url) == 800

        await wait_for(all_stored, timeout=60, what="800 stored datapoints after the fault")
        assert consumer.unavailable is None
        assert metric(registry, "telemetry_collector_database_pauses_total", "wide") >= 1
        assert metric(registry, "telemetry_collector_datapoints_rejected_total", "wide") == 0
    finally:
        stop.set()
        await asyncio.wait_for(run, timeout=30)
    stats = await mq.topic_stats("wide")
    assert [g["lag"] for g in stats["groups"] if g["group"] == GROUP] == [0]
    assert "wide.dlq" not in {t["name"] for t in await mq.topics()}


async def test_a_statement_past_its_timeout_is_transient(mq, db, fresh_database_url):
    from telemetry_store import create_pool

    # A store that waits on a lock the test holds, with a 0.5 s statement timeout.
    pool = await create_pool(fresh_database_url, maxsize=2, statement_timeout=0.5)
    try:
        consumer, registry = make_consumer(mq, pool)
        await mq.publish(TOPIC, records(20))
        batch = await mq.fetch(TOPIC, GROUP, max_records=1000, max_wait=2.0)
        holder = await asyncio.to_thread(psycopg2.connect, fresh_database_url)
        try:
            with holder.cursor() as cur:
                cur.execute("LOCK TABLE telemetry IN ACCESS EXCLUSIVE MODE")
                assert not await consumer.handle(batch)
        finally:
            holder.rollback()
            holder.close()
        assert consumer.unavailable is not None
        assert metric(registry, "telemetry_collector_datapoints_released_total") == 20
        again = await mq.fetch(TOPIC, GROUP, max_records=1000, max_wait=5.0)
        assert again is not None and all(r.delivery_count == 1 for r in again.records)
        await asyncio.wait_for(consumer.wait_for_database(asyncio.Event()), timeout=30)
        assert await consumer.handle(again)
        assert await count(db) == 20
    finally:
        pool.close()
        await pool.wait_closed()


# --- records the database refuses -------------------------------------------------------------


def _poison(kind: str, value: bytes) -> bytes:
    body = orjson.loads(value)
    if kind == "nul_in_label":
        body["container"] = "bad\u0000label"
    elif kind == "nul_in_host":
        body["host"] = "host\u0000"
    elif kind == "uuid_too_long":
        # Incompressible and past the ~2.7 kB a btree entry of gpus_uuid_key may hold.
        body["uuid"] = "GPU-" + secrets.token_hex(1500)
    elif kind == "gpu_index_out_of_range":
        body["gpu"] = 40_000  # smallint
    elif kind == "seq_out_of_range":
        body["seq"] = 2**63  # bigint
    elif kind == "time_out_of_range":
        body["ts"] = 2**63 - 1  # past PostgreSQL's last timestamp
    return orjson.dumps(body)


POISON_AT = 7
KINDS = [
    "nul_in_label",
    "nul_in_host",
    "uuid_too_long",
    "gpu_index_out_of_range",
    "seq_out_of_range",
    "time_out_of_range",
    "check_constraint",
    "trigger",
]


@pytest.mark.parametrize("kind", KINDS)
async def test_a_record_the_database_refuses_is_dead_lettered_alone(
    mq, db, fresh_database_url, kind
):
    if kind == "check_constraint":
        # A rule no decoder can know: the database alone refuses this record.
        await sql(
            fresh_database_url,
            f"ALTER TABLE telemetry ADD CONSTRAINT refuse_one CHECK (seq <> {POISON_AT})",
        )
    elif kind == "trigger":
        await sql(
            fresh_database_url,
            "CREATE FUNCTION refuse_one() RETURNS trigger LANGUAGE plpgsql AS $$"
            f" BEGIN IF NEW.seq = {POISON_AT} THEN RAISE EXCEPTION 'seq % is refused', NEW.seq;"
            " END IF; RETURN NEW; END $$;"
            " CREATE TRIGGER refuse_one BEFORE INSERT ON telemetry"
            " FOR EACH ROW EXECUTE FUNCTION refuse_one()",
        )
    consumer, registry = make_consumer(mq, db)
    published = records(40)
    key, value = published[POISON_AT]
    if kind not in ("check_constraint", "trigger"):
        value = _poison(kind, value)
        # The decoder knows the database's domain and refuses these before any store; a
        # decoder that let one through would leave it to the database (the rules below).
        with pytest.raises(DecodeError):
            decode(value)
    published[POISON_AT] = (key, value)
    await mq.publish(TOPIC, published)
    batch = await mq.fetch(TOPIC, GROUP, max_records=1000, max_wait=2.0)
    assert batch is not None and len(batch.records) == 40
    assert await consumer.handle(batch)
    assert await count(db) == 39
    async with db.acquire() as conn, conn.cursor() as cur:
        await cur.execute("SELECT seq FROM telemetry ORDER BY seq")
        assert [r[0] for r in await cur.fetchall()] == [s for s in range(40) if s != POISON_AT]
    [dead] = await dead_letters(mq)
    assert dead["origin"]["offset"] == batch.records[POISON_AT].offset
    assert dead["origin"]["delivery_count"] == 1
    assert dead["error"]  # the decoder's or the database's message
    if kind == "check_constraint":
        assert "23514" in dead["error"] and "refuse_one" in dead["error"]
    elif kind == "trigger":
        assert "seq 7 is refused" in dead["error"]
    assert metric(registry, "telemetry_collector_datapoints_rejected_total") == 1
    assert metric(registry, "telemetry_collector_datapoints_released_total") == 0
    assert metric(registry, "telemetry_collector_database_pauses_total") == 0
    # The rest of the lease is acked with the next fetch, which then finds nothing.
    assert await mq.fetch(TOPIC, GROUP, max_records=1000, max_wait=0.2, ack=batch) is None


async def test_several_refused_records_across_partitions_are_isolated(mq, db, fresh_database_url):
    await mq.create_topic("multi", partitions=4)
    consumer, registry = make_consumer(mq, db, topic="multi")
    published = records(300)
    # Rules of the database no decoder knows: a value range and a value it refuses.
    await sql(
        fresh_database_url,
        "ALTER TABLE telemetry ADD CONSTRAINT refuse_seq CHECK (seq NOT IN (13, 150));"
        "CREATE FUNCTION refuse_151() RETURNS trigger LANGUAGE plpgsql AS $$"
        " BEGIN IF NEW.seq = 151 THEN RAISE EXCEPTION USING ERRCODE = '22003',"
        " MESSAGE = 'seq 151 out of range'; END IF; RETURN NEW; END $$;"
        " CREATE TRIGGER refuse_151 BEFORE INSERT ON telemetry"
        " FOR EACH ROW EXECUTE FUNCTION refuse_151()",
    )
    await mq.publish("multi", published)
    batches = []
    while sum(len(b.records) for b in batches) < 300:
        more = await mq.fetch_many("multi", GROUP, max_records=1000, max_wait=2.0)
        assert more
        batches += more
    assert await consumer.handle(*batches)
    assert await count(db) == 297
    assert metric(registry, "telemetry_collector_datapoints_rejected_total", "multi") == 3
    dead = await mq.fetch("multi.dlq", "inspect", max_records=10, max_wait=2.0)
    assert dead is not None and len(dead.records) == 3
    errors = sorted(orjson.loads(r.value)["error"][:5] for r in dead.records)
    assert errors == ["22003", "23514", "23514"]


async def test_a_missing_table_is_an_environment_fault_not_a_data_fault(mq, db, fresh_database_url):
    consumer, registry = make_consumer(mq, db)
    await mq.publish(TOPIC, records(30))
    batch = await mq.fetch(TOPIC, GROUP, max_records=1000, max_wait=2.0)
    await sql(fresh_database_url, "ALTER TABLE telemetry RENAME TO telemetry_away")
    try:
        assert not await consumer.handle(batch)  # nothing stores: nothing is dead-lettered
        assert metric(registry, "telemetry_collector_datapoints_rejected_total") == 0
        assert consumer.unavailable is not None and "42P01" in consumer.unavailable
    finally:
        await sql(fresh_database_url, "ALTER TABLE telemetry_away RENAME TO telemetry")
    again = await mq.fetch(TOPIC, GROUP, max_records=1000, max_wait=5.0)
    assert again is not None and all(r.delivery_count == 1 for r in again.records)
    await asyncio.wait_for(consumer.wait_for_database(asyncio.Event()), timeout=30)
    assert await consumer.handle(again)
    assert await count(db) == 30
    assert await dead_letters(mq) == []


# --- classification ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "fault"),
    [
        ("08006", Fault.TRANSIENT),  # connection failure
        ("53100", Fault.TRANSIENT),  # disk full
        ("53300", Fault.TRANSIENT),  # too many connections
        ("57P01", Fault.TRANSIENT),  # admin shutdown
        ("57P03", Fault.TRANSIENT),  # cannot connect now
        ("57014", Fault.TRANSIENT),  # statement timeout
        ("40001", Fault.TRANSIENT),  # serialization failure
        ("40P01", Fault.TRANSIENT),  # deadlock
        ("25006", Fault.TRANSIENT),  # read-only transaction
        ("55P03", Fault.TRANSIENT),  # lock not available
        ("58030", Fault.TRANSIENT),  # I/O error
        ("22003", Fault.RECORD),  # numeric value out of range
        ("22P05", Fault.RECORD),  # untranslatable character
        ("23514", Fault.RECORD),  # check violation
        ("23502", Fault.RECORD),  # not-null violation
        ("54000", Fault.RECORD),  # program limit (index row too large)
        ("42P01", Fault.OTHER),  # undefined table
        ("P0001", Fault.OTHER),  # a function's own exception
        ("XX000", Fault.OTHER),  # internal error
    ],
)
async def test_sqlstates_are_classified(db, code, fault):
    with pytest.raises((psycopg2.Error, QueryCancelledError)) as raised:
        async with cursor(db) as cur:
            await cur.execute(
                f"DO $$ BEGIN RAISE EXCEPTION 'injected' USING ERRCODE = '{code}'; END $$"
            )
    assert classify(raised.value) is fault
    if code == "57014":
        # aiopg turns a cancelled statement into CancelledError; the store gives it back a name.
        assert isinstance(raised.value, QueryCancelledError)
        return
    assert raised.value.pgcode == code
    assert reason(raised.value).startswith(f"{code}: injected")


def test_errors_without_a_sqlstate_are_classified():
    assert classify(psycopg2.OperationalError("server closed the connection")) is Fault.TRANSIENT
    assert classify(psycopg2.InterfaceError("connection already closed")) is Fault.TRANSIENT
    assert classify(ConnectionRefusedError()) is Fault.TRANSIENT
    assert classify(TimeoutError()) is Fault.TRANSIENT
    assert classify(QueryCancelledError("x")) is Fault.TRANSIENT
    assert classify(QueryTimeoutError("x")) is Fault.TRANSIENT
    assert classify(psycopg2.DataError("x")) is Fault.RECORD
    assert classify(ValueError("a bug")) is Fault.OTHER
