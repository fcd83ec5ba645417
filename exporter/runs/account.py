"""What one run adds up, sample by sample, in either mode.

Each sample hands the account the run's share of every component's energy (already split by
attribution: CPU time for cpu/dram, NVML process shares for gpu), the node's measured energy
and idle part, the gCO2e per joule of each component in that sample (intensity x PUE, as the
ledger applied it), and the embodied grams the run is charged for the sample's time. Totals
only grow; per-sample power gives mean and peak.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from exporter.carbon import Intensity


@dataclass(slots=True)
class ComponentTotal:
    joules: float = 0.0
    grams: float = 0.0  # operational
    embodied_grams: float = 0.0
    devices: dict[str, str] = field(default_factory=dict)  # device -> source (rapl, nvml, model)


@dataclass(slots=True)
class IntensitySeen:
    """An intensity value in force during the run and the energy it applied to."""

    intensity: Intensity
    joules: float = 0.0


class RunAccount:
    """Thread-safe: the sampler adds from its thread, the run reads at the end."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.components: dict[str, ComponentTotal] = {}
        self.node_joules: dict[str, float] = {}
        self.node_grams = 0.0
        self.idle_joules = 0.0
        self.samples = 0
        self.seconds = 0.0
        self.peak_watts = 0.0
        self.intensities: list[IntensitySeen] = []
        self.pue = 1.0

    def add(self, run_joules: dict[str, float], node_joules: dict[str, float],
            idle_joules: float, grams_per_joule: dict[str, float], embodied: dict[str, float],
            devices: dict[str, dict[str, str]], intensity: Intensity, pue: float,
            seconds: float) -> None:
        """One sample. run_joules/node_joules/grams_per_joule/embodied: by component."""
        with self._lock:
            self.samples += 1
            if seconds > 0:
                self.seconds += seconds
            self.pue = pue
            components = self.components
            sample_joules = 0.0
            for component, joules in run_joules.items():
                total = components.get(component)
                if total is None:
                    total = components[component] = ComponentTotal()
                if joules > 0:
                    total.joules += joules
                    total.grams += joules * grams_per_joule.get(component, 0.0)
                    sample_joules += joules
                sources = devices.get(component)
                if sources:
                    total.devices.update(sources)
            for component, grams in embodied.items():
                total = components.get(component)
                if total is None:
                    total = components[component] = ComponentTotal()
                total.embodied_grams += grams
                if component not in run_joules:
                    sources = devices.get(component)
                    if sources:
                        total.devices.update(sources)
            node = self.node_joules
            for component, joules in node_joules.items():
                node[component] = node.get(component, 0.0) + joules
                self.node_grams += joules * grams_per_joule.get(component, 0.0)
            self.idle_joules += idle_joules
            if seconds > 0 and sample_joules / seconds > self.peak_watts:
                self.peak_watts = sample_joules / seconds
            intensities = self.intensities
            if not intensities or intensities[-1].intensity != intensity:
                intensities.append(IntensitySeen(intensity))
            intensities[-1].joules += sample_joules

    def snapshot(self) -> "RunAccount":
        """A consistent copy to build the record from while sampling may go on."""
        with self._lock:
            copy = RunAccount()
            copy.components = {c: ComponentTotal(t.joules, t.grams, t.embodied_grams,
                                                 dict(t.devices))
                               for c, t in self.components.items()}
            copy.node_joules = dict(self.node_joules)
            copy.node_grams = self.node_grams
            copy.idle_joules = self.idle_joules
            copy.samples = self.samples
            copy.seconds = self.seconds
            copy.peak_watts = self.peak_watts
            copy.intensities = [IntensitySeen(i.intensity, i.joules) for i in self.intensities]
            copy.pue = self.pue
            return copy

    @property
    def joules(self) -> float:
        return sum(t.joules for t in self.components.values())


def embodied_share(rates: dict[tuple[str, str], float], seconds: float,
                   run_joules: dict[str, float], node_joules: dict[str, float],
                   gpu_share: dict[str, float]) -> dict[str, float]:
    """Embodied grams charged to the run for one sample, by component: each device's
    amortisation for the sample's time times the run's share of that device's use: a GPU by
    the run's share of its energy, the server (component other) by the run's share of the
    CPU's energy (the GSF SCI's resource share, measured by energy)."""
    out: dict[str, float] = {}
    cpu_node = node_joules.get("cpu", 0.0)
    cpu_share = run_joules.get("cpu", 0.0) / cpu_node if cpu_node > 0 else 0.0
    for (component, device), rate in rates.items():
        share = gpu_share.get(device, 0.0) if component == "gpu" else cpu_share
        share = min(1.0, max(0.0, share))
        if share > 0:
            out[component] = out.get(component, 0.0) + rate * max(0.0, seconds) * share
    return out
