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

# Reading.domain of a whole-node meter (ACPI power meter, BMC): the node's total, exported on
# its own; the components are its split and what they leave is credited as the remainder.
PLATFORM = "platform"
REMAINDER_COMPONENT = "other"
REMAINDER_SOURCE = "platform_remainder"
# Which platform meter is the node total when several report: local before the BMC.
PLATFORM_PREFERENCE = ("hwmon", "redfish")
# Components ahead of the meter by more than this share of its energy: worth a warning.
DEFICIT_WARNING = 0.05


@dataclass(slots=True)
class Reading:
    """One value read from a source at monotonic time `at`. Not changed once made (not
    declared frozen: it is made every sample, and a frozen dataclass's __init__ makes one
    object.__setattr__ call per field, 3x the cost of this one; see exporter.sampler).

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
    # Count only the share of the delta after this time (linear in time): the part before
    # was counted by a model that stood in for this counter (exporter.sampler).
    since: float | None = None

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


@dataclass(slots=True)  # made every sample: not frozen, for the cost (see Reading)
class Delta:
    """joules=None: the delta was dropped, but the reading is the new baseline."""

    joules: float | None
    seconds: float


@dataclass(slots=True)  # made every sample: not frozen, for the cost (see Reading)
class Counted:
    """Energy and operational emissions one sample added to a top-level device."""

    component: str
    device: str
    joules: float
    grams: float


def sum_by_component(counted: list[Counted]) -> tuple[dict[str, float], dict[str, float],
                                                     dict[str, float]]:
    """One sample's joules and grams per component, and joules per GPU device: what every
    split (the node's attribution, a run's) starts from."""
    joules: dict[str, float] = {}
    grams: dict[str, float] = {}
    gpu_joules: dict[str, float] = {}
    for c in counted:
        joules[c.component] = joules.get(c.component, 0.0) + c.joules
        grams[c.component] = grams.get(c.component, 0.0) + c.grams
        if c.component == "gpu":
            gpu_joules[c.device] = gpu_joules.get(c.device, 0.0) + c.joules
    return joules, grams, gpu_joules


class Ledger:
    """Per-series counters. Not thread-safe: used from the sampler's task only."""

    def __init__(self, max_power_gap: float = 5.0) -> None:
        # Power samples further apart than this are not integrated: the gap is unmeasured.
        self.max_power_gap = max_power_gap
        self.tracks: dict[tuple[str, str, str, str], Track] = {}
        # (collector, device, domain, reason) -> dropped deltas; domain is "" but for RAPL
        self.glitches: dict[tuple[str, str, str, str], int] = {}
        self._warned: set[tuple[str, str, str, str]] = set()  # keys whose first drop was logged
        self.platform = PlatformTotal()

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
        """Apply one sample's readings; return what this sample added to top-level devices
        (with a platform meter: the components and the remainder, summing to the meter)."""
        seen = set()
        counted: list[Counted] = []
        platform: list[tuple[Track, float, float]] = []  # (track, joules, seconds) this sample
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
            if delta.joules is not None and reading.since is not None and reading.since > track.last_at:
                share = max(0.0, reading.at - reading.since) / (reading.at - track.last_at)
                delta = Delta(delta.joules * share, delta.seconds) if share > 0 else Delta(None, 0.0)
            track.present = True
            track.last_value = reading.value
            track.last_at = reading.at
            if delta.joules is None:
                track.watts = None if reading.counter else reading.value
                continue
            track.joules += delta.joules
            track.watts = delta.joules / delta.seconds if reading.counter else reading.value
            if track.domain == PLATFORM:
                platform.append((track, delta.joules, delta.seconds))
            if track.component is not None:
                grams = delta.joules * grams_per_joule
                track.grams += grams
                counted.append(Counted(track.component, track.device, delta.joules, grams))
        for key, track in self.tracks.items():
            if key not in seen and track.present:
                track.present = False
                track.watts = None
        remainder = self.platform.update(self, platform, counted, grams_per_joule)
        if remainder is not None:
            counted.append(remainder)
        return counted

    def platform_tracks(self) -> list[Track]:
        return [t for t in self.tracks.values() if t.domain == PLATFORM]


class PlatformTotal:
    """The node total from a platform meter: components are its split, the remainder is
    credited to component="other", source="platform_remainder" (fans, disks, NICs, voltage
    regulators, power-supply losses).

    Kept cumulatively, since the meter and the components are not read at the same instant
    (a BMC value is seconds old, an ACPI meter averages over its interval):
        other = max over time of (meter energy - component energy), both since the basis began
    so the remainder counter never goes back, a sample where the components ran ahead of the
    meter is repaid by later remainders, and components + other = meter whenever the
    components have not outrun the meter. Samples without a meter delta change nothing.
    """

    def __init__(self) -> None:
        self.basis: Track | None = None  # the platform track the node total follows
        self.meter_joules = 0.0  # since the basis began
        self.component_joules = 0.0  # in the samples the meter measured
        self.remainder_joules = 0.0  # credited since the basis began
        self.track: Track | None = None  # the remainder's series
        self.warned = False  # components well above the meter: said once per basis

    @property
    def deficit(self) -> float:
        """Joules by which the components are ahead of the meter (0 when in step)."""
        return max(0.0, self.remainder_joules - (self.meter_joules - self.component_joules))

    def _choose(self, platform: list[tuple[Track, float, float]]) -> Track:
        tracks = [t for t, _, _ in platform]
        if self.basis in tracks:
            return self.basis
        def rank(track: Track) -> tuple[int, str]:
            order = (PLATFORM_PREFERENCE.index(track.collector)
                     if track.collector in PLATFORM_PREFERENCE else len(PLATFORM_PREFERENCE))
            return order, track.device
        return min(tracks, key=rank)

    def update(self, ledger: Ledger, platform: list[tuple[Track, float, float]],
               counted: list[Counted], grams_per_joule: float) -> Counted | None:
        if self.track is not None and not platform:
            self.track.watts = None
            self.track.present = False
        if not platform:
            return None
        basis = self._choose(platform)
        if basis is not self.basis:
            if self.basis is not None:
                log.info("node total now follows platform meter %s/%s (was %s/%s)",
                         basis.collector, basis.device, self.basis.collector, self.basis.device)
            else:
                log.info("node total follows platform meter %s/%s; components are its split",
                         basis.collector, basis.device)
            self.basis = basis
            self.meter_joules = self.component_joules = self.remainder_joules = 0.0
            self.warned = False
        joules, seconds = next((j, s) for t, j, s in platform if t is basis)
        self.meter_joules += joules
        self.component_joules += sum(c.joules for c in counted)
        remainder = max(0.0, self.meter_joules - self.component_joules - self.remainder_joules)
        self.remainder_joules += remainder
        if (not self.warned and self.meter_joules > 10_000
                and self.deficit > DEFICIT_WARNING * self.meter_joules):
            self.warned = True  # a meter that misses a supply, or models that overestimate
            log.warning("the components add up to %.0f%% more than platform meter %s/%s; "
                        "the node total follows the components while they do",
                        100 * self.deficit / self.meter_joules, basis.collector, basis.device)
        key = (REMAINDER_COMPONENT, "", basis.device, REMAINDER_SOURCE)
        track = ledger.tracks.get(key)
        if track is None:
            track = ledger.tracks[key] = Track(
                basis.collector, REMAINDER_COMPONENT, None, basis.device, REMAINDER_SOURCE,
                0.0, basis.last_at)
        track.present = True
        track.last_at = basis.last_at
        track.joules += remainder
        track.watts = remainder / seconds if seconds > 0 else None
        grams = remainder * grams_per_joule
        track.grams += grams
        if self.track is not None and self.track is not track:
            self.track.watts = None
            self.track.present = False
        self.track = track
        return Counted(REMAINDER_COMPONENT, basis.device, remainder, grams)


def grams_per_joule(grams_per_kwh: float, pue: float) -> float:
    return grams_per_kwh * pue / JOULES_PER_KWH

