"""The ledger: counter deltas, wraparound, resets and glitches, power-sample integration,
and the invariants every exported _total relies on (never decreasing, physically bounded)."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.ledger import JOULES_PER_KWH, Counted, Ledger, Reading, grams_per_joule

WRAP = 1000.0  # joules; small so the tests wrap often



def counted_glitches(ledger):
    """The glitch counters that moved (every series starts at 0 for both reasons)."""
    return {key: count for key, count in ledger.glitches.items() if count}


def counter(value: float, at: float, *, device: str = "package-0", wrap: float | None = WRAP,
            max_watts: float = 5000.0, component: str | None = "cpu", domain: str | None = "package",
            baseline: bool = False) -> Reading:
    return Reading(collector="rapl", device=device, source="rapl", value=value, at=at,
                   counter=True, wrap=wrap, max_watts=max_watts, component=component,
                   domain=domain, baseline=baseline)


def power(watts: float, at: float, *, device: str = "gpu-0", max_watts: float = 3000.0) -> Reading:
    return Reading(collector="nvml", device=device, source="power_sample", value=watts, at=at,
                   counter=False, max_watts=max_watts, component="gpu")


def track(ledger: Ledger, reading: Reading):
    return ledger.tracks[reading.key]


def test_first_reading_is_a_baseline_and_counts_nothing():
    ledger = Ledger()
    r = counter(500.0, 10.0)
    assert ledger.update([r], 1.0) == []
    t = track(ledger, r)
    assert t.joules == 0.0 and t.watts is None and t.grams == 0.0


def test_counter_delta_and_watts_from_energy():
    ledger = Ledger()
    ledger.update([counter(100.0, 0.0)], 0.0)
    counted = ledger.update([counter(350.0, 2.0)], 0.0)
    t = track(ledger, counter(0, 0))
    assert t.joules == pytest.approx(250.0)
    assert t.watts == pytest.approx(125.0)
    assert counted == [Counted("cpu", "package-0", pytest.approx(250.0), 0.0)]


def test_wraparound_uses_max_energy_range():
    ledger = Ledger()
    ledger.update([counter(WRAP - 30.0, 0.0)], 0.0)
    ledger.update([counter(20.0, 1.0)], 0.0)  # passed the wrap point: 30 + 20 J
    t = track(ledger, counter(0, 0))
    assert t.joules == pytest.approx(50.0)
    assert t.watts == pytest.approx(50.0)
    assert counted_glitches(ledger) == {}


def test_counter_back_without_wrap_is_a_reset_not_a_decrease():
    ledger = Ledger()
    ledger.update([counter(500.0, 0.0, wrap=None)], 0.0)
    ledger.update([counter(600.0, 1.0, wrap=None)], 0.0)
    counted = ledger.update([counter(10.0, 2.0, wrap=None)], 0.0)  # driver reload
    assert counted == []
    t = track(ledger, counter(0, 0, wrap=None))
    assert t.joules == pytest.approx(100.0)
    assert t.watts is None
    assert counted_glitches(ledger) == {("rapl", "package-0", "package", "reset"): 1}
    # the reset value is the new baseline: the next delta counts from it
    ledger.update([counter(40.0, 3.0, wrap=None)], 0.0)
    assert t.joules == pytest.approx(130.0)


def test_value_above_the_counter_range_is_one_glitch_and_loses_nothing():
    """Issue 12: a value above max_energy_range_uj became the new baseline (energy lost, two
    glitches for one event). Now it is dropped, the last good value stays the baseline and
    the next good reading bridges the gap."""
    ledger = Ledger()
    ledger.update([counter(900.0, 0.0)], 0.0)
    assert ledger.update([counter(WRAP + 5.0, 1.0)], 0.0) == []  # no counter holds this
    ledger.update([counter(950.0, 2.0)], 0.0)  # 50 J since the last good value
    assert track(ledger, counter(0, 0)).joules == pytest.approx(50.0)
    assert counted_glitches(ledger) == {("rapl", "package-0", "package", "implausible"): 1}


def test_counter_back_with_wrap_implying_more_than_max_watts_is_a_reset():
    ledger = Ledger()
    ledger.update([counter(800.0, 0.0, max_watts=100.0)], 0.0)
    # back by 10 J: as a wrap that would be 990 J in 1 s, above 100 W
    counted = ledger.update([counter(790.0, 1.0, max_watts=100.0)], 0.0)
    assert counted == []
    t = track(ledger, counter(0, 0))
    assert t.joules == 0.0 and t.watts is None
    assert counted_glitches(ledger) == {("rapl", "package-0", "package", "reset"): 1}
    ledger.update([counter(840.0, 2.0, max_watts=100.0)], 0.0)
    assert t.joules == pytest.approx(50.0)


def test_implausible_jump_is_dropped_and_counted():
    ledger = Ledger()
    ledger.update([counter(0.0, 0.0, wrap=None)], 0.0)
    assert ledger.update([counter(6000.0, 1.0, wrap=None)], 0.0) == []  # 6 kW > 5 kW
    t = track(ledger, counter(0, 0, wrap=None))
    assert t.joules == 0.0
    assert counted_glitches(ledger) == {("rapl", "package-0", "package", "implausible"): 1}
    ledger.update([counter(6000.0, 2.0, wrap=None)], 0.0)
    ledger.update([counter(16000.0, 3.0, wrap=None)], 0.0)
    assert ledger.glitches[("rapl", "package-0", "package", "implausible")] == 2
    # the jump became the baseline; only the plausible delta after it counts
    ledger.update([counter(16300.0, 4.0, wrap=None)], 0.0)
    assert t.joules == pytest.approx(300.0)


def test_irregular_intervals_give_watts_as_delta_over_dt():
    ledger = Ledger()
    times = [0.0, 0.1, 0.35, 2.35, 2.4, 7.4]
    values = [0.0, 5.0, 30.0, 130.0, 131.0, 381.0]
    ledger.update([counter(values[0], times[0], wrap=None)], 0.0)
    t = track(ledger, counter(0, 0, wrap=None))
    for i in range(1, len(times)):
        ledger.update([counter(values[i], times[i], wrap=None)], 0.0)
        expected = (values[i] - values[i - 1]) / (times[i] - times[i - 1])
        assert t.watts == pytest.approx(expected)
    assert t.joules == pytest.approx(381.0)


def test_time_not_advancing_is_ignored():
    ledger = Ledger()
    ledger.update([counter(0.0, 5.0)], 0.0)
    assert ledger.update([counter(10.0, 5.0)], 0.0) == []
    assert ledger.update([counter(20.0, 4.0)], 0.0) == []
    ledger.update([counter(30.0, 6.0)], 0.0)
    assert track(ledger, counter(0, 0)).joules == pytest.approx(30.0)


def test_power_samples_are_integrated_with_the_trapezoid_rule():
    ledger = Ledger(max_power_gap=5.0)
    ledger.update([power(100.0, 0.0)], 0.0)
    t = track(ledger, power(0, 0))
    assert t.watts == 100.0
    ledger.update([power(300.0, 2.0)], 0.0)
    assert t.joules == pytest.approx((100 + 300) / 2 * 2)
    assert t.watts == 300.0
    ledger.update([power(200.0, 2.5)], 0.0)
    assert t.joules == pytest.approx(400 + (300 + 200) / 2 * 0.5)


def test_power_samples_across_a_gap_longer_than_max_gap_are_not_integrated():
    ledger = Ledger(max_power_gap=5.0)
    ledger.update([power(100.0, 0.0)], 0.0)
    ledger.update([power(100.0, 1.0)], 0.0)
    t = track(ledger, power(0, 0))
    assert t.joules == pytest.approx(100.0)
    assert ledger.update([power(200.0, 7.0)], 0.0) == []  # 6 s unmeasured
    assert t.joules == pytest.approx(100.0)
    assert t.watts == 200.0
    ledger.update([power(200.0, 8.0)], 0.0)  # integration resumes from the new sample
    assert t.joules == pytest.approx(300.0)


def test_implausible_power_sample_is_dropped():
    ledger = Ledger()
    ledger.update([power(100.0, 0.0)], 0.0)
    ledger.update([power(99999.0, 1.0)], 0.0)
    ledger.update([power(-5.0, 1.5)], 0.0)
    t = track(ledger, power(0, 0))
    assert t.joules == 0.0
    assert counted_glitches(ledger) == {("nvml", "gpu-0", "", "implausible"): 2}
    ledger.update([power(100.0, 2.0)], 0.0)  # integrated from the last good sample
    assert t.joules == pytest.approx(200.0)


def test_baseline_reading_starts_over_without_a_delta():
    ledger = Ledger()
    ledger.update([counter(0.0, 0.0, wrap=None)], 0.0)
    ledger.update([counter(50.0, 1.0, wrap=None)], 0.0)
    assert ledger.update([counter(4000.0, 100.0, wrap=None, baseline=True)], 0.0) == []
    t = track(ledger, counter(0, 0, wrap=None))
    assert t.joules == pytest.approx(50.0)
    assert t.watts is None
    ledger.update([counter(4010.0, 101.0, wrap=None)], 0.0)
    assert t.joules == pytest.approx(60.0)
    assert counted_glitches(ledger) == {}


def test_vanished_track_keeps_its_total_and_loses_its_watts():
    ledger = Ledger()
    a, b = counter(0.0, 0.0), counter(0.0, 0.0, device="package-1")
    ledger.update([a, b], 0.0)
    ledger.update([counter(10.0, 1.0), counter(20.0, 1.0, device="package-1")], 0.0)
    ledger.update([counter(30.0, 2.0)], 0.0)  # package-1 not read
    gone = track(ledger, b)
    assert gone.present is False and gone.watts is None
    assert gone.joules == pytest.approx(20.0)
    # it returns: the energy across the gap is counted from the counter
    ledger.update([counter(40.0, 3.0), counter(80.0, 3.0, device="package-1")], 0.0)
    assert gone.present is True
    assert gone.joules == pytest.approx(80.0)
    assert gone.watts == pytest.approx(30.0)


def test_grams_are_joules_times_grams_per_joule():
    gpj = grams_per_joule(400.0, 1.5)
    assert gpj == pytest.approx(400.0 * 1.5 / JOULES_PER_KWH)
    ledger = Ledger()
    ledger.update([counter(0.0, 0.0)], gpj)
    counted = ledger.update([counter(360.0, 1.0)], gpj)
    assert counted[0].grams == pytest.approx(360.0 * gpj)
    # a later intensity applies to later energy only
    counted = ledger.update([counter(720.0, 2.0)], gpj * 2)
    assert counted[0].grams == pytest.approx(360.0 * gpj * 2)
    assert track(ledger, counter(0, 0)).grams == pytest.approx(360 * gpj * 3)


def test_zones_without_component_are_tracked_but_not_counted():
    ledger = Ledger()
    core = counter(0.0, 0.0, component=None, domain="core")
    ledger.update([core], 1.0)
    assert ledger.update([counter(5.0, 1.0, component=None, domain="core")], 1.0) == []
    t = track(ledger, core)
    assert t.joules == pytest.approx(5.0)
    assert t.grams == 0.0


# --- properties -------------------------------------------------------------------------------

# One step of a counter: how far it moves (may be garbage, backwards, past the wrap) and how
# much time passes (may be zero or backwards).
steps = st.lists(
    st.tuples(
        st.one_of(
            st.floats(0, 50, allow_nan=False),  # ordinary progress
            st.floats(-WRAP * 2, WRAP * 3, allow_nan=False),  # anything: resets, garbage
            st.just(0.0),
        ),
        st.one_of(st.floats(0.001, 3.0), st.just(0.0), st.floats(-1.0, 0.0)),
        st.booleans(),  # jump to an absolute value instead (garbage reading)
        st.floats(0, WRAP * 2, allow_nan=False),
    ),
    min_size=1, max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(start=st.floats(0, WRAP, allow_nan=False), steps=steps,
       max_watts=st.sampled_from([20.0, 100.0, 5000.0]),
       wrap=st.sampled_from([WRAP, None]))
def test_totals_never_decrease_and_stay_physically_bounded(start, steps, max_watts, wrap):
    ledger = Ledger()
    value, at = start, 100.0
    first_at = at
    latest_at = at
    key = counter(0, 0).key
    ledger.update([counter(value, at, wrap=wrap, max_watts=max_watts)], 1e-3)
    previous = 0.0
    for move, seconds, absolute, jump_to in steps:
        value = jump_to if absolute else value + move
        if wrap is not None and not absolute and 0 <= value:
            value %= wrap
        value = max(0.0, value)  # counters are unsigned
        at += seconds
        latest_at = max(latest_at, at)
        counted = ledger.update([counter(value, at, wrap=wrap, max_watts=max_watts)], 1e-3)
        t = ledger.tracks[key]
        assert all(c.joules >= 0 and c.grams >= 0 for c in counted)
        assert t.joules >= previous
        assert t.grams == pytest.approx(t.joules * 1e-3)
        assert t.joules <= max_watts * (latest_at - first_at) + 1e-6
        if t.watts is not None:
            assert 0 <= t.watts <= max_watts * (1 + 1e-9)
        previous = t.joules


@settings(max_examples=300, deadline=None)
@given(start=st.floats(0, WRAP, allow_nan=False, exclude_max=True),
       steps=st.lists(st.tuples(st.floats(0.01, 2.0), st.floats(0.0, 0.99)), min_size=1, max_size=80),
       wrap=st.sampled_from([WRAP, 65712.999613, None]))
def test_total_equals_injected_energy_through_wraps(start, steps, wrap):
    """A counter advanced by known energy below the power bound: nothing lost, nothing added."""
    max_watts = 5000.0
    ledger = Ledger()
    value, at = start, 0.0
    ledger.update([counter(value, at, wrap=wrap, max_watts=max_watts)], 0.0)
    injected = 0.0
    for seconds, share in steps:
        # below the bound, and below one full wrap per interval (else wraps are ambiguous)
        joules = share * min(max_watts * seconds, (wrap or math.inf) * 0.999)
        injected += joules
        value += joules
        if wrap is not None:
            value %= wrap
        at += seconds
        ledger.update([counter(value, at, wrap=wrap, max_watts=max_watts)], 0.0)
    t = ledger.tracks[counter(0, 0).key]
    assert t.joules == pytest.approx(injected, rel=1e-9, abs=1e-6)
    assert counted_glitches(ledger) == {}


@settings(max_examples=200, deadline=None)
@given(samples=st.lists(st.tuples(st.floats(0.01, 4.0), st.floats(-100, 4000, allow_nan=False)),
                        min_size=1, max_size=50))
def test_power_sample_totals_never_decrease_and_stay_bounded(samples):
    ledger = Ledger(max_power_gap=5.0)
    at = 0.0
    ledger.update([power(100.0, at)], 0.0)
    previous = 0.0
    for seconds, watts in samples:
        at += seconds
        ledger.update([power(watts, at)], 0.0)
        t = ledger.tracks[power(0, 0).key]
        assert t.joules >= previous
        assert t.joules <= 3000.0 * at + 1e-6
        previous = t.joules


def test_since_counts_only_the_share_after_a_model_stood_in():
    """A zone back after a model counted its outage up to t=8: of its 10 s delta only the
    share after 8 s counts (issue 12: the hand-over leaves no gap and no overlap)."""
    ledger = Ledger()
    ledger.update([counter(100.0, 0.0, wrap=None)], 0.0)
    counted = ledger.update([dataclasses.replace(counter(1100.0, 10.0, wrap=None), since=8.0)], 0.0)
    assert [c.joules for c in counted] == [pytest.approx(200.0)]
    late = ledger.update([dataclasses.replace(counter(1200.0, 11.0, wrap=None), since=12.0)], 0.0)
    assert late == []  # the model counted past this reading: nothing, and a new baseline
    ledger.update([counter(1250.0, 12.0, wrap=None)], 0.0)
    assert track(ledger, counter(0, 0, wrap=None)).joules == pytest.approx(250.0)
