"""Turn raw Prometheus history into the report document (a dict that follows the JSON schema).

Everything here is arithmetic on stored samples: counter increases between consecutive
samples (a decrease is a reset, as in Prometheus's increase()), values held from one sample
to the next for gauges. No extrapolation, so reports over adjacent windows add up.
"""

from __future__ import annotations

import bisect
import datetime as dt
import math
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from exporter import __version__
from exporter.carbon import WORLD, grid_dataset
from exporter.ledger import JOULES_PER_KWH
from exporter.report import longterm
from exporter.report import metricnames as names
from exporter.report.reasons import with_reasons
from exporter.report.promapi import LabelSet, PromClient, quote, regex_alternatives

SCHEMA_VERSION = "1.0"

# Where the exporter's energy comes from (the `source` label) and how much to trust it.
SOURCE_CATEGORY = {"rapl": "counter", "nvml": "counter", "hwmon": "counter",
                   "power_sample": "sampled_power", "model": "model", "longterm": "longterm",
                   "platform_remainder": "platform_remainder"}
# collector_up reasons that mean "tried and failed"; absent/superseded are not failures.
FAILURE_REASONS = ("error", "permission")
# carbon_grid_provider_up reasons that are not failures (not_yet: no fetch attempted yet).
PROVIDER_OK = ("ok", "not_yet")
WORKLOAD_LABELS = ("namespace", "pod", "container", "unit", "workload_job")
# A scrape is missing when two samples are further apart than this many typical intervals.
GAP_FACTOR = 2.0
# How far before FROM the report looks for the baseline sample of each counter.
LOOKBACK_SECONDS = 300.0
DEFAULT_WHAT_IF_ZONES = ("WORLD", "FR", "DE", "US", "GB", "PL", "NO", "IN")

Points = list[tuple[float, float]]
Target = tuple[str, str]  # (job, instance)


class ReportError(RuntimeError):
    """The report cannot be made; str() is one line."""


@dataclass
class Request:
    prometheus: str
    matchers: list[str]  # PromQL label matchers, e.g. ['namespace="ml"']
    start: float
    end: float
    workload: bool = False
    zones: tuple[str, ...] = DEFAULT_WHAT_IF_ZONES
    stale_after: float = 3600.0
    bucket_seconds: float | None = None

    @property
    def selector(self) -> str:
        return "{" + ", ".join(self.matchers) + "}"


def rfc3339(t: float) -> str:
    moment = dt.datetime.fromtimestamp(t, dt.timezone.utc)
    text = moment.isoformat(timespec="milliseconds" if t % 1 else "seconds")
    return text.replace("+00:00", "Z")


def _labels(key: LabelSet) -> dict[str, str]:
    return dict(key)


def _target(key: LabelSet) -> Target:
    labels = _labels(key)
    return labels.get("job", ""), labels.get("instance", "")


# --- counters and gauges ---------------------------------------------------------------------

@dataclass
class Increase:
    """Counter deltas of one series: (t_prev, t, delta) between consecutive samples."""

    deltas: list[tuple[float, float, float]] = field(default_factory=list)
    resets: int = 0

    @property
    def total(self) -> float:
        return math.fsum(d for _, _, d in self.deltas)


def counter_increase(points: Points, start: float, end: float) -> Increase:
    """Increase over [start, end] from the last sample at or before `start` (else the first
    sample) to the last sample at or before `end`; a decrease counts the new value."""
    times = [t for t, _ in points]
    base = max(0, bisect.bisect_right(times, start) - 1)
    result = Increase()
    prev_t, prev_v = points[base]
    for t, v in points[base + 1:]:
        if t > end:
            break
        if v >= prev_v:
            delta = v - prev_v
        else:
            delta = v
            result.resets += 1
        result.deltas.append((prev_t, t, delta))
        prev_t, prev_v = t, v
    return result


class Gauge:
    """A gauge's samples with their times indexed for lookups."""

    def __init__(self, points: Points) -> None:
        self.points = points
        self.times = [t for t, _ in points]

    def at(self, t: float) -> float:
        """The value in force at t: the last sample at or before t, else the first one."""
        index = bisect.bisect_right(self.times, t) - 1
        return self.points[max(index, 0)][1]


def held_intervals(points: Points, start: float, end: float):
    """(from, to, value): each sample's value held until the next sample, clipped to the window."""
    for (t, v), (t_next, _) in zip(points, points[1:]):
        lo, hi = max(t, start), min(t_next, end)
        if hi > lo:
            yield lo, hi, v


def spread(buckets: list[float], origin: float, width: float, lo: float, hi: float,
           amount: float) -> None:
    """Add `amount`, spent evenly over (lo, hi], to fixed-width buckets starting at origin."""
    if hi <= lo:
        index = min(max(int((hi - origin) // width), 0), len(buckets) - 1)
        buckets[index] += amount
        return
    first = int((lo - origin) // width)
    last = int(math.ceil((hi - origin) / width)) - 1
    for index in range(max(first, 0), min(last, len(buckets) - 1) + 1):
        b_lo, b_hi = origin + index * width, origin + (index + 1) * width
        overlap = min(hi, b_hi) - max(lo, b_lo)
        if overlap > 0:
            buckets[index] += amount * overlap / (hi - lo)


def overlap_share(lo: float, hi: float, start: float, end: float) -> float:
    if hi <= lo:
        return 1.0 if start < hi <= end else 0.0
    return max(0.0, min(hi, end) - max(lo, start)) / (hi - lo)


def _stats(values: list[tuple[float, float]]) -> dict | None:
    """min/max over values and the duration-weighted mean; values are (value, seconds)."""
    if not values:
        return None
    weight = math.fsum(w for _, w in values)
    mean = (math.fsum(v * w for v, w in values) / weight if weight > 0
            else statistics.fmean(v for v, _ in values))
    return {"min": min(v for v, _ in values), "mean": mean, "max": max(v for v, _ in values)}


def _nice_bucket(seconds: float) -> float:
    raw = seconds / 240
    for nice in (60, 300, 600, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400):
        if raw <= nice:
            return float(nice)
    return 86400.0 * math.ceil(raw / 86400)


# --- the report ------------------------------------------------------------------------------

class Report:
    def __init__(self, client: PromClient, request: Request) -> None:
        self.client = client
        self.req = request
        self.start, self.end = request.start, request.end
        self.fetch_from = request.start - LOOKBACK_SECONDS
        self.longterm = False  # the counters were rebuilt from the long-term rules

    def raw(self, selector: str) -> dict[LabelSet, Points]:
        return self.client.raw_samples(selector, self.fetch_from, self.end)

    def _longterm(self, sel: str) -> tuple[dict, dict, dict | None]:
        """(energy, operational, embodied) counters rebuilt from the long-term rules."""
        if self.req.workload:
            energy, operational = longterm.workload_series(self.raw, sel, self.req.matchers)
            return ({k: v for k, v in energy.items() if v[-1][0] > self.start},
                    operational, None)
        energy, operational, embodied = longterm.node_series(self.raw, sel)
        return {k: v for k, v in energy.items() if v[-1][0] > self.start}, operational, embodied

    def build(self) -> dict:
        req = self.req
        if self.end <= self.start:
            raise ReportError(f"empty window: --from {rfc3339(self.start)} is not before "
                              f"--to {rfc3339(self.end)}")
        sel = ", ".join(req.matchers)
        energy_metric = names.WORKLOAD_ENERGY if req.workload else names.ENERGY
        # Raw-sample selectors below: 10 for a workload, 12 for nodes; then 3 instant queries
        # and the intensity chart's range query.
        self.client.start_progress(self.client.expected_calls(
            self.fetch_from, self.end, 10 if req.workload else 12, 4))
        try:
            # A series seen only before FROM (its baseline) used no energy in the window.
            energy = {k: v for k, v in self.raw(f"{energy_metric}{{{sel}}}").items()
                      if v[-1][0] > self.start}
            # A long-term store keeps only the coarse rules: rebuild the counters from them.
            self.longterm = not energy
            if self.longterm:
                energy, lt_operational, lt_embodied = self._longterm(sel)
            if not energy:
                raise ReportError(f"selector {req.selector} matches no {energy_metric} series "
                                  f"between {rfc3339(self.start)} and {rfc3339(self.end)}")
            targets = sorted({_target(k) for k in energy})
            tsel = (f'job=~{quote(regex_alternatives(j for j, _ in targets))}, '
                    f'instance=~{quote(regex_alternatives(i for _, i in targets))}')
            if self.longterm:
                operational, embodied = lt_operational, lt_embodied
                node_energy = (longterm.node_series(self.raw, tsel)[0] if req.workload
                               else energy)
            elif req.workload:
                operational = self.raw(f"{names.WORKLOAD_EMISSIONS}{{{sel}}}")
                embodied = None
                node_energy = self.raw(f"{names.ENERGY}{{{tsel}}}")
            else:
                operational = self.raw(f'{names.EMISSIONS}{{{sel}, scope="operational"}}')
                embodied = self.raw(f'{names.EMISSIONS}{{{sel}, scope="embodied"}}')
                node_energy = energy
            pue = self.raw(f"{names.PUE}{{{tsel}}}")
            intensity = self.raw(f"{names.GRID_INTENSITY}{{{tsel}}}")
            age = self.raw(f"{names.GRID_INTENSITY_AGE}{{{tsel}}}")
            collector_up = with_reasons(self.raw(f"{names.COLLECTOR_UP}{{{tsel}}}"),
                                        self.raw(f"{names.COLLECTOR_STATUS}{{{tsel}}}"),
                                        "collector")
            provider_up = with_reasons(self.raw(f"{names.PROVIDER_UP}{{{tsel}}}"),
                                       self.raw(f"{names.PROVIDER_STATUS}{{{tsel}}}"),
                                       "provider")
            workloads = (energy, operational) if req.workload else (
                ({}, {}) if self.longterm else
                (self.raw(f"{names.WORKLOAD_ENERGY}{{{tsel}}}"),
                 self.raw(f"{names.WORKLOAD_EMISSIONS}{{{tsel}}}")))
            forecast = self.client.query(f"{names.FORECAST_MIN}{{{tsel}}}", self.end)
            build_info = self.client.query(f"max_over_time({names.BUILD_INFO}{{{tsel}}}"
                                           f"[{int(self.end - self.fetch_from)}s])", self.end)
            # how each modelled series was obtained, over the window
            models = self.client.query(f"max_over_time({names.MODEL_INFO}{{{tsel}}}"
                                       f"[{int(self.end - self.fetch_from)}s])", self.end)
            bucket = req.bucket_seconds or _nice_bucket(self.end - self.start)
            step = max(bucket, 1.0)
            intensity_chart = self.client.query_range(
                f"{names.GRID_INTENSITY}{{{tsel}}}", self.start, self.end, step)
        finally:
            self.client.stop_progress()

        self.targets = targets

        def ours(series: dict[LabelSet, Points]) -> dict[LabelSet, Points]:
            # The job=~ and instance=~ regexes also match other job/instance pairs.
            return {k: v for k, v in series.items() if _target(k) in targets}

        pue, intensity, age, collector_up, provider_up, node_energy = (
            ours(pue), ours(intensity), ours(age), ours(collector_up), ours(provider_up),
            ours(node_energy))
        intensity_chart = ours(intensity_chart)
        workloads = (ours(workloads[0]), ours(workloads[1]))
        if not req.workload:
            node_energy = energy
        self.pue = _by_target(pue)
        self._pue_gauges = {target: Gauge(points) for target, points in self.pue.items()}
        self.energy_inc = {k: counter_increase(p, self.start, self.end) for k, p in energy.items()}
        self.op_inc = {k: counter_increase(p, self.start, self.end) for k, p in operational.items()}
        self.emb_inc = ({k: counter_increase(p, self.start, self.end) for k, p in embodied.items()}
                        if embodied is not None else None)
        self.node_inc = (self.energy_inc if node_energy is energy else
                         {k: counter_increase(p, self.start, self.end)
                          for k, p in node_energy.items()})
        self.intensity = intensity
        self.bucket = bucket

        facility = self._facility_joules()
        totals = self._totals(facility)
        if self.longterm:
            totals["notes"].append(longterm.NOTE)
        document = {
            "schema_version": SCHEMA_VERSION,
            "generated_at": rfc3339(round(time.time())),
            "generator": {"name": "carbon-exporter report", "version": __version__},
            "query": {"prometheus": req.prometheus, "selector": req.selector,
                      "scope": "workload" if req.workload else "node",
                      "from": rfc3339(self.start), "to": rfc3339(self.end),
                      "seconds": self.end - self.start,
                      "targets": [{"job": j, "instance": i} for j, i in self.targets]},
            "totals": totals,
            "breakdown": self._breakdown(*workloads),
            "intensity": self._intensity(totals, facility),
            "data_quality": {**self._quality(node_energy, collector_up, provider_up, age),
                             "models": _models(models, targets)},
            "what_if": self._what_if(totals, facility, forecast),
            "methodology": methodology(req, build_info, self._observed_settings()),
            "series": self._series(intensity_chart),
        }
        return document

    # -- totals -------------------------------------------------------------------------------

    def _pue_at(self, target: Target, t: float) -> float:
        gauge = self._pue_gauges.get(target)
        return gauge.at(t) if gauge else 1.0

    def _facility_joules(self) -> dict[Target, float]:
        """Energy times the PUE in force at each sample, per target."""
        out: dict[Target, float] = defaultdict(float)
        for key, inc in self.energy_inc.items():
            target = _target(key)
            out[target] += math.fsum(d * self._pue_at(target, t) for _, t, d in inc.deltas)
        return out

    def _totals(self, facility: dict[Target, float]) -> dict:
        joules = math.fsum(inc.total for inc in self.energy_inc.values())
        op = math.fsum(inc.total for inc in self.op_inc.values())
        emb = (math.fsum(inc.total for inc in self.emb_inc.values())
               if self.emb_inc else None)
        pue_values = [(v, hi - lo) for points in self.pue.values()
                      for lo, hi, v in held_intervals(points, self.start, self.end)]
        pue_values += [(v, 0.0) for points in self.pue.values()
                       for t, v in points if self.start <= t <= self.end]
        notes = []
        if not self.pue:
            notes.append(f"{names.PUE} not available: facility energy assumes PUE 1.0")
        if not self.op_inc:
            notes.append(f"operational emissions not available: no "
                         f"{names.WORKLOAD_EMISSIONS if self.req.workload else names.EMISSIONS}"
                         f" series for this selector")
        if emb is None:
            notes.append("embodied emissions not available: "
                         + ("they are exported per node, not per workload" if self.req.workload
                            else f'no {names.EMISSIONS}{{scope="embodied"}} series'))
        facility_joules = math.fsum(facility.values())
        return {
            "energy_joules": joules,
            "energy_kwh": joules / JOULES_PER_KWH,
            "facility_energy_kwh": facility_joules / JOULES_PER_KWH,
            "pue": {"available": bool(self.pue), **(_stats(pue_values) or
                                                    {"min": None, "mean": None, "max": None})},
            "operational_grams": op if self.op_inc else None,
            "embodied_grams": emb,
            "total_grams": (op if self.op_inc else 0.0) + (emb or 0.0),
            "notes": notes,
        }

    # -- breakdowns ---------------------------------------------------------------------------

    def _breakdown(self, workload_energy, workload_emissions) -> dict:
        component: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        for key, inc in self.energy_inc.items():
            component[_labels(key).get("component", "")][0] += inc.total
        for key, inc in self.op_inc.items():
            component[_labels(key).get("component", "")][1] += inc.total
        node: dict[Target, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
        for key, inc in self.energy_inc.items():
            node[_target(key)][0] += inc.total
        for key, inc in self.op_inc.items():
            node[_target(key)][1] += inc.total
        for key, inc in (self.emb_inc or {}).items():
            node[_target(key)][2] += inc.total
        has_op = bool(self.op_inc)
        embodied_nodes = {_target(k) for k in self.emb_inc or {}}
        out: dict[str, Any] = {
            "component": [{"component": c, "energy_kwh": e / JOULES_PER_KWH,
                           "operational_grams": g if has_op else None}
                          for c, (e, g) in sorted(component.items(), key=lambda kv: -kv[1][0])],
            "node": [{"job": j, "instance": i, "energy_kwh": e / JOULES_PER_KWH,
                      "operational_grams": g if has_op else None,
                      "embodied_grams": b if (j, i) in embodied_nodes else None}
                     for (j, i), (e, g, b) in sorted(node.items(), key=lambda kv: -kv[1][0])],
        }
        rows: dict[tuple[str, ...], list[float]] = defaultdict(lambda: [0.0, 0.0])
        for key, points in workload_energy.items():
            labels = _labels(key)
            rows[tuple(labels.get(n, "") for n in ("kind", *WORKLOAD_LABELS))][0] += \
                counter_increase(points, self.start, self.end).total
        for key, points in workload_emissions.items():
            labels = _labels(key)
            rows[tuple(labels.get(n, "") for n in ("kind", *WORKLOAD_LABELS))][1] += \
                counter_increase(points, self.start, self.end).total
        out["workload"] = {
            "available": bool(workload_energy),
            "note": "" if workload_energy else
            f"not available: no {names.WORKLOAD_ENERGY} series on these nodes",
            "rows": [{"kind": k[0], **dict(zip(WORKLOAD_LABELS, k[1:])),
                      "energy_kwh": e / JOULES_PER_KWH,
                      "operational_grams": g if workload_emissions else None}
                     for k, (e, g) in sorted(rows.items(), key=lambda kv: -kv[1][0])],
        }
        return out

    # -- intensity ----------------------------------------------------------------------------

    def _intensity(self, totals: dict, facility: dict[Target, float]) -> dict:
        series, pooled = [], []
        for key, points in sorted(self.intensity.items()):
            values = [(v, hi - lo) for lo, hi, v in held_intervals(points, self.start, self.end)]
            values += [(v, 0.0) for t, v in points if self.start <= t <= self.end]
            stats = _stats(values)
            if stats is None:
                continue
            labels = _labels(key)
            pooled += values
            series.append({"instance": labels.get("instance", ""),
                           "grid_zone": labels.get("grid_zone", ""),
                           "provider": labels.get("provider", ""),
                           "kind": labels.get("kind", ""),
                           "basis": labels.get("basis", "unknown"), **stats})
        facility_kwh = totals["facility_energy_kwh"]
        op = totals["operational_grams"]
        overall = _stats(pooled) or {"min": None, "mean": None, "max": None}
        return {
            "available": bool(series),
            **overall,
            # What the exporter actually applied, weighted by when the energy was used.
            "effective_grams_per_kwh": op / facility_kwh if op is not None and facility_kwh > 0
            else None,
            "zones": sorted({s["grid_zone"] for s in series}),
            "providers": sorted({s["provider"] for s in series}),
            "kinds": sorted({s["kind"] for s in series}),
            "bases": sorted({s["basis"] for s in series}),
            "series": series,
        }

    # -- data quality -------------------------------------------------------------------------

    def _quality(self, node_energy, collector_up, provider_up, age) -> dict:
        by_source: dict[str, float] = defaultdict(float)
        resets = 0
        for key, inc in self.node_inc.items():
            by_source[_labels(key).get("source", "")] += inc.total
            resets += inc.resets
        total = math.fsum(by_source.values())
        sources: list[dict[str, Any]] = [{"source": s, "category": SOURCE_CATEGORY.get(s, "unknown"),
                    "energy_kwh": j / JOULES_PER_KWH, "share": j / total if total else 0.0}
                   for s, j in sorted(by_source.items(), key=lambda kv: -kv[1])]
        shares: dict[str, float] = defaultdict(float)
        for row in sources:
            shares[row["category"]] += row["share"]

        gaps: list[dict[str, Any]] = []
        intervals: dict[Target, float] = {}
        times_by_target: dict[Target, set[float]] = defaultdict(set)
        for key, points in node_energy.items():
            times_by_target[_target(key)].update(t for t, _ in points)
        for target in self.targets:
            times = sorted(times_by_target.get(target, ()))
            diffs = [b - a for a, b in zip(times, times[1:])]
            if not diffs:
                continue
            interval = statistics.median(diffs)
            intervals[target] = interval
            edges = [(self.start, t) for t in times[:1] if t - self.start > GAP_FACTOR * interval]
            edges += [(a, b) for a, b in zip(times, times[1:]) if b - a > GAP_FACTOR * interval]
            edges += [(t, self.end) for t in times[-1:] if self.end - t > GAP_FACTOR * interval]
            for a, b in edges:
                lo, hi = max(a, self.start), min(b, self.end)
                if hi > lo:
                    gaps.append({"job": target[0], "instance": target[1], "start": rfc3339(lo),
                                 "end": rfc3339(hi), "seconds": hi - lo,
                                 "missing_scrapes": max(0, round((hi - lo) / interval) - 1)})

        failures, absent = self._failures(collector_up, "collector",
                                          lambda r: r in FAILURE_REASONS, intervals)
        provider_failures, _ = self._failures(provider_up, "provider",
                                              lambda r: r not in PROVIDER_OK, intervals)
        stale = self._stale(age)
        return {
            "energy_basis": "nodes of the selected workloads" if self.req.workload
            else "selection",
            # a platform meter's remainder in the energy: the totals are the meter's
            "totals_basis": "platform_meter" if "platform_remainder" in by_source
            else "components",
            "platform_remainder_share": shares["platform_remainder"],
            "sources": sources,
            "counter_share": shares["counter"],
            "sampled_power_share": shares["sampled_power"],
            "model_share": shares["model"],
            "counter_resets": resets,
            "scrape_interval_seconds": (statistics.median(intervals.values())
                                        if intervals else None),
            "gap_threshold_factor": GAP_FACTOR,
            "gaps": gaps,
            "gap_seconds": math.fsum(g["seconds"] for g in gaps),
            "missing_scrapes": sum(g["missing_scrapes"] for g in gaps),
            "collector_failures": failures,
            "collector_failure_seconds": math.fsum(f["seconds"] for f in failures),
            "absent_collectors": absent,
            "provider_failures": provider_failures,
            "provider_failure_seconds": math.fsum(f["seconds"] for f in provider_failures),
            "stale_intensity": stale,
        }

    def _failures(self, up, label: str, failing_reasons, intervals) -> tuple[list, list]:
        """Runs of `up` == 0 with a failing reason, per target and `label` (collector or
        provider): from the first failing sample to the next good one. A series whose reason
        changes is a new series, so the timelines merge every reason's samples."""
        timelines: dict[tuple[Target, str], list[tuple[float, float, str]]] = defaultdict(list)
        for key, points in up.items():
            labels = _labels(key)
            timeline = timelines[(_target(key), labels.get(label, ""))]
            timeline += [(t, v, labels.get("reason", "")) for t, v in points]
        failures, absent = [], []
        for (target, name), timeline in sorted(timelines.items()):
            timeline.sort()
            inside = [s for s in timeline if self.start <= s[0] <= self.end]
            if inside and all(v == 0 and r == "absent" for _, v, r in inside):
                absent.append({"instance": target[1], label: name})
                continue
            run = None
            for t, v, reason in timeline:
                failing = v == 0 and failing_reasons(reason)
                if failing and run is None:
                    run = (t, reason)
                if not failing and run is not None:
                    failures.append(self._failure(target, label, name, run, t))
                    run = None
            if run is not None:
                last = timeline[-1][0]
                failures.append(self._failure(target, label, name, run,
                                              min(self.end, last + intervals.get(target, 0.0))))
        return [f for f in failures if f["seconds"] > 0], absent

    def _failure(self, target, label, name, run, until) -> dict:
        lo, hi = max(run[0], self.start), min(until, self.end)
        return {"instance": target[1], label: name, "reason": run[1],
                "start": rfc3339(lo), "end": rfc3339(max(lo, hi)), "seconds": max(0.0, hi - lo)}

    def _stale(self, age) -> dict:
        """Periods when the intensity in force was older than --stale-after: from the moment
        it crossed the threshold to the moment a fresh value was fetched."""
        threshold = self.req.stale_after
        periods = []
        for key, points in sorted(age.items()):
            labels = _labels(key)
            run_start = None
            for index, (t, a) in enumerate(points):
                previous = points[index - 1][0] if index else t
                if a > threshold and run_start is None:
                    run_start = max(previous, t - (a - threshold))
                elif a <= threshold and run_start is not None:
                    end = min(max(t - a, previous), t)
                    periods.append((key, labels, run_start, end))
                    run_start = None
            if run_start is not None:
                periods.append((key, labels, run_start, points[-1][0]))
        out, stale_joules = [], 0.0
        for key, labels, lo, hi in periods:
            lo, hi = max(lo, self.start), min(hi, self.end)
            if hi <= lo:
                continue
            target = _target(key)
            for k, inc in self.energy_inc.items():
                if _target(k) != target:
                    continue
                # Deltas are in time order: only those ending after lo can overlap.
                first = bisect.bisect_right(inc.deltas, lo, key=lambda delta: delta[1])
                for a, b, d in inc.deltas[first:]:
                    if a >= hi:
                        break
                    stale_joules += d * overlap_share(a, b, lo, hi)
            out.append({"instance": labels.get("instance", ""),
                        "grid_zone": labels.get("grid_zone", ""),
                        "provider": labels.get("provider", ""),
                        "start": rfc3339(lo), "end": rfc3339(hi), "seconds": hi - lo})
        total = math.fsum(inc.total for inc in self.energy_inc.values())
        return {"threshold_seconds": threshold, "available": bool(age), "periods": out,
                "seconds": math.fsum(p["seconds"] for p in out),
                "energy_kwh": stale_joules / JOULES_PER_KWH,
                "energy_share": stale_joules / total if total else 0.0}

    # -- what-if ------------------------------------------------------------------------------

    def _hourly_intensity(self, target: Target) -> tuple[list[float], list[float]]:
        """Hourly (UTC) time-weighted intensity means of the target, and its hourly energy."""
        origin = math.floor(self.start / 3600) * 3600
        count = max(1, math.ceil((self.end - origin) / 3600))
        weighted, seconds = [0.0] * count, [0.0] * count
        for key, points in self.intensity.items():
            if _target(key) != target:
                continue
            for lo, hi, v in held_intervals(points, self.start, self.end):
                spread(weighted, origin, 3600, lo, hi, v * (hi - lo))
                spread(seconds, origin, 3600, lo, hi, hi - lo)
        energy = [0.0] * count
        for key, inc in self.energy_inc.items():
            if _target(key) == target:
                for a, b, d in inc.deltas:
                    spread(energy, origin, 3600, max(a, self.start), b, d)
        means = [w / s if s > 0 else math.nan for w, s in zip(weighted, seconds)]
        return means, energy

    def _what_if(self, totals: dict, facility: dict[Target, float], forecast: list[dict]) -> dict:
        op = totals["operational_grams"]
        facility_kwh = totals["facility_energy_kwh"]
        rows: list[dict[str, Any]] = [{"scenario": "as measured", "description":
                 "the exporter's integrated operational emissions for this selection",
                 "grid_zone": ", ".join(sorted({s["grid_zone"] for s in self._series_meta()})),
                 "grams_per_kwh": op / facility_kwh if op is not None and facility_kwh else None,
                 "operational_grams": op, "available": op is not None, "note": ""}]

        lowest, single, hours_used, missing = 0.0, 0.0, 0, []
        for target in self.targets:
            kwh = facility.get(target, 0.0) / JOULES_PER_KWH
            means, energy = self._hourly_intensity(target)
            available = sorted(m for m in means if not math.isnan(m))
            if not available:
                missing.append(target[1])
                continue
            active = sum(1 for e in energy if e > 0) or 1
            k = min(active, len(available))
            hours_used = max(hours_used, k)
            lowest += kwh * math.fsum(available[:k]) / k
            single += kwh * available[0]
        note = (f"no intensity history for {', '.join(missing)}" if missing else "")
        rows.append({"scenario": "lowest-intensity hours",
                     "description": "the same energy in the period's lowest-intensity hours "
                                    "(as many hours as the selection used energy in)",
                     "grid_zone": "", "grams_per_kwh": lowest / facility_kwh
                     if not missing and facility_kwh else None,
                     "operational_grams": None if missing else lowest,
                     "available": not missing, "note": note or f"{hours_used} h"})
        rows.append({"scenario": "lowest-intensity hour",
                     "description": "all of the energy in the period's single "
                                    "lowest-intensity hour",
                     "grid_zone": "", "grams_per_kwh": single / facility_kwh
                     if not missing and facility_kwh else None,
                     "operational_grams": None if missing else single,
                     "available": not missing, "note": note})

        values: dict[Target, float] = {}
        for result in forecast:
            target, value = _target(labelset_of(result)), float(result["value"][1])
            if not math.isfinite(value):
                continue
            values[target] = min(value, values.get(target, value))
        lacking = [t[1] for t in self.targets if t not in values]
        grams = math.fsum(facility.get(t, 0.0) / JOULES_PER_KWH * values[t]
                          for t in self.targets if t in values)
        rows.append({"scenario": "forecast minimum (next 24 h)",
                     "description": f"the same energy at the minimum of the grid intensity "
                                    f"forecast for the 24 h after {rfc3339(self.end)}",
                     "grid_zone": "", "grams_per_kwh": grams / facility_kwh
                     if not lacking and facility_kwh else None,
                     "operational_grams": None if lacking else grams,
                     "available": not lacking,
                     "note": f"not available: no {names.FORECAST_MIN} for "
                             f"{', '.join(lacking)}" if lacking else ""})
        dataset = grid_dataset()
        for zone in self.req.zones:
            row = dataset.get(zone.upper())
            if row is None:
                continue
            rows.append({"scenario": f"zone {row.zone}",
                         "description": f"the same energy in {row.name} "
                                        f"(bundled dataset, {row.year} annual average)",
                         "grid_zone": row.zone, "grams_per_kwh": row.grams_per_kwh,
                         "operational_grams": facility_kwh * row.grams_per_kwh,
                         "available": True, "note": ""})
        for scenario in rows:
            grams = scenario["operational_grams"]
            scenario["difference_grams"] = (grams - op if grams is not None and op is not None
                                       else None)
        return {"facility_energy_kwh": facility_kwh, "rows": rows}

    def _series_meta(self) -> list[dict]:
        return [{"grid_zone": _labels(k).get("grid_zone", "")} for k in self.intensity]

    # -- charts -------------------------------------------------------------------------------

    def _series(self, intensity_chart: dict[LabelSet, Points]) -> dict:
        width = self.bucket
        count = max(1, math.ceil((self.end - self.start) / width))
        power: dict[str, list[float]] = {}
        for key, inc in self.energy_inc.items():
            buckets = power.setdefault(_labels(key).get("component", ""), [0.0] * count)
            for a, b, d in inc.deltas:
                spread(buckets, self.start, width, max(a, self.start), b, d)
        seconds = [min(width, self.end - (self.start + i * width)) for i in range(count)]
        power = {c: [j / s for j, s in zip(b, seconds)] for c, b in sorted(power.items())}

        def cumulative(increases) -> list[float]:
            buckets = [0.0] * count
            for inc in (increases or {}).values():
                for a, b, d in inc.deltas:
                    spread(buckets, self.start, width, max(a, self.start), b, d)
            running, out = 0.0, []
            for value in buckets:
                running += value
                out.append(running)
            return out

        return {
            "bucket_seconds": width,
            "t": [self.start + i * width for i in range(count)],
            "power_watts": power,
            "cumulative_operational_grams": cumulative(self.op_inc),
            "cumulative_embodied_grams": cumulative(self.emb_inc) if self.emb_inc else None,
            "intensity": [
                {"label": "/".join(filter(None, (_labels(k).get("instance", ""),
                                                  _labels(k).get("grid_zone", ""),
                                                  _labels(k).get("kind", "")))),
                 "t": [t for t, _ in points], "grams_per_kwh": [v for _, v in points]}
                for k, points in sorted(intensity_chart.items())],
        }

    def _observed_settings(self) -> dict:
        pue = sorted({v for points in self.pue.values() for _, v in points})
        labels = [_labels(k) for k in self.intensity]
        return {"pue": pue,
                "zones": sorted({ls.get("grid_zone", "") for ls in labels}),
                "providers": sorted({ls.get("provider", "") for ls in labels}),
                "kinds": sorted({ls.get("kind", "") for ls in labels})}


def labelset_of(result: dict) -> LabelSet:
    return tuple(sorted(result["metric"].items()))


def _models(rows: list[dict], targets: list[Target]) -> list[dict]:
    """carbon_model_info over the window: which model produced the modelled energy, how."""
    out = []
    for row in rows:
        labels = row["metric"]
        if (labels.get("job", ""), labels.get("instance", "")) not in targets:
            continue
        out.append({"instance": labels.get("instance", ""),
                    "collector": labels.get("collector", ""),
                    "method": labels.get("method", ""), "basis": labels.get("basis", "")})
    return sorted(out, key=lambda m: (m["instance"], m["collector"], m["method"], m["basis"]))


def _by_target(series: dict[LabelSet, Points]) -> dict[Target, Points]:
    out: dict[Target, Points] = defaultdict(list)
    for key, points in series.items():
        out[_target(key)].extend(points)
    return {k: sorted(v) for k, v in out.items()}




# --- methodology -----------------------------------------------------------------------------

def bundled_datasets() -> list[dict]:
    """Every CSV shipped in exporter/data: its own header comment, size, years and sources,
    so that a dataset added to the exporter shows up in the methodology by itself."""
    from exporter import data

    out = []
    for name in data.names():
        header, rows = data.header_and_rows(name)
        years: dict[str, int] = defaultdict(int)
        for row in rows:
            if row.get("year"):
                years[row["year"]] += 1
        sources = sorted({row["source"] for row in rows if row.get("source")})
        licence = next((line.split(":", 1)[1].strip() for line in header
                        if line.lower().startswith("licence")), "see exporter/data/README.md")
        out.append({
            "name": header[0].rstrip(".") if header else name,
            "file": f"exporter/data/{name}",
            "source": "; ".join(sources[:3]) + (f" (and {len(sources) - 3} more)"
                                                 if len(sources) > 3 else ""),
            "basis": "", "licence": licence, "rows": len(rows),
            "years": dict(sorted(years.items())), "world_grams_per_kwh": None,
            "header": header,
        })
    return out


def methodology(req: Request, build_info: list[dict], observed: dict) -> dict:
    from exporter.config import BY_KEY

    dataset = grid_dataset()
    datasets = bundled_datasets()
    for entry in datasets:
        if entry["file"].endswith("/grid_intensity.csv"):
            # The dataset the what-if zones and the default intensity come from.
            entry.update(basis="lifecycle, production-based annual average",
                         world_grams_per_kwh=dataset[WORLD].grams_per_kwh
                         if WORLD in dataset else None)
    settings = []
    for key in ("carbon.zone", "carbon.intensity", "carbon.pue", "sample.interval",
                "cpu_model.idle_watts_per_thread", "cpu_model.max_watts_per_thread",
                "dram_model.watts_per_gib"):
        setting = BY_KEY.get(key)
        if setting is not None:
            settings.append({"key": key, "default": setting.default, "help": setting.help})
    versions = sorted({r["metric"].get("version", "") for r in build_info} - {""})
    energy_metric = names.WORKLOAD_ENERGY if req.workload else names.ENERGY
    emissions = (names.WORKLOAD_EMISSIONS if req.workload
                 else f'{names.EMISSIONS}{{scope="operational"}}')
    return {
        "formulas": [
            f"Energy [kWh] = sum over the selected {energy_metric} series of the counter's "
            f"increases between consecutive stored samples / 3,600,000. The baseline is the "
            f"last sample at or before FROM (looked up to {LOOKBACK_SECONDS:g} s back), else "
            f"the first sample in the window; a decrease is a counter reset and counts the new "
            f"value. No extrapolation, so adjacent windows add up.",
            f"Operational emissions [gCO2e] = increase of {emissions}, integrated by the "
            f"exporter at every sample as energy [kWh] x grid intensity in force [gCO2e/kWh] x "
            f"PUE in force; the report does not recompute it from averages.",
            f"Facility energy [kWh] = sum of each energy increase x the {names.PUE} value in "
            f"force at that sample (1.0 where the exporter exported none).",
            f'Embodied emissions [gCO2e] = increase of {names.EMISSIONS}{{scope="embodied"}} '
            f"(node scope only).",
            "Intensity min/mean/max: over the stored samples of "
            f"{names.GRID_INTENSITY} on the selected nodes; mean is time-weighted (each value "
            "held until the next sample). Effective intensity = operational gCO2e / facility "
            "kWh, i.e. weighted by when the energy was used.",
            "Data quality: counter share = energy with source rapl or nvml; sampled power = "
            "source power_sample (power readings integrated); model = source model; platform "
            "remainder = source platform_remainder, what a platform meter (ACPI power meter, "
            "BMC) measured beyond the components. Totals basis: platform_meter when that "
            "remainder is present (the node totals are the meter's), else components (CPU, "
            "DRAM, GPU only: fans, disks, NICs and power-supply losses are not in them). A scrape "
            f"gap is two consecutive samples more than {GAP_FACTOR:g}x the median scrape "
            f"interval apart, or a start or end of the window that far from the nearest "
            f"sample. A collector failure is {names.COLLECTOR_UP} = 0 with reason "
            f"{' or '.join(FAILURE_REASONS)}; an intensity provider failure is "
            f"{names.PROVIDER_UP} = 0 with a reason other than {' or '.join(PROVIDER_OK)}. "
            f"Intensity is stale while "
            f"{names.GRID_INTENSITY_AGE} > {req.stale_after:g} s.",
            "What-if: facility kWh x alternative intensity. Lowest-intensity hours: per node, "
            "the mean of the k lowest hourly (UTC) time-weighted intensity means in the "
            "window, k = the number of hours in which the selection used energy. Forecast "
            f"minimum: {names.FORECAST_MIN} at TO. Zones: the bundled dataset's annual "
            "average.",
        ],
        "settings": settings,
        "observed": observed,
        "datasets": datasets,
        "exporter_versions": versions,
        "report_parameters": {"stale_after_seconds": req.stale_after,
                              "gap_threshold_factor": GAP_FACTOR,
                              "lookback_seconds": LOOKBACK_SECONDS,
                              "what_if_zones": list(req.zones)},
    }
