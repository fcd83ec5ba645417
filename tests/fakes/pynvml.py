"""A fake of the `pynvml` module (nvidia-ml-py), the one hardware boundary faked in CI.

It implements the calls carbon-exporter makes, with pynvml's names, return units
(milliwatts, millijoules) and error type. State comes from set_state() in-process, or from
the JSON file named by FAKE_NVML_STATE (re-read when it changes), so a test can drive a
real exporter process:

    {"driver": "550.54.15", "init_error": null,
     "gpus": [{"name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-...", "pci": "00000000:18:00.0",
               "energy_mj": 1000, "power_mw": 300000, "limit_mw": 700000,
               "error": null, "mig": false, "processes": []}]}

energy_mj null means the GPU has no energy counter (pre-Volta): NOT_SUPPORTED. error set to
an NVML error name makes every call on that GPU raise it.

Per-process state for attribution, in the shapes pynvml returns:
  "processes": [{"pid": 4242, "used_mem": 2147483648}]    nvmlDeviceGetComputeRunningProcesses
  "samples": [{"pid": 4242, "ts": 1700000000000000, "sm": 80, "mem": 30}]
      nvmlDeviceGetProcessUtilization(handle, lastSeenTimeStamp) returns the samples newer than
      lastSeenTimeStamp, raises NOT_FOUND when there is none; "samples": null -> NOT_SUPPORTED
  "mig": true, "mig_devices": [{"sm": 42, "processes": [...]}]   MIG instances
"""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_UNKNOWN = 999
NVML_DEVICE_MIG_DISABLE = 0
NVML_DEVICE_MIG_ENABLE = 1

_NAMES = {v: k for k, v in dict(globals()).items() if k.startswith("NVML_ERROR_")}
NVML_VALUE_NOT_AVAILABLE_ulonglong = 2**64 - 1


class NVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return _NAMES.get(self.value, f"NVML error {self.value}").replace("NVML_ERROR_", "").replace("_", " ").title()


_state: dict = {"driver": "550.54.15", "gpus": []}
_file_mtime: float | None = None
_initialised = 0
calls: dict[str, int] = {}


def set_state(state: dict) -> None:
    global _state
    _state = state


def _load() -> dict:
    global _state, _file_mtime
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
    return _state


def _count(name: str) -> None:
    calls[name] = calls.get(name, 0) + 1


def _gpu(handle) -> dict:
    if not _initialised:
        raise NVMLError(NVML_ERROR_UNINITIALIZED)
    gpus = _load()["gpus"]
    if handle >= len(gpus):
        raise NVMLError(NVML_ERROR_GPU_IS_LOST)
    gpu = gpus[handle]
    if gpu.get("error"):
        raise NVMLError(globals()[gpu["error"]])
    return gpu


def nvmlInit() -> None:
    global _initialised
    _count("nvmlInit")
    error = _load().get("init_error")
    if error:
        raise NVMLError(globals()[error])
    _initialised += 1


def nvmlShutdown() -> None:
    global _initialised
    _count("nvmlShutdown")
    if not _initialised:
        raise NVMLError(NVML_ERROR_UNINITIALIZED)
    _initialised -= 1


def nvmlSystemGetDriverVersion() -> str:
    return _load().get("driver", "550.54.15")


def nvmlDeviceGetCount() -> int:
    if not _initialised:
        raise NVMLError(NVML_ERROR_UNINITIALIZED)
    return len(_load()["gpus"])


def nvmlDeviceGetHandleByIndex(index: int) -> int:
    if index >= nvmlDeviceGetCount():
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    return index


def nvmlDeviceGetName(handle) -> str:
    return _gpu(handle)["name"]


def nvmlDeviceGetUUID(handle) -> str:
    return _gpu(handle)["uuid"]


def nvmlDeviceGetPciInfo(handle):
    return SimpleNamespace(busId=_gpu(handle)["pci"].encode())


def nvmlDeviceGetTotalEnergyConsumption(handle) -> int:
    _count("nvmlDeviceGetTotalEnergyConsumption")
    gpu = _gpu(handle)
    if gpu.get("energy_mj") is None:
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    return int(gpu["energy_mj"])


def nvmlDeviceGetPowerUsage(handle) -> int:
    _count("nvmlDeviceGetPowerUsage")
    return int(_gpu(handle)["power_mw"])


def nvmlDeviceGetEnforcedPowerLimit(handle) -> int:
    return int(_gpu(handle)["limit_mw"])


def nvmlDeviceGetMigMode(handle):
    gpu = _gpu(handle)
    return (1, 1) if gpu.get("mig") else (0, 0)


def nvmlDeviceGetMaxMigDeviceCount(handle) -> int:
    return 7 if _gpu(handle).get("mig") else 0


def nvmlDeviceGetMigDeviceHandleByIndex(handle, index):
    gpu = _gpu(handle)
    if not gpu.get("mig") or index >= len(gpu.get("mig_devices", [])):
        raise NVMLError(NVML_ERROR_NOT_FOUND)
    return (handle, index)


def _processes(entries) -> list:
    # pynvml returns c_nvmlProcessInfo_v3_t turned into plain objects (nvmlStructToFriendlyObject)
    return [SimpleNamespace(pid=p["pid"], usedGpuMemory=p.get("used_mem"),
                            gpuInstanceId=p.get("gi", 0xFFFFFFFF),
                            computeInstanceId=p.get("ci", 0xFFFFFFFF),
                            usedGpuCcProtectedMemory=0) for p in entries or ()]


def _mig(handle) -> dict:
    parent, index = handle
    gpu = _gpu(parent)
    devices = gpu.get("mig_devices", [])
    if not gpu.get("mig") or index >= len(devices):
        raise NVMLError(NVML_ERROR_NOT_FOUND)
    return devices[index]


def nvmlDeviceGetComputeRunningProcesses(handle) -> list:
    _count("nvmlDeviceGetComputeRunningProcesses")
    if isinstance(handle, tuple):
        return _processes(_mig(handle).get("processes"))
    return _processes(_gpu(handle).get("processes"))


def nvmlDeviceGetProcessUtilization(handle, timeStamp: int) -> list:
    _count("nvmlDeviceGetProcessUtilization")
    if isinstance(handle, tuple):
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    gpu = _gpu(handle)
    if gpu.get("mig") or gpu.get("samples", []) is None:
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    samples = [SimpleNamespace(pid=x["pid"], timeStamp=x["ts"], smUtil=x.get("sm", 0),
                               memUtil=x.get("mem", 0), encUtil=0, decUtil=0)
               for x in gpu.get("samples", []) if x["ts"] > timeStamp]
    if not samples:
        raise NVMLError(NVML_ERROR_NOT_FOUND)
    return samples


def nvmlDeviceGetAttributes(handle):
    if not isinstance(handle, tuple):
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    device = _mig(handle)
    return SimpleNamespace(multiprocessorCount=device["sm"], sharedCopyEngineCount=1,
                           sharedDecoderCount=0, sharedEncoderCount=0, sharedJpegCount=0,
                           sharedOfaCount=0, gpuInstanceSliceCount=device.get("slices", 1),
                           computeInstanceSliceCount=device.get("slices", 1),
                           memorySizeMB=device.get("memory_mb", 10240))
