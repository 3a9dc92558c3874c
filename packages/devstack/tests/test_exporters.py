"""The stand-in dcgm-exporters: the CSV's fleet, in the real format, with values that move."""

from __future__ import annotations

from datetime import UTC, datetime

import aiohttp
from telemetry_devstack import ServiceProcess
from telemetry_devstack.exporters import FIELDS, fleet
from telemetry_model import METRICS_BY_NAME, read_exposition

from conftest import CSV_PATH

AT = datetime(2026, 11, 30, tzinfo=UTC)


def test_every_host_of_the_csv_is_an_exporter_of_its_gpus():
    hosts = fleet(CSV_PATH)
    assert len(hosts) == 31
    assert sum(len(h.devices) for h in hosts) == 247
    assert len({d.uuid for h in hosts for d in h.devices}) == 247
    # Every default counter of dcgm-exporter is a catalog metric.
    assert len(FIELDS) == 25 and all(f in METRICS_BY_NAME for f in FIELDS)


def test_the_rendering_is_dcgm_exporters_and_reads_back_whole():
    host = next(h for h in fleet(CSV_PATH) if h.hostname == "mtv5-dgx1-hgpu-031")
    text = host.render(now=1_800_000_000.0)
    assert text.startswith(
        "# HELP DCGM_FI_DEV_SM_CLOCK SM clock frequency (in MHz).\n"
        "# TYPE DCGM_FI_DEV_SM_CLOCK gauge\n"
        'DCGM_FI_DEV_SM_CLOCK{gpu="0",UUID="GPU-5fd4f087-86f3-7a43-b711-4771313afc50",'
        'pci_bus_id="00000000:18:00.0",device="nvidia0",modelName="NVIDIA H100 80GB HBM3",'
        'Hostname="mtv5-dgx1-hgpu-031",DCGM_FI_DRIVER_VERSION="535.129.03",'
        'container="",namespace="",pod=""} 1980\n'
    )
    assert "# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter\n" in text
    assert 'err_code="0",err_msg="No Error"' in text
    e = read_exposition(text, scraped_at=AT)
    assert e.bad_lines == [] and e.dropped == {}
    assert len(e.samples) == 8 * 25
    # The CSV's values are where they start from.
    power = {s.gpu.uuid: s.value for s in e.samples if s.metric == "DCGM_FI_DEV_POWER_USAGE"}
    assert 100 < power["GPU-5fd4f087-86f3-7a43-b711-4771313afc50"] < 200  # 156.596 in the CSV
    # Busy GPUs are attributed to a pod, idle ones to none.
    pods = {s.pod for s in e.samples}
    assert None in pods and len(pods) > 1


def test_values_move_with_time_and_counters_only_grow():
    host = fleet(CSV_PATH, hosts=1)[0]

    def read(now: float) -> dict[tuple[str, str], float]:
        e = read_exposition(host.render(now=now), scraped_at=AT)
        return {(s.gpu.uuid, s.metric): s.value for s in e.samples}

    a, b = read(1_800_000_000.0), read(1_800_000_030.0)
    moved = {k for k in a if a[k] != b[k]}
    assert {m for _, m in moved} >= {
        "DCGM_FI_DEV_POWER_USAGE",
        "DCGM_FI_DEV_GPU_TEMP",
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
    }
    for key in a:
        if key[1] == "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION":
            assert b[key] > a[key]


def test_mig_hosts_show_instances_next_to_their_gpu_and_copies_have_their_own_names():
    hosts = fleet(CSV_PATH, hosts=2, mig_hosts=1, replicas=2, hostname_label="hostname")
    assert len(hosts) == 4
    e = read_exposition(hosts[0].render(), scraped_at=AT)
    devices = {s.gpu.uuid: s.gpu for s in e.samples}
    assert len(devices) == 8 + 8 * 3
    migs = [g for g in devices.values() if g.mig_instance is not None]
    assert {g.mig_profile for g in migs} == {"3g.40gb", "2g.20gb", "1g.10gb"}
    assert all(g.parent_uuid in devices for g in migs)
    copy = read_exposition(hosts[2].render(), scraped_at=AT)
    assert {s.gpu.hostname for s in copy.samples} == {f"{hosts[0].hostname}-r1"}
    assert not {s.gpu.uuid for s in copy.samples} & set(devices)


async def test_the_command_serves_every_host_and_lists_them(tmp_path):
    listing = tmp_path / "targets"
    proc = ServiceProcess(
        "exporters",
        "telemetry_devstack.exporters",
        prefix="EXPORTERS",
        env={},
        args=["--csv", str(CSV_PATH), "--targets-file", str(listing), "--hosts", "3"],
        sink=None,
    )
    await proc.start()
    try:
        await proc.wait_ready(60)
        targets = listing.read_text().split()
        assert len(targets) == 3
        async with aiohttp.ClientSession() as http:
            for target in targets:
                async with http.get(f"http://{target}/metrics") as r:
                    assert r.status == 200
                    e = read_exposition(await r.text(), scraped_at=AT)
                    assert len(e.samples) == 8 * 25 and not e.bad_lines
            async with http.get(f"{proc.url}/targets") as r:
                assert sorted((await r.json()).values()) == sorted(targets)
    finally:
        assert await proc.stop() == 0
    assert not any("Warning" in line for line in proc.lines)
