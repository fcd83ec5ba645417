"""Power sources, one module each, in the style of node_exporter's collector/ directory.

A source's read() is blocking (file reads, NVML calls) and runs in the source's own worker
thread, so one hung source cannot stall the others. It never raises: whatever goes wrong is
returned as a Status with a reason, and the other sources keep working.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

from exporter.ledger import Reading

# Reasons reported in carbon_exporter_collector_up{reason}.
OK = "ok"
ABSENT = "absent"  # no such hardware or driver on this node: not a failure
PERMISSION = "permission"
ERROR = "error"
SUPERSEDED = "superseded"  # a model not used because a measured counter covers it


@dataclass(frozen=True, slots=True)
class Status:
    reason: str
    detail: str = ""
    # a model's method (carbon_model_info{method}); detail then says the figures it used
    method: str = ""

    @property
    def up(self) -> bool:
        return self.reason == OK


@dataclass(frozen=True, slots=True)
class GpuInfo:
    device: str
    uuid: str
    name: str
    driver_version: str
    pci_bus_id: str
    power_limit_watts: float | None


@dataclass(slots=True)
class SourceResult:
    status: Status
    readings: list[Reading] = field(default_factory=list)
    gpus: list[GpuInfo] = field(default_factory=list)


class Source(abc.ABC):
    """Base class: subclasses set `name` and implement read()."""

    name = ""
    component: str | None = None  # set by models: the component they estimate
    # Worker thread the sampler reads this source in. Sources that call a driver that can
    # hang (NVML) share that driver's thread, so a wedged driver stalls only them.
    thread = "host"

    @abc.abstractmethod
    def read(self, covered: frozenset[str] = frozenset()) -> SourceResult:
        """Read once; never raise. `covered`: components already measured by counters in
        this cycle (a model of a covered component stands aside)."""

    def close(self) -> None:
        """Release handles (NVML shutdown); called once at exit."""
