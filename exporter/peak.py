"""Peak power over a sliding window of the exporter's own samples, and the configured budgets.

A burst shorter than the scrape interval is invisible in carbon_power_watts (a scrape sees
only the last sample). carbon_power_peak_watts is the highest per-sample power of each
device over the last --power.peak-window, so every scraper sees the burst for that long,
and two Prometheus servers see the same value: the window slides over samples, it is not
reset by a scrape.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Iterable

SeriesKey = tuple[str, str, str]  # (component, device, source)


class PeakWindow:
    """Maximum of (time, value) samples over the last `window` seconds.

    A monotonic deque: values that can never be the maximum again (an older, lower one) are
    dropped on arrival, so adding and reading are amortised O(1) and memory is bounded by the
    samples in one window.
    """

    __slots__ = ("window", "_samples")

    def __init__(self, window: float) -> None:
        self.window = window
        self._samples: deque[tuple[float, float]] = deque()

    def add(self, at: float, value: float) -> None:
        samples = self._samples
        while samples and samples[-1][1] <= value:
            samples.pop()
        samples.append((at, value))

    def peak(self, now: float) -> float | None:
        """Highest value with a time in (now - window, now]; None when there is none."""
        samples = self._samples
        while samples and samples[0][0] <= now - self.window:
            samples.popleft()
        return samples[0][1] if samples else None


class PeakTracker:
    """One PeakWindow per top-level power series, fed once per new sample."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._windows: dict[SeriesKey, PeakWindow] = {}
        self._last_at: dict[SeriesKey, float] = {}

    def observe(self, key: SeriesKey, at: float, watts: float | None) -> None:
        """Record the power a sample at `at` gave; the same sample twice counts once."""
        if watts is None or self._last_at.get(key) == at:
            return
        self._last_at[key] = at
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = PeakWindow(self.window)
        window.add(at, watts)

    def peaks(self, now: float) -> tuple[tuple[str, str, str, float], ...]:
        """(component, device, source, peak watts) of every series sampled within the window."""
        out = []
        for key, window in self._windows.items():
            value = window.peak(now)
            if value is not None:
                out.append((*key, value))
        return tuple(out)


def budgets(budget: Any, gpu_devices: Iterable[str]) -> tuple[tuple[str, str, float], ...]:
    """(scope, device, watts) from the power.budget_watts setting (see exporter.config):
    None; a number (the node); or {node: W, gpu: W for every GPU | {gpu-0: W, ...}}."""
    if budget is None:
        return ()
    if isinstance(budget, (int, float)):
        return (("node", "", float(budget)),)
    out: list[tuple[str, str, float]] = []
    if budget.get("node") is not None:
        out.append(("node", "", float(budget["node"])))
    gpu = budget.get("gpu")
    if isinstance(gpu, (int, float)):
        out.extend(("gpu", device, float(gpu)) for device in gpu_devices)
    elif isinstance(gpu, dict):
        out.extend(("gpu", device, float(watts)) for device, watts in sorted(gpu.items()))
    return tuple(out)
