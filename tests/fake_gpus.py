"""GPU descriptions for tests/fakes/pynvml.py and a clean fake per test, shared by the NVML
tests (test_nvml.py, test_nvml_failures.py)."""

from __future__ import annotations

from typing import Iterator

import pytest

from tests.fakes import pynvml as fake
from tests.harness import FakeClock

DRIVER = "550.54.15"


def gpu(index: int, energy_mj: int | None = 1_000_000, **extra) -> dict:
    """One H100 as the fake describes it; power differs per index so readings tell GPUs apart."""
    return {"name": "NVIDIA H100 80GB HBM3", "uuid": f"GPU-00000000-0000-0000-0000-{index:012d}",
            "pci": f"00000000:{0x18 + index:02X}:00.0", "energy_mj": energy_mj,
            "power_mw": 250_000 + index * 1000, "limit_mw": 700_000, "error": None,
            "mig": False, **extra}


def state(*gpus: dict, **extra) -> dict:
    """Install these GPUs (and extra top-level keys) as the fake's state; returns it."""
    value = {"driver": DRIVER, "gpus": list(gpus), **extra}
    fake.set_state(value)
    return value


def clocked(monkeypatch: pytest.MonkeyPatch, clock: FakeClock | None = None) -> FakeClock:
    """The fake on a test clock: a GPU's block_s advances it (a call that "takes" that long)
    and step_ms counters step on it. Give the same clock to the source under test."""
    clock = clock or FakeClock()
    monkeypatch.setattr(fake, "_clock", clock)
    monkeypatch.setattr(fake, "_sleep", clock.advance)
    monkeypatch.setattr(fake, "_loaded_at", clock())
    return clock


def clean_fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The fake is a module: give every test a clean one (body of an autouse fixture)."""
    monkeypatch.delenv("FAKE_NVML_STATE", raising=False)
    fake.set_state({"driver": DRIVER, "gpus": []})
    monkeypatch.setattr(fake, "_initialised", 0)
    monkeypatch.setattr(fake, "_file_mtime", None)
    fake.reset()
    yield
    fake.reset()
