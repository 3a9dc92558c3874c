"""Claimed chunks are leases: taken over when their owner dies, finished rows deleted."""

from __future__ import annotations

import asyncio

import pytest
from telemetry_store import (
    Claim,
    claim,
    finish,
    next_seq,
    pending_chunks,
    release,
    renew,
    transaction,
)

BASE = 1_800_000_000_000_000


async def expire(cur, chunk: Claim) -> None:
    """What the passage of the lease time does: the lease lies in the past."""
    await cur.execute(
        "UPDATE stream_chunks SET lease_until = now() - interval '1 second'"
        " WHERE stream_id = %s AND start = %s",
        (chunk.stream_id, chunk.start),
    )


async def test_a_chunk_keeps_the_times_it_was_first_claimed_with(cur):
    a = await claim(cur, "s", 100, owner="a", base_us=BASE, tick_ns=405_000)
    assert a is not None and (a.start, a.count, a.base_us, a.tick_ns) == (0, 100, BASE, 405_000)
    assert [a.ts_us(s) for s in (0, 1, 2, 99)] == [BASE, BASE + 405, BASE + 810, BASE + 40_095]
    await expire(cur, a)
    # Another streamer with another clock and rate takes the chunk over: same seqs, same times.
    b = await claim(cur, "s", 50, owner="b", base_us=BASE + 10**9, tick_ns=1)
    assert b is not None and b.takeover
    assert (b.start, b.count, b.base_us, b.tick_ns, b.owner) == (0, 100, BASE, 405_000, "b")
    assert [b.ts_us(s) for s in range(100)] == [a.ts_us(s) for s in range(100)]
    # The dead owner, were it only slow, has lost the chunk.
    assert not await renew(cur, a, 30)
    assert not await finish(cur, a)
    assert await renew(cur, b, 30)
    assert await finish(cur, b)
    assert await pending_chunks(cur, "s") == 0


async def test_live_leases_are_left_alone_and_the_oldest_expired_chunk_goes_first(cur):
    chunks = [await claim(cur, "s", 10, owner=f"o{i}", base_us=BASE) for i in range(4)]
    assert [c.start for c in chunks if c is not None] == [0, 10, 20, 30]
    await expire(cur, chunks[2])
    await expire(cur, chunks[1])
    taken = [await claim(cur, "s", 10, owner="new", base_us=BASE) for _ in range(3)]
    assert [(c.start, c.takeover) for c in taken if c is not None] == [
        (10, True),
        (20, True),
        (40, False),
    ]
    assert await next_seq(cur, "s") == 50
    assert await pending_chunks(cur, "s") == 5


async def test_the_next_claim_deletes_the_finished_chunk_in_the_same_round_trip(cur):
    first = await claim(cur, "s", 10, owner="me")
    second = await claim(cur, "s", 10, owner="me", done=first)
    assert second is not None and second.start == 10
    assert await pending_chunks(cur, "s") == 1
    # Even an expired finished chunk is deleted, not taken over by its own owner's claim.
    assert second is not None
    await expire(cur, second)
    third = await claim(cur, "s", 10, owner="me", done=second)
    assert third is not None and (third.start, third.takeover) == (20, False)
    assert await pending_chunks(cur, "s") == 1


async def test_a_released_chunk_is_taken_over_at_once(cur):
    a = await claim(cur, "s", 10, owner="a")
    assert a is not None and await release(cur, a)
    b = await claim(cur, "s", 10, owner="b")
    assert b is not None and (b.start, b.takeover) == (0, True)


async def test_nothing_is_claimed_at_or_past_the_limit(cur):
    a = await claim(cur, "s", 30, owner="a", limit=50)
    b = await claim(cur, "s", 30, owner="b", limit=50)
    assert (a.start, a.count, b.start, b.count) == (0, 30, 30, 20)  # type: ignore[union-attr]
    assert await claim(cur, "s", 30, owner="c", limit=50) is None
    # Used up, but b's chunk is still in flight; once its lease runs out it is taken over.
    assert await pending_chunks(cur, "s", limit=50) == 2
    assert b is not None
    await expire(cur, b)
    c = await claim(cur, "s", 30, owner="c", limit=50, done=None)
    assert c is not None and (c.start, c.count, c.takeover) == (30, 20, True)


async def test_the_limit_stops_next_seq_so_a_later_run_goes_on_without_a_gap(cur):
    await claim(cur, "s", 30, owner="a", limit=50)
    b = await claim(cur, "s", 30, owner="b", limit=50)
    assert b is not None and (b.start, b.count) == (30, 20)
    # next_seq counts what was claimed: nothing past the limit (it said 60, as though 50..59
    # had been claimed by someone).
    assert await next_seq(cur, "s") == 50
    # A later run with a higher limit, or none, goes on at the limit: 50..59 are not skipped.
    c = await claim(cur, "s", 30, owner="c", limit=70)
    d = await claim(cur, "s", 30, owner="d")
    assert c is not None and d is not None
    assert [(c.start, c.count), (d.start, d.count)] == [(50, 20), (70, 30)]
    assert await next_seq(cur, "s") == 100


async def test_concurrent_claims_up_to_a_limit_split_it_exactly(db):
    async def one(i: int) -> tuple[int, int] | None:
        async with transaction(db) as cur:
            c = await claim(cur, "upto", 7, owner=f"o{i}", limit=100)
            return None if c is None else (c.start, c.count)

    got = [c for c in await asyncio.gather(*(one(i) for i in range(20))) if c is not None]
    assert sorted(got) == [(s, min(7, 100 - s)) for s in range(0, 100, 7)]
    async with transaction(db) as cur:
        assert await next_seq(cur, "upto") == 100


async def test_concurrent_claims_take_over_each_expired_chunk_once(db):
    async with transaction(db) as cur:
        dead = [await claim(cur, "race", 10, owner=f"dead{i}") for i in range(6)]
        for c in dead:
            assert c is not None
            await expire(cur, c)

    async def one(i: int) -> tuple[int, bool]:
        async with transaction(db) as cur:
            c = await claim(cur, "race", 10, owner=f"live{i}")
            assert c is not None
            return c.start, c.takeover

    got = await asyncio.gather(*(one(i) for i in range(12)))
    taken = sorted(start for start, takeover in got if takeover)
    fresh = sorted(start for start, takeover in got if not takeover)
    assert taken == [0, 10, 20, 30, 40, 50]
    assert fresh == [60, 70, 80, 90, 100, 110]


async def test_a_claim_never_waits_for_a_takeover_of_the_chunk_it_finished(db):
    """After an outage every lease has run out, finished chunks' too: streamer b may take
    over the chunk streamer a has published and is about to delete with its next claim. a
    must not wait for b's lock there: with each holding the other's finished chunk, the two
    claims deadlocked (PostgreSQL aborted one: "deadlock detected ... while deleting tuple").
    """
    async with transaction(db) as cur:
        a_done = await claim(cur, "s", 10, owner="a")
        b_done = await claim(cur, "s", 10, owner="b")
        assert a_done is not None and b_done is not None
        for c in (a_done, b_done):
            await expire(cur, c)
    async with db.acquire() as conn, conn.cursor() as b_cur:
        await b_cur.execute("BEGIN")
        # b's claim takes a's finished chunk over (the oldest expired) and holds it until b
        # commits.
        b_next = await claim(b_cur, "s", 10, owner="b", done=b_done)
        assert b_next is not None and (b_next.start, b_next.takeover) == (a_done.start, True)
        try:
            async with transaction(db) as a_cur:
                a_next = await asyncio.wait_for(
                    claim(a_cur, "s", 10, owner="a", done=a_done), timeout=10
                )
        finally:
            await b_cur.execute("COMMIT")
    assert a_next is not None and (a_next.start, a_next.takeover) == (20, False)
    async with transaction(db) as cur:
        # a's finished chunk is b's now (to publish again, duplicates only); b's is gone.
        await cur.execute("SELECT start, owner FROM stream_chunks ORDER BY start")
        assert await cur.fetchall() == [(0, "b"), (20, "a")]


async def test_bad_arguments(cur):
    with pytest.raises(ValueError):
        await claim(cur, "s", 10, owner="a", lease=0)
    with pytest.raises(ValueError):
        await claim(cur, "s", 10, owner="a", tick_ns=-1)
