"""Quick broker throughput check: publish + fetch + ack through a real broker on loopback.

Starts ``python -m telemetry_broker`` (fsync always) in a temporary directory, then for each
batch size runs producers and consumers concurrently in this process through ``BrokerClient``
and prints records/s and append-to-fetch latency percentiles.

    uv run python scripts/bench_broker_quick.py [--records 200000] [--batches 1,100,1000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import orjson
from telemetry_devstack import ServiceProcess
from telemetry_mq import BrokerClient

RECORD = {
    "stream": "bench",
    "seq": 0,
    "ts": 0,
    "metric": "DCGM_FI_DEV_GPU_UTIL",
    "value": 42.0,
    "uuid": "GPU-5fd4f087-86f3-7a43-b711-4771313afc50",
    "host": "mtv5-dgx1-hgpu-001",
    "gpu": 0,
    "device": "nvidia0",
    "model": "NVIDIA H100 80GB HBM3",
    "driver": "535.129.03",
    "labels": {"Hostname": "mtv5-dgx1-hgpu-001"},
}


def records(n: int, start: int) -> list[tuple[str, bytes]]:
    out = []
    for i in range(start, start + n):
        uuid = f"GPU-{i % 247:04d}"
        out.append((uuid, orjson.dumps(dict(RECORD, seq=i, uuid=uuid))))
    return out


async def run_one(url: str, batch: int, total: int, producers: int, consumers: int) -> None:
    topic = f"bench-{batch}"
    payload = records(batch, 0)
    size = sum(len(v) for _, v in payload) / batch
    async with BrokerClient(url, pool_size=producers + consumers + 2) as mq:
        await mq.create_topic(topic, partitions=16)
        per_producer = total // producers // batch
        total = per_producer * batch * producers
        consumed = 0
        latencies: list[float] = []
        done = asyncio.Event()

        async def produce() -> None:
            for _ in range(per_producer):
                await mq.publish(topic, payload)

        async def consume() -> None:
            nonlocal consumed
            while not done.is_set():
                b = await mq.fetch(topic, "bench", max_records=1000, max_wait=0.5)
                if b is None:
                    continue
                now_us = time.time() * 1e6
                latencies.append((now_us - b.records[0].timestamp_us) / 1000)
                await mq.ack(b)
                consumed += len(b.records)
                if consumed >= total:
                    done.set()

        started = time.perf_counter()
        tasks = [asyncio.create_task(consume()) for _ in range(consumers)]
        await asyncio.gather(*(produce() for _ in range(producers)))
        published = time.perf_counter()
        await asyncio.wait_for(done.wait(), 600)
        elapsed = time.perf_counter() - started
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
        print(
            f"batch {batch:>5}: {total:>7} records of ~{size:.0f} B in {elapsed:6.2f}s -> "
            f"{total / elapsed:>9,.0f} records/s publish+fetch+ack "
            f"(publish alone done after {published - started:.2f}s); "
            f"append-to-fetch p50 {q[49]:.1f} ms p99 {q[98]:.1f} ms"
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--batches", default="1,100,1000")
    parser.add_argument("--producers", type=int, default=16)
    parser.add_argument("--consumers", type=int, default=4)
    parser.add_argument("--fsync", default="always")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-broker-") as tmp:
        proc = ServiceProcess(
            "broker",
            "telemetry_broker",
            prefix="BROKER",  # it binds a free port and reports it
            env={
                "BROKER_DATA_DIR": str(Path(tmp) / "data"),
                "BROKER_FSYNC": args.fsync,
                "BROKER_LOG_LEVEL": "WARNING",
                "BROKER_LOG_FORMAT": "text",
            },
            sink=None,
        )
        await proc.start()
        try:
            await proc.wait_ready(30)
            for batch in (int(b) for b in args.batches.split(",")):
                # One record per request is slow: keep that run short.
                total = min(args.records, 5_000) if batch == 1 else args.records
                await run_one(proc.url, batch, total, args.producers, args.consumers)
        finally:
            await proc.stop()


if __name__ == "__main__":
    asyncio.run(main())
