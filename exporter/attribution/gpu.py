"""Which processes used each GPU over the last interval, and by how much (NVML).

Per physical GPU (device gpu-N, numbered like the nvml collector; the session code, with its
per-GPU failures and back-off, is exporter.sources.nvml.NvmlSession):
  - not in MIG mode: nvmlDeviceGetProcessUtilization(handle, last_seen_us) gives SM
    utilisation samples per process since the previous call, and needs no process list; a
    process's weight is the sum of its smUtil over those samples (basis "sm_utilization").
    A cycle without a new sample (NVML_ERROR_NOT_FOUND) keeps the last SM shares for up to
    SM_SHARES_KEEP_SECONDS instead of flipping to memory weights. Where the driver keeps no
    samples at all (NOT_SUPPORTED, or all zero), the running compute processes are weighted
    by usedGpuMemory (basis "memory");
  - in MIG mode, per-process utilisation does not exist: the GPU's energy is divided among the
    MIG instances by their SM count over the whole GPU's (MIG slices of the GPU x SMs per
    slice; unused slices are idle), then within an instance by usedGpuMemory (basis "mig");
  - no process: basis "idle".
Running processes: nvmlDeviceGetComputeRunningProcesses calls the _v3 entry point, which
drivers before R510 lack (nvidia-ml-py then raises NVMLLibraryMismatchError, not an
NVMLError): the reader falls back to _v2 and remembers that. PIDs are checked: a 0 or a
value above the kernel's PID_MAX_LIMIT means the process struct did not match the driver's
(nvidia-ml-py 12.535.77 on R535): that GPU's list is not trusted this cycle.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable

from exporter.sources.nvml import Device, NvmlSession, error_code

log = logging.getLogger(__name__)

SM_UTILIZATION = "sm_utilization"
MEMORY = "memory"
MIG = "mig"
IDLE = "idle"
UNAVAILABLE = "unavailable"
SM_SHARES_KEEP_SECONDS = 10.0
MIG_RECHECK_SECONDS = 60.0  # how long a GPU's MIG mode is taken as known
PID_MAX_LIMIT = 4 * 1024 * 1024  # the kernel's upper bound for pid_max on 64-bit


@dataclass(slots=True)
class GpuShares:
    """Weights summing to 1 over pids; pid None is an idle share (an unused MIG slice)."""

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


class ScrambledPids(Exception):
    """NVML returned PIDs no kernel can have: the process struct does not match the driver."""


class GpuProcessReader:
    """Blocking NVML calls; used from the attribution worker thread only."""

    def __init__(self, nvml: ModuleType | None = None, procfs: str = "/proc",
                 clock: Callable[[], float] = time.monotonic) -> None:
        # back-off and the kept SM shares' age on `clock` (tests move it)
        self.session = NvmlSession(nvml, owner="attribution", clock=clock)
        self.procfs = procfs
        self.last_seen: dict[int, int] = {}  # gpu index -> last sample timestamp (us)
        self.last_sm: dict[int, tuple[float, list[tuple[int | None, float]]]] = {}
        self.use_v2 = False  # the driver lacks ..._v3 (before R510)
        # gpu index -> (when asked, MIG enabled): MIG mode changes only with a GPU reset (an
        # admin's nvidia-smi -mig), so it is asked again each MIG_RECHECK_SECONDS, not per sample
        self.mig: dict[int, tuple[float, bool]] = {}
        self.problem = ""

    def read(self) -> dict[str, GpuShares]:
        session = self.session
        if not session.ensure():
            # no GPU here, or the nvml collector says why: attribution itself is not failing
            self.problem = ""
            return {}
        now = self.session.clock()
        available = {d.index for d in session.available(now)}
        out: dict[str, GpuShares] = {}
        problems: list[str] = []
        for device in session.devices:
            if device.index not in available:
                out[device.device] = GpuShares(device.device, UNAVAILABLE)
                problems.append(f"{device.device}: {device.problem}")
                continue
            try:
                out[device.device] = self._read_gpu(device)
                device.ok()
            except ScrambledPids as exc:
                out[device.device] = GpuShares(device.device, UNAVAILABLE)
                problems.append(f"{device.device}: {exc}")
            except Exception as exc:  # one GPU failing leaves the others attributed
                if session.stale(exc):
                    session.restart_later(f"NVML: {exc}")
                    self.problem = f"NVML: {exc}; initialising again"
                    return {}
                session.failed(device, exc, self.session.clock())
                out[device.device] = GpuShares(device.device, UNAVAILABLE)
                problems.append(f"{device.device}: {device.problem}")
        self.problem = "; ".join(problems)
        return out

    def _mig_enabled(self, device: Device) -> bool:
        now = self.session.clock()
        known = self.mig.get(device.index)
        if known is not None and now - known[0] < MIG_RECHECK_SECONDS:
            return known[1]
        nvml = self.session.nvml
        try:
            current, _pending = nvml.nvmlDeviceGetMigMode(device.handle)
            enabled = current == getattr(nvml, "NVML_DEVICE_MIG_ENABLE", 1)
        except nvml.NVMLError as exc:
            if not error_code(nvml, exc, "NVML_ERROR_NOT_SUPPORTED"):
                raise  # a lost or failing GPU: handled (and backed off) once, by read()
            enabled = False  # not a MIG-capable GPU
        self.mig[device.index] = (now, enabled)
        return enabled

    def _running(self, handle: Any) -> list[Any]:
        """Compute processes, through _v3 where the driver has it, else _v2."""
        nvml = self.session.nvml
        if not self.use_v2:
            try:
                return self._checked(nvml.nvmlDeviceGetComputeRunningProcesses(handle))
            except getattr(nvml, "NVMLLibraryMismatchError", ()) as exc:
                log.info("attribution: %s; using nvmlDeviceGetComputeRunningProcesses_v2 "
                         "(driver before R510)", exc)
                self.use_v2 = True
        return self._checked(nvml.nvmlDeviceGetComputeRunningProcesses_v2(handle))

    def _checked(self, processes: list[Any]) -> list[Any]:
        bad = [int(p.pid) for p in processes if not 0 < int(p.pid) <= PID_MAX_LIMIT]
        if bad:
            raise ScrambledPids(
                f"NVML returned impossible PIDs {bad[:3]}: the process struct of "
                f"nvidia-ml-py does not match the driver's (need nvidia-ml-py>=12.535.108)")
        return processes

    def _read_gpu(self, device: Device) -> GpuShares:
        nvml = self.session.nvml
        handle, index, name = device.handle, device.index, device.device
        if self._mig_enabled(device):
            return self._read_mig(handle, name)
        sm: dict[int, float] = {}
        fresh = True
        try:
            samples = nvml.nvmlDeviceGetProcessUtilization(handle, self.last_seen.get(index, 0))
        except nvml.NVMLError as exc:
            # NOT_FOUND: no sample since last_seen; NOT_SUPPORTED: none at all; anything else
            # (a lost GPU) is read()'s to handle, once, not to be asked again for the list
            if not error_code(nvml, exc, "NVML_ERROR_NOT_FOUND", "NVML_ERROR_NOT_SUPPORTED"):
                raise
            samples = []
            fresh = not error_code(nvml, exc, "NVML_ERROR_NOT_FOUND")
        for sample in samples:
            pid = int(sample.pid)
            if not 0 < pid <= PID_MAX_LIMIT:
                continue  # not a process: skip rather than mis-attribute
            sm[pid] = sm.get(pid, 0.0) + float(sample.smUtil)
            self.last_seen[index] = max(self.last_seen.get(index, 0), int(sample.timeStamp))
        now = self.session.clock()
        if sum(sm.values()) > 0:
            shares = _normalise({p: w for p, w in sm.items() if w > 0})
            self.last_sm[index] = (now, shares)
            return GpuShares(name, SM_UTILIZATION, shares)
        kept = self.last_sm.get(index)
        if not fresh and kept is not None and now - kept[0] <= SM_SHARES_KEEP_SECONDS:
            return GpuShares(name, SM_UTILIZATION, list(kept[1]))
        processes = self._running(handle)
        if not processes:
            self.last_sm.pop(index, None)
            return GpuShares(name, IDLE)
        return GpuShares(name, MEMORY, _normalise(_memory_weights(processes)))

    def _read_mig(self, handle: Any, name: str) -> GpuShares:
        nvml = self.session.nvml
        instances: list[tuple[float, list[Any]]] = []
        sms_per_slice = 0.0
        slots = nvml.nvmlDeviceGetMaxMigDeviceCount(handle)
        for slot in range(slots):
            try:
                mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
            except nvml.NVMLError:
                continue  # an empty slot
            attributes = nvml.nvmlDeviceGetAttributes(mig)
            sms = float(attributes.multiprocessorCount)
            slices = max(1, int(getattr(attributes, "gpuInstanceSliceCount", 1) or 1))
            sms_per_slice = max(sms_per_slice, sms / slices)
            instances.append((sms, self._running(mig)))
        # the whole GPU: every slice (MaxMigDeviceCount is the count of the smallest
        # instances that fit, 7 on A100/H100), so a lone small instance is not charged for
        # the unused rest
        whole = max(sum(s for s, _ in instances), sms_per_slice * slots)
        if whole <= 0 or not any(p for _, p in instances):
            return GpuShares(name, IDLE)
        shares: list[tuple[int | None, float]] = []
        for sms, processes in instances:
            part = sms / whole
            if processes:
                shares.extend(_normalise(_memory_weights(processes), part))
            else:
                shares.append((None, part))
        unused = 1.0 - sum(w for _, w in shares)
        if unused > 1e-12:
            shares.append((None, unused))
        return GpuShares(name, MIG, shares)

    def close(self) -> None:
        self.session.shutdown()
