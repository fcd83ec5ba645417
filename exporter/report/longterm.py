"""The report from a long-term store, after the raw series are gone.

A long-term store (VictoriaMetrics, Thanos, Mimir) fed by the shipped remote_write keep
filter holds only the coarse recording rules (prometheus/rules/carbon.rules.yml, group
carbon-exporter.longterm): average power and emission rates over the last hour, evaluated
every 5 minutes, per node and component or scope, per namespace and per workload_job. When
the raw counters a report needs are absent, they are rebuilt from those rules as counters:
each stored sample of a `:rate1h` series (the average rate over the hour before it) stands
for the time since the previous sample, so the running sum of rate x elapsed seconds is the
energy (or emissions) counter. Over days or months this is the energy within the rules'
one-hour smoothing; at the window's edges it can be off by up to the last hour's average.
The report says where its numbers came from (a note in the totals, `source="longterm"`).
"""

from __future__ import annotations

from collections.abc import Callable

from exporter.report.promapi import LabelSet, Points

# Recording rules the shipped remote_write block keeps (see prometheus/prometheus.yml).
NODE_ENERGY = "instance_component:carbon_energy_joules:rate1h"
NODE_EMISSIONS = "instance_scope:carbon_emissions_grams:rate1h"
NAMESPACE_ENERGY = "namespace:carbon_workload_energy_joules:rate1h"
NAMESPACE_EMISSIONS = "namespace:carbon_workload_emissions_grams:rate1h"
JOB_ENERGY = "workload_job:carbon_workload_energy_joules:rate1h"
JOB_EMISSIONS = "workload_job:carbon_workload_emissions_grams:rate1h"
SOURCE = "longterm"
NOTE = ("totals rebuilt from the long-term recording rules (hourly average rates sampled every "
        "few minutes) because the raw counters are not in this Prometheus-compatible store: "
        "within the rules' one-hour smoothing at the window's edges")

Fetch = Callable[[str], dict[LabelSet, Points]]


def as_counter(points: Points) -> Points:
    """Integrate rate samples into a counter: the first sample starts it at 0."""
    total, out = 0.0, []
    previous = None
    for t, rate in points:
        if previous is not None and t > previous:
            total += rate * (t - previous)
        out.append((t, total))
        previous = t
    return out


def _relabel(key: LabelSet, **extra: str) -> LabelSet:
    labels = {k: v for k, v in key if k != "__name__"}
    labels.update(extra)
    return tuple(sorted(labels.items()))


def counters(fetch: Fetch, rule: str, selector: str, **extra: str) -> dict[LabelSet, Points]:
    """The rule's series under `selector`, each integrated into a counter."""
    return {_relabel(key, source=SOURCE, **extra): as_counter(points)
            for key, points in fetch(f"{rule}{{{selector}}}").items() if points}


def node_series(fetch: Fetch, selector: str) -> tuple[dict, dict, dict]:
    """(energy by component, operational emissions, embodied emissions) per node."""
    energy = counters(fetch, NODE_ENERGY, selector)
    operational = counters(fetch, NODE_EMISSIONS, f'{selector}, scope="operational"'
                           if selector else 'scope="operational"')
    embodied = counters(fetch, NODE_EMISSIONS, f'{selector}, scope="embodied"'
                        if selector else 'scope="embodied"')
    return energy, operational, embodied


def workload_series(fetch: Fetch, selector: str, matchers: list[str]) -> tuple[dict, dict]:
    """(energy, operational emissions) of a namespace or a workload_job selection; empty when
    the selection names a label the long-term rules do not keep (pod, container, unit)."""
    named = {m.split("=")[0].rstrip("!~").strip() for m in matchers}
    if "workload_job" in named:
        return (counters(fetch, JOB_ENERGY, selector, kind="job"),
                counters(fetch, JOB_EMISSIONS, selector, kind="job"))
    if named <= {"namespace", "job", "instance"} and "namespace" in named:
        return (counters(fetch, NAMESPACE_ENERGY, selector, kind="namespace"),
                counters(fetch, NAMESPACE_EMISSIONS, selector, kind="namespace"))
    return {}, {}
