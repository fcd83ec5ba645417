"""CPU power estimated from utilisation where no RAPL package counter exists.

    P = curve(u),   u = busy CPU time / all CPU time over the interval

u comes from <procfs>/stat (exporter.procfs, parsed once per cycle). The model keeps its own energy counter and hands
the ledger counter readings like any measured source, with source="model".

The curve, first match wins (every figure is cited in exporter/data/README.md):
  1. cpu_model.idle_watts / cpu_model.max_watts from the config: a line between them;
  2. a known cloud (DMI under <sysfs>/class/dmi/id): that cloud's per-vCPU minimum and maximum
     watts from Cloud Carbon Footprint (exporter/data/cloud_power.csv) x visible threads, a
     line between them as CCF computes it. These are whole-server figures: they include memory;
  3. the bundled table exporter/data/cpu_power.csv, matched on /proc/cpuinfo "model name":
     TDP x the share of the chip this machine sees, through the Teads/SPECpower curve (0.12,
     0.32, 0.75, 1.02 of TDP at 0, 10, 50, 100% load). The share is the socket count on bare
     metal and visible threads / the chip's threads in a virtual machine, which sees only some
     of its host's threads;
  4. per hardware thread: cpu_model.idle_watts_per_thread / max_watts_per_thread (CCF's AWS
     averages, 0.74 W and 3.5 W per vCPU), a line.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from exporter import data
from exporter.procfs import CpuTimes, cpu_times
from exporter.ledger import Reading
from exporter.sources import (
    ERROR, MODEL, OK, SUPERSEDED, Source, SourceResult, Status, held,
)

if TYPE_CHECKING:
    from exporter.config import Config

log = logging.getLogger(__name__)

# Teads' power curve: fraction of TDP at 0, 10, 50 and 100% load (exporter/data/README.md).
TEADS_CURVE: tuple[tuple[float, float], ...] = ((0.0, 0.12), (0.10, 0.32), (0.50, 0.75),
                                                (1.00, 1.02))
IDLE_FRACTION_OF_TDP = TEADS_CURVE[0][1]
MODEL_MAX_WATTS = 20000.0  # ledger bound; a model cannot exceed its own curve anyway

# How the figures were obtained: carbon_model_info{method}.
CONFIGURED = "configured"
CLOUD_PER_VCPU = "cloud_per_vcpu"
TDP_CURVE = "tdp_curve"
PER_THREAD = "per_thread"
# Whole-server figures (SPECpower rows, as CCF uses them) already include some memory power.
WHOLE_SERVER_METHODS = (CLOUD_PER_VCPU, PER_THREAD)

# Azure's fixed chassis asset tag, as cloud-init's Azure data source identifies Azure by it.
AZURE_ASSET_TAG = "7783-7084-3265-9085-8269-3286-77"


@dataclass(frozen=True, slots=True)
class CpuTopology:
    model_name: str
    threads: int  # logical CPUs this machine sees
    sockets: int  # distinct "physical id"s (a VM's are virtual sockets)
    hypervisor: bool = False  # the "hypervisor" cpuinfo flag: running under a hypervisor


@dataclass(frozen=True, slots=True)
class Platform:
    """DMI identity (<sysfs>/class/dmi/id), empty strings where unreadable."""

    sys_vendor: str = ""
    product_name: str = ""
    chassis_asset_tag: str = ""
    bios_vendor: str = ""

    @property
    def cloud(self) -> str | None:
        """aws, gcp or azure where DMI names the cloud, else None."""
        if self.sys_vendor == "Amazon EC2" or "amazon" in self.bios_vendor.lower():
            return "aws"
        if self.sys_vendor == "Google" and self.product_name == "Google Compute Engine":
            return "gcp"
        if self.chassis_asset_tag == AZURE_ASSET_TAG:
            return "azure"
        return None

    @property
    def virtual(self) -> bool:
        return self.product_name in ("Virtual Machine", "VMware Virtual Platform", "KVM") \
            or self.sys_vendor in ("QEMU", "Xen", "innotek GmbH", "VMware, Inc.")


def read_topology(procfs: str) -> CpuTopology:
    model_name = ""
    threads = 0
    sockets: set[str] = set()
    hypervisor = False
    with open(os.path.join(procfs, "cpuinfo"), encoding="utf-8", errors="replace") as handle:
        for line in handle:
            key, sep, value = line.partition(":")
            if not sep:
                continue
            key = key.strip()
            if key == "processor":
                threads += 1
            elif key == "model name" and not model_name:
                model_name = value.strip()
            elif key == "physical id":
                sockets.add(value.strip())
            elif key == "flags" and threads == 1:
                hypervisor = "hypervisor" in value.split()
    if threads == 0:
        raise ValueError(f"{procfs}/cpuinfo lists no processor")
    return CpuTopology(model_name or "unknown", threads, max(1, len(sockets)), hypervisor)


def read_platform(sysfs: str) -> Platform:
    def field(name: str) -> str:
        try:
            with open(os.path.join(sysfs, "class", "dmi", "id", name), encoding="utf-8",
                      errors="replace") as handle:
                return handle.read(256).strip()
        except OSError:  # no DMI (ARM boards, containers without /sys/class/dmi): unknown
            return ""
    return Platform(field("sys_vendor"), field("product_name"), field("chassis_asset_tag"),
                    field("bios_vendor"))


@dataclass(frozen=True, slots=True)
class CpuTableRow:
    pattern: re.Pattern[str]
    model: str
    tdp_watts: float
    threads: int
    source: str


def load_cpu_table() -> list[CpuTableRow]:
    return [CpuTableRow(re.compile(r["pattern"], re.IGNORECASE), r["model"],
                        float(r["tdp_watts"]), int(r["threads"]), r["source"])
            for r in data.rows("cpu_power.csv")]


@dataclass(frozen=True, slots=True)
class CloudFigures:
    provider: str
    min_watts_per_vcpu: float
    max_watts_per_vcpu: float
    memory_gb_per_chip: float | None  # memory the reference servers include, per chip
    source: str


def load_cloud_figures() -> dict[str, CloudFigures]:
    return dict(_cloud_figures())  # a copy: the cached one is shared


@functools.cache
def _cloud_figures() -> dict[str, CloudFigures]:
    # cached: the DRAM model asks at every sample, and the bundled file never changes
    out = {}
    for r in data.rows("cloud_power.csv"):
        memory = r["memory_gb_per_chip"]
        out[r["provider"]] = CloudFigures(r["provider"], float(r["min_watts_per_vcpu"]),
                                          float(r["max_watts_per_vcpu"]),
                                          float(memory) if memory else None, r["source"])
    return out


@dataclass(frozen=True, slots=True)
class PowerCurve:
    """Power at a utilisation: straight lines between (utilisation, watts) points."""

    points: tuple[tuple[float, float], ...]
    method: str  # CONFIGURED, CLOUD_PER_VCPU, TDP_CURVE or PER_THREAD
    basis: str  # where the figures came from, for the log, landing page and carbon_model_info
    chip: CpuTableRow | None = None  # the matched table row, if any
    cloud: CloudFigures | None = None

    @property
    def idle_watts(self) -> float:
        return self.points[0][1]

    @property
    def max_watts(self) -> float:
        return self.points[-1][1]

    def at(self, utilisation: float) -> float:
        u = min(1.0, max(0.0, utilisation))
        for (u0, w0), (u1, w1) in zip(self.points, self.points[1:]):
            if u <= u1:
                return w0 + (w1 - w0) * (u - u0) / (u1 - u0)
        return self.points[-1][1]


def _line(idle: float, peak: float) -> tuple[tuple[float, float], ...]:
    return ((0.0, idle), (1.0, peak))


def match_chip(topology: CpuTopology, table: list[CpuTableRow]) -> CpuTableRow | None:
    return next((row for row in table if row.pattern.search(topology.model_name)), None)


def chip_share(topology: CpuTopology, platform: Platform, chip: CpuTableRow) -> tuple[float, str]:
    """How many of the table's chips this machine sees, and how that was decided."""
    if topology.hypervisor or platform.virtual:
        share = topology.threads / chip.threads
        return share, f"VM share {topology.threads}/{chip.threads} threads"
    return float(topology.sockets), f"{topology.sockets} socket(s)"


def power_curve(topology: CpuTopology, platform: Platform, config,
                table: list[CpuTableRow], clouds: dict[str, CloudFigures]) -> PowerCurve:
    idle_watts: float | None = config.cpu_model_idle_watts
    max_watts: float | None = config.cpu_model_max_watts
    chip = match_chip(topology, table)
    if idle_watts is not None and max_watts is not None:
        return PowerCurve(_line(idle_watts, max_watts), CONFIGURED,
                          f"configured: {idle_watts:g}-{max_watts:g} W", chip)
    cloud = clouds.get(platform.cloud or "")
    if cloud is not None:
        curve = PowerCurve(
            _line(cloud.min_watts_per_vcpu * topology.threads,
                  cloud.max_watts_per_vcpu * topology.threads), CLOUD_PER_VCPU,
            f"{cloud.provider} per vCPU: {topology.threads} vCPU x {cloud.min_watts_per_vcpu:g}-"
            f"{cloud.max_watts_per_vcpu:g} W (Cloud Carbon Footprint, linear)", chip, cloud)
    elif chip is not None:
        share, how = chip_share(topology, platform, chip)
        watts = chip.tdp_watts * share
        curve = PowerCurve(
            tuple((u, f * watts) for u, f in TEADS_CURVE), TDP_CURVE,
            f"{chip.model}: TDP {chip.tdp_watts:g} W x {how} = {watts:.3g} W, Teads curve "
            f"{'/'.join(f'{f:g}' for _, f in TEADS_CURVE)} at 0/10/50/100% load", chip)
    else:
        per_idle = config.cpu_model_idle_watts_per_thread
        per_max = config.cpu_model_max_watts_per_thread
        curve = PowerCurve(
            _line(per_idle * topology.threads, per_max * topology.threads), PER_THREAD,
            f"unknown CPU {topology.model_name!r}: {topology.threads} threads x "
            f"{per_idle:g}-{per_max:g} W (linear)")
    if idle_watts is None and max_watts is None:
        return curve
    # One figure configured: a line from it to the other end of the derived curve.
    low = idle_watts if idle_watts is not None else curve.idle_watts
    high = max_watts if max_watts is not None else curve.max_watts
    return PowerCurve(_line(low, max(low, high)), CONFIGURED,
                      f"configured {'idle' if idle_watts is not None else 'max'} "
                      f"{idle_watts if idle_watts is not None else max_watts:g} W, other end "
                      f"from {curve.basis}", curve.chip, curve.cloud)


def describe(procfs: str, sysfs: str, config) -> tuple[CpuTopology, Platform, PowerCurve]:
    """The machine and the CPU curve the model uses for it (also read by the DRAM model)."""
    topology = read_topology(procfs)
    platform = read_platform(sysfs)
    return topology, platform, power_curve(topology, platform, config, load_cpu_table(),
                                           load_cloud_figures())


class CpuModelSource(Source):
    name = "cpu-model"
    role = MODEL
    captures = True  # read when the cycle is counted, from the cycle's /proc/stat times
    components = ("cpu",)
    source_labels = ("model",)
    summary = (
        'where RAPL has no package zone: power on a curve over `u`, the busy share of CPU time '
        'in `<procfs>/stat` over the interval. The curve: from the config '
        '(`cpu_model.idle_watts`/`max_watts`, a line); else, on a cloud VM that DMI '
        "(`<sysfs>/class/dmi/id`) names as AWS, Google Cloud or Azure, that cloud's per-vCPU "
        'figures from Cloud Carbon Footprint (AWS 0.74-3.5 W, GCP 0.71-4.26 W, Azure 0.78-3.76 '
        'W per vCPU, a line); else the bundled CPU table (`exporter/data/cpu_power.csv`): '
        'vendor TDP x the share of the chip this machine sees (sockets on bare metal, visible '
        "threads / the chip's threads in a VM) on the Teads curve (0.12, 0.32, 0.75, 1.02 of "
        'TDP at 0, 10, 50, 100% load); else 0.74-3.5 W per hardware thread. `carbon_model_info`'
        ' and the landing page say which, with the figures.'
    )

    @classmethod
    def from_config(cls, config: Config) -> CpuModelSource:
        return cls(config.path_procfs, config)

    def __init__(self, procfs: str, config: Config) -> None:
        self.procfs = procfs
        self.joules = 0.0  # the model's own energy counter
        self.last: tuple[float, float, float] | None = None  # (at, busy, total)
        self.counting = False  # this model counts the CPU (no counter does)
        self.topology: CpuTopology | None = None
        self.range: PowerCurve | None = None
        self.utilisation = 0.0  # over the last interval
        self._ok = Status(OK)
        self.configure(config)

    def configure(self, config: Config) -> None:
        """Apply (re)loaded settings; the topology is read again too."""
        self.config = config
        self.sysfs = config.path_sysfs
        self.range = None

    def _ensure_range(self) -> PowerCurve:
        if self.range is None:
            self.topology, _platform, self.range = describe(self.procfs, self.sysfs, self.config)
            log.info("cpu-model: %s (%d threads%s): %.1f W idle, %.1f W at full load, from %s",
                     self.topology.model_name, self.topology.threads,
                     ", under a hypervisor" if self.topology.hypervisor else "",
                     self.range.idle_watts, self.range.max_watts, self.range.basis)
        return self.range

    def capture(self) -> CpuTimes | Exception:
        try:
            return cpu_times(self.procfs, self.clock)  # one read per cycle, shared with attribution
        except (OSError, ValueError) as exc:
            return exc

    def read(self, covered: frozenset[str] = frozenset()) -> SourceResult:
        return self.read_captured(self.capture(), covered)

    def read_captured(self, captured: object, covered: frozenset[str] = frozenset()) -> SourceResult:
        if "cpu" in held(covered):
            # RAPL is away but may come back and bridge the gap: keep the baseline where it
            # was last read, so that a take-over counts from there
            return SourceResult(Status(SUPERSEDED, "RAPL package counters are away (bridged "
                                                   "when they return)"))
        try:
            power = self._ensure_range()
            if isinstance(captured, Exception):
                raise captured
            assert isinstance(captured, CpuTimes)
            at, busy, total = captured.at, captured.busy, captured.total
        except (OSError, ValueError, AttributeError, KeyError, re.error) as exc:
            return SourceResult(Status(ERROR, f"cpu-model: {exc}"))
        previous, self.last = self.last, (at, busy, total)
        measured = "cpu" in covered
        if measured and not self.counting:  # RAPL measures: only the baseline moves
            return SourceResult(Status(SUPERSEDED, "RAPL package counters measure the CPU"))
        readings = []
        if previous is not None:
            if not self.counting:  # taking over: count from where RAPL was last read
                readings.append(self._reading(previous[0], baseline=True))
            spent = total - previous[2]
            busy_share = (busy - previous[1]) / spent if spent > 0 else 0.0
            self.utilisation = min(1.0, max(0.0, busy_share))
            self.joules += power.at(self.utilisation) * max(0.0, at - previous[0])
        readings.append(self._reading(at, baseline=previous is None))
        self.counting = not measured  # handing back: this reading was the model's last
        if measured:
            return SourceResult(Status(SUPERSEDED, "RAPL package counters measure the CPU"),
                                readings)
        if self._ok.detail != power.basis or self._ok.method != power.method:
            self._ok = Status(OK, power.basis, power.method)  # made again only when it changes
        return SourceResult(self._ok, readings)

    def _reading(self, at: float, baseline: bool) -> Reading:
        return Reading(collector=self.name, device="node", source="model", value=self.joules,
                       at=at, counter=True, max_watts=MODEL_MAX_WATTS, component="cpu",
                       baseline=baseline)
