"""CPU and DRAM models on fake /proc trees: the power formula, where P_idle/P_max come from,
standing aside for RAPL without double counting, and DRAM watts per GiB."""

from __future__ import annotations


import pytest

from exporter.config import resolve
from exporter.ledger import Ledger
from exporter.sources import OK, SUPERSEDED, Source
from exporter.sources.cpu_model import IDLE_FRACTION_OF_TDP, CpuModelSource
from exporter.sources.dram_model import DramModelSource
from tests.harness import FakeClock
from tests.fixtures import ProcfsTree





CLOCK = FakeClock()  # the sources' clock here: time moves when a test says so


@pytest.fixture(autouse=True)
def _fake_clock(monkeypatch):
    monkeypatch.setattr(Source, "clock", staticmethod(CLOCK))

def config(**flags):
    """Settings with an empty sysfs (no DMI) unless path.sysfs is given: the test machine's
    own DMI must never choose the curve."""
    flags.setdefault("path.sysfs", "/nonexistent-sysfs")
    return resolve(flags, None, {})


def two_reads(source: CpuModelSource, procfs: ProcfsTree, busy: int, idle: int):
    """Read, advance the jiffies, read again: (first, second) readings."""
    first = source.read()
    assert first.status.reason == OK, first.status
    CLOCK.advance(0.01)
    procfs.advance(busy, idle)
    second = source.read()
    assert second.status.reason == OK, second.status
    return first.readings[0], second.readings[0]


@pytest.mark.parametrize("busy, idle", [(0, 800), (200, 600), (800, 0), (1, 3)])
def test_configured_idle_and_max(tmp_path, busy, idle):
    procfs = ProcfsTree(tmp_path)
    source = CpuModelSource(procfs.procfs, config(**{"cpu_model.idle_watts": 40.0,
                                                    "cpu_model.max_watts": 240.0}))
    first, second = two_reads(source, procfs, busy, idle)
    u = busy / (busy + idle)
    watts = 40.0 + (240.0 - 40.0) * u
    assert source.utilisation == pytest.approx(u)
    assert second.value - first.value == pytest.approx(watts * (second.at - first.at), rel=1e-12)
    assert first.baseline is True and second.baseline is False
    assert second.source == "model" and second.component == "cpu" and second.device == "node"
    assert second.counter is True
    assert source.range.method == "configured" and "40-240 W" in source.range.basis


def test_table_match_by_model_name_times_sockets(tmp_path):
    procfs = ProcfsTree(tmp_path, threads=16, sockets=2,
                        model="Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz")
    source = CpuModelSource(procfs.procfs, config())
    first, second = two_reads(source, procfs, 300, 100)
    tdp = 205.0 * 2  # Xeon Gold 6338: TDP 205 W per socket in the bundled table
    assert source.range.max_watts == pytest.approx(1.02 * tdp)
    assert source.range.idle_watts == pytest.approx(IDLE_FRACTION_OF_TDP * tdp)
    assert "Xeon Gold 6338" in source.range.basis and "2 socket" in source.range.basis
    watts = tdp * (0.75 + (1.02 - 0.75) * (0.75 - 0.5) / 0.5)  # Teads curve between 50 and 100%
    assert second.value - first.value == pytest.approx(watts * (second.at - first.at), rel=1e-12)


def test_table_match_with_one_configured_figure(tmp_path):
    procfs = ProcfsTree(tmp_path, threads=8, sockets=1)
    source = CpuModelSource(procfs.procfs, config(**{"cpu_model.idle_watts": 10.0}))
    two_reads(source, procfs, 1, 1)
    assert source.range.idle_watts == 10.0
    assert source.range.max_watts == pytest.approx(1.02 * 205.0)


def test_per_thread_fallback_for_an_unknown_cpu(tmp_path):
    procfs = ProcfsTree(tmp_path, threads=12, sockets=1, model="Imaginary CPU 9000")
    source = CpuModelSource(procfs.procfs, config(**{"cpu_model.idle_watts_per_thread": 1.0,
                                                    "cpu_model.max_watts_per_thread": 4.0}))
    first, second = two_reads(source, procfs, 100, 300)
    assert source.range.idle_watts == pytest.approx(12.0)
    assert source.range.max_watts == pytest.approx(48.0)
    watts = 12.0 + 36.0 * 0.25
    assert second.value - first.value == pytest.approx(watts * (second.at - first.at), rel=1e-12)


def test_per_thread_defaults(tmp_path):
    procfs = ProcfsTree(tmp_path, threads=4, sockets=1, model="Imaginary CPU 9000")
    source = CpuModelSource(procfs.procfs, config())
    two_reads(source, procfs, 0, 10)
    assert source.range.idle_watts == pytest.approx(4 * 0.74)
    assert source.range.max_watts == pytest.approx(4 * 3.5)


def test_no_time_passing_in_proc_stat_counts_idle_power(tmp_path):
    procfs = ProcfsTree(tmp_path)
    source = CpuModelSource(procfs.procfs, config(**{"cpu_model.idle_watts": 30.0,
                                                    "cpu_model.max_watts": 90.0}))
    first, second = two_reads(source, procfs, 0, 0)
    assert source.utilisation == 0.0
    assert second.value - first.value == pytest.approx(30.0 * (second.at - first.at))


def test_superseded_when_rapl_covers_the_cpu_and_no_double_count_after(tmp_path):
    procfs = ProcfsTree(tmp_path)
    source = CpuModelSource(procfs.procfs, config(**{"cpu_model.idle_watts": 50.0,
                                                    "cpu_model.max_watts": 150.0}))
    ledger = Ledger()
    expected = 0.0

    first, second = two_reads(source, procfs, 50, 50)  # u = 0.5 -> 100 W
    ledger.update([first], 0.0)
    ledger.update([second], 0.0)
    expected += 100.0 * (second.at - first.at)

    # RAPL appears: the model hands back with a last reading up to now (issue 12: exact
    # hand-over), then stands aside while the jiffies keep moving
    procfs.advance(100, 0)  # u = 1 -> 150 W
    CLOCK.advance(0.01)
    handback = source.read(frozenset({"cpu"}))
    assert handback.status.reason == SUPERSEDED and len(handback.readings) == 1
    assert handback.readings[0].baseline is False
    ledger.update(handback.readings, 0.0)
    expected += 150.0 * (handback.readings[0].at - second.at)
    for _ in range(3):
        procfs.advance(100, 0)
        CLOCK.advance(0.01)
        result = source.read(frozenset({"cpu"}))
        assert result.status.reason == SUPERSEDED and result.readings == []
        ledger.update([], 0.0)

    # RAPL gone: the model counts from RAPL's last reading (its last read aside), and the
    # time aside before that is not counted
    CLOCK.advance(0.01)
    procfs.advance(0, 100)  # u = 0 -> 50 W
    back = source.read()
    baseline, counted = back.readings
    assert baseline.baseline is True and counted.baseline is False
    ledger.update(back.readings, 0.0)
    expected += 50.0 * (counted.at - baseline.at)
    CLOCK.advance(0.01)
    procfs.advance(0, 100)
    after = source.read().readings
    assert len(after) == 1
    ledger.update(after, 0.0)
    expected += 50.0 * (after[0].at - counted.at)

    track = ledger.tracks[("cpu", "", "node", "model")]
    assert track.joules == pytest.approx(expected, rel=1e-12)
    assert not any(ledger.glitches.values())


def test_reconfigure_reads_the_new_figures(tmp_path):
    procfs = ProcfsTree(tmp_path)
    source = CpuModelSource(procfs.procfs, config(**{"cpu_model.idle_watts": 10.0,
                                                    "cpu_model.max_watts": 20.0}))
    two_reads(source, procfs, 1, 1)
    source.configure(config(**{"cpu_model.idle_watts": 100.0, "cpu_model.max_watts": 200.0}))
    first, second = two_reads(source, procfs, 1, 1)
    assert second.value - first.value == pytest.approx(150.0 * (second.at - first.at))


def test_dram_watts_per_gib_times_memtotal(tmp_path):
    procfs = ProcfsTree(tmp_path, mem_kib=96 * 1024 * 1024)
    source = DramModelSource(procfs.procfs, config(**{"dram_model.watts_per_gib": 0.5}))
    first = source.read()
    assert first.status.reason == OK and "96.0 GiB" in first.status.detail
    CLOCK.advance(0.01)
    second = source.read()
    a, b = first.readings[0], second.readings[0]
    assert a.baseline is True and b.baseline is False
    assert b.component == "dram" and b.source == "model" and b.device == "node"
    assert b.value - a.value == pytest.approx(48.0 * (b.at - a.at), rel=1e-6)


def test_dram_default_coefficient(tmp_path):
    procfs = ProcfsTree(tmp_path, mem_kib=64 * 1024 * 1024)
    source = DramModelSource(procfs.procfs, config())
    # CPU modelled from its TDP (CPU only): all 64 GiB count, at CCF's 0.392 W per GB
    assert "= 25.1 W" in source.read().status.detail


def test_dram_superseded_by_rapl_dram_and_no_double_count(tmp_path):
    procfs = ProcfsTree(tmp_path, mem_kib=16 * 1024 * 1024)
    source = DramModelSource(procfs.procfs, config(**{"dram_model.watts_per_gib": 1.0}))
    ledger = Ledger()
    a = source.read().readings[0]
    ledger.update([a], 0.0)
    CLOCK.advance(0.01)
    b = source.read().readings[0]
    ledger.update([b], 0.0)
    CLOCK.advance(0.01)
    handback = source.read(frozenset({"dram", "cpu"}))  # RAPL dram appears: a last reading
    assert handback.status.reason == SUPERSEDED and len(handback.readings) == 1
    ledger.update(handback.readings, 0.0)
    CLOCK.advance(0.02)
    aside = source.read(frozenset({"dram", "cpu"}))
    assert aside.status.reason == SUPERSEDED and aside.readings == []
    CLOCK.advance(0.01)
    c, d = source.read().readings  # RAPL gone: from its last reading on
    assert c.baseline is True and d.baseline is False
    ledger.update([c, d], 0.0)
    expected = 16.0 * ((handback.readings[0].at - a.at) + (d.at - c.at))
    assert ledger.tracks[("dram", "", "node", "model")].joules == pytest.approx(expected, rel=1e-6)


def test_cpu_model_is_not_superseded_by_dram_only(tmp_path):
    procfs = ProcfsTree(tmp_path)
    source = CpuModelSource(procfs.procfs, config())
    assert source.read(frozenset({"dram", "gpu"})).status.reason == OK


def test_missing_procfs_is_an_error_not_a_crash(tmp_path):
    cpu = CpuModelSource(str(tmp_path / "nowhere"), config())
    dram = DramModelSource(str(tmp_path / "nowhere"), config())
    assert cpu.read().status.reason == "error"
    assert dram.read().status.reason == "error"
