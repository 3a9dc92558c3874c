"""The streamer app end to end: bad CSV rows are skipped and counted, good ones replayed."""

from __future__ import annotations

from telemetry_model import COLUMNS, decode
from telemetry_mq import BrokerClient
from telemetry_streamer import Settings, create_app

from conftest import CSV_PATH
from tests.helpers import wait_for


def write_csv_with_bad_rows(path) -> int:
    lines = CSV_PATH.read_text().splitlines()
    good = lines[1:21]
    bad = [
        good[0].replace('"DCGM_FI_DEV_GPU_UTIL"', '"DCGM_FI_NOPE"'),  # unknown metric
        good[1].rsplit(',"DCGM', 1)[0],  # wrong column count
        good[2].replace('","0","DCGM', '","zero","DCGM'),  # non-numeric value
        '"2025-07-18T20:42:34Z","DCGM_FI_DEV_GPU_UTIL","0"broken',  # broken quoting
        # Outside the data's domain: the collector could never store these.
        good[3].replace('"3","nvidia3"', '"99999","nvidia3"'),  # gpu index past smallint
        good[4].replace('"GPU-', '"GPU-\x00'),  # a NUL in the uuid
        good[5].replace('"GPU-', '"GPU-' + "f" * 3000),  # a 3 kB uuid
    ]
    path.write_text("\n".join([",".join(COLUMNS), *good[:10], *bad, *good[10:]]) + "\n")
    return len(good), len(bad)


async def test_bad_rows_are_skipped_and_counted_and_good_rows_replayed(
    broker, db, fresh_database_url, tmp_path
):
    csv = tmp_path / "with-bad-rows.csv"
    good, bad = write_csv_with_bad_rows(csv)
    settings = Settings(
        database_url=fresh_database_url,
        broker_url=broker.url,
        csv_path=csv,
        stream="bad-rows",
        topic="t",
        partitions=2,
        rate=0,
        loops=1,
        chunk_size=7,
        batch_size=5,
    )
    app = create_app(settings)
    async with app.test_app():
        client = app.test_client()
        metrics = await (await client.get("/metrics")).get_data(as_text=True)
        registry_value = next(
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("telemetry_streamer_csv_rows_skipped_total")
        )

        async def ready() -> bool:
            return (await client.get("/readyz")).status_code == 200

        await wait_for(ready, timeout=30, what="the streamer to be ready")
        seqs: list[int] = []
        async with BrokerClient(broker.url) as mq:

            async def drained() -> bool:
                while batch := await mq.fetch("t", "check", max_records=100, max_wait=0.1):
                    seqs.extend(decode(r.value).seq for r in batch.records)
                    await mq.ack(batch)
                return len(seqs) >= good

            await wait_for(drained, timeout=30, what="the good rows on the broker")
    assert registry_value == bad == 7
    assert sorted(seqs) == list(range(good))


async def test_unreachable_database_is_not_ready_and_stops_cleanly(broker, tmp_path, caplog):
    settings = Settings(
        database_url="postgresql://nobody@127.0.0.1:1/none",
        broker_url=broker.url,
        csv_path=CSV_PATH,
        topic="t",
    )
    app = create_app(settings)
    # Far more than a clean stop needs: past it Quart would cancel the replay task.
    app.config["BACKGROUND_TASK_SHUTDOWN_TIMEOUT"] = 30
    async with app.test_app():
        r = await app.test_client().get("/readyz")
        assert r.status_code == 503
        assert (await r.get_json())["code"] == "NOT_READY"
        (replay,) = app.background_tasks

        async def retried() -> bool:
            return sum("database not ready" in m for m in caplog.messages) >= 2

        await wait_for(retried, timeout=30, what="two tries of the database")
        assert not replay.done()  # it keeps retrying while it serves
    # The shutdown set the stop event: the replay task returned by itself, in its retry wait.
    assert replay.done() and not replay.cancelled()
    assert not [r for r in caplog.records if r.name.startswith("quart")]  # no task exception
    async with BrokerClient(broker.url) as mq:
        assert "t" not in {t["name"] for t in await mq.topics()}  # it never got to publishing
