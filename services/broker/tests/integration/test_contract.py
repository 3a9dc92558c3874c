"""The broker's OpenAPI contract against a live broker process with a token.

schemathesis runs every phase (examples, coverage, fuzzing, and the stateful phase, which
follows the document's links: create a topic, publish to it, fetch, then ack, nack, release,
reject or extend the lease...) with every check, and must find nothing. A typed client
generated from docs/broker-openapi.json with openapi-python-client, with no warning, runs every
operation and gets one problem of each kind the document declares but 503.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from conftest import ROOT, generate_client

from .conftest import StartBroker

SPEC = ROOT / "docs" / "broker-openapi.json"
TOKEN = "contract-token"
EXAMPLES = 25  # per operation and phase: about 1,000 requests, 15 s on an idle machine


@pytest.mark.timeout(600)
async def test_schemathesis_finds_nothing(start_broker: StartBroker, tmp_path: Path):
    broker = await start_broker(
        BROKER_TOKEN=TOKEN,
        BROKER_MAX_FETCH_WAIT="0.2",  # generated long-polls end soon
        BROKER_SEGMENT_BYTES="65536",
        BROKER_WAL_SEGMENT_BYTES="65536",
    )
    report = tmp_path / "report.json"
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "run",
            f"{broker.url}/openapi.json",
            "--header",
            f"Authorization: Bearer {TOKEN}",
            "--checks",
            "all",
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--max-examples",
            str(EXAMPLES),
            "--seed",
            "1",
            "--workers",
            "1",
            "--no-color",
            "--report",
            "json",
            "--report-json-path",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
        cwd=tmp_path,
    )
    output = result.stdout[-6000:] + result.stderr[-2000:]
    assert result.returncode == 0, output
    run = json.loads(report.read_text())
    assert run["complete"] and run["failures"] == [] and run["errors"] == [], output
    assert {name: phase["status"] for name, phase in run["phases"].items()} == {
        "examples": "success",
        "coverage": "success",
        "fuzzing": "success",
        "stateful": "success",
    }, output
    assert run["operations"]["tested"] == 14, output
    assert run["test_cases"]["generated"] >= 500, output
    assert not any(run["warnings"].values()), run["warnings"]
    print(f"schemathesis: {run['test_cases']} in {run['running_time']:.1f}s")


@pytest.fixture(scope="module")
def broker_client(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    return generate_client(SPEC, "telemetry_broker_client", tmp_path_factory.mktemp("client"))


def op(client: ModuleType, name: str) -> Any:
    return importlib.import_module(f"{client.__name__}.{name}")


async def test_every_operation_through_the_generated_client(
    start_broker: StartBroker, broker_client: ModuleType
):
    broker = await start_broker(BROKER_TOKEN=TOKEN, BROKER_MAX_DELIVERIES="5")
    m = op(broker_client, "models")
    topics = "api.topics"
    groups = "api.consumer_groups"
    create_topic = op(broker_client, f"{topics}.create_topic")
    list_topics = op(broker_client, f"{topics}.list_topics")
    get_topic = op(broker_client, f"{topics}.get_topic")
    delete_group = op(broker_client, f"{topics}.delete_group")
    publish = op(broker_client, "api.records.publish_records")
    fetch = op(broker_client, f"{groups}.fetch_records")
    get_group = op(broker_client, f"{groups}.get_group")
    list_dead = op(broker_client, "api.dead_letters.list_dead_letters")
    replay = op(broker_client, "api.dead_letters.replay_dead_letters")

    async with broker_client.AuthenticatedClient(base_url=broker.url, token=TOKEN) as client:
        created = await create_topic.asyncio_detailed(
            client=client, body=m.TopicCreate(name="orders", partitions=1)
        )
        assert created.status_code == 201 and created.parsed.created is True
        again = await create_topic.asyncio(client=client, body=m.TopicCreate(name="orders"))
        assert isinstance(again, m.TopicCreated) and again.created is False
        listed = await list_topics.asyncio(client=client)
        assert {t.name for t in listed.topics} >= {"orders", "telemetry"}

        records = [m.PublishRecord(key=f"k{i}", value={"i": i, "s": "ü"}) for i in range(6)]
        published = await publish.asyncio(
            "orders", client=client, body=m.PublishRequest(records=records)
        )
        assert isinstance(published, m.PublishResponse)
        assert published.positions == [[0, offset] for offset in range(6)]

        async def lease(n: int) -> Any:
            batch = await fetch.asyncio(
                "orders", "g", client=client, body=m.FetchRequest(max_records=n, max_wait=1.0)
            )
            assert isinstance(batch, m.FetchResponse) and 1 <= len(batch.records) <= n
            return batch

        batch = await lease(1)
        assert batch.records[0].value == {"i": 0, "s": "ü"} and batch.records[0].key == "k0"
        settled = await op(broker_client, f"{groups}.ack_lease").asyncio(
            "orders", "g", batch.lease, client=client, body=m.Settle()
        )
        assert isinstance(settled, m.Settled) and settled.records == 1
        for name, body in (
            ("nack_lease", m.NackRequest(delay=0.0, error="try again")),
            ("release_lease", m.ReleaseRequest()),
        ):
            batch = await lease(1)
            answer = await op(broker_client, f"{groups}.{name}").asyncio(
                "orders", "g", batch.lease, client=client, body=body
            )
            assert answer.records == 1, name
        batch = await lease(2)  # the released record (redeliveries come alone), or two new
        rejects = len(batch.records)
        extended = await op(broker_client, f"{groups}.extend_lease").asyncio(
            "orders", "g", batch.lease, client=client, body=m.ExtendRequest(ack_wait=60.0)
        )
        assert isinstance(extended, m.Extended) and extended.ack_wait == 60.0
        rejected = await op(broker_client, f"{groups}.reject_lease").asyncio(
            "orders", "g", batch.lease, client=client, body=m.RejectRequest(error="poison")
        )
        assert rejected.records == rejects

        dead = await list_dead.asyncio("orders", client=client)
        assert isinstance(dead, m.DeadLetterList) and dead.records == rejects
        assert {letter.error for letter in dead.letters} == {"poison"}
        replayed = await replay.asyncio(
            "orders", client=client, body=m.ReplayRequest(reason="rejected")
        )
        assert isinstance(replayed, m.Replayed) and replayed.replayed == rejects

        multi = await fetch.asyncio(
            "orders", "g", client=client, body=m.FetchRequest(multi=True, max_wait=1.0)
        )
        assert isinstance(multi, m.MultiFetchResponse) and multi.batches
        stats = await get_group.asyncio("orders", "g", client=client)
        assert isinstance(stats, m.GroupStats) and stats.in_flight > 0
        topic = await get_topic.asyncio("orders", client=client)
        assert isinstance(topic, m.TopicStats) and topic.records == 6 + rejects  # + replayed

        deleted = await delete_group.asyncio_detailed("orders", "g", client=client)
        assert deleted.status_code == 204
        gone = await get_group.asyncio_detailed("orders", "g", client=client)
        assert gone.status_code == 404 and gone.parsed.code == "GROUP_NOT_FOUND"


async def test_problems_through_the_generated_client(
    start_broker: StartBroker, broker_client: ModuleType
):
    broker = await start_broker(
        BROKER_TOKEN=TOKEN,
        BROKER_MAX_FETCH_WAIT="1",
        BROKER_MAX_REQUEST_BYTES="4096",
        BROKER_MAX_IN_FLIGHT_RECORDS="2",
    )
    m = op(broker_client, "models")
    fetch = op(broker_client, "api.consumer_groups.fetch_records")
    publish = op(broker_client, "api.records.publish_records")
    ack = op(broker_client, "api.consumer_groups.ack_lease")
    get_topic = op(broker_client, "api.topics.get_topic")

    async with broker_client.Client(base_url=broker.url) as anonymous:
        refused = await get_topic.asyncio_detailed("telemetry", client=anonymous)
    async with broker_client.AuthenticatedClient(base_url=broker.url, token=TOKEN) as client:
        too_long = await fetch.asyncio_detailed(
            "telemetry", "g", client=client, body=m.FetchRequest(max_wait=5.0)
        )
        reserved = await fetch.asyncio_detailed("telemetry", "_broker-replay", client=client)
        missing = await get_topic.asyncio_detailed("nope", client=client)
        expired = await ack.asyncio_detailed(
            "telemetry", "g", "unknown-1", client=client, body=m.Settle()
        )
        big = m.PublishRecord(key="k", value="x" * 5000)
        too_large = await publish.asyncio_detailed(
            "telemetry", client=client, body=m.PublishRequest(records=[big])
        )
        small = [m.PublishRecord(key="k", value=i) for i in range(3)]
        await publish.asyncio("telemetry", client=client, body=m.PublishRequest(records=small))
        await fetch.asyncio("telemetry", "g", client=client, body=m.FetchRequest(max_records=2))
        full = await fetch.asyncio_detailed("telemetry", "g", client=client)

    answers = {
        401: (refused, "UNAUTHORIZED"),
        400: (too_long, "FETCH_WAIT_TOO_LONG"),
        403: (reserved, "RESERVED"),
        404: (missing, "TOPIC_NOT_FOUND"),
        409: (expired, "LEASE_EXPIRED"),
        413: (too_large, "PAYLOAD_TOO_LARGE"),
        429: (full, "TOO_MANY_LEASES"),
    }
    for status, (answer, code) in answers.items():
        assert answer.status_code == status, (status, answer.content)
        assert isinstance(answer.parsed, m.Problem), status
        assert answer.parsed.code == code and answer.parsed.status == status
    assert full.headers["Retry-After"]
    assert too_long.parsed.additional_properties["limit"] == 1.0
