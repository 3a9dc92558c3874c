"""The broker checker's checks, on small hand-written histories: each property catches its
violation, and an honest history passes."""

from __future__ import annotations

import json
import random
import zlib
from pathlib import Path
from typing import Any

import orjson
import pytest
from telemetry_devstack.brokercheck import CheckConfig, Violation, check, load
from telemetry_devstack.brokercheck.__main__ import config_from, parse_args, replay_command
from telemetry_devstack.brokercheck.workload import digest, make_value, value_id

PARTITIONS = 2


def key_for(partition: int) -> str:
    """A key that routes to ``partition``."""
    return next(
        k
        for k in (f"gpu-{i}" for i in range(100))
        if zlib.crc32(k.encode()) % PARTITIONS == partition
    )


K0, K1 = key_for(0), key_for(1)


def value(vid: str) -> bytes:
    return f'{{"id":"{vid}","n":1}}'.encode()


class Story:
    """Builds a history operation by operation, each 0.1 s after the last unless told."""

    def __init__(self, tmp_path: Path, **config: Any) -> None:
        self.path = tmp_path / "history.jsonl"
        self.config = CheckConfig(
            seed=1, partitions=PARTITIONS, groups=2, max_deliveries=2, **config
        )
        self.lines: list[dict[str, Any]] = []
        self.t = 0.0

    def op(
        self,
        process: str,
        kind: str,
        args: dict[str, Any],
        type_: str = "ok",
        res: dict[str, Any] | None = None,
        err: str | None = None,
        *,
        t0: float | None = None,
        t1: float | None = None,
    ) -> int:
        start = self.t if t0 is None else t0
        end = start + 0.01 if t1 is None else t1
        self.t = max(self.t, end) + 0.1
        i = len(self.lines)
        self.lines.append(
            {"i": i, "p": process, "f": kind, "t0": start, "t1": end, "type": type_,
             "args": args, "res": res or {}, "err": err}
        )  # fmt: skip
        return i

    def publish(
        self,
        records: list[tuple[str, str]],
        positions: list[tuple[int, int]] | None,
        type_: str = "ok",
        retries: int = 0,
        **kw: Any,
    ) -> int:
        args = {"records": [[k, value(v).decode(), v] for k, v in records], "retries": retries}
        res = {"positions": [list(p) for p in positions]} if positions is not None else None
        return self.op("producer-0", "publish", args, type_, res, **kw)

    def fetch(
        self,
        group: str,
        batches: list[tuple[str, int, list[tuple[int, str]]]],
        *,
        ack: list[str] | None = None,
        expired: list[str] | None = None,
        type_: str = "ok",
        counts: dict[int, int] | None = None,
        ack_wait: float = 1.0,
        values: dict[str, bytes] | None = None,
        **kw: Any,
    ) -> int:
        """``batches``: (lease, partition, [(offset, id)]) each."""
        res: dict[str, Any] | None = None
        if type_ == "ok":
            out = []
            for lease, p, recs in batches:
                rows = []
                for o, vid in recs:
                    data = (values or {}).get(vid, value(vid))
                    key = K0 if p == 0 else K1
                    rows.append(
                        [o, (counts or {}).get(o, 1), key, value_id(data), digest(data), 1000]
                    )
                out.append({"lease": lease, "partition": p, "ack_wait": ack_wait,
                            "bytes": 30 * len(rows), "largest": 30, "records": rows})  # fmt: skip
            res = {"batches": out}
            if expired:
                res["expired"] = expired
        args = {"group": group, "max_records": 10, "max_wait": 0.0, "ack_wait": ack_wait,
                "ack": ack or [], "cancel_after": None, "retries": 0}  # fmt: skip
        return self.op(f"consumer-{group}", "fetch", args, type_, res, **kw)

    def settle(
        self,
        action: str,
        group: str,
        lease: str,
        partition: int,
        offsets: list[int] | None = None,
        type_: str = "ok",
        err: str | None = None,
        **kw: Any,
    ) -> int:
        times = {k: kw.pop(k) for k in ("t0", "t1") if k in kw}
        args = {"group": group, "lease": lease, "partition": partition, "offsets": offsets,
                "retries": 0, **kw}  # fmt: skip
        res = {"records": 1} if type_ == "ok" else None
        return self.op(f"consumer-{group}", action, args, type_, res, err, **times)

    def stats(self, ends: list[int], committed: dict[str, list[int]], *, process: str = "final",
              in_flight: int = 0, wall: float = 1000.0) -> int:  # fmt: skip
        groups = {
            g: {"lag": sum(e - c for e, c in zip(ends, cs, strict=True)), "in_flight": in_flight,
                "committed": cs}
            for g, cs in committed.items()
        }  # fmt: skip
        res = {"wall": wall, "partitions": [[0, e] for e in ends], "groups": groups}
        return self.op(process, "stats", {"topic": "chaos"}, "ok", res)

    def dead_letters(self, letters: list[tuple[int, int, str, bytes]]) -> int:
        """(dlq offset, timestamp_us, key, envelope) each."""
        recs = [[o, ts, k, env.decode()] for o, ts, k, env in letters]
        res = {"batches": [{"lease": "d-1", "partition": 0, "records": recs}]}
        return self.op("dlq", "dlq", {"topic": "chaos.dlq", "group": "brokercheck"}, "ok", res)

    def check(self) -> list[Violation]:
        header = {"brokercheck": 1, "config": self.config.to_json(), "wall_start": 0.0}
        with open(self.path, "wb") as f:
            for doc in [header, *self.lines]:
                f.write(orjson.dumps(doc) + b"\n")
        violations, _ = check(*load(self.path))
        return violations


def props(violations: list[Violation]) -> set[str]:
    return {v.prop for v in violations}


def envelope(vid: str, group: str, p: int, o: int, reason: str, count: int,
             error: str | None = None) -> bytes:  # fmt: skip
    origin = {"topic": "chaos", "group": group, "partition": p, "offset": o,
              "timestamp_us": 1000, "delivery_count": count}  # fmt: skip
    return orjson.dumps(
        {"reason": reason, "error": error, "origin": origin, "value": orjson.Fragment(value(vid))}
    )


def happy(s: Story) -> None:
    """Two records, both groups fetch and ack them; the end state is clean."""
    s.publish([(K0, "a"), (K1, "b")], [(0, 0), (1, 0)])
    for g in ("g0", "g1"):
        s.fetch(g, [(f"{g}-1", 0, [(0, "a")])])
        s.settle("ack", g, f"{g}-1", 0)
        s.fetch(g, [(f"{g}-2", 1, [(0, "b")])], ack=[])
        s.settle("ack", g, f"{g}-2", 1)


def test_an_honest_history_passes(tmp_path: Path) -> None:
    s = Story(tmp_path)
    happy(s)
    s.stats([1, 1], {"g0": [1, 1], "g1": [1, 1]})
    assert s.check() == []


def test_an_acknowledged_record_that_never_reaches_a_group_is_lost(tmp_path: Path) -> None:
    s = Story(tmp_path)
    happy(s)
    s.publish([(K0, "c")], [(0, 1)])
    s.fetch("g0", [("g0-3", 0, [(1, "c")])])
    s.settle("ack", "g0", "g0-3", 0)
    violations = s.check()
    assert "lost" in props(violations)
    assert any("c (acknowledged" in v.message and "group g1" in v.message for v in violations)


def test_an_indeterminate_publish_may_vanish_but_once_seen_must_reach_every_group(
    tmp_path: Path,
) -> None:
    s = Story(tmp_path)
    happy(s)
    s.publish([(K0, "gone")], None, "info", err="timeout")
    s.stats([1, 1], {"g0": [1, 1], "g1": [1, 1]})
    assert s.check() == []
    s.publish([(K0, "seen")], None, "info", err="timeout")
    s.fetch("g0", [("g0-3", 0, [(1, "seen")])])
    s.settle("ack", "g0", "g0-3", 0)
    assert "lost" in props(s.check())


def test_a_changed_or_unknown_value_is_corrupt(tmp_path: Path) -> None:
    s = Story(tmp_path)
    s.publish([(K0, "a")], [(0, 0)])
    s.fetch("g0", [("l1", 0, [(0, "a")])], values={"a": b'{"id":"a","n":2}'})
    assert any(v.prop == "corrupt" and "differs" in v.message for v in s.check())
    s = Story(tmp_path)
    s.fetch("g0", [("l1", 0, [(0, "never")])])
    assert any(v.prop == "corrupt" and "nobody published" in v.message for v in s.check())


def test_a_failed_publish_must_not_be_stored(tmp_path: Path) -> None:
    s = Story(tmp_path)
    s.publish([(K0, "a")], None, "fail", err="429")
    s.fetch("g0", [("l1", 0, [(0, "a")])])
    assert any("which failed" in v.message for v in s.check())


def test_a_value_published_once_is_stored_once_unless_the_client_retried(
    tmp_path: Path,
) -> None:
    for retries, expect in ((0, True), (3, False)):
        s = Story(tmp_path)
        s.publish([(K0, "a")], [(0, 1)], retries=retries)
        s.fetch("g0", [("l1", 0, [(0, "a"), (1, "a")])])
        found = any("stored at 2 positions" in v.message for v in s.check())
        assert found == expect


def test_a_position_that_changes_its_value_breaks_the_offsets(tmp_path: Path) -> None:
    s = Story(tmp_path)
    s.publish([(K0, "a")], [(0, 0)])
    s.publish([(K0, "b")], [(0, 1)])
    s.fetch("g0", [("l1", 0, [(0, "b")])])  # offset 0 now holds b
    assert any(v.prop == "offsets" and "held different values" in v.message for v in s.check())


def test_offsets_only_grow(tmp_path: Path) -> None:
    s = Story(tmp_path)
    s.publish([(K0, "a"), (K0, "b")], [(0, 5), (0, 4)])  # backwards within one publish
    assert any("earlier in the same publish" in v.message for v in s.check())
    s = Story(tmp_path)
    s.publish([(K0, "a")], [(0, 5)])
    s.publish([(K0, "b")], [(0, 3)])  # invoked after a's answer, yet lower
    assert any("before it began" in v.message for v in s.check())
    s = Story(tmp_path)
    s.publish([(K0, "a")], [(0, 5)], t0=0.0, t1=1.0)
    s.publish([(K0, "b")], [(0, 3)], t0=0.5, t1=1.5)  # concurrent: any order is fine
    assert "offsets" not in props(s.check())
    s = Story(tmp_path)
    s.publish([(K0, "a")], [(0, 5)])
    s.stats([3, 0], {"g0": [0, 0], "g1": [0, 0]}, process="stats")  # the log lost its end
    assert any("ends at 3" in v.message for v in s.check())


def test_no_delivery_after_an_acknowledged_ack(tmp_path: Path) -> None:
    s = Story(tmp_path)
    s.publish([(K0, "a")], [(0, 0)])
    s.fetch("g0", [("l1", 0, [(0, "a")])])
    s.settle("ack", "g0", "l1", 0)
    s.fetch("g1", [("m1", 0, [(0, "a")])])  # another group: fine
    s.fetch("g0", [("l2", 0, [(0, "a")])])
    violations = s.check()
    assert [v.prop for v in violations if "after" in v.message] == ["delivered-after-ack"]
    assert "#2 ack" in next(v.message for v in violations if v.prop == "delivered-after-ack")


def test_an_indeterminate_or_refused_ack_allows_a_redelivery(tmp_path: Path) -> None:
    for type_ in ("info", "fail"):
        s = Story(tmp_path)
        s.publish([(K0, "a")], [(0, 0)])
        s.fetch("g0", [("l1", 0, [(0, "a")])])
        s.settle("ack", "g0", "l1", 0, type_=type_)
        s.fetch("g0", [("l2", 0, [(0, "a")])])
        assert "delivered-after-ack" not in props(s.check())


def test_a_piggybacked_ack_counts_unless_its_lease_expired(tmp_path: Path) -> None:
    s = Story(tmp_path)
    s.publish([(K0, "a")], [(0, 0)])
    s.fetch("g0", [("l1", 0, [(0, "a")])])
    s.fetch("g0", [("l2", 0, [(0, "a")])], ack=["l1"])  # acked l1, then leased it again
    assert any("and delivered it again" in v.message for v in s.check())
    s = Story(tmp_path)
    s.publish([(K0, "a")], [(0, 0)])
    s.fetch("g0", [("l1", 0, [(0, "a")])])
    s.fetch("g0", [], ack=["l1"])
    s.fetch("g0", [("l2", 0, [(0, "a")])])
    assert "delivered-after-ack" in props(s.check())
    s = Story(tmp_path)
    s.publish([(K0, "a")], [(0, 0)])
    s.fetch("g0", [("l1", 0, [(0, "a")])])
    s.fetch("g0", [], ack=["l1"], expired=["l1"])
    s.fetch("g0", [("l2", 0, [(0, "a")])])
    assert "delivered-after-ack" not in props(s.check())


def test_an_ack_after_a_nack_of_the_same_records_acks_nothing(tmp_path: Path) -> None:
    s = Story(tmp_path)
    s.publish([(K0, "a"), (K0, "b")], [(0, 0), (0, 1)])
    s.fetch("g0", [("l1", 0, [(0, "a"), (1, "b")])])
    s.settle("nack", "g0", "l1", 0, [0], error="x")
    s.settle("ack", "g0", "l1", 0)  # acks only offset 1
    s.fetch("g0", [("l2", 0, [(0, "a")])])
    assert "delivered-after-ack" not in props(s.check())
    s.fetch("g0", [("l3", 0, [(1, "b")])])
    assert "delivered-after-ack" in props(s.check())


def test_dead_letters_must_be_deserved(tmp_path: Path) -> None:
    def story(*settlements: tuple[str, str], ids: str = "123456789") -> Story:
        s = Story(tmp_path)
        s.publish([(K0, "a")], [(0, 0)])
        s.stats([1, 0], {}, process="stats", wall=1000.01 + s.t)  # clock: t = wall - 1000
        for n, (action, outcome) in enumerate(settlements, start=1):
            lease = f"p-{ids[n - 1]}"  # lease ids count up per group and broker process
            s.fetch("g0", [(lease, 0, [(0, "a")])], counts={0: n})
            s.settle(action, "g0", lease, 0, type_=outcome, error="boom")
        return s

    def dead(
        s: Story, reason: str, count: int, error: str | None = "boom", at: float | None = None
    ) -> list[Violation]:
        ts = int((1000.0 + (s.t if at is None else at)) * 1e6)
        s.dead_letters([(0, ts, K0, envelope("a", "g0", 0, 0, reason, count, error))])
        return [v for v in s.check() if v.prop not in ("lost", "stranded")]

    # Two nacks spend two deliveries: dead-lettered rightly.
    assert dead(story(("nack", "ok"), ("nack", "ok")), "max_deliveries", 2) == []
    # Released deliveries are not spent.
    out = dead(story(("release", "ok"), ("nack", "ok")), "max_deliveries", 2)
    assert any("at most 1 deliveries" in v.message for v in out)
    # A fetch whose answer was lost may have spent one...
    s = story(("release", "ok"), ("nack", "ok"))
    s.fetch("g0", [], type_="info", err="cancelled by the client")
    assert dead(s, "max_deliveries", 2) == []
    # ... unless the lease ids show that no lease went unseen meanwhile.
    s = story(("release", "ok"), ("nack", "ok"))
    s.fetch("g0", [], type_="info", err="cancelled by the client")
    at = s.t
    s.fetch("g0", [("p-3", 1, [])])  # after the dead letter: p-1..p-3 all seen
    assert any("at most 1 deliveries" in v.message for v in dead(s, "max_deliveries", 2, at=at))
    # A gap in the lease ids is a lease nobody saw (its fetch's answer was lost).
    s = story(("release", "ok"), ("nack", "ok"), ids="13")
    s.fetch("g0", [], type_="info", err="cancelled by the client", t0=0.1, t1=0.2)
    assert dead(s, "max_deliveries", 2) == []
    # The count in the envelope must reach the maximum.
    assert any(
        "delivery_count 1" in v.message for v in dead(story(("nack", "ok")), "max_deliveries", 1)
    )
    # Rejected only when a reject took effect.
    assert dead(story(("reject", "ok")), "rejected", 1) == []
    assert dead(story(("reject", "info")), "rejected", 1) == []
    out = dead(story(("reject", "fail")), "rejected", 1)
    assert any("no reject of it took effect" in v.message for v in out)
    # The error comes from an operation.
    out = dead(story(("nack", "ok"), ("nack", "ok")), "max_deliveries", 2, "invented")
    assert any("which no operation gave" in v.message for v in out)


def test_a_dead_letter_names_its_origin_and_holds_the_value(tmp_path: Path) -> None:
    s = Story(tmp_path)
    s.publish([(K0, "a"), (K0, "b")], [(0, 0), (0, 1)])
    s.fetch("g0", [("l1", 0, [(0, "a")])])
    s.settle("reject", "g0", "l1", 0)
    wrong_offset = envelope("a", "g0", 0, 1, "rejected", 1)  # b's position
    wrong_topic = envelope("a", "g0", 0, 0, "rejected", 1).replace(b'"chaos"', b'"other"')
    s.dead_letters([(0, 0, K0, wrong_offset), (1, 0, K0, wrong_topic)])
    messages = [v.message for v in s.check() if v.prop == "dead-letter"]
    assert any("stored it at (0, 0)" in m for m in messages)
    assert any("names origin" in m for m in messages)


def test_a_record_dead_lettered_after_its_ack_was_acknowledged(tmp_path: Path) -> None:
    s = Story(tmp_path)
    s.publish([(K0, "a")], [(0, 0)])
    s.stats([1, 0], {}, process="stats", wall=1000.0 + s.t - 0.1)
    s.fetch("g0", [("l1", 0, [(0, "a")])])
    s.settle("ack", "g0", "l1", 0)
    ts = int((1000.0 + s.t + 5) * 1e6)
    s.dead_letters([(0, ts, K0, envelope("a", "g0", 0, 0, "max_deliveries", 2))])
    assert any(v.prop == "delivered-after-ack" and "appended at" in v.message for v in s.check())


def test_nothing_may_be_stranded_at_the_end(tmp_path: Path) -> None:
    s = Story(tmp_path)
    happy(s)
    s.stats([1, 1], {"g0": [1, 1], "g1": [1, 0]}, in_flight=1)
    messages = [v.message for v in s.check() if v.prop == "stranded"]
    assert any("lag 1 and 1 in flight" in m for m in messages)
    assert any("committed 0 in partition 1" in m for m in messages)
    s = Story(tmp_path)
    happy(s)
    s.stats([2, 1], {"g0": [2, 1], "g1": [2, 1]})  # offset 1 of partition 0: nobody acked it
    messages = [v.message for v in s.check() if v.prop == "stranded"]
    assert any("neither acked nor dead-lettered, e.g. offsets [1]" in m for m in messages)
    s = Story(tmp_path)
    happy(s)
    assert any("no final stats" in v.message for v in s.check())


def test_a_maybe_acked_record_is_not_stranded(tmp_path: Path) -> None:
    s = Story(tmp_path)
    s.publish([(K0, "a")], [(0, 0)])
    for g in ("g0", "g1"):
        s.fetch(g, [(f"{g}-1", 0, [(0, "a")])])
        s.settle("ack", g, f"{g}-1", 0, type_="info", err="connection reset")
    s.stats([1, 0], {"g0": [1, 0], "g1": [1, 0]})
    assert s.check() == []


def test_leases_are_exclusive_until_settled_or_expired(tmp_path: Path) -> None:
    s = Story(tmp_path)
    s.publish([(K0, "a")], [(0, 0)])
    s.fetch("g0", [("l1", 0, [(0, "a")])], ack_wait=5.0)
    s.fetch("g0", [("l2", 0, [(0, "a")])])  # 0.1 s later, l1 still holds it
    assert any(v.prop == "leases" and "surely held it" in v.message for v in s.check())
    s = Story(tmp_path)  # a long-poll sent first may be answered last: l2 came after a release
    s.publish([(K0, "a")], [(0, 0)])
    s.fetch("g0", [("l2", 0, [(0, "a")])], t0=1.0, t1=1.5)
    s.fetch("g0", [("l1", 0, [(0, "a")])], ack_wait=5.0, t0=1.1, t1=1.2)
    s.settle("release", "g0", "l1", 0, t0=1.3, t1=1.4)
    assert "leases" not in props(s.check())
    s = Story(tmp_path)
    s.publish([(K0, "a")], [(0, 0)])
    s.fetch("g0", [("l1", 0, [(0, "a")])], ack_wait=5.0)
    s.op("nemesis", "kill", {"pid": 1, "during": "run"}, res={"exit": -9})  # leases die
    s.fetch("g0", [("l2", 0, [(0, "a")])])
    s.settle("ack", "g0", "l1", 0, type_="fail", err="LeaseExpiredError: gone")
    assert "leases" not in props(s.check())
    s = Story(tmp_path)
    s.publish([(K0, "a")], [(0, 0)])
    s.fetch("g0", [("l1", 0, [(0, "a")])], ack_wait=5.0)
    s.settle("ack", "g0", "l1", 0, type_="fail", err="LeaseExpiredError: gone")
    assert any("before it could expire" in v.message for v in s.check())


def test_a_multi_fetch_leases_each_partition_once(tmp_path: Path) -> None:
    s = Story(tmp_path)
    s.publish([(K0, "a"), (K0, "b")], [(0, 0), (0, 1)])
    s.fetch("g0", [("l1", 0, [(0, "a")]), ("l2", 0, [(1, "b")])])
    assert "multi-fetch" in props(s.check())


def test_a_fetch_stays_within_its_byte_limit(tmp_path: Path) -> None:
    s = Story(tmp_path, max_fetch_bytes=1024)
    s.publish([(K0, str(i)) for i in range(40)], [(0, i) for i in range(40)])
    s.fetch("g0", [("l1", 0, [(i, str(i)) for i in range(40)])])  # 40 x 30 bytes
    assert any(v.prop == "fetch-size" and "1200 bytes" in v.message for v in s.check())
    s = Story(tmp_path, max_fetch_bytes=1200)
    s.publish([(K0, str(i)) for i in range(40)], [(0, i) for i in range(40)])
    s.fetch("g0", [("l1", 0, [(i, str(i)) for i in range(40)])])
    assert "fetch-size" not in props(s.check())


def test_the_service_recovers_and_stops_cleanly(tmp_path: Path) -> None:
    s = Story(tmp_path)
    happy(s)
    s.op("nemesis", "term", {"pid": 1}, res={"exit": 1})
    s.op("nemesis", "kill", {"pid": 1}, res={"exit": 3, "exited_before": 3})
    s.op("nemesis", "start", {"n": 2}, "fail", {"pid": 2}, "CorruptLogError: bad frame")
    s.op("consumer-g0", "ack", {"group": "g0", "lease": "x", "partition": 0, "offsets": None},
         "info", None, "ProtocolError: unexpected answer 500: boom")  # fmt: skip
    s.op("nemesis", "end", {}, "ok", {"broken": "the broker did not come back"})
    messages = [v.message for v in s.check() if v.prop == "service"]
    assert any("SIGTERM ended the broker with 1" in m for m in messages)
    assert any("already exited by itself (code 3)" in m for m in messages)
    assert any("did not recover: CorruptLogError" in m for m in messages)
    assert any("5xx or malformed" in m for m in messages)
    assert any("did not come back" in m for m in messages)


def test_a_torn_last_line_is_ignored_but_not_a_torn_middle(tmp_path: Path) -> None:
    s = Story(tmp_path)
    happy(s)
    s.stats([1, 1], {"g0": [1, 1], "g1": [1, 1]})
    assert s.check() == []
    with open(s.path, "ab") as f:
        f.write(b'{"i": 99, "p": "x"')
    header, ops = load(s.path)
    assert len(ops) == len(s.lines)
    text = s.path.read_bytes().split(b"\n")
    text.insert(3, b"{torn")
    s.path.write_bytes(b"\n".join(text))
    with pytest.raises(ValueError, match="not a JSON line"):
        load(s.path)


def test_values_are_json_carrying_their_id_and_plain_ones_fit_on_a_line() -> None:
    rng = random.Random(7)
    for n in range(2000):
        for style in ("plain", "multiline", "hostile"):
            v = make_value(rng, f"p.{n}", "gpu-1", style)
            assert value_id(v) == f"p.{n}"
            json.loads(v)  # valid JSON, even where orjson would refuse the numbers
            if style == "plain":
                assert b"\n" not in v and b"\r" not in v


def test_the_command_line_replays_a_run() -> None:
    args = parse_args(
        ["--minutes", "2", "--seed", "9", "--kills", "7", "--partitions", "3",
         "--broker-env", "BROKER_FSYNC=interval", "--allow", "multi-fetch"]
    )  # fmt: skip
    config = config_from(args)
    assert (config.seed, config.seconds, config.kills, config.terms) == (9, 120.0, 7, 1)
    assert config.broker_env == (("BROKER_FSYNC", "interval"),)
    again = config_from(parse_args(replay_command(config).split()[3:]))
    assert again == config
    assert config_from(parse_args(["--minutes", "30"])).kills == 120
