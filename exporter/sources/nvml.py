"""NVIDIA GPUs through NVML (the `pynvml` module of the nvidia-ml-py package).

Energy: nvmlDeviceGetTotalEnergyConsumption (millijoules since the driver loaded, Volta and
newer) is read as a counter. Older GPUs answer NOT_SUPPORTED; their power samples
(nvmlDeviceGetPowerUsage, milliwatts) are integrated instead, source="power_sample".
MIG: only physical GPUs are enumerated (nvmlDeviceGetHandleByIndex never returns MIG
instances), so a partitioned GPU is counted once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from exporter.ledger import Reading
from exporter.sources import (
    ABSENT, ENERGY, ERROR, GPU_INFO, OK, PERMISSION, GpuInfo, Source, SourceResult, Status,
    device_name,
)

if TYPE_CHECKING:
    from exporter.config import Config

log = logging.getLogger(__name__)

# Above any shipping GPU (B200/GB200 boards are rated about 1.2 kW): a larger delta is a glitch.
MAX_WATTS_PER_GPU = 3000.0
REINIT_AFTER_SECONDS = 30.0


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


@dataclass(slots=True)
class Gpu:
    handle: Any
    device: str
    info: GpuInfo
    has_energy_counter: bool


class NvmlSource(Source):
    name = "nvml"
    lane = "nvml"  # a wedged driver must not stall the other sources
    components = ("gpu",)
    provides = frozenset({ENERGY, GPU_INFO})
    source_labels = ("nvml", "power_sample")
    summary = (
        "per physical NVIDIA GPU: `nvmlDeviceGetTotalEnergyConsumption` (Volta and newer) as a "
        "counter, else `nvmlDeviceGetPowerUsage` samples integrated with the trapezoid rule (gaps "
        "over 5 intervals are not bridged); enforced power limit; identity. MIG instances are "
        "never enumerated as GPUs, so a partitioned GPU counts once.")

    @classmethod
    def from_config(cls, config: Config) -> NvmlSource:
        return cls()

    def __init__(self, nvml: ModuleType | None = None) -> None:
        self._nvml: Any = nvml  # pynvml has no type information
        self.gpus: list[Gpu] = []
        self.initialised = False
        self.init_status = Status(ABSENT, "NVML not initialised yet")
        self.next_init = 0.0

    def _module(self) -> ModuleType:
        if self._nvml is None:
            import pynvml

            self._nvml = pynvml
        return self._nvml

    def _classify(self, exc: Exception) -> Status:
        nvml = self._nvml
        code = getattr(exc, "value", None)
        absent_codes = {getattr(nvml, n, -1) for n in (
            "NVML_ERROR_LIBRARY_NOT_FOUND", "NVML_ERROR_DRIVER_NOT_LOADED",
            "NVML_ERROR_FUNCTION_NOT_FOUND")}
        if code in absent_codes:
            return Status(ABSENT, f"no NVIDIA driver: {exc}")
        if code == getattr(nvml, "NVML_ERROR_NO_PERMISSION", -1):
            return Status(PERMISSION, f"NVML: {exc} (the exporter needs access to /dev/nvidia*)")
        return Status(ERROR, f"NVML: {exc}")

    def _init(self) -> None:
        now = time.monotonic()
        if now < self.next_init:
            return
        self.next_init = now + REINIT_AFTER_SECONDS
        try:
            nvml = self._module()
        except ImportError as exc:
            self.init_status = Status(ABSENT, f"pynvml not importable: {exc}")
            return
        try:
            nvml.nvmlInit()
        except Exception as exc:  # pynvml raises NVMLError subclasses; be defensive
            self.init_status = self._classify(exc)
            return
        self.initialised = True
        try:
            self.gpus = self._enumerate(nvml)
        except Exception as exc:
            self.init_status = self._classify(exc)
            self._shutdown()
            return
        if not self.gpus:
            self.init_status = Status(ABSENT, "NVML found no GPU")
            self._shutdown()
            return
        self.init_status = Status(OK, "")
        log.info("NVML: %d GPU(s): %s", len(self.gpus), ", ".join(
            f"{g.device} {g.info.name} ({'energy counter' if g.has_energy_counter else 'power samples'})"
            for g in self.gpus))

    def _enumerate(self, nvml: ModuleType) -> list[Gpu]:
        driver = _text(nvml.nvmlSystemGetDriverVersion())
        gpus = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            device = device_name("gpu", index)
            try:
                nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
                has_counter = True
            except nvml.NVMLError as exc:
                if getattr(exc, "value", None) != nvml.NVML_ERROR_NOT_SUPPORTED:
                    raise
                has_counter = False
            info = GpuInfo(
                device=device,
                uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
                name=_text(nvml.nvmlDeviceGetName(handle)),
                driver_version=driver,
                pci_bus_id=_text(nvml.nvmlDeviceGetPciInfo(handle).busId),
                power_limit_watts=None,
            )
            gpus.append(Gpu(handle, device, info, has_counter))
        return gpus

    def _shutdown(self) -> None:
        if self.initialised:
            try:
                self._nvml.nvmlShutdown()
            except Exception:  # already gone: nothing to release
                pass
        self.initialised = False
        self.gpus = []

    def read(self, covered: frozenset[str] = frozenset()) -> SourceResult:
        if not self.initialised:
            self._init()
            if not self.initialised:
                return SourceResult(self.init_status)
        nvml = self._nvml
        readings: list[Reading] = []
        infos: list[GpuInfo] = []
        problems: list[str] = []
        for gpu in self.gpus:
            try:
                if gpu.has_energy_counter:
                    value = nvml.nvmlDeviceGetTotalEnergyConsumption(gpu.handle) / 1000.0
                else:
                    value = nvml.nvmlDeviceGetPowerUsage(gpu.handle) / 1000.0
                at = time.monotonic()  # when the value was obtained: a slow call shifts no energy
                limit = nvml.nvmlDeviceGetEnforcedPowerLimit(gpu.handle) / 1000.0
            except Exception as exc:
                problems.append(f"{gpu.device}: {exc}")
                continue
            readings.append(Reading(
                collector=self.name, device=gpu.device,
                source="nvml" if gpu.has_energy_counter else "power_sample",
                value=value, at=at, counter=gpu.has_energy_counter, wrap=None,
                max_watts=MAX_WATTS_PER_GPU, component="gpu",
            ))
            infos.append(GpuInfo(gpu.info.device, gpu.info.uuid, gpu.info.name,
                                 gpu.info.driver_version, gpu.info.pci_bus_id, limit))
        if problems and not readings:
            # Every GPU failed: the driver may have been reloaded. Start over later.
            self._shutdown()
            self.next_init = time.monotonic() + REINIT_AFTER_SECONDS
            # reported until the re-init, instead of the stale "ok" from the last init
            self.init_status = Status(ERROR, "; ".join(problems))
        status = Status(ERROR, "; ".join(problems)) if problems else Status(
            OK, f"{len(readings)} GPU(s)")
        return SourceResult(status, readings, infos)

    def close(self) -> None:
        self._shutdown()
