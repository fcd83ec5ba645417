"""DRAM power estimated from installed memory where RAPL has no dram zone.

    P = dram_model.watts_per_gib x installed GiB   (MemTotal from <procfs>/meminfo)

The default, 0.392 W per GB (0.4209 W per GiB), is Cloud Carbon Footprint's memory
coefficient; memory power depends far more on how much is installed than on how busy it is.
Like the CPU model, it keeps its own energy counter (source="model").
"""

from __future__ import annotations

import time

import psutil

from exporter.ledger import Reading
from exporter.sources import ERROR, OK, SUPERSEDED, Source, SourceResult, Status
from exporter.sources.cpu_model import MODEL_MAX_WATTS

GIB = 1024**3
# Installed memory changes only with hot-plug: re-read it now and then, not every sample.
MEMTOTAL_REFRESH_SECONDS = 60.0


class DramModelSource(Source):
    name = "dram-model"
    component = "dram"

    def __init__(self, procfs: str, config) -> None:
        self.procfs = procfs
        self.joules = 0.0
        self.last_at: float | None = None
        self.installed_gib: float | None = None
        self.installed_read_at = 0.0
        self.configure(config)

    def configure(self, config) -> None:
        self.watts_per_gib = config.dram_model_watts_per_gib

    def read(self, covered: frozenset[str] = frozenset()) -> SourceResult:
        if "dram" in covered:
            self.last_at = None
            return SourceResult(Status(SUPERSEDED, "RAPL dram counters measure the memory"))
        at = time.monotonic()
        if self.installed_gib is None or at - self.installed_read_at > MEMTOTAL_REFRESH_SECONDS:
            try:
                psutil.PROCFS_PATH = self.procfs
                self.installed_gib = psutil.virtual_memory().total / GIB
                self.installed_read_at = at
            except (OSError, ValueError, KeyError) as exc:
                self.installed_gib = None
                return SourceResult(Status(
                    ERROR, f"dram-model: cannot read {self.procfs}/meminfo: {exc}"))
        installed = self.installed_gib
        watts = installed * self.watts_per_gib
        at = time.monotonic()  # after a meminfo read, which may have been slow
        previous, self.last_at = self.last_at, at
        if previous is not None:
            self.joules += watts * (at - previous)
        return SourceResult(
            Status(OK, f"{installed:.1f} GiB x {self.watts_per_gib:g} W/GiB = {watts:.1f} W"),
            [Reading(collector=self.name, device="node", source="model", value=self.joules, at=at,
                     counter=True, max_watts=MODEL_MAX_WATTS, component="dram",
                     baseline=previous is None)])
