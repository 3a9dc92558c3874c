"""Freshness: commit time minus each datapoint's processing timestamp, as the collector exports it.

Time is driven through the consumer's clock, never by waiting: a datapoint stamped ``t`` and
committed at ``t + d`` must land in the bucket of ``d``.
"""

from __future__ import annotations

import random
import time

import orjson
import pytest
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.utils import floatToGoString
from telemetry_collector.consume import Consumer
from telemetry_collector.metrics import FRESHNESS_BUCKETS, CollectorMetrics, FreshnessHistogram
from telemetry_model import WireTemplate, read_samples
from telemetry_mq import BrokerClient

from conftest import CSV_PATH

TOPIC = "telemetry"
GROUP = "collectors"
FRESHNESS = "telemetry_collector_freshness_seconds"
OLDEST = "telemetry_collector_round_oldest_age_seconds"


def samples(registry: CollectorRegistry, name: str, topic: str = TOPIC) -> dict[str, float | None]:
    """Each bucket's cumulative count by ``le``, and ``count``/``sum``."""
    out = {
        floatToGoString(b): registry.get_sample_value(f"{name}_bucket", {"topic": topic, "le": le})
        for b in FRESHNESS_BUCKETS
        for le in [floatToGoString(b)]
    }
    out["+Inf"] = registry.get_sample_value(f"{name}_bucket", {"topic": topic, "le": "+Inf"})
    out["count"] = registry.get_sample_value(f"{name}_count", {"topic": topic})
    out["sum"] = registry.get_sample_value(f"{name}_sum", {"topic": topic})
    return out


def expected_buckets(ages: list[float]) -> dict[str, float]:
    counts = {floatToGoString(b): float(sum(a <= b for a in ages)) for b in FRESHNESS_BUCKETS}
    counts["+Inf"] = float(len(ages))
    return counts


# --- the bulk histogram against prometheus_client's own, one observation at a time ---------------


def test_bulk_observations_export_what_one_observe_per_datapoint_would():
    rng = random.Random(13)
    reference_registry = CollectorRegistry()
    reference = Histogram(
        "telemetry_collector_freshness_seconds",
        "reference",
        ["topic"],
        buckets=FRESHNESS_BUCKETS,
        registry=reference_registry,
    )
    bulk_registry = CollectorRegistry()
    bulk = FreshnessHistogram()
    bulk_registry.register(bulk)
    commit_us = 1_800_000_000_000_000
    for topic in ("telemetry", "other"):
        for _ in range(20):  # rounds
            # Ages spread over every bucket, some exactly on a bound (le is inclusive).
            ages_us = [rng.choice([rng.randrange(0, 90_000_000), 250_000, 1_000_000, 10_000])
                       for _ in range(rng.randrange(1, 300))]  # fmt: skip
            bulk.observe_committed(topic, [commit_us - a for a in ages_us], commit_us)
            for a in ages_us:
                reference.labels(topic).observe(a / 1_000_000)
    for topic in ("telemetry", "other"):
        got = samples(bulk_registry, FRESHNESS, topic)
        want = samples(reference_registry, FRESHNESS, topic)
        assert got.pop("sum") == pytest.approx(want.pop("sum"))
        assert got == want


def test_an_age_on_a_bound_counts_in_that_bucket_and_a_negative_age_as_zero():
    registry = CollectorRegistry()
    bulk = FreshnessHistogram()
    registry.register(bulk)
    commit_us = 1_800_000_000_000_000
    # exactly 250 ms; 250 ms and one microsecond; stamped 3 ms after the commit (clock skew)
    bulk.observe_committed(
        TOPIC, [commit_us - 250_000, commit_us - 250_001, commit_us + 3_000], commit_us
    )
    got = samples(registry, FRESHNESS)
    assert got["0.01"] == 1  # the future one, as age 0
    assert got["0.2"] == 1
    assert got["0.25"] == 2
    assert got["0.3"] == 3
    assert got["count"] == 3
    assert got["sum"] == pytest.approx(0.500001)


def test_nothing_is_exported_before_the_first_commit():
    registry = CollectorRegistry()
    CollectorMetrics.create(registry)
    assert registry.get_sample_value(f"{FRESHNESS}_count", {"topic": TOPIC}) is None


# --- the consumer: stamped t, committed t + d, through a real broker and PostgreSQL --------------


@pytest.fixture
async def mq(broker):
    async with BrokerClient(broker.url) as client:
        await client.create_topic(TOPIC, partitions=1)
        yield client


def stamped(ts_us: list[int], start: int = 0) -> list[tuple[str, bytes]]:
    """Real CSV rows as the streamer sends them, stamped with ``ts_us`` (one each)."""
    rows = read_samples(CSV_PATH)
    stream = orjson.dumps("fresh")
    return [
        (
            rows[i % len(rows)].gpu.uuid,
            WireTemplate(rows[i % len(rows)]).encode(stream, start + i, t),
        )
        for i, t in enumerate(ts_us)
    ]


def consumer_at(mq, db, registry: CollectorRegistry, commit_s: float) -> Consumer:
    """A consumer whose clock reads ``commit_s`` (seconds since the epoch) at every commit."""
    return Consumer(
        broker=mq,
        pool=db,
        metrics=CollectorMetrics.create(registry),
        topic=TOPIC,
        group=GROUP,
        batch_size=1000,
        max_wait=0.5,
        ack_wait=30.0,
        clock=lambda: commit_s,
    )


# Delays inside buckets, clear of their bounds (the clock is a float of seconds).
@pytest.mark.parametrize("delay", [0.004, 0.09, 0.3, 0.9, 1.2, 7.0, 45.0, 75.0])
async def test_a_datapoint_stamped_t_and_committed_at_t_plus_d_lands_in_the_bucket_of_d(
    mq, db, delay
):
    t_us = time.time_ns() // 1000 - 60_000_000  # a minute ago: inside every domain check
    registry = CollectorRegistry()
    consumer = consumer_at(mq, db, registry, t_us / 1e6 + delay)
    await mq.publish(TOPIC, stamped([t_us]))
    batch = await mq.fetch(TOPIC, GROUP, max_records=1000, max_wait=2.0)
    assert batch is not None and await consumer.handle(batch)
    got = samples(registry, FRESHNESS)
    assert got.pop("sum") == pytest.approx(delay, abs=1e-5)
    assert got.pop("count") == 1
    assert got == expected_buckets([delay])
    oldest = samples(registry, OLDEST)
    assert oldest.pop("sum") == pytest.approx(delay, abs=1e-5)
    assert oldest.pop("count") == 1
    assert oldest == expected_buckets([delay])


async def test_each_datapoint_of_a_round_lands_in_its_own_bucket_and_the_round_in_its_oldest(
    mq, db
):
    t_us = time.time_ns() // 1000 - 60_000_000
    ages = [0.02, 0.02, 0.13, 0.6, 3.3]
    registry = CollectorRegistry()
    consumer = consumer_at(mq, db, registry, t_us / 1e6)
    await mq.publish(TOPIC, stamped([t_us - round(a * 1e6) for a in ages]))
    batch = await mq.fetch(TOPIC, GROUP, max_records=1000, max_wait=2.0)
    assert batch is not None and await consumer.handle(batch)
    got = samples(registry, FRESHNESS)
    assert got.pop("sum") == pytest.approx(sum(ages), abs=1e-5)
    assert got.pop("count") == len(ages)
    assert got == expected_buckets(ages)
    # One committed round: one observation, its oldest datapoint's age.
    oldest = samples(registry, OLDEST)
    assert oldest.pop("count") == 1
    assert oldest.pop("sum") == pytest.approx(3.3, abs=1e-5)
    assert oldest == expected_buckets([3.3])


async def test_datapoints_refused_past_the_horizon_do_not_count(mq, db):
    t_us = time.time_ns() // 1000 - 60_000_000
    async with db.acquire() as conn, conn.cursor() as cur:
        # The raw retention's horizon between the two old datapoints and the fresh ones.
        await cur.execute(
            "UPDATE telemetry_bounds SET accept_from = 'epoch'::timestamptz"
            " + %s * interval '1 microsecond'",
            (t_us - 10_000_000,),
        )
    registry = CollectorRegistry()
    consumer = consumer_at(mq, db, registry, t_us / 1e6 + 0.05)
    await mq.publish(TOPIC, stamped([t_us - 20_000_000, t_us - 30_000_000, t_us, t_us]))
    batch = await mq.fetch(TOPIC, GROUP, max_records=1000, max_wait=2.0)
    assert batch is not None and await consumer.handle(batch)
    assert (
        registry.get_sample_value("telemetry_collector_datapoints_expired_total", {"topic": TOPIC})
        == 2
    )
    got = samples(registry, FRESHNESS)
    assert got["count"] == 2 and got["0.05"] == 2 and got["0.025"] == 0
    assert samples(registry, OLDEST)["count"] == 1
