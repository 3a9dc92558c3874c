"""``python -m telemetry_devstack.exporters``: a stand-in dcgm-exporter for every host of the CSV.

Each host of the CSV (31 hosts, 247 GPUs in ``data/``) gets an endpoint of its own on
127.0.0.1, serving ``/metrics`` the way NVIDIA's dcgm-exporter renders it
(``internal/pkg/rendermetrics``): ``# HELP`` and ``# TYPE`` per field, one line per GPU with
``gpu``, ``UUID``, ``pci_bus_id``, ``device``, ``modelName`` (``GPU_I_PROFILE``/``GPU_I_ID``
for a MIG instance), ``Hostname``, the label fields (``DCGM_FI_DRIVER_VERSION``) and the
Kubernetes attribution (``container``, ``namespace``, ``pod``, empty for a GPU no pod uses),
integers as ``%d`` and doubles as ``%f``. The fields are the exporter's default counters
(``etc/default-counters.csv``). Values start from the CSV's and move with time: utilisation,
power and temperature drift together, energy and NVLink counters grow.

The endpoints are written to ``--targets-file`` (``host:port`` per line) before the control
port is reported (``EXPORTERS_PORT``/``EXPORTERS_PORT_FILE``, like a service); the control
port answers ``/readyz`` and ``/targets``. ``--replicas`` multiplies the fleet (for the
benchmark), ``--mig`` partitions the GPUs of the first hosts into MIG instances.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import logging
import math
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from aiohttp import web
from telemetry_model import read_samples

log = logging.getLogger("telemetry_devstack.exporters")

# dcgm-exporter's default counters: field, Prometheus type, HELP text, DCGM value type.
DEFAULT_COUNTERS: Final[tuple[tuple[str, str, str, type], ...]] = (
    ("DCGM_FI_DEV_SM_CLOCK", "gauge", "SM clock frequency (in MHz).", int),
    ("DCGM_FI_DEV_MEM_CLOCK", "gauge", "Memory clock frequency (in MHz).", int),
    ("DCGM_FI_DEV_MEMORY_TEMP", "gauge", "Memory temperature (in C).", int),
    ("DCGM_FI_DEV_GPU_TEMP", "gauge", "GPU temperature (in C).", int),
    ("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw (in W).", float),
    (
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
        "counter",
        "Total energy consumption since boot (in mJ).",
        int,
    ),
    ("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "counter", "Total number of PCIe retries.", int),
    ("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (in %).", int),
    ("DCGM_FI_DEV_MEM_COPY_UTIL", "gauge", "Memory utilization (in %).", int),
    ("DCGM_FI_DEV_ENC_UTIL", "gauge", "Encoder utilization (in %).", int),
    ("DCGM_FI_DEV_DEC_UTIL", "gauge", "Decoder utilization (in %).", int),
    ("DCGM_FI_DEV_XID_ERRORS", "gauge", "Value of the last XID error encountered.", int),
    ("DCGM_FI_DEV_FB_FREE", "gauge", "Framebuffer memory free (in MiB).", int),
    ("DCGM_FI_DEV_FB_USED", "gauge", "Framebuffer memory used (in MiB).", int),
    ("DCGM_FI_DEV_FB_RESERVED", "gauge", "Framebuffer memory reserved (in MiB).", int),
    (
        "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL",
        "counter",
        "Total number of NVLink bandwidth counters for all lanes.",
        int,
    ),
    ("DCGM_FI_DEV_VGPU_LICENSE_STATUS", "gauge", "vGPU License status", int),
    (
        "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
        "counter",
        "Number of remapped rows for uncorrectable errors",
        int,
    ),
    (
        "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS",
        "counter",
        "Number of remapped rows for correctable errors",
        int,
    ),
    ("DCGM_FI_DEV_ROW_REMAP_FAILURE", "gauge", "Whether remapping of rows has failed", int),
    (
        "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
        "gauge",
        "Ratio of time the graphics engine is active.",
        float,
    ),
    (
        "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE",
        "gauge",
        "Ratio of cycles the tensor (HMMA) pipe is active.",
        float,
    ),
    (
        "DCGM_FI_PROF_DRAM_ACTIVE",
        "gauge",
        "Ratio of cycles the device memory interface is active sending or receiving data.",
        float,
    ),
    (
        "DCGM_FI_PROF_PCIE_TX_BYTES",
        "gauge",
        "The rate of data transmitted over the PCIe bus - including both protocol headers and"
        " data payloads - in bytes per second.",
        int,
    ),
    (
        "DCGM_FI_PROF_PCIE_RX_BYTES",
        "gauge",
        "The rate of data received over the PCIe bus - including both protocol headers and"
        " data payloads - in bytes per second.",
        int,
    ),
)
FIELDS: Final = tuple(f[0] for f in DEFAULT_COUNTERS)
# MIG instances of a partitioned GPU (an 80 GB part): profile, GPU instance id.
MIG_LAYOUT: Final = (("3g.40gb", 1), ("2g.20gb", 5), ("1g.10gb", 13))


def _unit(seed: str) -> float:
    """A stable number in [0, 1) from ``seed``."""
    return int.from_bytes(hashlib.blake2b(seed.encode(), digest_size=4).digest()) / 2**32


@dataclass
class Device:
    """One GPU (or MIG instance) and where its values start from."""

    uuid: str
    index: int
    model: str
    driver: str
    base: dict[str, float]
    pci_bus_id: str
    mig: tuple[str, int] | None = None
    pod: tuple[str, str, str] | None = None  # container, namespace, pod
    energy_mj: float = 0.0
    nvlink_bytes: float = 0.0
    at: float = field(default_factory=time.time)

    def values(self, now: float) -> dict[str, float]:
        """Every field's value at ``now`` (counters advance from the last call)."""
        b, seed = self.base, _unit(self.uuid)
        wave = math.sin(2 * math.pi * (now / 120.0 + seed))  # a two-minute cycle per GPU
        busy = b["DCGM_FI_DEV_GPU_UTIL"] > 0
        util = min(100.0, max(0.0, b["DCGM_FI_DEV_GPU_UTIL"] + (8 * wave if busy else 0)))
        power = max(20.0, b["DCGM_FI_DEV_POWER_USAGE"] * (1 + 0.05 * wave))
        temp = b["DCGM_FI_DEV_GPU_TEMP"] + round(3 * wave)
        used = b["DCGM_FI_DEV_FB_USED"] + (round(256 * wave) if busy else 0)
        total = b["DCGM_FI_DEV_FB_USED"] + b["DCGM_FI_DEV_FB_FREE"]
        elapsed, self.at = max(now - self.at, 0.0), now
        self.energy_mj += power * elapsed * 1000
        self.nvlink_bytes += (util / 100) * 2.5e10 * elapsed
        ratio = util / 100
        copy = b["DCGM_FI_DEV_MEM_COPY_UTIL"] * (1 + wave / 10)
        return {
            "DCGM_FI_DEV_SM_CLOCK": b["DCGM_FI_DEV_SM_CLOCK"],
            "DCGM_FI_DEV_MEM_CLOCK": b["DCGM_FI_DEV_MEM_CLOCK"],
            "DCGM_FI_DEV_MEMORY_TEMP": temp + 4,
            "DCGM_FI_DEV_GPU_TEMP": temp,
            "DCGM_FI_DEV_POWER_USAGE": power,
            "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": self.energy_mj,
            "DCGM_FI_DEV_PCIE_REPLAY_COUNTER": 0,
            "DCGM_FI_DEV_GPU_UTIL": util,
            "DCGM_FI_DEV_MEM_COPY_UTIL": min(100.0, copy),
            "DCGM_FI_DEV_ENC_UTIL": b["DCGM_FI_DEV_ENC_UTIL"],
            "DCGM_FI_DEV_DEC_UTIL": b["DCGM_FI_DEV_DEC_UTIL"],
            "DCGM_FI_DEV_XID_ERRORS": 0,
            "DCGM_FI_DEV_FB_FREE": max(total - used, 0),
            "DCGM_FI_DEV_FB_USED": used,
            "DCGM_FI_DEV_FB_RESERVED": 552,
            "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL": self.nvlink_bytes,
            "DCGM_FI_DEV_VGPU_LICENSE_STATUS": 0,
            "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS": 0,
            "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS": 0,
            "DCGM_FI_DEV_ROW_REMAP_FAILURE": 0,
            "DCGM_FI_PROF_GR_ENGINE_ACTIVE": ratio * 0.98,
            "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": ratio * 0.45,
            "DCGM_FI_PROF_DRAM_ACTIVE": ratio * 0.6,
            "DCGM_FI_PROF_PCIE_TX_BYTES": ratio * 1.2e9,
            "DCGM_FI_PROF_PCIE_RX_BYTES": ratio * 3.4e9,
        }


@dataclass
class Host:
    """One exporter: a host's devices."""

    hostname: str
    devices: list[Device]
    hostname_label: str = "Hostname"

    def render(self, now: float | None = None) -> str:
        """The host's ``/metrics`` as dcgm-exporter writes it."""
        now = time.time() if now is None else now
        values = [d.values(now) for d in self.devices]
        lines: list[str] = []
        for name, kind, text, number in DEFAULT_COUNTERS:
            lines.append(f"# HELP {name} {text}")
            lines.append(f"# TYPE {name} {kind}")
            for d, v in zip(self.devices, values, strict=True):
                labels = [
                    f'gpu="{d.index}"',
                    f'UUID="{d.uuid}"',
                    f'pci_bus_id="{d.pci_bus_id}"',
                    f'device="nvidia{d.index}"',
                    f'modelName="{d.model}"',
                ]
                if d.mig is not None:
                    labels += [f'GPU_I_PROFILE="{d.mig[0]}"', f'GPU_I_ID="{d.mig[1]}"']
                labels += [f'{self.hostname_label}="{self.hostname}"']
                labels += [f'DCGM_FI_DRIVER_VERSION="{d.driver}"']
                container, namespace, pod = d.pod or ("", "", "")
                attributes = {"container": container, "namespace": namespace, "pod": pod}
                if name == "DCGM_FI_DEV_XID_ERRORS":
                    attributes |= {"err_code": "0", "err_msg": "No Error"}
                labels += [f'{k}="{attributes[k]}"' for k in sorted(attributes)]
                value = v[name]
                shown = f"{round(value):d}" if number is int else f"{value:f}"
                lines.append(f"{name}{{{','.join(labels)}}} {shown}")
            lines.append("")
        return "\n".join(lines)


def fleet(
    csv_path: Path,
    *,
    replicas: int = 1,
    hosts: int | None = None,
    mig_hosts: int = 0,
    hostname_label: str = "Hostname",
) -> list[Host]:
    """The CSV's hosts as exporters (``replicas`` copies with their own names and uuids)."""
    by_host: dict[str, dict[str, Device]] = {}
    for s in read_samples(csv_path):
        devices = by_host.setdefault(s.gpu.hostname, {})
        d = devices.get(s.gpu.uuid)
        if d is None:
            bus = f"00000000:{0x18 + 0x11 * s.gpu.index:02X}:00.0"
            d = devices[s.gpu.uuid] = Device(
                s.gpu.uuid, s.gpu.index, s.gpu.model, s.gpu.driver_version or "", {}, bus
            )
        d.base[s.metric] = s.value
    names = sorted(by_host)[:hosts]
    out: list[Host] = []
    for copy in range(replicas):
        for n, hostname in enumerate(names):
            listed: list[Device] = []
            for d in sorted(by_host[hostname].values(), key=lambda x: x.index):
                uuid = d.uuid if copy == 0 else f"{d.uuid[:-6]}{copy:06x}"
                mine = Device(uuid, d.index, d.model, d.driver, d.base, d.pci_bus_id)
                # Busy GPUs run a pod (the Kubernetes attribution of dcgm-exporter).
                if d.base.get("DCGM_FI_DEV_GPU_UTIL", 0) > 0:
                    mine.pod = ("trainer", "ml", f"train-{hostname[-3:]}-{d.index // 4}")
                listed.append(mine)
                if n < mig_hosts:
                    for profile, gi in MIG_LAYOUT:
                        part = Device(uuid, d.index, d.model, d.driver, d.base, d.pci_bus_id)
                        part.mig = (profile, gi)
                        listed.append(part)
            name = hostname if copy == 0 else f"{hostname}-r{copy}"
            out.append(Host(name, listed, hostname_label))
    return out


async def serve(
    hosts: Sequence[Host], *, bind: str = "127.0.0.1"
) -> tuple[list[web.AppRunner], list[str]]:
    """Serve every host on a port of its own; return the runners and ``host:port`` each."""
    runners, targets = [], []
    for host in hosts:

        async def metrics(_: web.Request, host: Host = host) -> web.Response:
            return web.Response(
                text=host.render(),
                content_type="text/plain",
                charset="utf-8",
                headers={"X-Hostname": host.hostname},
            )

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, bind, 0)
        await site.start()
        port = runner.addresses[0][1]
        runners.append(runner)
        targets.append(f"{bind}:{port}")
    return runners, targets


def _write(path: Path, text: str) -> None:
    """Write whole (a rename), so a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


async def run(args: argparse.Namespace) -> None:
    """Serve until SIGTERM or SIGINT."""
    hosts = fleet(
        args.csv,
        replicas=args.replicas,
        hosts=args.hosts,
        mig_hosts=args.mig,
        hostname_label=args.hostname_label,
    )
    runners, targets = await serve(hosts, bind=args.bind)
    if args.targets_file is not None:
        _write(args.targets_file, "".join(f"{t}\n" for t in targets))
    devices = sum(len(h.devices) for h in hosts)
    log.info("serving %d exporters (%d devices) on %s", len(hosts), devices, args.bind)

    async def ready(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def listing(_: web.Request) -> web.Response:
        return web.json_response({h.hostname: t for h, t in zip(hosts, targets, strict=True)})

    control = web.Application()
    control.router.add_get("/readyz", ready)
    control.router.add_get("/healthz", ready)
    control.router.add_get("/targets", listing)
    runner = web.AppRunner(control, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, args.bind, int(os.environ.get("EXPORTERS_PORT", "0"))).start()
    port_file = os.environ.get("EXPORTERS_PORT_FILE")
    if port_file:
        _write(Path(port_file), str(runner.addresses[0][1]))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for r in [runner, *runners]:
        with contextlib.suppress(Exception):
            await r.cleanup()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(
        prog="python -m telemetry_devstack.exporters",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--csv", type=Path, default=Path("data/dcgm_metrics_20250718_134233.csv"))
    p.add_argument("--targets-file", type=Path, help="write host:port of each exporter here")
    p.add_argument("--bind", default="127.0.0.1")
    p.add_argument("--replicas", type=int, default=1, help="copies of the CSV's fleet")
    p.add_argument("--hosts", type=int, default=None, help="only the first N hosts")
    p.add_argument("--mig", type=int, default=0, help="hosts whose GPUs are MIG-partitioned")
    p.add_argument(
        "--hostname-label",
        choices=("Hostname", "hostname"),
        default="Hostname",
        help="Hostname (dcgm-exporter up to 4.x) or hostname (from 2026)",
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    main()
