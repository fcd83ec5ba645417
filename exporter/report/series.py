"""Pure series arithmetic for the report: counter increases, gauges held between samples,
buckets and window overlaps. No Prometheus and no I/O: tests/test_report_series.py covers it.

Counters: increases between consecutive stored samples (a decrease is a reset, as in
Prometheus's increase()). Gauges: each value held until the next sample. No extrapolation,
so reports over adjacent windows add up.
"""

from __future__ import annotations

import bisect
import datetime as dt
import math
import statistics
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

LabelSet = tuple[tuple[str, str], ...]
Points = list[tuple[float, float]]
Target = tuple[str, str]  # (job, instance)


def rfc3339(t: float) -> str:
    moment = dt.datetime.fromtimestamp(t, dt.timezone.utc)
    text = moment.isoformat(timespec="milliseconds" if t % 1 else "seconds")
    return text.replace("+00:00", "Z")


def labels_of(key: LabelSet) -> dict[str, str]:
    return dict(key)


def target_of(key: LabelSet) -> Target:
    labels = labels_of(key)
    return labels.get("job", ""), labels.get("instance", "")


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


def held_intervals(points: Points, start: float, end: float) -> Iterator[tuple[float, float, float]]:
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


def stats(values: list[tuple[float, float]]) -> dict[str, float | None] | None:
    """min/max over values and the duration-weighted mean; values are (value, seconds)."""
    if not values:
        return None
    weight = math.fsum(w for _, w in values)
    mean = (math.fsum(v * w for v, w in values) / weight if weight > 0
            else statistics.fmean(v for v, _ in values))
    return {"min": min(v for v, _ in values), "mean": mean, "max": max(v for v, _ in values)}


def nice_bucket(seconds: float) -> float:
    raw = seconds / 240
    for nice in (60, 300, 600, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400):
        if raw <= nice:
            return float(nice)
    return 86400.0 * math.ceil(raw / 86400)


def labelset_of(result: dict[str, Any]) -> LabelSet:
    return tuple(sorted(result["metric"].items()))


def models_of(rows: list[dict[str, Any]], targets: list[Target]) -> list[dict[str, str]]:
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


def by_target(series: dict[LabelSet, Points]) -> dict[Target, Points]:
    out: dict[Target, Points] = defaultdict(list)
    for key, points in series.items():
        out[target_of(key)].extend(points)
    return {k: sorted(v) for k, v in out.items()}
