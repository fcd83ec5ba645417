"""Energy bookkeeping: counter deltas with wraparound and reset handling, power integration,
and emissions integrated with the intensity in force at each sample.

The ledger is the only place that turns raw readings into joules. Its totals only grow:
a delta that cannot be trusted (a counter that went back, a jump above a physical bound)
is dropped and counted as a glitch instead of becoming a spike or a decrease.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)

JOULES_PER_KWH = 3.6e6


@dataclass(frozen=True, slots=True)
class Reading:
    """One value read from a source at monotonic time `at`.

    counter=True: `value` is a cumulative energy counter in joules that wraps at `wrap`
    (None: never wraps). counter=False: `value` is instantaneous power in watts.
    A reading with a `component` is a top-level device (summed into node totals);
    `domain` marks a RAPL zone, exported in the per-domain metric as well.
    """

    collector: str
    device: str
    source: str
    value: float
    at: float
    counter: bool = True
    wrap: float | None = None
    max_watts: float = 5000.0
    component: str | None = None
    domain: str | None = None
    baseline: bool = False  # start over from this value: no delta from the previous one

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.component or "", self.domain or "", self.device, self.source)


@dataclass(slots=True)
class Track:
    """What the ledger remembers of one series between samples."""

    collector: str
    component: str | None
    domain: str | None
    device: str
    source: str
    last_value: float
    last_at: float
    joules: float = 0.0
    watts: float | None = None
    grams: float = 0.0
    present: bool = True


@dataclass(frozen=True, slots=True)
class Delta:
    """joules=None: the delta was dropped, but the reading is the new baseline."""

    joules: float | None
    seconds: float


@dataclass(frozen=True, slots=True)
class Counted:
    """Energy and operational emissions one sample added to a top-level device."""

    component: str
    device: str
    joules: float
    grams: float


class Ledger:
    """Per-series counters. Not thread-safe: used from the sampler's task only."""

    def __init__(self, max_power_gap: float = 5.0) -> None:
        # Power samples further apart than this are not integrated: the gap is unmeasured.
        self.max_power_gap = max_power_gap
        self.tracks: dict[tuple[str, str, str, str], Track] = {}
        # (collector, device, domain, reason) -> dropped deltas; domain is "" but for RAPL
        self.glitches: dict[tuple[str, str, str, str], int] = {}
        self._warned: set[tuple[str, str, str, str]] = set()  # keys whose first drop was logged

    def _glitch(self, reading: Reading, reason: str, detail: str) -> None:
        key = (reading.collector, reading.device, reading.domain or "", reason)
        self.glitches[key] = self.glitches.get(key, 0) + 1
        first = key not in self._warned  # the keys are pre-seeded at 0: not a sign of "first"
        self._warned.add(key)
        log_fn = log.warning if first else log.debug
        log_fn("dropped energy delta: collector=%s device=%s domain=%s reason=%s %s",
               reading.collector, reading.device, reading.domain or "-", reason, detail)

    def _delta(self, track: Track, reading: Reading) -> Delta | None:
        seconds = reading.at - track.last_at
        if seconds <= 0:
            return None
        if reading.counter:
            if reading.wrap is not None and reading.value > reading.wrap:
                # no counter holds this: keep the last good baseline, the next good reading
                # bridges the gap
                self._glitch(reading, "implausible",
                             f"counter value {reading.value:.6f} above its range {reading.wrap:.6f}")
                return None
            raw = reading.value - track.last_value
            if raw < 0:
                # a value above the wrap point on either side cannot be a wraparound
                if (reading.wrap is None or reading.value > reading.wrap
                        or track.last_value > reading.wrap):
                    self._glitch(reading, "reset",
                                 f"counter went from {track.last_value:.6f} to {reading.value:.6f}")
                    return Delta(None, seconds)
                raw += reading.wrap
            if raw > reading.max_watts * seconds:
                reason = "reset" if reading.value < track.last_value else "implausible"
                self._glitch(reading, reason,
                             f"{raw:.1f} J in {seconds:.3f} s is above {reading.max_watts:g} W")
                return Delta(None, seconds)
            return Delta(raw, seconds)
        # power sample: trapezoid between the last sample and this one
        if not 0 <= reading.value <= reading.max_watts:
            self._glitch(reading, "implausible", f"power sample {reading.value:g} W")
            return None
        if seconds > self.max_power_gap:
            return Delta(None, seconds)
        return Delta((track.last_value + reading.value) / 2 * seconds, seconds)

    def update(self, readings: list[Reading], grams_per_joule: float) -> list[Counted]:
        """Apply one sample's readings; return what this sample added to top-level devices."""
        seen = set()
        counted: list[Counted] = []
        for reading in readings:
            key = reading.key
            seen.add(key)
            track = self.tracks.get(key)
            if track is None:
                # Counters known from the start at 0, so the first glitch shows in increase().
                for reason in ("reset", "implausible"):
                    self.glitches.setdefault(
                        (reading.collector, reading.device, reading.domain or "", reason), 0)
                self.tracks[key] = Track(
                    reading.collector, reading.component, reading.domain, reading.device,
                    reading.source, reading.value, reading.at,
                    watts=None if reading.counter else reading.value,
                )
                continue
            delta = Delta(None, 0.0) if reading.baseline else self._delta(track, reading)
            if delta is None:
                continue
            track.present = True
            track.last_value = reading.value
            track.last_at = reading.at
            if delta.joules is None:
                track.watts = None if reading.counter else reading.value
                continue
            track.joules += delta.joules
            track.watts = delta.joules / delta.seconds if reading.counter else reading.value
            if track.component is not None:
                grams = delta.joules * grams_per_joule
                track.grams += grams
                counted.append(Counted(track.component, track.device, delta.joules, grams))
        for key, track in self.tracks.items():
            if key not in seen and track.present:
                track.present = False
                track.watts = None
        return counted


def grams_per_joule(grams_per_kwh: float, pue: float) -> float:
    return grams_per_kwh * pue / JOULES_PER_KWH

