"""Power sources, one module each, in the style of node_exporter's collector/ directory.

A source's read() is blocking (file reads, NVML calls) and runs in the sampler's thread; one
that hangs is set aside by the sampler's watchdog, so it cannot stall the others. It never
raises: whatever goes wrong is returned as a Status with a reason, and the other sources keep
working.
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, ClassVar, Iterable

from exporter.ledger import Reading

if TYPE_CHECKING:
    from exporter.config import Config

# Reasons reported in carbon_exporter_collector_status_info{reason}.
OK = "ok"
ABSENT = "absent"  # no such hardware or driver on this node: not a failure
PERMISSION = "permission"
ERROR = "error"
SUPERSEDED = "superseded"  # a model not used because a measured counter covers it

# Roles: measured sources read counters or meters; models estimate a component and stand
# aside where a measured source covers it (they run after every measured source);
# observers (attribution) read usage and split what the ledger counted.
MEASURED, MODEL, OBSERVER = "measured", "model", "observer"
# What a source's result carries besides its status.
ENERGY = "energy"  # readings the ledger counts
GPU_INFO = "gpu_info"  # SourceResult.gpus: identity and power limit per GPU
WORKLOADS = "workloads"  # usage per workload, split by the observer after the ledger
PLATFORM = "platform"  # a whole-node meter reading: the node total (exporter.ledger.PLATFORM)


@dataclass(frozen=True, slots=True)
class Status:
    reason: str
    detail: str = ""
    # a model's method (carbon_model_info{method}); detail then says the figures it used
    method: str = ""

    @property
    def up(self) -> bool:
        return self.reason == OK


class Covered(frozenset):
    """What a model is handed: the components that counters cover. Those in `held` were not
    read this cycle (the counter vanished or its read is still running) but were within the
    hand-over time (--sample.model-takeover): the counter bridges the gap itself when it comes
    back, so the model stays aside *and keeps its baseline where the counter was last read*.
    Once the counter has been away longer, the component is not covered any more and the
    model counts from that baseline, so the hand-over leaves no gap and counts nothing twice."""

    held: frozenset[str]

    def __new__(cls, fresh: Iterable[str] = (), held: Iterable[str] = ()) -> Covered:
        held = frozenset(held)
        self = super().__new__(cls, frozenset(fresh) | held)
        self.held = held
        return self


def held(covered: frozenset[str]) -> frozenset[str]:
    """The held components of `covered` (none for a plain frozenset)."""
    return getattr(covered, "held", frozenset())


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
    """Base class of every collector the sampler reads.

    A source is one file in exporter/sources/ (found there by exporter.sources.registry):
    a subclass that declares what it is below and implements from_config() and read().
    Flags (--collector.<name>), the sampler's order, the README's collector table
    and the landing page all derive from these declarations; nothing else names a source.
    """

    name: ClassVar[str] = ""  # --collector.<name>, the collector label
    role: ClassVar[str] = MEASURED  # MEASURED, MODEL (runs after every measured one) or OBSERVER
    components: ClassVar[tuple[str, ...]] = ()  # component label values its readings carry
    provides: ClassVar[frozenset[str]] = frozenset({ENERGY})  # ENERGY, GPU_INFO, WORKLOADS
    default_enabled: ClassVar[bool] = True
    source_labels: ClassVar[tuple[str, ...]] = ()  # values of the `source` label it exports
    summary: ClassVar[str] = ""  # what it reads, for the README's collector table
    # The clock readings are stamped with (monotonic seconds). The sampler gives every source
    # its own clock, so tests drive time instead of sleeping.
    clock: Callable[[], float] = staticmethod(time.monotonic)

    # A source whose read is worked out from a few inputs taken at the cycle (the models:
    # /proc/stat's CPU times, the time) sets `captures`: in the cycle the sampler calls only
    # capture(), on its clock and under the watchdog like a read; read_captured() runs when
    # the cycle is counted (Sampler.settle), beside the rest of the counting. After a second
    # of sleep a cycle runs cold; there, each line of Python costs several times what it
    # costs in a batch of cycles counted back to back.
    captures: ClassVar[bool] = False

    @classmethod
    def from_config(cls, config: Config) -> Source:
        """The source as the settings configure it (ConfigError for a bad setting). Every
        registered source overrides this (the registry refuses one that does not); sources
        built by hand (tests, embedded mode) need not."""
        raise TypeError(f"{cls.__name__} is not built from settings: it declares no from_config()")

    @abc.abstractmethod
    def read(self, covered: frozenset[str] = frozenset()) -> SourceResult:
        """Read once; never raise. `covered`: components measured by counters in this cycle,
        by any measured source (a model of a covered component stands aside)."""

    def capture(self) -> object:
        """Where `captures`: the inputs read_captured() needs, taken now; never raises. The
        sampler calls it only where `captures` (the registry refuses `captures` without an
        override of this and of read_captured())."""
        return None

    def read_captured(self, captured: object, covered: frozenset[str] = frozenset()) -> SourceResult:
        """Where `captures`: the read, from what capture() took (read() is both at once)."""
        return self.read(covered)

    def configure(self, config: Config) -> None:  # noqa: B027 - optional hook, default no-op
        """SIGHUP: apply reloadable settings (default: nothing to apply)."""

    def close(self) -> None:  # noqa: B027 - optional hook, default no-op
        """Release handles (NVML shutdown); called once at exit."""


def device_name(kind: str, index: int) -> str:
    """Vendor-neutral device label for the index-th enumerated device of a kind: gpu-0, gpu-1.
    The vendor and model go in info metrics, never in the device label, so queries and
    dashboards work whatever the hardware."""
    return f"{kind}-{index}"
