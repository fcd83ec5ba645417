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

_NAMES = {v: k for k, v in dict(globals()).items() if k.startswith("NVML_ERROR_")}


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
