"""The collector app with its background workers, against a real broker and PostgreSQL."""

from __future__ import annotations

from telemetry_collector import Settings, create_app
from telemetry_mq import BrokerClient

from tests.helpers import wait_for

from .test_consume import count, records


async def test_workers_store_what_is_published(broker, db, fresh_database_url):
    settings = Settings(
        database_url=fresh_database_url,
        broker_url=broker.url,
        topic="t",
        workers=2,
        batch_size=100,
        max_wait=0.2,
    )
    async with BrokerClient(broker.url) as mq:
        await mq.create_topic("t", partitions=4)
        await mq.publish("t", records(1000))
    app = create_app(settings)
    async with app.test_app():
        client = app.test_client()

        async def stored_all() -> bool:
            return await count(db) == 1000

        await wait_for(stored_all, timeout=30, what="1000 stored datapoints")
        assert (await client.get("/readyz")).status_code == 200
        metrics = await (await client.get("/metrics")).get_data(as_text=True)
        assert 'telemetry_collector_datapoints_stored_total{topic="t"} 1000.0' in metrics
    async with BrokerClient(broker.url) as mq:
        stats = await mq.topic_stats("t")
    assert [g["lag"] for g in stats["groups"]] == [0]


async def test_unreachable_broker_is_not_ready(db, fresh_database_url):
    from telemetry_devstack import free_port

    settings = Settings(
        database_url=fresh_database_url,
        broker_url=f"http://127.0.0.1:{free_port()}",
        topic="t",
        workers=1,
    )
    app = create_app(settings)
    async with app.test_app():
        client = app.test_client()

        async def not_ready_reason() -> str | None:
            r = await client.get("/readyz")
            body = await r.get_json()
            return body.get("detail") if r.status_code == 503 else None

        reason = await wait_for(not_ready_reason, timeout=10, what="a not-ready answer")
        assert reason == "broker unreachable"


async def test_unreachable_database_is_not_ready_without_driver_text():
    from telemetry_devstack import free_port

    db_port = free_port()
    settings = Settings(
        database_url=f"postgresql://telemetry:hunter2@127.0.0.1:{db_port}/nodb",
        broker_url=f"http://127.0.0.1:{free_port()}",
        topic="t",
        workers=1,
        migrate=False,
    )
    app = create_app(settings)
    async with app.test_app():
        client = app.test_client()

        async def not_ready_body() -> str | None:
            r = await client.get("/readyz")
            body = await r.get_data(as_text=True)
            return body if r.status_code == 503 and "database" in body else None

        body = await wait_for(not_ready_body, timeout=10, what="a not-ready answer")
    # /readyz is reachable by anyone who reaches the port: the driver's message (host, port,
    # user, server text) stays in the logs.
    assert '"detail":"database unreachable"' in body
    for leak in (str(db_port), "127.0.0.1", "hunter2", "nodb", "telemetry", "connect"):
        assert leak not in body
