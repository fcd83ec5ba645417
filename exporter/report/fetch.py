"""Every PromQL query of the report, in one place: fetch() reads the selected history from
Prometheus into a History; compute.py does the arithmetic on it without Prometheus."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from exporter.report import longterm
from exporter.report import metricnames as names
from exporter.report.methodology import LOOKBACK_SECONDS
from exporter.report.promapi import PromClient, quote, regex_alternatives
from exporter.report.reasons import with_reasons
from exporter.report.series import LabelSet, Points, Target, nice_bucket, rfc3339, target_of

if TYPE_CHECKING:
    from exporter.report.compute import Request

Series = dict[LabelSet, Points]


class ReportError(RuntimeError):
    """The report cannot be made; str() is one line."""


@dataclass
class History:
    """The raw samples a report is computed from, already limited to the selected targets."""

    targets: list[Target]
    energy: Series  # the selected energy counters (workload or node)
    operational: Series
    embodied: Series | None  # node scope only
    node_energy: Series  # the nodes' own energy (same as energy at node scope)
    pue: Series
    intensity: Series
    age: Series
    collector_up: Series
    provider_up: Series
    workload_energy: Series
    workload_emissions: Series
    forecast: list[dict[str, Any]]  # instant query results at TO
    build_info: list[dict[str, Any]]
    models: list[dict[str, Any]]  # carbon_model_info over the window
    intensity_chart: Series
    bucket: float
    longterm: bool  # the counters were rebuilt from the long-term rules


def _longterm(raw: Callable[[str], Series], req: Request,
              sel: str) -> tuple[Series, Series, Series | None]:
    """(energy, operational, embodied) counters rebuilt from the long-term rules."""
    if req.workload:
        energy, operational = longterm.workload_series(raw, sel, req.matchers)
        return ({k: v for k, v in energy.items() if v[-1][0] > req.start}, operational, None)
    energy, operational, embodied = longterm.node_series(raw, sel)
    return {k: v for k, v in energy.items() if v[-1][0] > req.start}, operational, embodied


def fetch(client: PromClient, req: Request) -> History:
    """Read the window [req.start - LOOKBACK_SECONDS, req.end] of every series the report uses."""
    fetch_from, start, end = req.start - LOOKBACK_SECONDS, req.start, req.end

    def raw(selector: str) -> Series:
        return client.raw_samples(selector, fetch_from, end)

    sel = ", ".join(req.matchers)
    energy_metric = names.WORKLOAD_ENERGY if req.workload else names.ENERGY
    # Raw-sample selectors below: 10 for a workload, 12 for nodes; then 3 instant queries
    # and the intensity chart's range query.
    client.start_progress(client.expected_calls(
        fetch_from, end, 10 if req.workload else 12, 4))
    try:
        # A series seen only before FROM (its baseline) used no energy in the window.
        energy = {k: v for k, v in raw(f"{energy_metric}{{{sel}}}").items()
                  if v[-1][0] > start}
        # A long-term store keeps only the coarse rules: rebuild the counters from them.
        rebuilt = not energy
        if rebuilt:
            energy, lt_operational, lt_embodied = _longterm(raw, req, sel)
        if not energy:
            raise ReportError(f"selector {req.selector} matches no {energy_metric} series "
                              f"between {rfc3339(start)} and {rfc3339(end)}")
        targets = sorted({target_of(k) for k in energy})
        tsel = (f'job=~{quote(regex_alternatives(j for j, _ in targets))}, '
                f'instance=~{quote(regex_alternatives(i for _, i in targets))}')
        if rebuilt:
            operational, embodied = lt_operational, lt_embodied
            node_energy = (longterm.node_series(raw, tsel)[0] if req.workload
                           else energy)
        elif req.workload:
            operational = raw(f"{names.WORKLOAD_EMISSIONS}{{{sel}}}")
            embodied = None
            node_energy = raw(f"{names.ENERGY}{{{tsel}}}")
        else:
            operational = raw(f'{names.EMISSIONS}{{{sel}, scope="operational"}}')
            embodied = raw(f'{names.EMISSIONS}{{{sel}, scope="embodied"}}')
            node_energy = energy
        pue = raw(f"{names.PUE}{{{tsel}}}")
        intensity = raw(f"{names.GRID_INTENSITY}{{{tsel}}}")
        age = raw(f"{names.GRID_INTENSITY_AGE}{{{tsel}}}")
        collector_up = with_reasons(raw(f"{names.COLLECTOR_UP}{{{tsel}}}"),
                                    raw(f"{names.COLLECTOR_STATUS}{{{tsel}}}"),
                                    "collector")
        provider_up = with_reasons(raw(f"{names.PROVIDER_UP}{{{tsel}}}"),
                                   raw(f"{names.PROVIDER_STATUS}{{{tsel}}}"),
                                   "provider")
        workloads = (energy, operational) if req.workload else (
            ({}, {}) if rebuilt else
            (raw(f"{names.WORKLOAD_ENERGY}{{{tsel}}}"),
             raw(f"{names.WORKLOAD_EMISSIONS}{{{tsel}}}")))
        forecast = client.query(f"{names.FORECAST_MIN}{{{tsel}}}", end)
        build_info = client.query(f"max_over_time({names.BUILD_INFO}{{{tsel}}}"
                                       f"[{int(end - fetch_from)}s])", end)
        # how each modelled series was obtained, over the window
        models = client.query(f"max_over_time({names.MODEL_INFO}{{{tsel}}}"
                                   f"[{int(end - fetch_from)}s])", end)
        bucket = req.bucket_seconds or nice_bucket(end - start)
        step = max(bucket, 1.0)
        intensity_chart = client.query_range(
            f"{names.GRID_INTENSITY}{{{tsel}}}", start, end, step)
    finally:
        client.stop_progress()

    def ours(series: Series) -> Series:
        # The job=~ and instance=~ regexes also match other job/instance pairs.
        return {k: v for k, v in series.items() if target_of(k) in targets}

    return History(
        targets=targets, energy=energy, operational=operational, embodied=embodied,
        node_energy=energy if not req.workload else ours(node_energy),
        pue=ours(pue), intensity=ours(intensity), age=ours(age),
        collector_up=ours(collector_up), provider_up=ours(provider_up),
        workload_energy=ours(workloads[0]), workload_emissions=ours(workloads[1]),
        forecast=forecast, build_info=build_info, models=models,
        intensity_chart=ours(intensity_chart),
        bucket=bucket, longterm=rebuilt)
