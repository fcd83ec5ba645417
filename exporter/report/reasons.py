"""`_up` series and their reasons. Since 0.1 the exporter keeps one `_up` series per collector
or provider and puts the reason in an info series (carbon_exporter_collector_status_info,
carbon_grid_provider_status_info), so that `for:` and history survive a change of reason.
Older exporters put `reason` on the `_up` series itself. The report reads both: this joins
each `_up` sample with the reason its info series gave at the same scrape."""

from __future__ import annotations

import bisect

from exporter.report.promapi import LabelSet, Points


def with_reasons(up: dict[LabelSet, Points], info: dict[LabelSet, Points],
                 label: str) -> dict[LabelSet, Points]:
    """`up` keyed as the old form (reason among the labels): series that already carry a
    reason pass through; the others are split by the reason in force at each sample (the
    info series' latest sample at or before it; "" when none)."""
    # (the other labels, the collector or provider) -> [(time, reason)]
    timelines: dict[tuple[LabelSet, str], list[tuple[float, str]]] = {}
    for key, points in info.items():
        labels = dict(key)
        reason = labels.pop("reason", "")
        labels.pop("__name__", None)
        labels.pop(label, None)
        base = (tuple(sorted(labels.items())), dict(key).get(label, ""))
        timelines.setdefault(base, []).extend((t, reason) for t, v in points if v == 1)
    for timeline in timelines.values():
        timeline.sort()
    out: dict[LabelSet, Points] = {}
    for key, points in up.items():
        labels = dict(key)
        if "reason" in labels:
            out[key] = points
            continue
        labels.pop("__name__", None)
        name = labels.pop(label, "")
        timeline = timelines.get((tuple(sorted(labels.items())), name), [])
        times = [t for t, _ in timeline]
        for t, v in points:
            index = bisect.bisect_right(times, t) - 1
            reason = timeline[index][1] if index >= 0 else ""
            new_key = tuple(sorted({**dict(key), "reason": reason}.items()))
            out.setdefault(new_key, []).append((t, v))
    return out
