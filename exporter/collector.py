"""prometheus_client custom collector: renders the sampler's latest Snapshot, no I/O."""

from __future__ import annotations

import platform
from typing import Callable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from exporter import __version__, metrics
from exporter.metrics import MetricSpec
from exporter.sampler import Snapshot
from exporter.version import build_info

_FAMILY = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily, "summary": SummaryMetricFamily}


def family(spec: MetricSpec):
    return _FAMILY[spec.type](spec.family_name, spec.help, labels=spec.labels)


def grid_families(grid) -> Iterator[Metric]:
    """Forecast, index and provider states from the chain's GridState (None: no chain)."""
    low, start = family(metrics.GRID_FORECAST_MIN), family(metrics.GRID_FORECAST_MIN_START)
    index, up = family(metrics.GRID_INDEX), family(metrics.GRID_PROVIDER_UP)
    status = family(metrics.GRID_PROVIDER_STATUS)
    if grid is not None:
        if grid.forecast_min is not None:
            f = grid.forecast_min
            low.add_metric([f.grid_zone, f.provider], f.grams_per_kwh)
            start.add_metric([f.grid_zone, f.provider], f.start)
        for zone, provider, value in grid.indexes:
            index.add_metric([zone, provider], value)
        for p in grid.providers:
            # one _up series per provider whatever the reason, so for: and history hold
            up.add_metric([p.name], 1 if p.up else 0)
            status.add_metric([p.name, p.reason], 1)
    yield from (low, start, index, up, status)


class SnapshotCollector(Collector):
    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot
        build = build_info()
        self._build = (__version__, build.revision, build.builddate, platform.python_version())

    def describe(self) -> Iterator[Metric]:
        # Lets registration skip collect(); the families are the same whatever the snapshot.
        live = set(metrics.LIVE) | set(metrics.EXPORTER_SELF)  # exporter/selfmetrics.py's
        for spec in metrics.ALL:
            if spec not in live:
                yield family(spec)

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()

        energy, power = family(metrics.ENERGY), family(metrics.POWER)
        emissions = family(metrics.EMISSIONS)
        for s in snap.energy:
            labels = [s.component, s.device, s.source]
            energy.add_metric(labels, s.joules)
            if s.watts is not None:
                power.add_metric(labels, s.watts)
            emissions.add_metric([s.component, s.device, "operational"], s.grams)
        for component, device, grams in snap.embodied:
            emissions.add_metric([component, device, "embodied"], grams)
        yield energy
        yield power
        yield emissions

        peak, budget = family(metrics.POWER_PEAK), family(metrics.POWER_BUDGET)
        for component, device, source, watts in snap.peaks:
            peak.add_metric([component, device, source], watts)
        for scope, device, watts in snap.budgets:
            budget.add_metric([scope, device], watts)
        yield peak
        yield budget

        rate = family(metrics.EMISSIONS_RATE)
        if snap.grams_per_second is not None:
            rate.add_metric(["operational"], snap.grams_per_second)
        if snap.embodied_grams_per_second is not None:
            rate.add_metric(["embodied"], snap.embodied_grams_per_second)
        yield rate

        meter, meter_power = family(metrics.PLATFORM_ENERGY), family(metrics.PLATFORM_POWER)
        for device, source, joules, meter_watts in snap.platform:
            meter.add_metric([device, source], joules)
            if meter_watts is not None:
                meter_power.add_metric([device, source], meter_watts)
        yield meter
        yield meter_power

        domains = family(metrics.RAPL_DOMAIN_ENERGY)
        for domain, device, joules in snap.rapl_domains:
            domains.add_metric([domain, device], joules)
        yield domains

        limits, info = family(metrics.GPU_POWER_LIMIT), family(metrics.GPU_INFO)
        for gpu in snap.gpus:
            info.add_metric([gpu.device, gpu.uuid, gpu.name, gpu.driver_version, gpu.pci_bus_id], 1)
            if gpu.power_limit_watts is not None:
                limits.add_metric([gpu.device, gpu.uuid], gpu.power_limit_watts)
        yield limits
        yield info

        intensity, age = family(metrics.GRID_INTENSITY), family(metrics.GRID_INTENSITY_AGE)
        if snap.intensity is not None:
            i = snap.intensity
            intensity.add_metric([i.grid_zone, i.provider, i.kind, i.basis], i.grams_per_kwh)
            age.add_metric([i.grid_zone, i.provider], snap.intensity_age)
        yield intensity
        yield age
        yield from grid_families(snap.grid)

        pue = family(metrics.PUE)
        pue.add_metric([], snap.pue)
        yield pue

        up, duration = family(metrics.COLLECTOR_UP), family(metrics.SAMPLE_DURATION)
        status = family(metrics.COLLECTOR_STATUS)
        model = family(metrics.MODEL_INFO)
        for c in snap.collectors:
            # one _up series per collector whatever the reason, so for: and history hold
            up.add_metric([c.name], 1 if c.status.up else 0)
            status.add_metric([c.name, c.status.reason], 1)
            duration.add_metric([c.name], count_value=c.duration_count, sum_value=c.duration_sum)
            if c.status.up and c.status.method:
                model.add_metric([c.name, c.status.method, c.status.detail], 1)
        yield up
        yield status
        yield model
        yield duration

        glitches = family(metrics.ENERGY_GLITCHES)
        for collector, device, domain, reason, count in snap.glitches:
            glitches.add_metric([collector, device, domain, reason], count)
        yield glitches

        energy, emissions = family(metrics.WORKLOAD_ENERGY), family(metrics.WORKLOAD_EMISSIONS)
        for w in snap.workloads:
            labels = [w.component, w.kind, w.namespace, w.pod, w.container, w.unit, w.workload_job]
            energy.add_metric(labels, w.joules)
            emissions.add_metric(labels, w.grams)
        yield energy
        yield emissions
        split = family(metrics.WORKLOAD_GPU_SPLIT)
        for device, basis in snap.gpu_split:
            split.add_metric([device, basis], 1)
        yield split

        last = family(metrics.LAST_SAMPLE)
        if snap.timestamp is not None:
            last.add_metric([], snap.timestamp)
        yield last

        build = family(metrics.BUILD_INFO)
        build.add_metric(list(self._build), 1)
        yield build
