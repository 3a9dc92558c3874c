"""Read a dcgm-exporter scrape (the Prometheus text format) into samples.

The text is parsed by prometheus-client's parser (``text_string_to_metric_families``). That
parser stops at the first line it cannot read, and the family it was building is lost with
it; so when a scrape holds a bad line, each family block is parsed again on its own, and a
block that still fails line by line (each sample line with its block's ``# HELP``/``# TYPE``
lines, so it keeps its type). A bad line costs that line, not the scrape.

The labels are dcgm-exporter's, in any version: ``gpu``, ``UUID`` (``uuid`` with the exporter's
old namespace), ``device``, ``modelName``, ``pci_bus_id``, ``Hostname`` (``hostname`` since
2026), ``DCGM_FI_DRIVER_VERSION`` and the other label fields, the Kubernetes attribution
(``container``, ``pod``, ``namespace``, or ``container_name``, ``pod_name``, ``pod_namespace``),
and for a MIG instance ``GPU_I_PROFILE`` and ``GPU_I_ID``: the instance is a device of its own
(``mig_uuid``), never mixed with its parent GPU. What no field takes stays in ``labels``
(``pci_bus_id``, XID's ``err_code``/``err_msg``, ...).

Only ``DCGM_FI_*`` samples of a GPU are read. A field outside the catalog is kept when the
``FieldFilter`` allows it and dropped otherwise; so are samples without a GPU (NVSwitch, CPU
entities), DCGM's blank sentinels (a field the GPU does not support) and values outside the
data's domain. Every drop is counted by reason, none fails the scrape.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from prometheus_client.metrics_core import Metric as Family
from prometheus_client.parser import text_string_to_metric_families

from .catalog import METRICS_BY_NAME, is_dcgm_field
from .domain import MAX_GPU_INDEX, labels_problem, text_problem
from .records import Gpu, Sample, mig_uuid

# Why a sample was dropped (the keys of ``Exposition.dropped``).
NOT_DCGM: Final = "not_dcgm_field"  # not DCGM_FI_* (DCGM_EXP_*, the exporter's own metrics)
UNKNOWN_FIELD: Final = "unknown_field"  # a DCGM field outside the catalog, not allowed
NO_GPU: Final = "no_gpu"  # no GPU uuid or index (an NVSwitch, CPU or link entity)
BLANK: Final = "blank"  # DCGM's "no value" sentinels
OUT_OF_DOMAIN: Final = "out_of_domain"  # a value or label PostgreSQL could not store
DROP_REASONS: Final = (NOT_DCGM, UNKNOWN_FIELD, NO_GPU, BLANK, OUT_OF_DOMAIN)

# Labels a field takes (the rest stay in Sample.labels).
_UUID: Final = ("UUID", "uuid")
_HOST: Final = ("Hostname", "hostname")
_MODEL: Final = ("modelName", "model_name")
_CONTAINER: Final = ("container", "container_name")
_POD: Final = ("pod", "pod_name")
_NAMESPACE: Final = ("namespace", "pod_namespace")
_DRIVER: Final = "DCGM_FI_DRIVER_VERSION"
_MIG_PROFILE: Final = "GPU_I_PROFILE"
_MIG_ID: Final = "GPU_I_ID"
_TAKEN: Final = frozenset(
    {"gpu", "device", _DRIVER, _MIG_PROFILE, _MIG_ID}
    | set(_UUID + _HOST + _MODEL + _CONTAINER + _POD + _NAMESPACE)
)

# DCGM's blank values: DCGM_INT64_BLANK (0x7ffffffffffffff0) and up, DCGM_FP64_BLANK (2^47)
# and up. dcgm-exporter skips them, but older versions print them (9223372036854775794 is
# "not supported").
_INT64_BLANK: Final = float(0x7FFFFFFFFFFFFFF0)
_FP64_BLANK: Final = 140737488355328.0
_UNIT_IN_HELP: Final = re.compile(r"\(in ([^()]{1,16})\)")
_LOGGED_LINE: Final = 120


@dataclass(frozen=True, slots=True)
class FieldFilter:
    """Which DCGM fields outside the catalog to keep: shell-style patterns, e.g.
    ``DCGM_FI_PROF_*``; ``*`` keeps every ``DCGM_FI_*`` field. Catalog fields are always kept.
    """

    patterns: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> FieldFilter:
        """From a comma-separated list of patterns (empty: the catalog only)."""
        return cls(tuple(p.strip() for p in text.split(",") if p.strip()))

    def allows(self, name: str) -> bool:
        """Whether a sample of field ``name`` is kept."""
        if name in METRICS_BY_NAME:
            return True
        return is_dcgm_field(name) and any(fnmatch.fnmatchcase(name, p) for p in self.patterns)


@dataclass(frozen=True, slots=True)
class BadLine:
    """A line of the exposition the parser refused (1-based line number)."""

    line: int
    text: str
    reason: str


@dataclass(frozen=True, slots=True)
class Exposition:
    """What one scrape held: the GPU samples kept, the lines refused, the samples dropped."""

    samples: list[Sample]
    bad_lines: list[BadLine] = field(default_factory=list)
    dropped: Mapping[str, int] = field(default_factory=dict)
    # HELP text of each field outside the catalog that was kept (a description to register).
    help: Mapping[str, str] = field(default_factory=dict)


def unit_from_help(text: str) -> str:
    """The unit dcgm-exporter's HELP text names, ``(in MHz)``; empty when it names none."""
    m = _UNIT_IN_HELP.search(text)
    return m.group(1).strip() if m else ""


def read_exposition(
    text: str,
    *,
    scraped_at: datetime,
    fields: FieldFilter = FieldFilter(),  # noqa: B008 - frozen, so sharing it is safe
    hostname: str | None = None,
) -> Exposition:
    """The GPU samples of a dcgm-exporter scrape, stamped ``scraped_at``.

    ``hostname`` stands in for a sample without a ``Hostname`` label (the exporter omits it
    when it has none); without either the sample is dropped as ``no_gpu``.
    """
    families, bad = parse_families(text)
    samples: list[Sample] = []
    dropped: Counter[str] = Counter()
    helps: dict[str, str] = {}
    for family in families:
        for s in family.samples:
            name = family.name if _counter_sample(family, s.name) else s.name
            if not is_dcgm_field(name):
                dropped[NOT_DCGM] += 1
                continue
            if not fields.allows(name):
                dropped[UNKNOWN_FIELD] += 1
                continue
            ordinal = len(samples) + 1
            sample, reason = _sample(name, s.labels, s.value, ordinal, scraped_at, hostname)
            if sample is None:
                dropped[reason] += 1
                continue
            if name not in METRICS_BY_NAME and name not in helps:
                helps[name] = family.documentation
            samples.append(sample)
    return Exposition(samples, bad, dict(dropped), helps)


def parse_families(text: str) -> tuple[list[Family], list[BadLine]]:
    """Every metric family prometheus-client reads in ``text``, and the lines it refuses."""
    try:
        return list(text_string_to_metric_families(text)), []
    except Exception:  # noqa: BLE001 - any refusal: fall back to the line-robust pass
        pass
    families: list[Family] = []
    bad: list[BadLine] = []
    lines = text.split("\n")
    for start, block in _blocks(lines):
        try:
            families.extend(text_string_to_metric_families(_text(block)))
            continue
        except Exception:  # noqa: BLE001 - this block holds the bad line(s): line by line
            pass
        header: list[str] = []
        for offset, line in enumerate(block):
            if not line.strip():
                continue
            try:
                parsed = list(text_string_to_metric_families(_text([*header, line])))
            except Exception as e:  # noqa: BLE001 - the parser raises ValueError and others
                bad.append(BadLine(start + offset + 1, line[:_LOGGED_LINE], str(e)[:200]))
                continue
            if line.lstrip().startswith("#"):
                header.append(line)
            else:
                families.extend(parsed)
    return families, bad


def _text(lines: Iterable[str]) -> str:
    return "\n".join(lines) + "\n"


def _blocks(lines: list[str]) -> list[tuple[int, list[str]]]:
    """Split the lines into family blocks: a new block starts at a ``# HELP``/``# TYPE`` line
    that follows a sample line or names another metric. Returns (index of first line, lines).
    """
    blocks: list[tuple[int, list[str]]] = []
    current: list[str] = []
    start = 0
    name: str | None = None
    sampled = False
    for i, raw in enumerate(lines):
        line = raw.rstrip("\r")
        parts = line.split(None, 3)
        if len(parts) >= 3 and parts[0] == "#" and parts[1] in ("HELP", "TYPE"):
            if current and (sampled or parts[2] != name):
                blocks.append((start, current))
                current, start, sampled = [], i, False
            name = parts[2]
        elif line.strip() and not line.lstrip().startswith("#"):
            sampled = True
        current.append(line)
    if current:
        blocks.append((start, current))
    return blocks


def _counter_sample(family: Family, sample_name: str) -> bool:
    """prometheus-client names a counter's samples ``<name>_total`` even when the exposition
    wrote ``<name>`` (as dcgm-exporter does): the field is the family's name."""
    return family.type == "counter" and sample_name in (family.name, family.name + "_total")


def _first(labels: Mapping[str, str], names: tuple[str, ...]) -> str | None:
    for n in names:
        v = labels.get(n)
        if v:
            return v
    return None


def _sample(
    name: str,
    labels: Mapping[str, str],
    value: float,
    ordinal: int,
    scraped_at: datetime,
    hostname: str | None,
) -> tuple[Sample | None, str]:
    """One DCGM sample as a ``Sample``, or ``None`` and the reason it is dropped."""
    number = float(value)
    if not math.isfinite(number):
        return None, OUT_OF_DOMAIN
    if number >= _FP64_BLANK and (number >= _INT64_BLANK or number < _FP64_BLANK + 4):
        return None, BLANK
    uuid = _first(labels, _UUID)
    index = labels.get("gpu", "")
    if uuid is None or not (index.isascii() and index.isdigit()):
        return None, NO_GPU
    if int(index) > MAX_GPU_INDEX:
        return None, OUT_OF_DOMAIN
    host = _first(labels, _HOST) or hostname
    if not host:
        return None, NO_GPU
    device = labels.get("device") or f"nvidia{index}"
    model = _first(labels, _MODEL) or "unknown"
    driver = labels.get(_DRIVER) or None
    profile = labels.get(_MIG_PROFILE) or None
    instance = labels.get(_MIG_ID, "")
    mig: int | None = None
    if profile is not None or instance:
        if not (instance.isascii() and instance.isdigit()) or int(instance) > MAX_GPU_INDEX:
            return None, OUT_OF_DOMAIN
        mig = int(instance)
        uuid = mig_uuid(uuid, mig)
        profile = profile or "unknown"
    container = _first(labels, _CONTAINER)
    pod = _first(labels, _POD)
    namespace = _first(labels, _NAMESPACE)
    texts = (uuid, host, device, model, driver, profile, container, pod, namespace)
    if any(t is not None and text_problem(t) is not None for t in texts):
        return None, OUT_OF_DOMAIN
    kept = {k: v for k, v in labels.items() if k not in _TAKEN}
    if labels_problem(kept) is not None:
        return None, OUT_OF_DOMAIN
    gpu = Gpu(
        uuid=uuid,
        hostname=host,
        index=int(index),
        device=device,
        model=model,
        driver_version=driver,
        mig_profile=profile,
        mig_instance=mig,
    )
    sample = Sample(
        line=ordinal,
        timestamp=scraped_at,
        metric=name,
        value=number,
        gpu=gpu,
        container=container,
        pod=pod,
        namespace=namespace,
        labels=kept,
    )
    return sample, ""
