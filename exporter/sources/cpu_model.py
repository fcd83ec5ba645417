"""CPU power estimated from utilisation where no RAPL package counter exists.

    P = P_idle + (P_max - P_idle) * u,   u = busy CPU time / all CPU time over the interval

u comes from <procfs>/stat (through psutil). Because P is linear in u, integrating it over
the interval is exact given u, so the model keeps its own energy counter and hands the
ledger counter readings like any measured source, with source="model".

P_idle and P_max, first match wins:
  1. cpu_model.idle_watts / cpu_model.max_watts from the config;
  2. the bundled table exporter/data/cpu_power.csv, matched on /proc/cpuinfo "model name":
     P_max = TDP x sockets, P_idle = IDLE_FRACTION_OF_TDP x P_max;
  3. per hardware thread: cpu_model.idle_watts_per_thread / max_watts_per_thread
     (Cloud Carbon Footprint's averages, 0.74 W and 3.5 W per vCPU).
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass

import psutil

from exporter import data
from exporter.ledger import Reading
from exporter.sources import ERROR, OK, SUPERSEDED, Source, SourceResult, Status

log = logging.getLogger(__name__)

# Idle power as a share of TDP for the bundled-table path; see exporter/data/README.md.
IDLE_FRACTION_OF_TDP = 0.12
MODEL_MAX_WATTS = 20000.0  # ledger bound; a model cannot exceed its own P_max anyway


@dataclass(frozen=True, slots=True)
class CpuTopology:
    model_name: str
    threads: int
    sockets: int


@dataclass(frozen=True, slots=True)
class PowerRange:
    idle_watts: float
    max_watts: float
    basis: str  # where the figures came from, for the log and landing page

    def at(self, utilisation: float) -> float:
        return self.idle_watts + (self.max_watts - self.idle_watts) * utilisation


def read_topology(procfs: str) -> CpuTopology:
    model_name = ""
    threads = 0
    sockets: set[str] = set()
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
    if threads == 0:
        raise ValueError(f"{procfs}/cpuinfo lists no processor")
    return CpuTopology(model_name or "unknown", threads, max(1, len(sockets)))


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


def power_range(topology: CpuTopology, idle_watts: float | None, max_watts: float | None,
                idle_per_thread: float, max_per_thread: float,
                table: list[CpuTableRow]) -> PowerRange:
    if idle_watts is not None and max_watts is not None:
        return PowerRange(idle_watts, max_watts, "configured")
    for row in table:
        if row.pattern.search(topology.model_name):
            peak = row.tdp_watts * topology.sockets
            return PowerRange(
                idle_watts if idle_watts is not None else IDLE_FRACTION_OF_TDP * peak,
                max_watts if max_watts is not None else peak,
                f"{row.model}: TDP {row.tdp_watts:g} W x {topology.sockets} socket(s)")
    return PowerRange(
        idle_watts if idle_watts is not None else idle_per_thread * topology.threads,
        max_watts if max_watts is not None else max_per_thread * topology.threads,
        f"{topology.threads} threads x {idle_per_thread:g}-{max_per_thread:g} W")


def _busy_and_total(times) -> tuple[float, float]:
    # guest time is already inside user/nice; steal is time the hypervisor gave to others
    total = (times.user + times.nice + times.system + times.idle + getattr(times, "iowait", 0.0)
             + getattr(times, "irq", 0.0) + getattr(times, "softirq", 0.0))
    idle = times.idle + getattr(times, "iowait", 0.0)
    return total - idle, total


class CpuModelSource(Source):
    name = "cpu-model"
    component = "cpu"

    def __init__(self, procfs: str, config) -> None:
        self.procfs = procfs
        self.joules = 0.0  # the model's own energy counter
        self.last: tuple[float, float, float] | None = None  # (at, busy, total)
        self.topology: CpuTopology | None = None
        self.range: PowerRange | None = None
        self.utilisation = 0.0  # over the last interval
        self.configure(config)

    def configure(self, config) -> None:
        """Apply (re)loaded settings; the topology is read again too."""
        self.config = config
        self.range = None

    def _ensure_range(self) -> PowerRange:
        if self.range is None:
            self.topology = read_topology(self.procfs)
            self.range = power_range(
                self.topology, self.config.cpu_model_idle_watts, self.config.cpu_model_max_watts,
                self.config.cpu_model_idle_watts_per_thread,
                self.config.cpu_model_max_watts_per_thread, load_cpu_table())
            log.info("cpu-model: %s (%d threads): idle %.1f W, max %.1f W from %s",
                     self.topology.model_name, self.topology.threads,
                     self.range.idle_watts, self.range.max_watts, self.range.basis)
        return self.range

    def read(self, covered: frozenset[str] = frozenset()) -> SourceResult:
        if "cpu" in covered:
            self.last = None  # start over if RAPL goes away later
            return SourceResult(Status(SUPERSEDED, "RAPL package counters measure the CPU"))
        try:
            power = self._ensure_range()
            psutil.PROCFS_PATH = self.procfs
            busy, total = _busy_and_total(psutil.cpu_times())
            at = time.monotonic()  # when the times were obtained
        except (OSError, ValueError, AttributeError, re.error) as exc:
            return SourceResult(Status(ERROR, f"cpu-model: {exc}"))
        previous, self.last = self.last, (at, busy, total)
        if previous is not None:
            spent = total - previous[2]
            self.utilisation = min(1.0, max(0.0, (busy - previous[1]) / spent)) if spent > 0 else 0.0
            self.joules += power.at(self.utilisation) * max(0.0, at - previous[0])
        return SourceResult(Status(OK, power.basis), [Reading(
            collector=self.name, device="node", source="model", value=self.joules, at=at,
            counter=True, max_watts=MODEL_MAX_WATTS, component="cpu", baseline=previous is None)])
