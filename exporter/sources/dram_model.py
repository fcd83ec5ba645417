"""DRAM power estimated from installed memory where RAPL has no dram zone.

    P = dram_model.watts_per_gib x counted GiB

Cloud Carbon Footprint's memory coefficient (0.392 W per GB of DDR4, the sources' GB being
binary: 8 GB DIMMs, 8 Gb devices) applies to the memory that no other figure already covers:
  - the CPU is measured (RAPL package) or modelled from its TDP (CPU only): all installed
    memory (MemTotal from <procfs>/meminfo) is counted;
  - the CPU model uses per-vCPU whole-server figures (SPECpower rows include memory): only the
    memory beyond what the reference servers include for this machine's share of a chip is
    counted, as CCF does for AWS and Azure: vCPUs x (GB per chip / the chip's threads). Where
    the chip's thread count is unknown (an unknown CPU in a VM), no memory is added.
Like the CPU model, it keeps its own energy counter (source="model").
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

from exporter.ledger import Reading
from exporter.procfs import mem_total_bytes
from exporter.sources import (
    ERROR, MODEL, OK, SUPERSEDED, Source, SourceResult, Status, held,
)
from exporter.sources.cpu_model import (
    MODEL_MAX_WATTS, WHOLE_SERVER_METHODS, CpuTopology, PowerCurve, describe,
    load_cloud_figures,
)

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from exporter.config import Config

GIB = 1024**3
# Installed memory changes only with hot-plug: re-read it now and then, not every sample.
MEMTOTAL_REFRESH_SECONDS = 60.0

ALL_MEMORY = "all_memory"
BEYOND_REFERENCE = "beyond_reference"


def counted_gib(installed_gib: float, cpu_measured: bool, topology: CpuTopology | None,
                curve: PowerCurve | None) -> tuple[float, str, str]:
    """(GiB to count, method, how) given what covers the CPU."""
    if cpu_measured:
        return (installed_gib, ALL_MEMORY,
                f"{installed_gib:.1f} GiB installed (CPU measured by RAPL)")
    if curve is None or topology is None or curve.method not in WHOLE_SERVER_METHODS:
        what = "CPU modelled from its TDP" if curve is not None else "no CPU model"
        return installed_gib, ALL_MEMORY, f"{installed_gib:.1f} GiB installed ({what})"
    cloud = curve.cloud or load_cloud_figures()["aws"]  # per-thread defaults are CCF's AWS ones
    per_chip = cloud.memory_gb_per_chip or load_cloud_figures()["aws"].memory_gb_per_chip
    if curve.chip is not None:
        chip_threads = curve.chip.threads
    elif not topology.hypervisor and topology.sockets:
        chip_threads = topology.threads // topology.sockets  # bare metal sees whole chips
    else:
        return 0.0, BEYOND_REFERENCE, (
            f"{installed_gib:.1f} GiB installed, taken as included in the per-vCPU figures "
            f"(the host chip's thread count is unknown)")
    included = topology.threads * (per_chip or 0.0) / chip_threads
    extra = max(0.0, installed_gib - included)
    return extra, BEYOND_REFERENCE, (
        f"{installed_gib:.1f} GiB installed - {included:.1f} GiB included in the per-vCPU "
        f"figures ({topology.threads} x {per_chip:g} GB/chip / {chip_threads} threads)")


class DramModelSource(Source):
    name = "dram-model"
    role = MODEL
    captures = True  # read when the cycle is counted, as of the cycle's time
    components = ("dram",)
    source_labels = ("model",)
    summary = (
        'where RAPL has no dram zone: `dram_model.watts_per_gib` (default 0.392, Cloud Carbon '
        'Footprint) x the memory no other figure covers: all of `MemTotal` when the CPU is '
        'measured or modelled from its TDP; only the memory beyond what the per-vCPU reference '
        'servers include when the CPU model uses per-vCPU (whole-server) figures.'
    )

    @classmethod
    def from_config(cls, config: Config) -> DramModelSource:
        return cls(config.path_procfs, config)

    def __init__(self, procfs: str, config: Config) -> None:
        self.procfs = procfs
        self.joules = 0.0
        self.last_at: float | None = None
        self.counting = False  # this model counts the memory (no counter does)
        self.installed_gib: float | None = None
        self.installed_read_at = 0.0
        self.basis = ""
        self.configure(config)

    def configure(self, config: Config) -> None:
        self.config = config
        self.watts_per_gib = config.dram_model_watts_per_gib
        self.installed_gib = None  # re-read, and the CPU basis with it
        self.cpu: tuple[CpuTopology, PowerCurve] | None = None
        self._inputs: tuple[object, ...] | None = None  # what self._figure was worked out from
        self._figure: tuple[float, str, str] = (0.0, "", "")  # (watts, method, basis)
        self._ok = Status(OK)  # the status that goes with it

    def _cpu_curve(self) -> tuple[CpuTopology | None, PowerCurve | None]:
        if not self.config.collector("cpu-model"):
            return None, None
        if self.cpu is None:
            try:
                topology, _platform, curve = describe(
                    self.procfs, self.config.path_sysfs, self.config)
            except (OSError, ValueError, KeyError, re.error):
                return None, None  # the CPU model reports why
            self.cpu = (topology, curve)
        return self.cpu

    def capture(self) -> float:
        return self.clock()

    def read(self, covered: frozenset[str] = frozenset()) -> SourceResult:
        return self.read_captured(self.capture(), covered)

    def read_captured(self, captured: object, covered: frozenset[str] = frozenset()) -> SourceResult:
        """captured: the cycle's time (MemTotal is read again when due, whenever this runs)."""
        assert isinstance(captured, (int, float))
        at = float(captured)
        if "dram" in held(covered):
            # RAPL is away but may come back and bridge the gap: keep the baseline where it
            # was last read, so that a take-over counts from there
            return SourceResult(Status(SUPERSEDED, "RAPL dram counters are away (bridged "
                                                   "when they return)"))
        measured = "dram" in covered
        if measured and not self.counting:  # RAPL measures: only the baseline moves
            self.last_at = at
            return SourceResult(Status(SUPERSEDED, "RAPL dram counters measure the memory"))
        if self.installed_gib is None or at - self.installed_read_at > MEMTOTAL_REFRESH_SECONDS:
            try:
                self.installed_gib = mem_total_bytes(self.procfs) / GIB
                self.installed_read_at = at
            except (OSError, ValueError, KeyError) as exc:
                self.installed_gib = None
                return SourceResult(Status(
                    ERROR, f"dram-model: cannot read {self.procfs}/meminfo: {exc}"))
        topology, curve = self._cpu_curve()
        inputs = (self.installed_gib, "cpu" in covered, curve, self.watts_per_gib)
        if inputs != self._inputs:  # the same inputs give the same figure: worked out once
            gib, method, how = counted_gib(self.installed_gib, "cpu" in covered, topology, curve)
            watts = gib * self.watts_per_gib
            basis = f"{how}: {gib:.1f} GiB x {self.watts_per_gib:g} W/GiB = {watts:.1f} W"
            if method + how != self.basis:
                log.info("dram-model: %s", basis)
                self.basis = method + how
            self._inputs, self._figure = inputs, (watts, method, basis)
            self._ok = Status(OK, basis, method)
        watts, method, basis = self._figure
        previous, self.last_at = self.last_at, at
        readings = []
        if previous is not None:
            if not self.counting:  # taking over: count from where RAPL was last read
                readings.append(self._reading(previous, baseline=True))
            self.joules += watts * (at - previous)
        readings.append(self._reading(at, baseline=previous is None))
        self.counting = not measured  # handing back: this reading was the model's last
        if measured:
            return SourceResult(Status(SUPERSEDED, "RAPL dram counters measure the memory"),
                                readings)
        return SourceResult(self._ok, readings)

    def _reading(self, at: float, baseline: bool) -> Reading:
        return Reading(collector=self.name, device="node", source="model", value=self.joules,
                       at=at, counter=True, max_watts=MODEL_MAX_WATTS, component="dram",
                       baseline=baseline)
