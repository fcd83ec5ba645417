"""NVIDIA GPUs through NVML (the `pynvml` module of the nvidia-ml-py package).

Energy: nvmlDeviceGetTotalEnergyConsumption (millijoules since the driver loaded, Volta and
newer) is read as a counter. Older GPUs answer NOT_SUPPORTED; their power samples
(nvmlDeviceGetPowerUsage, milliwatts) are integrated instead, source="power_sample".
MIG: only physical GPUs are enumerated (nvmlDeviceGetHandleByIndex never returns MIG
instances), so a partitioned GPU is counted once.

Every GPU fails alone. NvmlSession (shared with the attribution's GPU process reader) holds
one handle per GPU index: a GPU whose handle, UUID, name or PCI info cannot be read (NVML
documents NO_PERMISSION from nvmlDeviceGetHandleByIndex for devices the caller may not use)
is named in the status and probed again on a back-off timer, while the others are read. A GPU
that fell off the bus (GPU_IS_LOST), whose calls can wait for a driver timeout, is left alone
on the same timer so it cannot hold up the others on the shared thread. The enforced power
limit is read apart from the energy, every LIMIT_REFRESH_SECONDS: GPUs without a readable
limit (GeForce, laptop parts) keep their energy. NVML itself is shut down and initialised
again only when no GPU can be read at all (a reloaded driver invalidates every handle).

The `device` label is gpu-<NVML index>. NVML's reference for nvmlDeviceGetHandleByIndex_v2:
"The order in which NVML enumerates devices has no guarantees of consistency between reboots.
For that reason it is recommended that devices be looked up by their PCI ids or UUID", and
nvmlDeviceGetCount_v2 counts devices for which that call returns NVML_ERROR_NO_PERMISSION:
carbon_gpu_info{device, uuid, pci_bus_id} is the join to a stable identity.
"""

from __future__ import annotations

import ctypes
import logging
import sys
import time
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable

from exporter.ledger import Reading
from exporter.sources import (
    ABSENT, ENERGY, ERROR, GPU_INFO, OK, PERMISSION, GpuInfo, Source, SourceResult, Status,
)
from exporter.sources import device_name as _device_name

if TYPE_CHECKING:
    from exporter.config import Config

log = logging.getLogger(__name__)

# Above any shipping GPU (B200/GB200 boards are rated about 1.2 kW): a larger delta is a glitch.
MAX_WATTS_PER_GPU = 3000.0
REINIT_AFTER_SECONDS = 30.0  # first back-off of NVML init and of a failing GPU
MAX_BACKOFF_SECONDS = 300.0  # a GPU failing for long is still probed every five minutes
LIMIT_REFRESH_SECONDS = 60.0  # the enforced limit changes only when an operator sets it
# Errors after which a GPU's calls are not worth repeating every sample.
_BACKOFF_ERRORS = ("NVML_ERROR_GPU_IS_LOST", "NVML_ERROR_RESET_REQUIRED", "NVML_ERROR_TIMEOUT",
                   "NVML_ERROR_NO_PERMISSION")
# Errors that mean the library or driver went away: every handle is stale.
_REINIT_ERRORS = ("NVML_ERROR_UNINITIALIZED", "NVML_ERROR_DRIVER_NOT_LOADED",
                  "NVML_ERROR_LIB_RM_VERSION_MISMATCH")


def text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def device_name(index: int) -> str:
    return _device_name("gpu", index)


def error_code(nvml: ModuleType | None, exc: BaseException, *names: str) -> bool:
    """Whether exc is an NVMLError with one of the named codes."""
    code = getattr(exc, "value", None)
    return code is not None and any(code == getattr(nvml, n, object()) for n in names)


@dataclass(slots=True)
class Device:
    """One GPU index: its handle and identity, or why it cannot be used and when to retry."""

    index: int
    device: str
    handle: Any = None
    info: GpuInfo | None = None
    problem: str = ""
    retry_at: float = 0.0
    failures: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # per-user state (energy counter kind)

    @property
    def usable(self) -> bool:
        return self.handle is not None and not self.problem

    def fail(self, problem: str, now: float, back_off: bool) -> None:
        self.problem = problem
        if back_off:
            self.failures += 1
            delay = min(MAX_BACKOFF_SECONDS, REINIT_AFTER_SECONDS * 2 ** (self.failures - 1))
            self.retry_at = now + delay
            self.problem = f"{problem} (next try in {delay:.0f} s)"

    def ok(self) -> None:
        self.problem, self.failures, self.retry_at = "", 0, 0.0

    def due(self, now: float) -> bool:
        return now >= self.retry_at


# The name nvidia-ml-py's loader asks the dynamic linker for on Linux (pynvml._LoadNvmlLibrary)
NVML_LIBRARY = "libnvidia-ml.so.1"


class LibraryMissing(Exception):
    """No NVML library to load: pynvml's nvmlInit would raise LIBRARY_NOT_FOUND."""


def library_loadable() -> bool:
    """Whether the dynamic linker finds NVML, asked as pynvml asks it, so that a node without
    the driver (absent sources are asked again every 30 s) never imports pynvml: 2.3 MB of
    ctypes classes for nothing. Where found, the library stays loaded and pynvml's own load
    of it is a reference count. A pynvml already imported (embedded in a process that uses
    it) is used without this check: its nvmlInit says the same."""
    try:
        ctypes.CDLL(NVML_LIBRARY)
    except OSError:
        return False
    return True


class NvmlSession:
    """Lazy import, nvmlInit with back-off, per-GPU enumeration and re-probing, shutdown.

    Blocking: used from one worker thread (the sampler's "nvml" thread). Back-off, re-init
    and reading times are on `clock` (monotonic seconds): the owner's, so tests move it."""

    def __init__(self, nvml: ModuleType | None = None, owner: str = "nvml",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._nvml = nvml
        self.owner = owner
        self.clock = clock
        self.devices: list[Device] = []
        self.initialised = False
        self.status = Status(ABSENT, "NVML not initialised yet")
        self.next_init = 0.0
        self.driver = ""

    @property
    def nvml(self) -> ModuleType:
        assert self._nvml is not None
        return self._nvml

    def _module(self) -> ModuleType:
        if self._nvml is None:
            if "pynvml" not in sys.modules and not library_loadable():
                raise LibraryMissing(f"{NVML_LIBRARY} not found by the dynamic linker")
            import pynvml  # imported lazily: the collector may be disabled

            self._nvml = pynvml
        return self._nvml

    def classify(self, exc: BaseException) -> Status:
        nvml = self._nvml
        if error_code(nvml, exc, "NVML_ERROR_LIBRARY_NOT_FOUND", "NVML_ERROR_DRIVER_NOT_LOADED",
                      "NVML_ERROR_FUNCTION_NOT_FOUND"):
            return Status(ABSENT, f"no NVIDIA driver: {exc}")
        if error_code(nvml, exc, "NVML_ERROR_NO_PERMISSION"):
            return Status(PERMISSION, f"NVML: {exc} (the exporter needs access to /dev/nvidia*)")
        return Status(ERROR, f"NVML: {exc}")

    def ensure(self) -> bool:
        """Initialise NVML and enumerate the GPUs if due; True when some GPU is usable."""
        if self.initialised:
            return True
        now = self.clock()
        if now < self.next_init:
            return False
        self.next_init = now + REINIT_AFTER_SECONDS
        try:
            nvml = self._module()
        except LibraryMissing as exc:
            self.status = Status(ABSENT, f"no NVIDIA driver: {exc}")
            return False
        except ImportError as exc:
            self.status = Status(ABSENT, f"pynvml not importable: {exc}")
            return False
        try:
            nvml.nvmlInit()
        except Exception as exc:  # NVMLError subclasses; anything else is reported too
            self.status = self.classify(exc)
            return False
        self.initialised = True
        try:
            self.driver = text(nvml.nvmlSystemGetDriverVersion())
            count = nvml.nvmlDeviceGetCount()
        except Exception as exc:
            self.status = self.classify(exc)
            self.shutdown()
            return False
        self.devices = [Device(i, device_name(i)) for i in range(count)]
        for device in self.devices:
            self.probe(device, now)
        usable = [d for d in self.devices if d.usable]
        if not self.devices:
            self.status = Status(ABSENT, "NVML found no GPU")
        elif not usable:
            # the reason of the first GPU stands for all: usually the same (permissions)
            first = self.devices[0]
            self.status = Status(self.classify(first.extra.get("error", Exception())).reason,
                                 "; ".join(f"{d.device}: {d.problem}" for d in self.devices))
        if not usable:
            self.shutdown()
            return False
        self.status = Status(OK, "")
        log.info("%s: NVML driver %s, %d GPU(s): %s", self.owner, self.driver, len(self.devices),
                 ", ".join(f"{d.device} {d.info.name}" if d.info else f"{d.device} ({d.problem})"
                           for d in self.devices))
        return True

    def probe(self, device: Device, now: float) -> bool:
        """Open one GPU: handle, UUID, name, PCI bus id. A failure stays with this GPU."""
        nvml = self.nvml
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(device.index)
            info = GpuInfo(device=device.device, uuid=text(nvml.nvmlDeviceGetUUID(handle)),
                           name=text(nvml.nvmlDeviceGetName(handle)),
                           driver_version=self.driver,
                           pci_bus_id=text(nvml.nvmlDeviceGetPciInfo(handle).busId),
                           power_limit_watts=None)
        except Exception as exc:  # NVMLError per GPU; the other GPUs are opened regardless
            device.handle = None
            device.extra["error"] = exc
            device.fail(f"cannot open: {exc}", now, back_off=True)
            return False
        device.handle, device.info = handle, info
        device.extra.pop("error", None)
        device.ok()
        return True

    def available(self, now: float) -> list[Device]:
        """The GPUs to read this cycle: usable ones, plus failed ones whose retry is due
        (probed again first)."""
        out = []
        for device in self.devices:
            if device.usable:
                out.append(device)
            elif device.due(now):
                was = device.problem
                if device.handle is None:
                    if self.probe(device, now):
                        log.info("%s: %s is back: %s", self.owner, device.device,
                                 device.info.name if device.info else "")
                        out.append(device)
                else:
                    device.problem = ""  # a backed-off GPU gets one more try this cycle
                    out.append(device)
                if device.problem and device.problem != was:
                    log.warning("%s: %s: %s", self.owner, device.device, device.problem)
        return out

    def failed(self, device: Device, exc: BaseException, now: float) -> None:
        """A call on a usable GPU failed: back off if repeating it is pointless or slow."""
        lost = error_code(self.nvml, exc, *_BACKOFF_ERRORS)
        if not device.problem:
            log.warning("%s: %s: %s%s", self.owner, device.device, exc,
                        "; backing off" if lost else "")
        device.fail(str(exc), now, back_off=lost)
        if lost:
            device.handle = None if error_code(self.nvml, exc, "NVML_ERROR_GPU_IS_LOST") \
                else device.handle

    def stale(self, exc: BaseException) -> bool:
        """Whether exc means every handle is stale (the driver went away)."""
        return error_code(self._nvml, exc, *_REINIT_ERRORS)

    def restart_later(self, why: str) -> None:
        self.shutdown()
        self.next_init = self.clock() + REINIT_AFTER_SECONDS
        self.status = Status(ERROR, why)

    def shutdown(self) -> None:
        if self.initialised and self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:  # already gone: nothing to release
                pass
        self.initialised = False
        self.devices = []


class NvmlSource(Source):
    name = "nvml"
    components = ("gpu",)
    provides = frozenset({ENERGY, GPU_INFO})
    source_labels = ("nvml", "power_sample")
    summary = (
        "per physical NVIDIA GPU: `nvmlDeviceGetTotalEnergyConsumption` (Volta and newer) as a "
        "counter, else `nvmlDeviceGetPowerUsage` samples integrated with the trapezoid rule (gaps "
        "over 5 intervals are not bridged); enforced power limit (read apart, once a minute: a "
        "GPU without a readable limit keeps its energy); identity. MIG instances are never "
        "enumerated as GPUs, so a partitioned GPU counts once. Every GPU fails alone: one whose "
        "handle, UUID, name or PCI info cannot be read, or that fell off the bus "
        "(`GPU_IS_LOST`), is named in the collector's detail and tried again on a back-off timer "
        "(30 s doubling to 5 min) while the others are read; NVML is initialised again only "
        "when no GPU can be read. `device` is `gpu-<NVML index>`; NVML's index order can change "
        "across reboots and driver updates, so join on `carbon_gpu_info{device, uuid, "
        "pci_bus_id}` for an identity that survives them, e.g. `carbon_energy_joules_total"
        "{component=\"gpu\"} * on(instance, device) group_left(uuid) carbon_gpu_info`. "
        "Absent where the dynamic linker finds no `libnvidia-ml.so.1` (asked as nvidia-ml-py "
        "asks it); pynvml is then not imported.")

    @classmethod
    def from_config(cls, config: Config) -> NvmlSource:
        return cls()

    def __init__(self, nvml: ModuleType | None = None) -> None:
        self.session = NvmlSession(nvml, owner="nvml")

    # The sampler sets the source's clock; the session's back-off and re-init run on it too.
    @property
    def clock(self) -> Callable[[], float]:
        return self.session.clock

    @clock.setter
    def clock(self, value: Callable[[], float]) -> None:
        self.session.clock = value

    # kept for callers and tests that look at the session's state
    @property
    def initialised(self) -> bool:
        return self.session.initialised

    @property
    def next_init(self) -> float:
        return self.session.next_init

    @next_init.setter
    def next_init(self, value: float) -> None:
        self.session.next_init = value

    @property
    def gpus(self) -> list[Device]:
        return self.session.devices

    def _energy_kind(self, device: Device) -> bool:
        """Whether the GPU has an energy counter (decided once per handle)."""
        if "counter" not in device.extra:
            nvml = self.session.nvml
            try:
                nvml.nvmlDeviceGetTotalEnergyConsumption(device.handle)
                device.extra["counter"] = True
            except nvml.NVMLError as exc:
                if not error_code(nvml, exc, "NVML_ERROR_NOT_SUPPORTED"):
                    raise
                device.extra["counter"] = False
        return bool(device.extra["counter"])

    def _limit(self, device: Device, now: float) -> float | None:
        """The enforced power limit, read apart and rarely; None where it is unreadable."""
        if now >= device.extra.get("limit_at", 0.0):
            device.extra["limit_at"] = now + LIMIT_REFRESH_SECONDS
            try:
                device.extra["limit"] = \
                    self.session.nvml.nvmlDeviceGetEnforcedPowerLimit(device.handle) / 1000.0
            except Exception as exc:  # NOT_SUPPORTED on GeForce and laptop parts: no limit
                if device.extra.get("limit_problem") != str(exc):
                    log.info("nvml: %s: power limit unreadable: %s", device.device, exc)
                device.extra["limit_problem"] = str(exc)
                device.extra["limit"] = None
        return device.extra.get("limit")

    def read(self, covered: frozenset[str] = frozenset()) -> SourceResult:
        session = self.session
        if not session.ensure():
            return SourceResult(session.status)
        nvml = session.nvml
        now = session.clock()
        readings: list[Reading] = []
        infos: list[GpuInfo] = []
        attempted = session.available(now)
        for device in attempted:
            try:
                counter = self._energy_kind(device)
                if counter:
                    value = nvml.nvmlDeviceGetTotalEnergyConsumption(device.handle) / 1000.0
                else:
                    value = nvml.nvmlDeviceGetPowerUsage(device.handle) / 1000.0
                at = session.clock()  # when the value was obtained: a slow call shifts no energy
            except Exception as exc:
                if session.stale(exc):
                    session.restart_later(f"NVML: {exc}; initialising again")
                    log.warning("nvml: %s; initialising NVML again in %.0f s", exc,
                                REINIT_AFTER_SECONDS)
                    return SourceResult(session.status)
                session.failed(device, exc, session.clock())
                continue
            device.ok()
            readings.append(Reading(
                collector=self.name, device=device.device,
                source="nvml" if counter else "power_sample",
                value=value, at=at, counter=counter, wrap=None,
                max_watts=MAX_WATTS_PER_GPU, component="gpu",
            ))
            assert device.info is not None
            infos.append(GpuInfo(device.info.device, device.info.uuid, device.info.name,
                                 device.info.driver_version, device.info.pci_bus_id,
                                 self._limit(device, at)))
        problems = [f"{d.device}: {d.problem}" for d in session.devices if d.problem]
        if not readings and len(attempted) == len(session.devices) \
                and not any(d.failures for d in attempted):
            # every GPU answered with an error on an open handle (not one that is backed off
            # on its own): the driver may have been reloaded. Start over later.
            session.restart_later("; ".join(problems) or "no GPU could be read")
            return SourceResult(session.status)
        status = Status(ERROR, "; ".join(problems)) if problems else Status(
            OK, f"{len(readings)} GPU(s)")
        return SourceResult(status, readings, infos)

    def close(self) -> None:
        self.session.shutdown()
