"""Target discovery, slots, owners and payloads: the scrape source's plain logic."""

from __future__ import annotations

import itertools

import pytest
from pydantic import ValidationError
from telemetry_streamer import Settings, SourceError
from telemetry_streamer.slots import owner_of, pack, phase_us, slot_at, unpack
from telemetry_streamer.source import discovery
from telemetry_streamer.targets import (
    Discovery,
    TargetError,
    normalize,
    parse_dns,
    split_list,
)


@pytest.mark.parametrize(
    ("given", "url"),
    [
        ("10.0.0.7:9400", "http://10.0.0.7:9400/metrics"),
        ("node-a:9400", "http://node-a:9400/metrics"),
        ("http://node-a:9400/metrics", "http://node-a:9400/metrics"),
        ("https://node-a/custom", "https://node-a/custom"),
        ("[fd00::7]:9400", "http://[fd00::7]:9400/metrics"),
        (" node-a:9400 ", "http://node-a:9400/metrics"),
    ],
)
def test_targets_are_urls(given, url):
    assert normalize(given) == url


@pytest.mark.parametrize("bad", ["", "ftp://node-a/", "http://", "node-a:port", "node-a:99999"])
def test_a_target_that_is_not_an_address_is_refused(bad):
    with pytest.raises(TargetError):
        normalize(bad)


def test_lists_take_commas_newlines_and_comments():
    text = "a:1, b:2\n# a comment\n\nc:3  # trailing\n"
    assert split_list(text) == ["a:1", "b:2", "c:3"]
    assert parse_dns("dcgm-exporter.gpu-operator.svc:9400") == (
        "dcgm-exporter.gpu-operator.svc",
        9400,
    )
    for bad in ("no-port", "name:", ":9400", "name:0"):
        with pytest.raises(TargetError):
            parse_dns(bad)


async def test_a_file_is_read_again_and_a_broken_one_keeps_its_last_list(tmp_path):
    listing = tmp_path / "targets"
    listing.write_text("127.0.0.1:9400\n127.0.0.1:9401\n")
    found = Discovery(static=["node-z:9400"], file=listing)
    assert await found.resolve() == [
        "http://127.0.0.1:9400/metrics",
        "http://127.0.0.1:9401/metrics",
        "http://node-z:9400/metrics",
    ]
    listing.write_text("127.0.0.1:9402\n")
    assert "http://127.0.0.1:9402/metrics" in await found.resolve()
    listing.write_text("not a target at all:x\n")
    assert "http://127.0.0.1:9402/metrics" in await found.resolve()  # kept
    listing.unlink()
    assert "http://127.0.0.1:9402/metrics" in await found.resolve()  # kept


async def test_a_dns_name_resolves_to_every_address_and_a_failure_keeps_the_last():
    found = Discovery(dns=[("localhost", 9400)])
    urls = await found.resolve()
    assert "http://127.0.0.1:9400/metrics" in urls
    assert all(u.endswith(":9400/metrics") for u in urls)
    gone = Discovery(dns=[("no-such-host.invalid", 9400)])
    assert await gone.resolve() == []
    gone._known["dns:no-such-host.invalid:9400"] = ["http://10.0.0.1:9400/metrics"]
    assert await gone.resolve() == ["http://10.0.0.1:9400/metrics"]


def test_a_scrape_source_without_targets_or_with_a_bad_one_cannot_start():
    with pytest.raises(SourceError, match="no targets"):
        discovery(targets="", targets_file=None, dns="")
    with pytest.raises(SourceError, match="not an exporter address"):
        discovery(targets="ftp://x/", targets_file=None, dns="")
    with pytest.raises(SourceError, match="name:port"):
        discovery(targets="", targets_file=None, dns="exporters.svc")


def test_the_scrape_timeout_must_be_shorter_than_the_interval(monkeypatch):
    monkeypatch.setenv("STREAMER_DATABASE_URL", "postgresql://x")
    monkeypatch.setenv("STREAMER_SOURCE", "scrape")
    monkeypatch.setenv("STREAMER_SCRAPE_INTERVAL", "5")
    monkeypatch.setenv("STREAMER_SCRAPE_TIMEOUT", "5")
    with pytest.raises(ValidationError, match="shorter than the scrape interval"):
        Settings()
    monkeypatch.setenv("STREAMER_SCRAPE_TIMEOUT", "2")
    s = Settings()
    assert (s.lease, s.target_ttl) == (5.0, 90.0)


def test_every_member_computes_the_same_owner_and_a_new_member_moves_only_its_share():
    targets = [f"http://10.0.{i // 256}.{i % 256}:9400/metrics" for i in range(600)]
    three = ["a", "b", "c"]
    owners = {t: owner_of(t, three) for t in targets}
    assert all(owner_of(t, list(reversed(three))) == owners[t] for t in targets)
    shares = {m: sum(1 for o in owners.values() if o == m) for m in three}
    assert all(150 <= n <= 250 for n in shares.values()), shares
    four = {t: owner_of(t, [*three, "d"]) for t in targets}
    moved = [t for t in targets if four[t] != owners[t]]
    assert all(four[t] == "d" for t in moved)  # only to the new member
    assert 100 <= len(moved) <= 200
    # A member that leaves hands only its own targets to the others.
    two = {t: owner_of(t, ["a", "c"]) for t in targets}
    assert all(two[t] == owners[t] for t in targets if owners[t] != "b")


def test_slots_are_an_interval_apart_at_the_targets_phase():
    interval = 10_000_000
    phase = phase_us("http://10.0.0.1:9400/metrics", interval)
    assert 0 <= phase < interval
    assert phase != phase_us("http://10.0.0.2:9400/metrics", interval)
    now = 1_800_000_000_123_456
    slot = slot_at(now, interval, phase)
    assert slot <= now < slot + interval and (slot - phase) % interval == 0
    assert slot_at(slot, interval, phase) == slot
    assert slot_at(slot - 1, interval, phase) == slot - interval


def test_a_payload_gives_back_every_key_and_static_part_in_order():
    records = [
        (f"GPU-{i}", b',"metric":"X","value":%d,"labels":{"a":"\\t\\n"}}' % i) for i in range(5)
    ]
    assert unpack(pack(records)) == records
    assert unpack(pack([])) == []
    assert len(pack(list(itertools.repeat(records[0], 1000)))) < 2000  # compressed
