"""Embodied (manufacturing) emissions, amortised evenly over the hardware's service life.

Per device: grams per second = kgCO2e x 1000 / lifetime seconds, added at every sample for
the time since the last one, so carbon_emissions_grams_total{scope="embodied"} grows while
the exporter runs, next to the operational series (the time-share form of the GSF SCI's M).
GPUs (component gpu, device gpu-N): embodied.gpu_kgco2e, else the bundled table's first row
whose pattern matches the NVML name. The server without its GPUs (component other,
device server): embodied.server_kgco2e, else the row named by embodied.server_model.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from exporter import data
from exporter.confutil import ConfigError


@dataclass(frozen=True, slots=True)
class EmbodiedRow:
    kind: str  # gpu, server
    name: str
    pattern: str
    kgco2e: float
    source: str


@functools.lru_cache(maxsize=1)
def embodied_table() -> tuple[EmbodiedRow, ...]:
    return tuple(EmbodiedRow(r["kind"], r["name"], r["pattern"], float(r["kgco2e"]), r["source"])
                 for r in data.rows("embodied.csv"))


@functools.lru_cache(maxsize=64)  # per GPU name: the rates are asked at every sample
def gpu_row(name: str) -> EmbodiedRow | None:
    return next((r for r in embodied_table()
                 if r.kind == "gpu" and re.search(r.pattern, name, re.IGNORECASE)), None)


class Embodied:
    """Not thread-safe: used from the sampler's task only."""

    def __init__(self, config) -> None:
        self.totals: dict[tuple[str, str], float] = {}  # (component, device) -> grams
        self.configure(config)

    def configure(self, config) -> None:
        """(Re)read the settings; totals so far are kept (counters never go back)."""
        self._rates_for: object = None  # the GPUs self._rates was worked out for
        self._rates: dict[tuple[str, str], float] = {}
        self.enabled = config.embodied_enabled
        self.lifetime = config.embodied_lifetime
        self.gpu_kg = config.embodied_gpu_kgco2e
        server_kg = config.embodied_server_kgco2e
        if server_kg is None and config.embodied_server_model:
            row = next((r for r in embodied_table() if r.kind == "server"
                        and r.name == config.embodied_server_model), None)
            if row is None:
                names = ", ".join(r.name for r in embodied_table() if r.kind == "server")
                raise ConfigError(f"embodied.server_model: {config.embodied_server_model!r} is not a "
                                  f"server row of the bundled table (rows: {names})")
            server_kg = row.kgco2e
        self.server_kg = server_kg

    def rates(self, gpus) -> dict[tuple[str, str], float]:
        """grams per second per device present now (the same dict while the devices and the
        settings stay: asked at every sample; not to be changed by the caller)."""
        if gpus == self._rates_for:
            return self._rates
        self._rates_for, self._rates = gpus, self._work_out(gpus)
        return self._rates

    def _work_out(self, gpus) -> dict[tuple[str, str], float]:
        if not self.enabled:
            return {}
        per_kg = 1000.0 / self.lifetime
        rates = {}
        if self.server_kg:
            rates[("other", "server")] = self.server_kg * per_kg
        for gpu in gpus:
            kg = self.gpu_kg
            if kg is None:
                row = gpu_row(gpu.name)
                kg = row.kgco2e if row else None
            if kg:
                rates[("gpu", gpu.device)] = kg * per_kg
        return rates

    def update(self, gpus, seconds: float) -> float:
        """Add `seconds` of amortisation for the devices present; grams per second now."""
        rates = self.rates(gpus)
        for key, rate in rates.items():
            self.totals[key] = self.totals.get(key, 0.0) + rate * max(0.0, seconds)
        return sum(rates.values())
