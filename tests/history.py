"""Known exporter history for the report tests: two nodes over 2024-03-01 00:00-04:00 UTC,
sampled every minute, written as OpenMetrics for `promtool tsdb create-blocks-from
openmetrics`. Every quantity is piecewise constant between whole minutes, so the expected
totals are exact sums over minutes, computed here without the report's code.

node-a (DE): cpu rapl 100 W, gpu nvml 300 W (0 W while the NVML collector fails
03:30-03:35), dram model 10 W, PUE 1.2, embodied 0.01 g/s. Scrape gap 01:30-01:40.
Intensity by hour 400, 300, 100, then the provider fails after 02:00 (timeout): 100 is held
(its age grows) until a fresh 200 arrives at 03:21, so it is stale (> 1 h old) from 03:00 to
03:21.
Pod ml/train-1 uses 250 W of GPU 00:30-01:30; pod web/api-0 20 W of CPU all along.
node-b (FR): cpu model 50 W, PUE 1.1, intensity 50; its exporter restarts at 02:00:30
(counters start over; the 30 s before the restart are lost).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

T0 = 1709251200  # 2024-03-01T00:00:00Z
START, END = T0, T0 + 4 * 3600  # the report window
FIRST, LAST = T0 - 1800, T0 + 4 * 3600 + 1800  # the stored history
MINUTE = 60
HOUR = 3600
NODE_A, NODE_B, JOB = "node-a:9875", "node-b:9875", "carbon-exporter"
GAP = (T0 + 90 * MINUTE, T0 + 100 * MINUTE)  # no scrape strictly inside
NVML_DOWN = (T0 + 210 * MINUTE, T0 + 215 * MINUTE)
STALE_FROM, FRESH_AT = T0 + 2 * HOUR, T0 + 201 * MINUTE
RESTART_B = T0 + 2 * HOUR + 30
TRAIN = (T0 + 30 * MINUTE, T0 + 90 * MINUTE)
PUE = {NODE_A: 1.2, NODE_B: 1.1}
FORECAST_MIN_A = 80.0
EMBODIED_A = 0.01  # g/s


def intensity(node: str, t: float) -> float:
    """gCO2e/kWh in force at t (a change takes effect at its minute)."""
    if node == NODE_B:
        return 50.0
    if t < T0 + HOUR:
        return 400.0
    if t < T0 + 2 * HOUR:
        return 300.0
    return 100.0 if t < FRESH_AT else 200.0


def intensity_age(node: str, t: float) -> float:
    if node == NODE_A and STALE_FROM < t < FRESH_AT:
        return t - STALE_FROM
    return 0.0


def _between(t: float, span: tuple[float, float]) -> bool:
    return span[0] <= t < span[1]


@dataclass(frozen=True)
class Device:
    node: str
    component: str
    device: str
    source: str
    watts: Callable[[float], float]


DEVICES = (
    Device(NODE_A, "cpu", "package-0", "rapl", lambda t: 100.0),
    Device(NODE_A, "gpu", "gpu-0", "nvml", lambda t: 0.0 if _between(t, NVML_DOWN) else 300.0),
    Device(NODE_A, "dram", "node", "model", lambda t: 10.0),
    Device(NODE_B, "cpu", "node", "model", lambda t: 50.0),
)
WORKLOADS = (
    # (labels, component, watts(t), first, last): the series exists from first to last
    ({"kind": "pod", "namespace": "ml", "pod": "train-1"}, "gpu",
     lambda t: 250.0 if _between(t, TRAIN) else 0.0, TRAIN[0], TRAIN[1]),
    ({"kind": "pod", "namespace": "web", "pod": "api-0"}, "cpu", lambda t: 20.0, FIRST, LAST),
)


STEP = 30  # every quantity here changes only at multiples of 30 s


def integrate(f: Callable[[float], float], a: float, b: float) -> float:
    """Exact integral of a function that is constant between multiples of STEP seconds."""
    assert a % STEP == 0 and b % STEP == 0
    return math.fsum(f(t + STEP / 2) * STEP for t in range(int(a), int(b), STEP))


def lost(node: str, t: float) -> bool:
    """Energy the node's exporter never counted (down between its last scrape and restart)."""
    return node == NODE_B and T0 + 2 * HOUR <= t < RESTART_B


def counter_start(node: str, t: float) -> float:
    """Where the node's counters start counting from at time t (0 after a restart)."""
    return RESTART_B if node == NODE_B and t >= RESTART_B else FIRST - 3600


def sample_times(node: str) -> list[int]:
    times = range(FIRST, LAST + 1, MINUTE)
    if node == NODE_A:
        return [t for t in times if not GAP[0] < t < GAP[1]]
    return list(times)


def energy_counter(device: Device, t: float) -> float:
    start = counter_start(device.node, t)
    return 1e6 * (device.node == NODE_A) + integrate(device.watts, start, t)


def emissions_counter(device: Device, t: float) -> float:
    start = counter_start(device.node, t)
    pue = PUE[device.node]
    return integrate(lambda s: device.watts(s) * intensity(device.node, s) * pue / 3.6e6,
                     start, t)


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


# carbon_model_info of the modelled series above (dram on A, cpu on B)
MODELS = (
    (NODE_A, "dram-model", "all_memory", "16.0 GiB installed (CPU measured by RAPL): 16.0 GiB x "
                                         "0.392 W/GiB = 6.3 W"),
    (NODE_B, "cpu-model", "tdp_curve", "EPYC 7763: TDP 280 W x VM share 4/128 threads = 8.75 W"),
)


def openmetrics() -> str:
    """The whole history; families grouped, each series' samples in time order."""
    lines: list[str] = []

    def family(name: str, kind: str, series: list[tuple[str, list[tuple[int, float]]]]):
        lines.append(f"# TYPE {name} {kind}")
        suffix = "_total" if kind == "counter" else ""
        for labels, points in series:
            lines.extend(f"{name}{suffix}{labels} {v!r} {t}" for t, v in points)

    def node_of(node: str) -> dict[str, str]:
        return {"job": JOB, "instance": node}

    family("carbon_energy_joules", "counter", [
        (_labels(**node_of(d.node), component=d.component, device=d.device, source=d.source),
         [(t, energy_counter(d, t)) for t in sample_times(d.node)]) for d in DEVICES])
    emissions = [
        (_labels(**node_of(d.node), component=d.component, device=d.device,
                 scope="operational"),
         [(t, emissions_counter(d, t)) for t in sample_times(d.node)]) for d in DEVICES]
    emissions.append((_labels(**node_of(NODE_A), component="node", device="node",
                              scope="embodied"),
                      [(t, EMBODIED_A * (t - FIRST)) for t in sample_times(NODE_A)]))
    family("carbon_emissions_grams", "counter", emissions)
    for metric, key in (("carbon_workload_energy_joules", "energy"),
                        ("carbon_workload_emissions_grams", "emissions")):
        series = []
        for labels, component, watts, first, last in WORKLOADS:
            full = {"component": component, "kind": labels["kind"],
                    "namespace": labels["namespace"], "pod": labels["pod"], "container": "",
                    "unit": "", "workload_job": ""}
            factor = (lambda s: intensity(NODE_A, s) * PUE[NODE_A] / 3.6e6) \
                if key == "emissions" else (lambda s: 1.0)
            series.append((_labels(**node_of(NODE_A), **full), [
                (t, integrate(lambda s, watts=watts, factor=factor: watts(s) * factor(s), first, t))
                for t in sample_times(NODE_A) if first <= t <= last]))
        family(metric, "counter", series)
    family("carbon_grid_intensity_grams_per_kwh", "gauge", [
        (_labels(**node_of(n), grid_zone=z, provider=p, kind="average", basis=b),
         [(t, intensity(n, t)) for t in sample_times(n)])
        for n, z, p, b in ((NODE_A, "DE", "electricitymaps", "lifecycle"),
                           (NODE_B, "FR", "static", "unknown"))])
    family("carbon_grid_intensity_age_seconds", "gauge", [
        (_labels(**node_of(n), grid_zone=z, provider=p),
         [(t, intensity_age(n, t)) for t in sample_times(n)])
        for n, z, p in ((NODE_A, "DE", "electricitymaps"), (NODE_B, "FR", "static"))])
    family("carbon_grid_intensity_forecast_min_grams_per_kwh", "gauge", [
        (_labels(**node_of(NODE_A), grid_zone="DE", provider="electricitymaps"),
         [(t, FORECAST_MIN_A) for t in sample_times(NODE_A)])])
    family("carbon_pue_ratio", "gauge", [
        (_labels(**node_of(n)), [(t, PUE[n]) for t in sample_times(n)]) for n in PUE])
    up: list[tuple[str, list[tuple[int, float]]]] = []
    status: list[tuple[str, list[tuple[int, float]]]] = []
    for node, collector, reason, value, when in (
            (NODE_A, "rapl", "ok", 1, lambda t: True),
            (NODE_A, "nvml", "ok", 1, lambda t: not _between(t, NVML_DOWN)),
            (NODE_A, "nvml", "error", 0, lambda t: _between(t, NVML_DOWN)),
            (NODE_A, "dram-model", "ok", 1, lambda t: True),
            (NODE_A, "cpu-model", "superseded", 0, lambda t: True),
            (NODE_B, "cpu-model", "ok", 1, lambda t: True),
            (NODE_B, "rapl", "absent", 0, lambda t: True),
            (NODE_B, "nvml", "absent", 0, lambda t: True)):
        points = [(t, float(value)) for t in sample_times(node) if when(t)]
        if node == NODE_A:  # today's exporter: one _up series, the reason in status_info
            up.append((_labels(**node_of(node), collector=collector), points))
            status.append((_labels(**node_of(node), collector=collector, reason=reason),
                           [(t, 1.0) for t, _ in points]))
        else:  # an older exporter: the reason on _up itself
            up.append((_labels(**node_of(node), collector=collector, reason=reason), points))
    # A's _up series carries each collector's samples of both reasons, in time order
    merged: dict[str, list[tuple[int, float]]] = {}
    for labels, points in up:
        merged.setdefault(labels, []).extend(points)
    family("carbon_exporter_collector_up", "gauge",
           [(labels, sorted(points)) for labels, points in merged.items()])
    family("carbon_exporter_collector_status_info", "gauge", status)
    # The provider fails from the first fetch after 02:00 until the fresh value at 03:21.
    failing = lambda t: STALE_FROM < t < FRESH_AT  # noqa: E731
    family("carbon_grid_provider_up", "gauge", [
        (_labels(**node_of(NODE_A), provider="electricitymaps"),
         [(t, 0.0 if failing(t) else 1.0) for t in sample_times(NODE_A)])])
    family("carbon_grid_provider_status_info", "gauge", [
        (_labels(**node_of(NODE_A), provider="electricitymaps", reason=reason),
         [(t, 1.0) for t in sample_times(NODE_A) if failing(t) != value])
        for reason, value in (("ok", 1), ("timeout", 0))])
    family("carbon_model_info", "gauge", [
        (_labels(**node_of(node), collector=c, method=m, basis=b), [(t, 1.0) for t in sample_times(node)])
        for node, c, m, b in MODELS])
    family("carbon_exporter_build_info", "gauge", [
        (_labels(**node_of(n), version="0.1.0", python="3.11.2"),
         [(t, 1.0) for t in sample_times(n)]) for n in PUE])
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


# --- expected figures, from the definitions above ------------------------------------------

def device_joules(d: Device, a: float = START, b: float = END) -> float:
    return integrate(lambda t: 0.0 if lost(d.node, t) else d.watts(t), a, b)


def device_grams(d: Device, a: float = START, b: float = END) -> float:
    pue = PUE[d.node]
    return integrate(lambda t: 0.0 if lost(d.node, t) else
                     d.watts(t) * intensity(d.node, t) * pue / 3.6e6, a, b)


def hourly_intensity(node: str) -> list[float]:
    return [integrate(lambda t: intensity(node, t), START + h * HOUR, START + (h + 1) * HOUR)
            / HOUR for h in range(4)]
