"""A fake of the `pynvml` module (nvidia-ml-py), the one hardware boundary faked in CI.

It behaves like nvidia-ml-py 13 where the exporter depends on it (tests/test_nvml_fake.py
compares it with the real module, which is installed for the exporter):
  - errors: `NVMLError(code)` returns the per-code subclass (`NVMLError_GpuIsLost`, ...),
    `str()` is nvidia-ml-py's message ("GPU is lost", "Insufficient Permissions"), `.value`
    the code; `NVMLLibraryMismatchError` is a plain Exception, raised by the unversioned
    process calls when the driver lacks their _v3 function (drivers before R510);
  - units: milliwatts, millijoules; strings as str (nvidia-ml-py 12+ decodes them);
  - process info: the 4-field struct (pid, usedGpuMemory, gpuInstanceId, computeInstanceId).

State comes from set_state() in-process, or from the JSON file named by FAKE_NVML_STATE
(re-read when it changes), so a test can drive a real exporter process:

    {"driver": "550.54.15", "init_error": null, "missing_functions": [],
     "gpus": [{"name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-...", "pci": "00000000:18:00.0",
               "energy_mj": 1000, "power_mw": 300000, "limit_mw": 700000,
               "error": null, "mig": false, "processes": []}]}

Per GPU:
  "energy_mj": null           no energy counter (pre-Volta): NOT_SUPPORTED
  "step_ms": 100              with "power_mw": the energy counter moves by power x step every
                              step_ms of (monotonic) time after energy_mj, like the driver's
  "error": "NVML_ERROR_X"     every call on that GPU raises it
  "handle_error": "..."       nvmlDeviceGetHandleByIndex(i) raises it (NVML documents
                              NO_PERMISSION for devices the caller may not use)
  "errors": {"nvmlDeviceGetEnforcedPowerLimit": "NVML_ERROR_NOT_SUPPORTED"}   per call
  "block_s": 0.5              every call on that GPU takes that long first (a lost GPU's calls
                              wait for the driver's timeout)
Per-process state for attribution, in the shapes pynvml returns:
  "processes": [{"pid": 4242, "used_mem": 2147483648}]    nvmlDeviceGetComputeRunningProcesses
  "samples": [{"pid": 4242, "ts": 1700000000000000, "sm": 80, "mem": 30}]
      nvmlDeviceGetProcessUtilization(handle, lastSeenTimeStamp) returns the samples newer than
      lastSeenTimeStamp, raises NOT_FOUND when there is none; "samples": null -> NOT_SUPPORTED
  "mig": true, "mig_slices": 7, "mig_devices": [{"sm": 14, "slices": 1, "processes": [...]}]
Time: the fake reads `_clock` (time.monotonic) and waits with `_sleep` (time.sleep);
in-process tests set both to a FakeClock and its advance (tests/fake_gpus.py clocked()), so a
blocking GPU or a stepping counter moves test time instead of taking wall time.
"missing_functions" (top level): NVML entry points the "driver" lacks, e.g.
  ["nvmlDeviceGetComputeRunningProcesses_v3"] for a driver before R510.
"""

from __future__ import annotations

import json
import os
import string
import sys
import time
from types import SimpleNamespace
from typing import Any, Callable

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_ALREADY_INITIALIZED = 5
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_INSUFFICIENT_SIZE = 7
NVML_ERROR_INSUFFICIENT_POWER = 8
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_IRQ_ISSUE = 11
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_CORRUPTED_INFOROM = 14
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_RESET_REQUIRED = 16
NVML_ERROR_OPERATING_SYSTEM = 17
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
NVML_ERROR_MEMORY = 20
NVML_ERROR_UNKNOWN = 999
NVML_DEVICE_MIG_DISABLE = 0
NVML_DEVICE_MIG_ENABLE = 1
NVML_VALUE_NOT_AVAILABLE_ulonglong = 2**64 - 1

# nvidia-ml-py's messages (NVMLError._errcode_to_string)
_MESSAGES = {
    NVML_ERROR_UNINITIALIZED: "Uninitialized",
    NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
    NVML_ERROR_NOT_SUPPORTED: "Not Supported",
    NVML_ERROR_NO_PERMISSION: "Insufficient Permissions",
    NVML_ERROR_ALREADY_INITIALIZED: "Already Initialized",
    NVML_ERROR_NOT_FOUND: "Not Found",
    NVML_ERROR_INSUFFICIENT_SIZE: "Insufficient Size",
    NVML_ERROR_INSUFFICIENT_POWER: "Insufficient External Power",
    NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
    NVML_ERROR_TIMEOUT: "Timeout",
    NVML_ERROR_IRQ_ISSUE: "Interrupt Request Issue",
    NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
    NVML_ERROR_FUNCTION_NOT_FOUND: "Function Not Found",
    NVML_ERROR_CORRUPTED_INFOROM: "Corrupted infoROM",
    NVML_ERROR_GPU_IS_LOST: "GPU is lost",
    NVML_ERROR_RESET_REQUIRED: "GPU requires restart",
    NVML_ERROR_OPERATING_SYSTEM: "The operating system has blocked the request.",
    NVML_ERROR_LIB_RM_VERSION_MISMATCH: "RM has detected an NVML/RM version mismatch.",
    NVML_ERROR_MEMORY: "Insufficient Memory",
    NVML_ERROR_UNKNOWN: "Unknown Error",
}


class NVMLLibraryMismatchError(Exception):
    """Not an NVMLError, as in nvidia-ml-py."""


class NVMLError(Exception):
    _valClassMapping: dict[int, type] = {}

    def __new__(cls, value: int):
        if cls is NVMLError:
            cls = NVMLError._valClassMapping.get(value, cls)
        obj = Exception.__new__(cls)
        obj.value = value
        return obj

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)

    def __str__(self) -> str:
        return _MESSAGES.get(self.value, f"NVML Error with code {self.value}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NVMLError) and self.value == other.value

    __hash__ = Exception.__hash__


def _make_error_classes() -> None:
    """NVML_ERROR_GPU_IS_LOST -> NVMLError_GpuIsLost, one subclass per code."""
    module = sys.modules[__name__]
    for name in [n for n in dir(module) if n.startswith("NVML_ERROR_")]:
        class_name = "NVMLError_" + string.capwords(
            name.replace("NVML_ERROR_", ""), "_").replace("_", "")
        code = getattr(module, name)

        def new(cls, *args, _code=code):
            return NVMLError.__new__(cls, _code)
        cls = type(class_name, (NVMLError,), {"__new__": new})
        cls.__module__ = __name__
        setattr(module, class_name, cls)
        NVMLError._valClassMapping[code] = cls


_make_error_classes()

_state: dict = {"driver": "550.54.15", "gpus": []}
_file_mtime: int | None = None
_initialised = 0
_clock: Callable[[], float] = time.monotonic
_sleep: Callable[[float], None] = time.sleep
_loaded_at = _clock()
calls: dict[str, int] = {}
calls_by_gpu: dict[tuple[str, int], int] = {}


def set_state(state: dict) -> None:
    global _state, _loaded_at
    _state = state
    _loaded_at = _clock()


def reset() -> None:
    """Forget call counts and initialisation (between in-process tests)."""
    global _initialised
    _initialised = 0
    calls.clear()
    calls_by_gpu.clear()


def _load() -> dict:
    global _state, _file_mtime, _loaded_at
    path = os.environ.get("FAKE_NVML_STATE")
    if path:
        try:
            mtime = os.stat(path).st_mtime_ns
        except FileNotFoundError:
            return _state
        if mtime != _file_mtime:
            with open(path, encoding="utf-8") as handle:
                _state = json.load(handle)
            _file_mtime = mtime
            _loaded_at = _clock()
    return _state


def _count(name: str, index: int | None = None) -> None:
    calls[name] = calls.get(name, 0) + 1
    if index is not None:
        calls_by_gpu[(name, index)] = calls_by_gpu.get((name, index), 0) + 1


def _raise(name: str) -> None:
    raise NVMLError(globals()[name])


def _function(name: str) -> None:
    """The driver lacks this entry point: nvidia-ml-py raises FUNCTION_NOT_FOUND."""
    if name in _load().get("missing_functions", ()):
        raise NVMLError(NVML_ERROR_FUNCTION_NOT_FOUND)


def _check_init() -> None:
    if not _initialised:
        raise NVMLError(NVML_ERROR_UNINITIALIZED)


class _Handle:
    """An opaque device handle, like pynvml's c_nvmlDevice_t pointer."""

    def __init__(self, index: int, mig: int | None = None) -> None:
        self.index, self.mig = index, mig

    def __repr__(self) -> str:
        return f"<c_nvmlDevice_t {self.index}{'' if self.mig is None else f'/{self.mig}'}>"


def _gpu(handle: _Handle, call: str) -> dict:
    _check_init()
    _count(call, handle.index)
    gpus = _load()["gpus"]
    if handle.index >= len(gpus):
        raise NVMLError(NVML_ERROR_GPU_IS_LOST)
    gpu = gpus[handle.index]
    if gpu.get("block_s"):
        _sleep(float(gpu["block_s"]))
    if gpu.get("error"):
        _raise(gpu["error"])
    per_call = (gpu.get("errors") or {}).get(call)
    if per_call:
        _raise(per_call)
    return gpu


def nvmlInit() -> None:
    global _initialised
    _count("nvmlInit")
    error = _load().get("init_error")
    if error:
        _raise(error)
    _initialised += 1


def nvmlShutdown() -> None:
    global _initialised
    _count("nvmlShutdown")
    _check_init()
    _initialised -= 1


def nvmlSystemGetDriverVersion() -> str:
    _check_init()
    return _load().get("driver", "550.54.15")


def nvmlDeviceGetCount() -> int:
    _check_init()
    _count("nvmlDeviceGetCount")
    return len(_load()["gpus"])


def nvmlDeviceGetHandleByIndex(index: int) -> _Handle:
    _count("nvmlDeviceGetHandleByIndex", index)
    if index >= nvmlDeviceGetCount():
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    gpu = _load()["gpus"][index]
    if gpu.get("handle_error"):
        _raise(gpu["handle_error"])
    return _Handle(index)


def nvmlDeviceGetName(handle: _Handle) -> str:
    return _gpu(handle, "nvmlDeviceGetName")["name"]


def nvmlDeviceGetUUID(handle: _Handle) -> str:
    return _gpu(handle, "nvmlDeviceGetUUID")["uuid"]


def nvmlDeviceGetPciInfo(handle: _Handle):
    return SimpleNamespace(busId=_gpu(handle, "nvmlDeviceGetPciInfo")["pci"])


def nvmlDeviceGetTotalEnergyConsumption(handle: _Handle) -> int:
    gpu = _gpu(handle, "nvmlDeviceGetTotalEnergyConsumption")
    if gpu.get("energy_mj") is None:
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    energy = int(gpu["energy_mj"])
    step = gpu.get("step_ms")
    if step:  # the driver updates the counter in steps, not continuously
        steps = int((_clock() - _loaded_at) * 1000 // step)
        energy += steps * int(gpu.get("power_mw", 0) * step // 1000)
    return energy


def nvmlDeviceGetPowerUsage(handle: _Handle) -> int:
    return int(_gpu(handle, "nvmlDeviceGetPowerUsage")["power_mw"])


def nvmlDeviceGetEnforcedPowerLimit(handle: _Handle) -> int:
    return int(_gpu(handle, "nvmlDeviceGetEnforcedPowerLimit")["limit_mw"])


def nvmlDeviceGetMigMode(handle: _Handle):
    gpu = _gpu(handle, "nvmlDeviceGetMigMode")
    if "mig" not in gpu:
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)  # not a MIG-capable GPU
    return [1, 1] if gpu["mig"] else [0, 0]


def nvmlDeviceGetMaxMigDeviceCount(handle: _Handle) -> int:
    gpu = _gpu(handle, "nvmlDeviceGetMaxMigDeviceCount")
    return int(gpu.get("mig_slices", 7)) if gpu.get("mig") else 0


def _mig(handle: _Handle, call: str) -> dict:
    gpu = _gpu(handle, call)
    devices = gpu.get("mig_devices", [])
    if not gpu.get("mig") or handle.mig is None or handle.mig >= len(devices):
        raise NVMLError(NVML_ERROR_NOT_FOUND)
    return devices[handle.mig]


def nvmlDeviceGetMigDeviceHandleByIndex(handle: _Handle, index: int) -> _Handle:
    mig = _Handle(handle.index, index)
    _mig(mig, "nvmlDeviceGetMigDeviceHandleByIndex")
    return mig


def _processes(entries) -> list:
    # nvmlStructToFriendlyObject of c_nvmlProcessInfo_v3_t: the four fields, in this order
    return [SimpleNamespace(pid=p["pid"], usedGpuMemory=p.get("used_mem"),
                            gpuInstanceId=p.get("gi", 0xFFFFFFFF),
                            computeInstanceId=p.get("ci", 0xFFFFFFFF))
            for p in entries or ()]


def _running(handle: _Handle, call: str) -> list:
    if handle.mig is not None:
        return _processes(_mig(handle, call).get("processes"))
    return _processes(_gpu(handle, call).get("processes"))


def nvmlDeviceGetComputeRunningProcesses_v2(handle: _Handle) -> list:
    _function("nvmlDeviceGetComputeRunningProcesses_v2")
    return _running(handle, "nvmlDeviceGetComputeRunningProcesses_v2")


def nvmlDeviceGetComputeRunningProcesses_v3(handle: _Handle) -> list:
    _function("nvmlDeviceGetComputeRunningProcesses_v3")
    return _running(handle, "nvmlDeviceGetComputeRunningProcesses_v3")


def nvmlDeviceGetComputeRunningProcesses(handle: _Handle) -> list:
    """Unversioned: calls _v3; a driver without it is a library mismatch (not NVMLError)."""
    _count("nvmlDeviceGetComputeRunningProcesses")
    try:
        return nvmlDeviceGetComputeRunningProcesses_v3(handle)
    except NVMLError_FunctionNotFound:  # type: ignore[name-defined]  # noqa: F821
        raise NVMLLibraryMismatchError(
            "Unversioned function called and the pyNVML version does not match the NVML lib "
            "version. Either use matching pyNVML and NVML lib versions or use a versioned "
            "function such as nvmlDeviceGetComputeRunningProcesses_v2") from None


def nvmlDeviceGetProcessUtilization(handle: _Handle, timeStamp: int) -> list:
    _function("nvmlDeviceGetProcessUtilization")
    if handle.mig is not None:
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    gpu = _gpu(handle, "nvmlDeviceGetProcessUtilization")
    if gpu.get("mig") or gpu.get("samples", []) is None:
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    samples = [SimpleNamespace(pid=x["pid"], timeStamp=x["ts"], smUtil=x.get("sm", 0),
                               memUtil=x.get("mem", 0), encUtil=0, decUtil=0)
               for x in gpu.get("samples", []) if x["ts"] > timeStamp]
    if not samples:
        raise NVMLError(NVML_ERROR_NOT_FOUND)
    return samples


def nvmlDeviceGetAttributes(handle: _Handle):
    """NVML documents this for MIG device handles only."""
    if handle.mig is None:
        _gpu(handle, "nvmlDeviceGetAttributes")
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    device = _mig(handle, "nvmlDeviceGetAttributes")
    slices = device.get("slices", 1)
    return SimpleNamespace(multiprocessorCount=device["sm"], sharedCopyEngineCount=1,
                           sharedDecoderCount=0, sharedEncoderCount=0, sharedJpegCount=0,
                           sharedOfaCount=0, gpuInstanceSliceCount=slices,
                           computeInstanceSliceCount=slices,
                           memorySizeMB=device.get("memory_mb", 10240))
