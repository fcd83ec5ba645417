"""Which processes used each GPU over the last interval, and by how much (NVML).

Per physical GPU (device gpu-N, numbered like the nvml collector):
  - not in MIG mode: nvmlDeviceGetProcessUtilization(handle, last_seen_us) gives SM
    utilisation samples per process since the previous call; a process's weight is the sum of
    its smUtil over those samples (basis "sm_utilization"). Where the driver keeps no samples
    (NVML_ERROR_NOT_FOUND, NOT_SUPPORTED, or all zero) the processes of
    nvmlDeviceGetComputeRunningProcesses are weighted by usedGpuMemory (basis "memory").
  - in MIG mode, per-process utilisation does not exist: the GPU's energy is divided among the
    MIG instances by their SM count (nvmlDeviceGetAttributes.multiprocessorCount); an
    instance's share goes to its processes by usedGpuMemory, or to idle when it runs none
    (basis "mig").
  - no process: basis "idle".
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)

SM_UTILIZATION = "sm_utilization"
MEMORY = "memory"
MIG = "mig"
IDLE = "idle"
UNAVAILABLE = "unavailable"
REINIT_AFTER_SECONDS = 30.0


@dataclass(slots=True)
class GpuShares:
    """Weights summing to 1 over pids; pid None is an idle share (an unused MIG instance)."""

    device: str
    basis: str
    shares: list[tuple[int | None, float]] = field(default_factory=list)


def _normalise(weights: dict[int, float], scale: float = 1.0) -> list[tuple[int | None, float]]:
    total = sum(weights.values())
    if total <= 0:
        return [(pid, scale / len(weights)) for pid in weights]
    return [(pid, scale * w / total) for pid, w in weights.items()]


def _memory_weights(processes: list[Any]) -> dict[int, float]:
    weights: dict[int, float] = {}
    for proc in processes:
        used = getattr(proc, "usedGpuMemory", None)
        weights[int(proc.pid)] = weights.get(int(proc.pid), 0.0) + float(used or 0)
    return weights


class GpuProcessReader:
    """Blocking NVML calls; used from the attribution worker thread only."""

    def __init__(self, nvml: ModuleType | None = None) -> None:
        self._nvml: Any = nvml  # pynvml has no type information
        self.handles: list[Any] = []
        self.initialised = False
        self.next_init = 0.0
        self.last_seen: dict[int, int] = {}  # gpu index -> last sample timestamp (us)
        self.problem = ""

    def _init(self) -> bool:
        now = time.monotonic()
        if now < self.next_init:
            return False
        self.next_init = now + REINIT_AFTER_SECONDS
        try:
            if self._nvml is None:
                import pynvml

                self._nvml = pynvml
            self._nvml.nvmlInit()
        except Exception:  # ImportError or NVMLError: no GPU here, nothing to attribute
            self.problem = ""  # the nvml collector reports why; attribution is not failing
            return False
        self.initialised = True
        try:
            self.handles = [self._nvml.nvmlDeviceGetHandleByIndex(i)
                            for i in range(self._nvml.nvmlDeviceGetCount())]
        except Exception as exc:
            self.problem = f"NVML: {exc}"
            self.close()
            return False
        self.problem = ""
        return True

    def read(self) -> dict[str, GpuShares]:
        if not self.initialised and not self._init():
            return {}
        out: dict[str, GpuShares] = {}
        for index, handle in enumerate(self.handles):
            device = f"gpu-{index}"
            try:
                out[device] = self._read_gpu(index, handle, device)
            except Exception as exc:  # one GPU failing leaves the others attributed
                self.problem = f"{device}: {exc}"
                out[device] = GpuShares(device, UNAVAILABLE)
        if out and all(g.basis == UNAVAILABLE for g in out.values()):
            self.close()  # the driver may have been reloaded: handles are stale
            self.next_init = time.monotonic() + REINIT_AFTER_SECONDS
        return out

    def _mig_enabled(self, handle: Any) -> bool:
        nvml = self._nvml
        try:
            current, _pending = nvml.nvmlDeviceGetMigMode(handle)
        except nvml.NVMLError:
            return False  # not a MIG-capable GPU
        return current == getattr(nvml, "NVML_DEVICE_MIG_ENABLE", 1)

    def _read_gpu(self, index: int, handle: Any, device: str) -> GpuShares:
        nvml = self._nvml
        if self._mig_enabled(handle):
            return self._read_mig(handle, device)
        processes = nvml.nvmlDeviceGetComputeRunningProcesses(handle)
        sm: dict[int, float] = {}
        try:
            samples = nvml.nvmlDeviceGetProcessUtilization(handle, self.last_seen.get(index, 0))
        except nvml.NVMLError:
            samples = []  # NOT_FOUND: no sample since last_seen; NOT_SUPPORTED: none at all
        for sample in samples:
            sm[int(sample.pid)] = sm.get(int(sample.pid), 0.0) + float(sample.smUtil)
            self.last_seen[index] = max(self.last_seen.get(index, 0), int(sample.timeStamp))
        if sum(sm.values()) > 0:
            return GpuShares(device, SM_UTILIZATION,
                             _normalise({p: w for p, w in sm.items() if w > 0}))
        if not processes:
            return GpuShares(device, IDLE)
        return GpuShares(device, MEMORY, _normalise(_memory_weights(processes)))

    def _read_mig(self, handle: Any, device: str) -> GpuShares:
        nvml = self._nvml
        instances: list[tuple[float, list[Any]]] = []
        for slot in range(nvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
            try:
                mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
            except nvml.NVMLError:
                continue  # an empty slot
            sms = float(nvml.nvmlDeviceGetAttributes(mig).multiprocessorCount)
            instances.append((sms, nvml.nvmlDeviceGetComputeRunningProcesses(mig)))
        total_sms = sum(s for s, _ in instances)
        if total_sms <= 0 or not any(p for _, p in instances):
            return GpuShares(device, IDLE)
        shares: list[tuple[int | None, float]] = []
        for sms, processes in instances:
            part = sms / total_sms
            if processes:
                shares.extend(_normalise(_memory_weights(processes), part))
            else:
                shares.append((None, part))
        return GpuShares(device, MIG, shares)

    def close(self) -> None:
        if self.initialised:
            try:
                self._nvml.nvmlShutdown()
            except Exception:  # already gone
                pass
        self.initialised = False
        self.handles = []
