"""Reading dcgm-exporter scrapes: the real format, MIG instances, pods, bad lines."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from telemetry_model import (
    METRICS_BY_NAME,
    FieldFilter,
    mig_uuid,
    parse_families,
    read_exposition,
    unit_from_help,
)

AT = datetime(2026, 11, 30, 12, 0, 0, 250_000, tzinfo=UTC)
U0 = "GPU-5fd4f087-86f3-7a43-b711-4771313afc50"
U1 = "GPU-bc7a12ab-4998-fdc5-0785-2678a929a142"
A100 = "GPU-9e2a8a9c-0f31-4c55-a1b2-3c4d5e6f7a80"

DATA = Path(__file__).parent / "data"
# What dcgm-exporter 4.x renders (internal/pkg/rendermetrics): HELP and TYPE per field, then
# one line per GPU with gpu, UUID, pci_bus_id, device, modelName, Hostname, the label fields
# and the Kubernetes attribution; counters without a _total suffix; a blank line per field.
REAL = (DATA / "h100-exposition.txt").read_text()
# An A100 split into two MIG instances: the parent's own series and one per GPU instance,
# with the same gpu, UUID and device; GPU_I_PROFILE and GPU_I_ID tell them apart.
MIG = (DATA / "a100-mig-exposition.txt").read_text()


def read(text: str, **kw) -> tuple:
    e = read_exposition(text, scraped_at=AT, **kw)
    return e, {(s.gpu.uuid, s.metric): s for s in e.samples}


def test_real_exposition_is_read_with_every_label_where_it_belongs():
    e, by = read(REAL)
    assert e.bad_lines == [] and e.dropped == {}
    assert len(e.samples) == 7
    clock = by[(U0, "DCGM_FI_DEV_SM_CLOCK")]
    assert clock.value == 1980.0 and clock.timestamp == AT
    g = clock.gpu
    assert (g.hostname, g.index, g.device, g.model, g.driver_version) == (
        "mtv5-dgx1-hgpu-031",
        0,
        "nvidia0",
        "NVIDIA H100 80GB HBM3",
        "535.129.03",
    )
    assert (g.mig_profile, g.mig_instance, g.parent_uuid) == (None, None, None)
    # Empty attribution labels are no attribution; the rest is the pod's.
    assert (clock.container, clock.pod, clock.namespace) == (None, None, None)
    trained = by[(U1, "DCGM_FI_DEV_POWER_USAGE")]
    assert (trained.container, trained.pod, trained.namespace) == ("trainer", "llm-train-0", "ml")
    assert trained.value == 689.123
    # Labels no field takes travel along.
    assert clock.labels == {"pci_bus_id": "00000000:18:00.0"}
    xid = by[(U0, "DCGM_FI_DEV_XID_ERRORS")]
    assert xid.labels == {
        "pci_bus_id": "00000000:18:00.0",
        "err_code": "79",
        "err_msg": "GPU has fallen off the bus",
    }


def test_metrics_outside_the_csv_are_catalog_metrics_with_units():
    e, by = read(REAL)
    # The counter: prometheus-client calls its sample ..._total; the field is the family.
    energy = by[(U0, "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION")]
    assert energy.value == 81236547123.0
    assert METRICS_BY_NAME[energy.metric].kind == "counter"
    assert METRICS_BY_NAME[energy.metric].unit == "mJ"
    tensor = by[(U1, "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE")]
    assert tensor.value == pytest.approx(0.412345)
    assert METRICS_BY_NAME[tensor.metric].unit == "ratio"
    assert METRICS_BY_NAME["DCGM_FI_DEV_XID_ERRORS"].id > 10  # the CSV's ten keep 1..10


def test_mig_instances_are_devices_of_their_own():
    e, by = read(MIG)
    assert e.bad_lines == [] and e.dropped == {}
    uuids = [s.gpu.uuid for s in e.samples]
    assert uuids == [A100, f"{A100}:mig1", f"{A100}:mig13", f"{A100}:mig1"]
    assert mig_uuid(A100, 1) == f"{A100}:mig1"
    parent = by[(A100, "DCGM_FI_DEV_FB_USED")]
    big = by[(f"{A100}:mig1", "DCGM_FI_DEV_FB_USED")]
    small = by[(f"{A100}:mig13", "DCGM_FI_DEV_FB_USED")]
    # Three values of one metric of one physical GPU, none overwriting another.
    assert (parent.value, big.value, small.value) == (38000.0, 30000.0, 8000.0)
    assert parent.gpu.mig_instance is None and parent.gpu.physical_uuid == A100
    assert (big.gpu.mig_profile, big.gpu.mig_instance, big.gpu.parent_uuid) == ("3g.40gb", 1, A100)
    assert (small.gpu.mig_profile, small.gpu.mig_instance) == ("1g.10gb", 13)
    assert big.gpu.index == 0 and big.gpu.device == "nvidia0" and big.gpu.physical_uuid == A100
    assert (big.container, big.pod, big.namespace) == ("infer", "vllm-7f9c", "serving")
    assert "GPU_I_ID" not in big.labels and "GPU_I_PROFILE" not in big.labels


def test_without_help_and_type_lines_and_with_the_newer_and_older_label_names():
    text = (
        f'DCGM_FI_DEV_GPU_TEMP{{gpu="3", uuid="{U0}", device="nvidia3",'
        ' modelName="NVIDIA H100 80GB HBM3", hostname="node-b",'
        ' container_name="c", pod_name="p", pod_namespace="n"} 41\n'
        f'DCGM_FI_DEV_GPU_TEMP{{gpu="4",UUID="{U1}",modelName="NVIDIA H100 80GB HBM3"}} 40\n'
    )
    e, by = read(text, hostname="10.0.3.7")
    assert e.bad_lines == [] and e.dropped == {}
    temp = by[(U0, "DCGM_FI_DEV_GPU_TEMP")]
    assert (temp.gpu.hostname, temp.gpu.index, temp.value) == ("node-b", 3, 41.0)
    assert (temp.container, temp.pod, temp.namespace) == ("c", "p", "n")
    # No Hostname label: the target's host stands in; no device label: nvidia<gpu>.
    other = by[(U1, "DCGM_FI_DEV_GPU_TEMP")]
    assert (other.gpu.hostname, other.gpu.device) == ("10.0.3.7", "nvidia4")


def test_unknown_fields_follow_the_allow_list_and_other_samples_are_dropped_by_reason():
    text = f"""# HELP DCGM_FI_DEV_PCIE_TX_THROUGHPUT PCIe TX throughput (in KB).
# TYPE DCGM_FI_DEV_PCIE_TX_THROUGHPUT counter
DCGM_FI_DEV_PCIE_TX_THROUGHPUT{{gpu="0",UUID="{U0}",Hostname="h"}} 123
# TYPE DCGM_EXP_XID_ERRORS_COUNT counter
DCGM_EXP_XID_ERRORS_COUNT{{gpu="0",UUID="{U0}",Hostname="h",xid="43"}} 1
# TYPE DCGM_FI_DEV_GPU_TEMP gauge
DCGM_FI_DEV_GPU_TEMP{{nvswitch="nvswitch0",Hostname="h"}} 33
DCGM_FI_DEV_GPU_TEMP{{gpu="0",UUID="{U0}",Hostname="h"}} 9223372036854775794
DCGM_FI_DEV_GPU_TEMP{{gpu="0",UUID="{U0}",Hostname="h"}} NaN
DCGM_FI_DEV_GPU_TEMP{{gpu="99999",UUID="{U0}",Hostname="h"}} 30
DCGM_FI_DEV_GPU_TEMP{{gpu="1",UUID="{U1}",Hostname="h",pod="{"p" * 300}"}} 30
DCGM_FI_DEV_GPU_TEMP{{gpu="0",UUID="{U0}",Hostname="h"}} 44
go_goroutines 17
"""
    e, _ = read(text)
    assert [(s.metric, s.value) for s in e.samples] == [("DCGM_FI_DEV_GPU_TEMP", 44.0)]
    assert e.dropped == {
        "unknown_field": 1,
        "not_dcgm_field": 2,
        "no_gpu": 1,
        "blank": 1,
        "out_of_domain": 3,
    }
    e, by = read(text, fields=FieldFilter.parse("DCGM_FI_DEV_PCIE_*, DCGM_FI_NOPE"))
    kept = by[(U0, "DCGM_FI_DEV_PCIE_TX_THROUGHPUT")]
    assert kept.value == 123.0
    assert e.help == {"DCGM_FI_DEV_PCIE_TX_THROUGHPUT": "PCIe TX throughput (in KB)."}
    assert unit_from_help(e.help["DCGM_FI_DEV_PCIE_TX_THROUGHPUT"]) == "KB"
    assert unit_from_help("vGPU License status") == ""
    # "*" keeps every DCGM_FI_ field, and still nothing else.
    e, _ = read(text, fields=FieldFilter.parse("*"))
    assert e.dropped.get("unknown_field") is None and e.dropped["not_dcgm_field"] == 2


def test_a_bad_line_costs_that_line_not_the_scrape():
    lines = REAL.split("\n")
    # Break one sample line in the middle of a family (a missing comma between labels), and
    # one more in another family (a value that is not a number).
    broken = [
        line.replace('",UUID=', '" UUID=', 1)
        if line.startswith('DCGM_FI_DEV_POWER_USAGE{gpu="0"')
        else line.replace("} 81236547123", "} lots")
        for line in lines
    ]
    text = "\n".join(broken)
    with pytest.raises(ValueError):  # the library alone gives up on the whole scrape
        from prometheus_client.parser import text_string_to_metric_families

        list(text_string_to_metric_families(text))
    e, by = read(text)
    assert sorted(b.line for b in e.bad_lines) == [
        broken.index(line) + 1 for line in broken if '" UUID=' in line or "} lots" in line
    ]
    assert "Invalid labels" in e.bad_lines[0].reason
    assert len(e.samples) == 5  # 7 less the two bad lines
    assert (U1, "DCGM_FI_DEV_POWER_USAGE") in by  # its family neighbour survives
    assert (U0, "DCGM_FI_DEV_POWER_USAGE") not in by
    assert (U0, "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION") not in by
    # The counter family after the bad line keeps its type: none of its samples is lost.
    assert (U0, "DCGM_FI_DEV_XID_ERRORS") in by and (U1, "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE") in by


@pytest.mark.parametrize(
    "bad",
    [
        "# TYPE DCGM_FI_DEV_GPU_TEMP nonsense",  # a bad TYPE: the samples stay, untyped
        'DCGM_FI_DEV_GPU_TEMP{gpu="0",gpu="1"} 1',  # a label twice
        'DCGM_FI_DEV_GPU_TEMP{gpu="0" 1',  # unterminated label set
        "DCGM_FI_DEV_GPU_TEMP",  # no value
        "\x00\x01 garbage \ufffd",
        '{gpu="0"} 1',  # no name
    ],
)
def test_any_malformed_line_is_refused_alone(bad):
    good = f'DCGM_FI_DEV_GPU_TEMP{{gpu="0",UUID="{U0}",Hostname="h"}} 44'
    text = f"# HELP DCGM_FI_DEV_GPU_TEMP GPU temperature (in C).\n{good}\n{bad}\n{good}\n"
    if bad.startswith("# TYPE"):
        text = f"{bad}\n{good}\n{good}\n"
    e, _ = read(text)
    assert [s.value for s in e.samples] == [44.0, 44.0]
    assert len(e.bad_lines) == 1


def test_nothing_parseable_is_an_empty_scrape_not_an_error():
    e = read_exposition("<html>502 Bad Gateway</html>\n", scraped_at=AT)
    assert e.samples == [] and len(e.bad_lines) == 1
    assert read_exposition("", scraped_at=AT).samples == []
    families, bad = parse_families("# just a comment\n\n")
    assert bad == [] and families == []
