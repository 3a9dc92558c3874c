"""Checks a recorded history against the broker's promises; names the records and operations.

The properties (each violation carries one of these names):

``lost``
    Every acknowledged publish, and every indeterminate one that shows up anywhere, is
    delivered to every group at least once or dead-lettered for that group.
``corrupt``
    Every delivery and dead letter holds the published key and value byte for byte, in the
    partition the key routes to; no value appears that was never published or whose publish
    certainly failed; a value published once (no client retries) is stored at one position.
``offsets``
    Offsets only grow: within a publish, per partition, in request order; a publish invoked
    after another was acknowledged gets higher offsets in every partition both touched. A
    (partition, offset) never holds a different value than any earlier observation of it,
    and the log never ends before an acknowledged offset.
``delivered-after-ack``
    No record is delivered to a group by a fetch invoked after an ack of it (for that group)
    was acknowledged, nor by the fetch whose piggybacked ack covered it; no record is
    dead-lettered for a group after its ack was acknowledged.
``dead-letter``
    Only records past their maximum deliveries (nacks and lease expiries count, releases do
    not) or explicitly rejected are dead-lettered, and every envelope names its origin
    (topic, group, partition, offset, timestamp) correctly.
``stranded``
    At the end (after a final restart and a drain) every group's committed offset is the end
    of every partition with nothing in flight, and every record is acked or dead-lettered for
    every group.
``leases``
    A lease is exclusive: a record is not leased again, without a restart, before its lease
    was settled or could have expired; no answer holds a record twice; no settlement answers
    LEASE_EXPIRED before the lease could have expired.
``multi-fetch``
    A multi fetch leases each partition at most once.
``fetch-size``
    A fetch returns at most ``BROKER_MAX_FETCH_BYTES`` plus one record.
``service``
    The broker recovers after every crash, exits 0 on SIGTERM, never answers 5xx or a
    malformed body, and never loses the topic.

Indeterminate operations are treated as possibly applied: an ``info`` ack may have acked, an
``info`` publish may or may not be stored, an ``info`` fetch may have leased records nobody
saw (they count as deliveries when judging a dead letter).
"""

from __future__ import annotations

import bisect
import json
import math
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .history import FAIL, INFO, OK, Op
from .workload import CheckConfig, digest, value_id

Pos = tuple[int, int]
"""(partition, offset)"""

_FETCHES = ("fetch", "fetch_many")
_SETTLES = ("ack", "nack", "release", "reject")


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken promise: which property, and a message naming records and operations."""

    prop: str
    message: str


@dataclass(slots=True)
class _Published:
    """One value a producer tried to publish."""

    id: str
    key: str
    value: bytes
    digest: str
    op: Op
    position: Pos | None = None


@dataclass(slots=True)
class _Lease:
    """A lease seen in a fetch answer."""

    id: str
    group: str
    partition: int
    offsets: frozenset[int]
    fetch: Op
    ack_wait: float
    ops: list[tuple[Op, str]] = field(default_factory=list)  # (op, action) in invocation order


@dataclass(slots=True)
class _Delivery:
    op: Op
    lease: str
    count: int
    key: str
    id: str | None
    digest: str
    timestamp_us: int


@dataclass(slots=True)
class _DeadLetter:
    op: Op
    offset: int
    timestamp_us: int
    key: str
    raw: bytes
    doc: dict[str, Any] | None


@dataclass(slots=True)
class Summary:
    """Figures of a run: operations by kind and outcome, faults, records."""

    ops: dict[str, dict[str, int]]
    kills: int
    startup_kills: int
    terms: int
    starts: int
    published_ok: int
    published_info: int
    published_fail: int
    stored: int
    deliveries: int
    redeliveries: int
    dead_letters: int
    seconds: float

    def lines(self) -> list[str]:
        """A human-readable account."""
        out = [
            f"operations: {sum(sum(v.values()) for v in self.ops.values())} in {self.seconds:.0f} s"
        ]
        for kind in sorted(self.ops):
            by = self.ops[kind]
            detail = ", ".join(f"{t} {by[t]}" for t in (OK, FAIL, INFO) if by.get(t))
            out.append(f"  {kind:<11} {sum(by.values()):>8}  ({detail})")
        out.append(
            f"broker: {self.kills} SIGKILLs ({self.startup_kills} during recovery), "
            f"{self.terms} SIGTERMs, {self.starts} starts"
        )
        out.append(
            f"records: {self.published_ok} acknowledged, {self.published_info} indeterminate,"
            f" {self.published_fail} refused; {self.stored} stored; {self.deliveries} "
            f"deliveries ({self.redeliveries} redeliveries); {self.dead_letters} dead letters"
        )
        return out


class _Unseen:
    """Bounds the leases of a group that nobody saw (the answers of their fetches were lost).

    Two bounds, the smaller one counts. A fetch whose answer was lost leases a record at most
    once, and may have done so at any time until the broker process it was sent to went down
    (a broker can act on a request after the client gave up on it). And lease ids count up
    per group and broker process, so the gaps between the ids seen are exactly the leases
    not seen, each created between the fetches that got its neighbours; after the last id
    seen of a process the gaps are unknown, and only the first bound holds.
    """

    def __init__(self, ops: list[Op], leases: Iterable[_Lease]) -> None:
        # Broker processes: from each start to the kill or stop after it.
        self.lives: list[tuple[float, float]] = []
        for op in sorted(ops, key=lambda o: o.t0):
            if op.kind == "start":
                self.lives.append((op.t0, math.inf))
            elif op.kind in ("kill", "term") and self.lives:
                self.lives[-1] = (self.lives[-1][0], op.t1 or op.t0)
        self._starts = [start for start, _ in self.lives]
        # Fetches with lost answers, per group: when sent, and when their broker went down.
        sent: dict[str, list[float]] = defaultdict(list)
        down: dict[str, list[float]] = defaultdict(list)
        for op in ops:
            if op.kind in _FETCHES and op.type == INFO:
                sent[op.args["group"]].append(op.t0)
                down[op.args["group"]].append(self.life(op.t0)[1])
        self._sent = {g: sorted(ts) for g, ts in sent.items()}
        self._down = {g: sorted(ts) for g, ts in down.items()}
        # Lease id gaps, per group: the window in which each missing lease was created, and
        # the stretches (after the last id seen of a process) where gaps are unknown.
        self._gaps: dict[str, list[tuple[float, float]]] = defaultdict(list)
        self._unknown: dict[str, list[tuple[float, float]]] = defaultdict(list)
        seen: dict[tuple[str, str], dict[int, Op]] = defaultdict(dict)
        for lease in leases:
            prefix, _, number = lease.id.rpartition("-")
            try:
                n = int(number, 16)
            except ValueError:  # not the id format this relies on: no gap bound at all
                self._unknown[lease.group].append((-math.inf, math.inf))
                continue
            seen[(lease.group, prefix)][n] = lease.fetch
        covered: dict[str, set[int]] = defaultdict(set)
        for (group, _), by_number in seen.items():
            numbers = sorted(by_number)
            i = self._life_index(by_number[numbers[0]].t0)
            covered[group].add(i)
            life = self.lives[i] if i >= 0 else (-math.inf, math.inf)
            lo = life[0]
            for prev, nxt in zip([0, *numbers], numbers, strict=False):
                if prev:
                    lo = by_number[prev].t0
                hi = by_number[nxt].t1 or math.inf
                self._gaps[group].extend((lo, hi) for _ in range(nxt - prev - 1))
            self._unknown[group].append((by_number[numbers[-1]].t0, life[1]))
        groups = {lease.group for lease in leases} | set(sent)
        for group in groups:
            for i, life in enumerate(self.lives):
                if i not in covered[group]:  # no lease of this group seen in that process
                    self._unknown[group].append(life)

    def _life_index(self, t: float) -> int:
        return bisect.bisect_right(self._starts, t) - 1

    def life(self, t: float) -> tuple[float, float]:
        """The broker process a request sent at ``t`` went to: (start, end)."""
        i = self._life_index(t)
        return self.lives[i] if i >= 0 else (-math.inf, math.inf)

    def bound(self, group: str, start: float, end: float) -> int | float:
        """At most how many unseen leases of ``group`` can have been made in ``[start, end]``."""
        sent = self._sent.get(group, [])
        by_fetches = bisect.bisect_left(sent, end) - bisect.bisect_right(
            self._down.get(group, []), start
        )
        if any(lo < end and hi > start for lo, hi in self._unknown.get(group, [])):
            return max(by_fetches, 0)
        by_gaps = sum(1 for lo, hi in self._gaps.get(group, []) if lo < end and hi > start)
        return max(min(by_fetches, by_gaps), 0)


class Checker:
    """Indexes a history once, then checks each property."""

    def __init__(self, header: dict[str, Any], ops: list[Op]) -> None:
        self.cfg = CheckConfig.from_json(header["config"])
        ends = [op for op in ops if op.kind == "end"]
        self.broken: str | None = ends[-1].result.get("broken") if ends else None
        self.ops = ops
        self.groups = [f"g{i}" for i in range(self.cfg.groups)]
        self.violations: list[Violation] = []
        self.published: dict[str, _Published] = {}
        self.leases: dict[tuple[str, str], _Lease] = {}  # (group, lease id): ids are per group
        # group -> position -> deliveries (in fetch invocation order)
        self.deliveries: dict[str, dict[Pos, list[_Delivery]]] = defaultdict(
            lambda: defaultdict(list)
        )
        self.dead: list[_DeadLetter] = []
        self._clock: list[tuple[float, float]] = []  # (wall, t) samples
        self._dead_ids: dict[str, Pos] = {}  # value id -> origin of a dead letter
        self._index()

    def fail(self, prop: str, message: str) -> None:
        """Record a violation."""
        self.violations.append(Violation(prop, message))

    # -- indexing ---------------------------------------------------------------------------

    def _index(self) -> None:
        for op in self.ops:
            if op.kind == "publish":
                for key, value, vid in op.args["records"]:
                    data = value.encode()
                    self.published[vid] = _Published(vid, key, data, digest(data), op)
                if op.type == OK:
                    for (_, _, vid), pos in zip(
                        op.args["records"], op.result["positions"], strict=False
                    ):
                        self.published[vid].position = (pos[0], pos[1])
            elif op.kind in _FETCHES and op.type == OK:
                group = op.args["group"]
                for b in op.result["batches"]:
                    lease = _Lease(
                        b["lease"],
                        group,
                        b["partition"],
                        frozenset(r[0] for r in b["records"]),
                        op,
                        b["ack_wait"],
                    )
                    self.leases[(group, lease.id)] = lease
                    for offset, count, key, vid, dig, ts in b["records"]:
                        self.deliveries[group][(b["partition"], offset)].append(
                            _Delivery(op, lease.id, count, key, vid, dig, ts)
                        )
            elif op.kind == "dlq" and op.type == OK:
                for b in op.result["batches"]:
                    for offset, ts, key, text in b["records"]:
                        raw = text.encode()
                        try:  # json, not orjson: a value may hold numbers beyond a double
                            doc = json.loads(raw)
                        except ValueError:
                            doc = None
                        self.dead.append(
                            _DeadLetter(
                                op, offset, ts, key, raw, doc if isinstance(doc, dict) else None
                            )
                        )
            elif op.kind == "stats" and op.type == OK and op.t1 is not None:
                self._clock.append((op.result["wall"], op.t1))
        self._clock.sort()
        for op in self.ops:  # lease outcomes, after every lease is known
            if op.kind in _SETTLES or op.kind == "extend":
                if op.args.get("topic", self.cfg.topic) != self.cfg.topic:
                    continue
                held = self.leases.get((op.args["group"], op.args["lease"]))
                if held is not None:
                    held.ops.append((op, op.kind))
            elif op.kind in _FETCHES:
                for lid in op.args.get("ack") or ():
                    held = self.leases.get((op.args["group"], lid))
                    if held is not None:
                        held.ops.append((op, "piggyback"))

    def _t(self, wall_us: int) -> float:
        """A broker timestamp (µs since the epoch) on the run's clock (seconds since start)."""
        wall = wall_us / 1e6
        if not self._clock:
            return wall - 0.0
        i = bisect.bisect_left(self._clock, (wall, 0.0))
        near = [self._clock[j] for j in (i - 1, i) if 0 <= j < len(self._clock)]
        w, t = min(near, key=lambda s: abs(s[0] - wall))
        return t + (wall - w)

    # -- lease outcomes -------------------------------------------------------------------------

    def _targets(self, lease: _Lease) -> list[tuple[Op, str, str, frozenset[int]]]:
        """Per operation on the lease: (op, action, outcome, offsets it settles).

        Repeated acks are idempotent, so an ack's target ignores earlier acks; every other
        settlement excludes what earlier settlements (done or maybe done) took.
        """
        taken_by_others: set[int] = set()
        acked: set[int] = set()
        out: list[tuple[Op, str, str, frozenset[int]]] = []
        for op, action in lease.ops:
            if action == "extend":
                continue
            if action == "piggyback":
                outcome = op.type
                if outcome == OK and lease.id in op.result.get("expired", ()):
                    outcome = FAIL
                base = set(lease.offsets)
                action = "ack"
            else:
                outcome = op.type
                given = op.args.get("offsets")
                base = set(lease.offsets) if given is None else set(given) & lease.offsets
            target = base - taken_by_others
            if action != "ack":
                target -= acked
            if outcome != FAIL:
                (acked if action == "ack" else taken_by_others).update(target)
            out.append((op, action, outcome, frozenset(target)))
        return out

    # -- checks -----------------------------------------------------------------------------------

    def check(self) -> list[Violation]:
        """Run every check; the violations found."""
        self.check_service()
        self.check_publishes()
        self.check_deliveries()
        acked_at, maybe_acked, settled = self.check_acks()
        dead_for = self.check_dead_letters(acked_at, settled)
        self.check_lost(dead_for)
        self.check_end(maybe_acked, dead_for)
        self.check_leases()
        self.check_fetch_sizes()
        return self.violations

    def check_service(self) -> None:
        """The broker came back after every crash, stopped cleanly, answered well-formed."""
        if self.broken:
            self.fail("service", self.broken)
        server_errors: list[Op] = []
        for op in self.ops:
            if op.kind == "start" and op.type == FAIL and op.error != "killed while starting":
                self.fail("service", f"{op}: the broker did not recover: {op.error}")
            elif op.kind in ("kill", "term") and op.result.get("exited_before") is not None:
                self.fail(
                    "service",
                    f"{op}: the broker had already exited by itself "
                    f"(code {op.result['exited_before']})",
                )
            elif op.kind == "term" and op.result.get("exit") != 0:
                self.fail("service", f"{op}: SIGTERM ended the broker with {op.result.get('exit')}")
            elif op.error and ("unexpected answer 5" in op.error or "malformed" in op.error):
                server_errors.append(op)
            elif op.error and "TopicNotFoundError" in op.error:
                self.fail("service", f"{op}: the topic is gone: {op.error}")
        if server_errors:
            examples = "; ".join(f"{op}: {op.error}" for op in server_errors[:5])
            self.fail("service", f"{len(server_errors)} answers were 5xx or malformed: {examples}")

    def check_publishes(self) -> None:
        """Routing and growing offsets of acknowledged publishes; the log's end in stats."""
        parts = self.cfg.partitions
        oks = [op for op in self.ops if op.kind == "publish" and op.type == OK]
        for op in oks:
            last: dict[int, int] = {}
            if len(op.result["positions"]) != len(op.args["records"]):
                self.fail(
                    "offsets",
                    f"{op}: {len(op.args['records'])} records, "
                    f"{len(op.result['positions'])} positions",
                )
            for (key, _, vid), (p, o) in zip(
                op.args["records"], op.result["positions"], strict=False
            ):
                want = zlib.crc32(key.encode()) % parts
                if p != want:
                    self.fail(
                        "corrupt",
                        f"{vid} (key {key}) published to partition {p}, not {want}, by {op}",
                    )
                if p in last and o <= last[p]:
                    self.fail(
                        "offsets",
                        f"{op}: {vid} got offset {o} in partition {p} after "
                        f"offset {last[p]} earlier in the same publish",
                    )
                last[p] = o
        # Real-time order: a publish invoked after another was acknowledged lands after it.
        events = [(op.t1, 1, op) for op in oks] + [(op.t0, 0, op) for op in oks]
        events.sort(key=lambda e: (e[0], e[1]))
        done_max: dict[int, tuple[int, Op]] = {}
        bound: dict[int, dict[int, tuple[int, Op]]] = {}
        stats = [op for op in self.ops if op.kind == "stats" and op.type == OK]
        events += [(op.t0, 0, op) for op in stats]
        events.sort(key=lambda e: (e[0], e[1]))
        for _, is_end, op in events:
            if op.kind == "stats":
                if op.args.get("topic") != self.cfg.topic:
                    continue
                for p, (_, end) in enumerate(op.result["partitions"]):
                    if p in done_max and end <= done_max[p][0]:
                        o, pub = done_max[p]
                        self.fail(
                            "offsets",
                            f"{op} says partition {p} ends at {end}, but "
                            f"{pub} was acknowledged at offset {o} before it began",
                        )
                continue
            if not is_end:
                bound[op.index] = dict(done_max)
                continue
            before = bound.pop(op.index)
            first: dict[int, int] = {}
            for p, o in op.result["positions"]:
                first[p] = min(o, first.get(p, o))
                if p not in done_max or o > done_max[p][0]:
                    done_max[p] = (o, op)
            for p, o in first.items():
                if p in before and o <= before[p][0]:
                    prev_o, prev = before[p]
                    self.fail(
                        "offsets",
                        f"{op} got offset {o} in partition {p}, but {prev} "
                        f"was acknowledged with offset {prev_o} there before it began",
                    )

    def _observations(self) -> dict[Pos, list[tuple[str | None, str, str]]]:
        """Per position: (id, digest, where) from publish answers, deliveries, dead letters."""
        seen: dict[Pos, list[tuple[str | None, str, str]]] = defaultdict(list)
        for pub in self.published.values():
            if pub.position is not None:
                seen[pub.position].append((pub.id, pub.digest, f"the answer to {pub.op}"))
        for group, by_pos in self.deliveries.items():
            for pos, ds in by_pos.items():
                for d in ds:
                    seen[pos].append((d.id, d.digest, f"{d.op} (group {group})"))
        return seen

    def check_deliveries(self) -> None:
        """Each delivered record is a published one, byte for byte, and positions are stable."""
        parts = self.cfg.partitions
        positions_of: dict[str, set[Pos]] = defaultdict(set)
        reported: set[Pos] = set()
        for pos, obs in self._observations().items():
            ids = {vid for vid, _, _ in obs}  # differing bytes of one value: "corrupt"
            if len(ids) > 1 and pos not in reported:
                reported.add(pos)
                where = "; ".join(f"{vid} in {w}" for vid, _, w in obs[:6])
                self.fail(
                    "offsets", f"partition {pos[0]} offset {pos[1]} held different values: {where}"
                )
            for vid, _, _ in obs:
                if vid is not None:
                    positions_of[vid].add(pos)
        for group, by_pos in self.deliveries.items():
            for (p, o), ds in by_pos.items():
                for d in ds:
                    where = f"partition {p} offset {o} delivered to {group} by {d.op}"
                    pub = self.published.get(d.id) if d.id else None
                    if pub is None:
                        self.fail(
                            "corrupt",
                            f"{where} holds a value nobody published "
                            f"(id {d.id!r}, digest {d.digest})",
                        )
                        continue
                    if d.digest != pub.digest or d.key != pub.key:
                        self.fail(
                            "corrupt",
                            f"{where}: {pub.id} differs from what {pub.op} "
                            f"published (key {d.key!r} vs {pub.key!r}, digest "
                            f"{d.digest} vs {pub.digest}: {pub.value[:120]!r})",
                        )
                    if zlib.crc32(d.key.encode()) % parts != p:
                        self.fail("corrupt", f"{where}: key {d.key} routes elsewhere")
                    if pub.op.type == FAIL:
                        self.fail(
                            "corrupt",
                            f"{where}: {pub.id} comes from {pub.op}, which failed ({pub.op.error})",
                        )
        for vid, positions in positions_of.items():
            pub = self.published.get(vid)
            if len(positions) > 1 and pub is not None and not pub.op.args.get("retries"):
                self.fail(
                    "corrupt",
                    f"{vid}, published once by {pub.op} without retries, is "
                    f"stored at {len(positions)} positions: {sorted(positions)[:5]}",
                )

    def check_acks(
        self,
    ) -> tuple[
        dict[str, dict[Pos, Op]],
        dict[str, set[Pos]],
        dict[str, dict[Pos, list[tuple[Op, str, str]]]],
    ]:
        """No delivery after an acknowledged ack; returns the ack index for the other checks.

        Returns: per group the first acknowledged ack of each position, the positions that
        are acked or maybe acked, and every settlement (op, action, outcome) per position.
        """
        acked_at: dict[str, dict[Pos, Op]] = defaultdict(dict)
        maybe: dict[str, set[Pos]] = defaultdict(set)
        settled: dict[str, dict[Pos, list[tuple[Op, str, str]]]] = defaultdict(
            lambda: defaultdict(list)
        )
        for lease in self.leases.values():
            for op, action, outcome, target in self._targets(lease):
                for o in target:
                    pos = (lease.partition, o)
                    settled[lease.group][pos].append((op, action, outcome))
                    if action != "ack" or outcome == FAIL:
                        continue
                    maybe[lease.group].add(pos)
                    if outcome == OK:
                        first = acked_at[lease.group].get(pos)
                        assert op.t1 is not None
                        if first is None or op.t1 < (first.t1 or 0):
                            acked_at[lease.group][pos] = op
                    if action == "ack" and op.kind in _FETCHES and outcome == OK:
                        # The piggybacked acks are applied before the fetch leases anything.
                        for b in op.result["batches"]:
                            if b["partition"] == lease.partition and any(
                                r[0] == o for r in b["records"]
                            ):
                                self.fail(
                                    "delivered-after-ack",
                                    f"{op} acked partition "
                                    f"{pos[0]} offset {o} of lease {lease.id} "
                                    f"({lease.group}) and delivered it again",
                                )
        for group, by_pos in self.deliveries.items():
            for pos, ds in by_pos.items():
                ack = acked_at[group].get(pos)
                if ack is None:
                    continue
                assert ack.t1 is not None
                for d in ds:
                    if d.op.t0 > ack.t1:
                        self.fail(
                            "delivered-after-ack",
                            f"partition {pos[0]} offset {pos[1]} "
                            f"({d.id}) was delivered to {group} by {d.op} (lease "
                            f"{d.lease}) after {ack} acknowledged its ack",
                        )
                        break
        return acked_at, maybe, settled

    def check_dead_letters(
        self,
        acked_at: dict[str, dict[Pos, Op]],
        settled: dict[str, dict[Pos, list[tuple[Op, str, str]]]],
    ) -> dict[str, set[Pos]]:
        """Every dead letter is deserved and names its origin; returns positions per group."""
        dead_for: dict[str, set[Pos]] = defaultdict(set)
        unseen_leases = _Unseen(self.ops, self.leases.values())
        max_deliveries = self.cfg.max_deliveries
        for dl in self.dead:
            where = f"dead letter at {self.cfg.dlq} offset {dl.offset} (read by {dl.op})"
            doc = dl.doc
            origin = doc.get("origin") if doc else None
            if not doc or not isinstance(origin, dict):
                self.fail("dead-letter", f"{where} is not an envelope: {dl.raw[:200]!r}")
                continue
            group, p, o = origin.get("group"), origin.get("partition"), origin.get("offset")
            if origin.get("topic") != self.cfg.topic or group not in self.groups:
                self.fail("dead-letter", f"{where} names origin {origin}")
                continue
            if not isinstance(p, int) or not isinstance(o, int):
                self.fail("dead-letter", f"{where} names origin {origin}")
                continue
            pos = (p, o)
            dead_for[group].add(pos)
            vid = value_id(dl.raw)  # the envelope's own fields carry no "id"
            if vid is not None:
                self._dead_ids.setdefault(vid, pos)
            pub = self.published.get(vid) if vid else None
            if pub is None:
                self.fail(
                    "dead-letter", f"{where} holds a value nobody published: {dl.raw[:200]!r}"
                )
                continue
            label = f"{where} for {pub.id} (partition {p} offset {o}, group {group})"
            if pub.value not in dl.raw or dl.key != pub.key:
                self.fail(
                    "corrupt",
                    f"{label} does not hold the value {pub.op} published, "
                    f"byte for byte: {pub.value[:120]!r} in {dl.raw[:300]!r}",
                )
            if pub.position is not None and pub.position != pos:
                self.fail("dead-letter", f"{label}: {pub.op} stored it at {pub.position}")
            ds = self.deliveries.get(group, {}).get(pos, [])
            other = [d for g in self.groups for d in self.deliveries.get(g, {}).get(pos, [])]
            if any(d.id != pub.id for d in other):
                self.fail(
                    "offsets",
                    f"{label}: that position was delivered with another "
                    f"value ({[d.id for d in other][:3]})",
                )
            stamps = {d.timestamp_us for d in other}
            if stamps and origin.get("timestamp_us") not in stamps:
                self.fail(
                    "dead-letter",
                    f"{label} has timestamp_us "
                    f"{origin.get('timestamp_us')}, deliveries had {sorted(stamps)[:3]}",
                )
            t = self._t(dl.timestamp_us)
            ack = acked_at.get(group, {}).get(pos)
            if ack is not None and ack.t1 is not None and t > ack.t1:
                self.fail(
                    "delivered-after-ack",
                    f"{label} was appended at {t:.3f} s, after {ack} acknowledged its ack",
                )
            reason = doc.get("reason")
            count = origin.get("delivery_count")
            errors = {None, "lease expired"}
            rejects = []
            for op, action, outcome in settled.get(group, {}).get(pos, []):
                if action in ("nack", "reject") and outcome != FAIL:
                    errors.add(op.args.get("error"))
                if action == "reject" and outcome != FAIL and op.t0 < t:
                    rejects.append(op)
            if doc.get("error") not in errors:
                self.fail(
                    "dead-letter",
                    f"{label} carries error {doc.get('error')!r}, which no operation gave",
                )
            if reason == "rejected":
                if not rejects:
                    self.fail(
                        "dead-letter",
                        f"{label} says rejected, but no reject of it "
                        f"took effect (settlements: "
                        f"{self._describe(settled, group, pos)})",
                    )
                continue
            if reason != "max_deliveries":
                self.fail("dead-letter", f"{label} has reason {reason!r}")
                continue
            # The most deliveries it can have spent by then: every lease of it we saw (less
            # the ones released), plus every lease nobody saw that can have been created
            # between its publish and its dead letter.
            leases = [d for d in ds if d.op.t0 < t]
            released = {
                op.args["lease"]
                for op, action, outcome in settled.get(group, {}).get(pos, [])
                if action == "release" and outcome == OK and op.t0 < t
            }
            unseen = unseen_leases.bound(group, pub.op.t0, t)
            bound = len([d for d in leases if d.lease not in released]) + unseen
            if not isinstance(count, int) or count < max_deliveries or count > bound:
                self.fail(
                    "dead-letter",
                    f"{label} for max_deliveries with delivery_count "
                    f"{count} (max {max_deliveries}); at most {bound} deliveries can "
                    f"have been spent: {len(leases)} seen, {len(released)} released, "
                    f"{unseen} unseen; settlements: "
                    f"{self._describe(settled, group, pos)}",
                )
        return dead_for

    @staticmethod
    def _describe(
        settled: dict[str, dict[Pos, list[tuple[Op, str, str]]]], group: str, pos: Pos
    ) -> str:
        items = settled.get(group, {}).get(pos, [])
        return ", ".join(f"{action} {op}" for op, action, _ in items[-8:]) or "none"

    def check_lost(self, dead_for: dict[str, set[Pos]]) -> None:
        """Every acknowledged (or seen) record reached every group, or its dead-letter topic."""
        seen_ids: dict[str, Pos] = dict(self._dead_ids)
        for by_pos in self.deliveries.values():
            for pos, ds in by_pos.items():
                for d in ds:
                    if d.id is not None:
                        seen_ids.setdefault(d.id, pos)
        for pub in self.published.values():
            found = pub.position or seen_ids.get(pub.id)
            if found is None:
                continue  # an indeterminate publish that was not stored
            pos = found
            for group in self.groups:
                if self.deliveries.get(group, {}).get(pos) or pos in dead_for.get(group, ()):
                    continue
                how = "acknowledged" if pub.op.type == OK else "indeterminate, seen elsewhere"
                got = [g for g in self.groups if self.deliveries.get(g, {}).get(pos)]
                self.fail(
                    "lost",
                    f"{pub.id} ({how}, {pub.op}, partition {pos[0]} offset "
                    f"{pos[1]}) never reached group {group} nor its dead letters; "
                    f"delivered to {got or 'no group'}",
                )

    def check_end(self, maybe_acked: dict[str, set[Pos]], dead_for: dict[str, set[Pos]]) -> None:
        """After the drain: lag 0, nothing in flight, every record acked or dead-lettered."""
        finals = [
            op
            for op in self.ops
            if op.kind == "stats"
            and op.type == OK
            and op.process in ("drain", "final")
            and op.args.get("topic") == self.cfg.topic
        ]
        if not finals:
            if not self.broken:
                self.fail("stranded", "the run has no final stats (it did not finish)")
            return
        final = finals[-1]
        ends = [end for _, end in final.result["partitions"]]
        for group in self.groups:
            g = final.result["groups"].get(group)
            if g is None:
                self.fail("stranded", f"group {group} is missing from {final}")
                continue
            if g["lag"] or g["in_flight"]:
                self.fail(
                    "stranded",
                    f"{final}: group {group} has lag {g['lag']} and "
                    f"{g['in_flight']} in flight after the drain; committed "
                    f"{g['committed']}, partition ends {ends}",
                )
            for p, end in enumerate(ends):
                if g["committed"][p] != end:
                    self.fail(
                        "stranded",
                        f"{final}: group {group} committed "
                        f"{g['committed'][p]} in partition {p}, which ends at {end}",
                    )
                missing = [
                    o
                    for o in range(end)
                    if (p, o) not in maybe_acked.get(group, ())
                    and (p, o) not in dead_for.get(group, ())
                ]
                if missing:
                    self.fail(
                        "stranded",
                        f"group {group}, partition {p}: {len(missing)} "
                        f"records below the end ({end}) were neither acked nor "
                        f"dead-lettered, e.g. offsets {missing[:10]}",
                    )

    def check_leases(self) -> None:
        """Leases are exclusive until settled or expired; one lease per partition per fetch."""
        restarts = sorted(
            (op.t0, op.t1 or op.t0) for op in self.ops if op.kind in ("kill", "term", "start")
        )

        def restarted(a: float, b: float) -> bool:
            return any(t0 <= b and t1 >= a for t0, t1 in restarts)

        for op in self.ops:
            if op.kind not in _FETCHES or op.type != OK:
                continue
            parts = [b["partition"] for b in op.result["batches"]]
            if len(parts) != len(set(parts)):
                self.fail("multi-fetch", f"{op} leased a partition more than once: {parts}")
            for b in op.result["batches"]:
                offsets = [r[0] for r in b["records"]]
                if len(offsets) != len(set(offsets)):
                    self.fail("leases", f"{op} lease {b['lease']} holds a record twice")
        for lease in self.leases.values():
            if any(action == "extend" for _, action in lease.ops):
                continue  # an extend may shorten the lease: no lower bound on its deadline
            deadline = lease.fetch.t0 + lease.ack_wait  # the broker's clock started later
            for op, _ in lease.ops:
                if (
                    op.type == FAIL
                    and op.error
                    and "LeaseExpiredError" in op.error
                    and op.t1 is not None
                    and op.t1 < deadline
                    and not restarted(lease.fetch.t0, op.t1)
                ):
                    self.fail(
                        "leases",
                        f"{op} answered LEASE_EXPIRED for lease {lease.id} "
                        f"({lease.group}) of {lease.fetch}, before it could expire "
                        f"({deadline:.3f} s)",
                    )

        def surely_held(lease: _Lease) -> tuple[float, float]:
            # From its fetch's answer until it could first have ended: a settlement (or an
            # extend, which may shorten it) sent, its deadline, or a broker going down.
            start = lease.fetch.t1 or lease.fetch.t0
            end = lease.fetch.t0 + lease.ack_wait
            end = min([end, *(op.t0 for op, _ in lease.ops)])
            end = min([end, *(t0 for t0, _ in restarts if t0 >= lease.fetch.t0)])
            return start, end

        for group, by_pos in self.deliveries.items():
            for pos, ds in by_pos.items():
                held = sorted(
                    (surely_held(self.leases[(group, lid)]), lid) for lid in {d.lease for d in ds}
                )
                for i, ((_, end), lid) in enumerate(held):
                    for (start2, _), lid2 in held[i + 1 :]:
                        if start2 >= end:
                            break
                        first, second = self.leases[(group, lid)], self.leases[(group, lid2)]
                        self.fail(
                            "leases",
                            f"partition {pos[0]} offset {pos[1]} was leased to {group} by "
                            f"{first.fetch} (lease {lid}, {first.ack_wait} s) and by "
                            f"{second.fetch} (lease {lid2}) while both leases surely held it "
                            f"({start2:.3f}-{end:.3f} s: neither settled, expired or lost to "
                            "a restart)",
                        )

    def check_fetch_sizes(self) -> None:
        """No fetch answer is larger than ``BROKER_MAX_FETCH_BYTES`` plus one record."""
        limit = self.cfg.max_fetch_bytes
        for op in self.ops:
            if op.kind not in _FETCHES or op.type != OK or not op.result["batches"]:
                continue
            batches = op.result["batches"]
            total = sum(b["bytes"] for b in batches)
            if total > limit + max(b["largest"] for b in batches):
                records = sum(len(b["records"]) for b in batches)
                again = sum(1 for b in batches for r in b["records"] if r[1] > 1)
                self.fail(
                    "fetch-size",
                    f"{op} returned {total} bytes ({records} records, "
                    f"{again} redelivered), over the {limit} byte limit",
                )

    # -- figures --------------------------------------------------------------------------------

    def summary(self) -> Summary:
        """Operations by kind and outcome, faults and records."""
        ops: dict[str, Counter[str]] = defaultdict(Counter)
        for op in self.ops:
            ops[op.kind][op.type] += 1
        kills = [op for op in self.ops if op.kind == "kill"]
        pubs = [op for op in self.ops if op.kind == "publish"]

        def records(ops_: Iterable[Op]) -> int:
            return sum(len(op.args["records"]) for op in ops_)

        stored = {pos for by_pos in self.deliveries.values() for pos in by_pos}
        stored |= {pub.position for pub in self.published.values() if pub.position}
        all_deliveries = [d for by in self.deliveries.values() for ds in by.values() for d in ds]
        return Summary(
            ops={k: dict(v) for k, v in ops.items()},
            kills=len(kills),
            startup_kills=sum(1 for op in kills if op.args.get("during") == "startup"),
            terms=sum(1 for op in self.ops if op.kind == "term"),
            starts=sum(1 for op in self.ops if op.kind == "start" and op.type == OK),
            published_ok=records(op for op in pubs if op.type == OK),
            published_info=records(op for op in pubs if op.type == INFO),
            published_fail=records(op for op in pubs if op.type == FAIL),
            stored=len(stored),
            deliveries=len(all_deliveries),
            redeliveries=sum(1 for d in all_deliveries if d.count > 1),
            dead_letters=len(self.dead),
            seconds=max((op.t1 or op.t0 for op in self.ops), default=0.0),
        )


def check(header: dict[str, Any], ops: list[Op]) -> tuple[list[Violation], Summary]:
    """Every property over a history: the violations and the run's figures."""
    checker = Checker(header, ops)
    checker.check()
    return checker.violations, checker.summary()
