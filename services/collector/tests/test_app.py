"""The collector app with its background workers, against a real broker and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import psycopg2
from psycopg2.extensions import make_dsn, parse_dsn
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
    from telemetry_devstack import refused_port

    with refused_port() as port:
        settings = Settings(
            database_url=fresh_database_url,
            broker_url=f"http://127.0.0.1:{port}",
            topic="t",
            workers=1,
        )
        app = create_app(settings)
        async with app.test_app():
            client = app.test_client()

            async def broker_reason() -> bool:
                # "starting" and "not migrated yet" come first; then the broker is the reason.
                r = await client.get("/readyz")
                body = await r.get_json()
                return r.status_code == 503 and body.get("detail") == "broker unreachable"

            await wait_for(broker_reason, timeout=10, what="not ready: broker unreachable")


class Link:
    """A TCP forwarder to PostgreSQL that can be cut: a real outage of the collector's database
    without stopping the server the other tests share."""

    def __init__(self, dsn: str) -> None:
        params = parse_dsn(dsn)
        host, port = params.get("host") or "127.0.0.1", int(params.get("port") or 5432)
        self._unix = f"{host}/.s.PGSQL.{port}" if host.startswith("/") else None
        self._tcp = (host, port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self, port: int = 0) -> int:
        """Listen (again) on ``port``, a free one when 0; return it."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        return int(self._server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            if self._unix is not None:
                up_reader, up_writer = await asyncio.open_unix_connection(self._unix)
            else:
                up_reader, up_writer = await asyncio.open_connection(*self._tcp)
        except OSError:
            writer.transport.abort()
            return
        self._writers.add(up_writer)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def cut(self) -> None:
        """Refuse new connections and drop the open ones."""
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()
        await self._server.wait_closed()


def rename_database(admin_dsn: str, old: str, new: str) -> None:
    with psycopg2.connect(admin_dsn) as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (old,)
            )
            cur.execute(f'ALTER DATABASE "{old}" RENAME TO "{new}"')
    conn.close()


async def test_database_outage_is_not_ready_without_driver_text(
    broker, pg_server, fresh_database_url
):
    params = parse_dsn(fresh_database_url)
    dbname, gone = params["dbname"], params["dbname"] + "_gone"
    link = Link(fresh_database_url)
    port = await link.start()
    settings = Settings(
        database_url=make_dsn(fresh_database_url, host="127.0.0.1", port=port),
        broker_url=broker.url,
        topic="t",
        workers=1,
        batch_size=100,
        max_wait=0.2,
    )
    async with BrokerClient(broker.url) as mq:
        await mq.create_topic("t", partitions=2)
    app = create_app(settings)
    try:
        async with app.test_app():
            client = app.test_client()

            async def ready() -> bool:
                return (await client.get("/readyz")).status_code == 200

            await wait_for(ready, timeout=30, what="a ready collector")
            # The outage: connections cut, and the server the collector finds again no longer
            # has its database, so libpq's message names the host, port and database.
            await link.cut()
            await asyncio.to_thread(rename_database, pg_server, dbname, gone)
            await link.start(port)

            def not_ready_with(detail: str) -> Callable[[], Awaitable[str | None]]:
                async def check() -> str | None:
                    r = await client.get("/readyz")
                    body = await r.get_data(as_text=True)
                    ok = r.status_code == 503 and f'"detail":"{detail}' in body
                    return body if ok else None

                return check

            # The readiness probe's own connection fails first ...
            unreachable = await wait_for(
                not_ready_with("database unreachable"), timeout=10, what="database unreachable"
            )
            # ... then a batch the collector cannot store pauses the workers.
            async with BrokerClient(broker.url) as mq:
                await mq.publish("t", records(10))
            unavailable = await wait_for(
                not_ready_with("database unavailable"), timeout=20, what="database unavailable"
            )
            await link.cut()
    finally:
        await asyncio.to_thread(rename_database, pg_server, gone, dbname)
    # Anyone who reaches the port may ask /readyz: the driver's message (host, port, user,
    # database, server text) stays in the logs.
    assert unreachable.endswith('"detail":"database unreachable"}'), unreachable
    assert unavailable.endswith('"detail":"database unavailable"}'), unavailable
    for body in (unreachable, unavailable):
        for leak in (str(port), "127.0.0.1", dbname, params.get("user", "?"), "Error", "FATAL"):
            assert leak not in body, (leak, body)
