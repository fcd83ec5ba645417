"""RAPL through the powercap class, against fake trees in the kernel's exact layout."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from exporter.ledger import Ledger
from exporter.sources import ABSENT, ERROR, OK, PERMISSION, Source
from exporter.sources.rapl import RaplSource
from tests.harness import FakeClock, read_as_nobody
from tests.fixtures import PowercapTree, amd_one_socket, intel_two_socket



CLOCK = FakeClock()  # the sources' clock here: time moves when a test says so


@pytest.fixture(autouse=True)
def _fake_clock(monkeypatch):
    monkeypatch.setattr(Source, "clock", staticmethod(CLOCK))

def by_zone(result) -> dict[tuple[str, str], object]:
    return {(r.domain, r.device): r for r in result.readings}


def test_intel_two_socket_with_dram_and_psys(tmp_path):
    tree = intel_two_socket(tmp_path)
    result = RaplSource(tree.sysfs).read()
    assert result.status.reason == OK, result.status
    zones = by_zone(result)
    assert set(zones) == {
        ("package", "package-0"), ("core", "package-0"), ("uncore", "package-0"),
        ("dram", "package-0"), ("package", "package-1"), ("core", "package-1"),
        ("dram", "package-1"), ("psys", "psys"),
    }
    # top-level components: packages are cpu, dram is dram; the rest overlap them
    assert zones[("package", "package-0")].component == "cpu"
    assert zones[("package", "package-1")].component == "cpu"
    assert zones[("dram", "package-0")].component == "dram"
    assert zones[("dram", "package-1")].component == "dram"
    for overlapping in (("core", "package-0"), ("uncore", "package-0"), ("core", "package-1"),
                        ("psys", "psys")):
        assert zones[overlapping].component is None
    assert zones[("package", "package-1")].value == pytest.approx(2.0)  # 2,000,000 uJ
    assert zones[("dram", "package-0")].value == pytest.approx(0.2)
    assert zones[("dram", "package-0")].wrap == pytest.approx(65712.999613)
    assert zones[("package", "package-0")].wrap == pytest.approx(262143.328850)
    for reading in result.readings:
        assert reading.source == "rapl" and reading.collector == "rapl" and reading.counter
        assert reading.max_watts == 5000.0


def test_mmio_duplicate_is_not_double_counted(tmp_path):
    tree = intel_two_socket(tmp_path)
    result = RaplSource(tree.sysfs).read()
    packages = [r for r in result.readings if r.domain == "package" and r.device == "package-0"]
    assert len(packages) == 1
    assert packages[0].value == pytest.approx(1.0)  # the MSR zone, not mmio's 1.000123 J


@pytest.mark.parametrize("control", ["intel-rapl-mmio", "intel-rapl-tpmi"])
def test_other_interface_is_used_when_the_msr_zone_is_absent(tmp_path, control):
    tree = PowercapTree(tmp_path)
    tree.add_zone(f"{control}:0", "package-0", 4_000_000)
    tree.add_zone("intel-rapl:1", "package-1", 1_000_000)
    tree.add_zone(f"{control}:1", "package-1", 1_000_777)
    result = RaplSource(tree.sysfs).read()
    assert result.status.reason == OK
    zones = by_zone(result)
    assert set(zones) == {("package", "package-0"), ("package", "package-1")}
    assert zones[("package", "package-0")].value == pytest.approx(4.0)
    assert zones[("package", "package-0")].component == "cpu"
    assert zones[("package", "package-1")].value == pytest.approx(1.0)  # MSR wins


def test_duplicates_through_three_interfaces_count_once_in_the_ledger(tmp_path):
    tree = PowercapTree(tmp_path)
    for control in ("intel-rapl", "intel-rapl-mmio", "intel-rapl-tpmi"):
        tree.add_zone(f"{control}:0", "package-0", 0)
    source, ledger = RaplSource(tree.sysfs), Ledger()
    ledger.update(source.read().readings, 0.0)
    CLOCK.advance(0.01)
    for control in ("intel-rapl", "intel-rapl-mmio", "intel-rapl-tpmi"):
        tree.advance(f"{control}:0", 10.0)
    counted = ledger.update(source.read().readings, 0.0)
    assert sum(c.joules for c in counted) == pytest.approx(10.0)


def test_amd_naming(tmp_path):
    tree = amd_one_socket(tmp_path)
    result = RaplSource(tree.sysfs).read()
    assert result.status.reason == OK
    zones = by_zone(result)
    assert set(zones) == {("package", "package-0"), ("core", "package-0")}
    assert zones[("package", "package-0")].component == "cpu"
    assert zones[("core", "package-0")].component is None
    assert zones[("package", "package-0")].wrap == pytest.approx(65532.610987)


def test_absent_tree(tmp_path):
    result = RaplSource(str(tmp_path)).read()
    assert result.status.reason == ABSENT
    assert "no RAPL zones" in result.status.detail
    assert result.readings == []


def test_empty_powercap_class_is_absent(tmp_path):
    (tmp_path / "class" / "powercap").mkdir(parents=True)
    (tmp_path / "class" / "powercap" / "dtpm").mkdir()  # another control type: not RAPL
    assert RaplSource(str(tmp_path)).read().status.reason == ABSENT


@pytest.mark.parametrize("garbage", ["", "abc\n", "-5\n", "12 34\n", "\x00\x00"])
def test_garbage_energy_is_an_error_for_that_zone_only(tmp_path, garbage):
    tree = intel_two_socket(tmp_path)
    tree.set_raw("intel-rapl:1", garbage)
    result = RaplSource(tree.sysfs).read()
    assert result.status.reason == ERROR
    assert "intel-rapl:1" in result.status.detail
    zones = by_zone(result)
    assert ("package", "package-1") not in zones
    assert ("package", "package-0") in zones and ("dram", "package-1") in zones
    assert len(result.readings) == 7


def test_garbage_then_recovery_keeps_energy(tmp_path):
    tree = amd_one_socket(tmp_path)
    source, ledger = RaplSource(tree.sysfs), Ledger()
    ledger.update(source.read().readings, 0.0)
    CLOCK.advance(0.01)
    tree.advance("intel-rapl:0", 5.0)
    ledger.update(source.read().readings, 0.0)
    tree.set_raw("intel-rapl:0", "garbage")
    CLOCK.advance(0.01)
    assert source.read().status.reason == ERROR
    tree.advance("intel-rapl:0", 7.0)  # rewrites the value from the fixture's counter
    CLOCK.advance(0.01)
    result = source.read()
    assert result.status.reason == OK
    ledger.update(result.readings, 0.0)
    package = ledger.tracks[("cpu", "package", "package-0", "rapl")]
    assert package.joules == pytest.approx(12.0)


def test_zone_vanishing_mid_run_then_returning(tmp_path):
    tree = intel_two_socket(tmp_path)
    source, ledger = RaplSource(tree.sysfs), Ledger()
    ledger.update(source.read().readings, 0.0)

    CLOCK.advance(0.01)
    tree.advance("intel-rapl:1", 3.0)
    tree.advance("intel-rapl:0", 1.0)
    ledger.update(source.read().readings, 0.0)

    tree.remove("intel-rapl:1")
    CLOCK.advance(0.01)
    tree.advance("intel-rapl:1", 4.0)  # energy used while the zone is gone
    tree.advance("intel-rapl:0", 2.0)
    result = source.read()
    assert result.status.reason == ERROR
    assert "vanished" in result.status.detail and "intel-rapl:1" in result.status.detail
    zones = by_zone(result)
    assert ("package", "package-1") not in zones and ("package", "package-0") in zones
    ledger.update(result.readings, 0.0)
    package1 = ledger.tracks[("cpu", "package", "package-1", "rapl")]
    assert package1.present is False and package1.watts is None
    assert package1.joules == pytest.approx(3.0)

    tree.restore("intel-rapl:1")
    CLOCK.advance(0.01)
    tree.advance("intel-rapl:1", 5.0)
    result = source.read()
    assert result.status.reason == OK, result.status
    ledger.update(result.readings, 0.0)
    assert package1.present is True
    assert package1.joules == pytest.approx(3.0 + 4.0 + 5.0)  # the gap is counted too
    assert ledger.tracks[("cpu", "package", "package-0", "rapl")].joules == pytest.approx(3.0)
    assert not any(ledger.glitches.values())


def test_wraparound_through_the_ledger(tmp_path):
    tree = PowercapTree(tmp_path)
    wrap_uj = 65_712_999_613
    zone = tree.add_zone("intel-rapl:0", "package-0", wrap_uj - 20_000_000, wrap_uj=wrap_uj)
    tree.add_zone("intel-rapl:0:0", "dram", wrap_uj - 1_000_000, wrap_uj=wrap_uj)
    source, ledger = RaplSource(tree.sysfs), Ledger()
    ledger.update(source.read().readings, 0.0)
    injected = 0.0
    for step in (15.0, 15.0, 15.0):  # crosses the wrap point on the second step
        CLOCK.advance(0.02)
        tree.advance("intel-rapl:0", step)
        tree.advance("intel-rapl:0:0", 2.0)
        injected += step
        ledger.update(source.read().readings, 0.0)
    assert zone.energy_uj < wrap_uj - 20_000_000  # it did wrap
    package = ledger.tracks[("cpu", "package", "package-0", "rapl")]
    dram = ledger.tracks[("dram", "dram", "package-0", "rapl")]
    # the fixture wraps modulo max_energy_range_uj + 1: at most 1 uJ per wrap apart
    assert package.joules == pytest.approx(injected, abs=1e-5)
    assert dram.joules == pytest.approx(6.0, abs=1e-5)
    assert not any(ledger.glitches.values())


def test_counter_going_backwards_is_a_counted_glitch_not_a_decrease(tmp_path):
    tree = amd_one_socket(tmp_path)
    source, ledger = RaplSource(tree.sysfs), Ledger()
    ledger.update(source.read().readings, 0.0)
    CLOCK.advance(0.01)
    tree.advance("intel-rapl:0", 2.0)
    ledger.update(source.read().readings, 0.0)
    tree.set_raw("intel-rapl:0", "1000\n")  # far back: as a wrap it would be ~65 kJ
    CLOCK.advance(0.01)
    ledger.update(source.read().readings, 0.0)
    package = ledger.tracks[("cpu", "package", "package-0", "rapl")]
    assert package.joules == pytest.approx(2.0)
    assert {k: n for k, n in ledger.glitches.items() if n} == {("rapl", "package-0", "package", "reset"): 1}


def _read_as_nobody(sysfs: str) -> dict:
    """RaplSource.read() in a forked child that has dropped root (chmod does not stop root)."""
    def read() -> dict:
        result = RaplSource(sysfs).read()
        return {"reason": result.status.reason, "detail": result.status.detail,
                "readings": len(result.readings)}
    return read_as_nobody(read, {"reason": "child-failed", "readings": 0})


@pytest.fixture
def traversable_tmp():
    """A directory an unprivileged uid can traverse (pytest's tmp_path is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="rapl-perm-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def test_permission_denied_is_reported_with_a_hint(traversable_tmp):
    tree = intel_two_socket(traversable_tmp)
    for dirname in tree.zones:
        tree.energy_path(dirname).chmod(0o400)  # the kernel's mode since CVE-2020-8694
    if os.geteuid() == 0:
        status = _read_as_nobody(tree.sysfs)
    else:
        for dirname in tree.zones:
            tree.energy_path(dirname).chmod(0o000)
        result = RaplSource(tree.sysfs).read()
        status = {"reason": result.status.reason, "detail": result.status.detail,
                  "readings": len(result.readings)}
    assert status["reason"] == PERMISSION, status
    assert status["readings"] == 0
    assert "CAP_DAC_READ_SEARCH" in status["detail"]
    assert "group read" in status["detail"]
    assert "intel-rapl:0" in status["detail"]


def test_permission_denied_for_some_zones_is_an_error_and_the_rest_read(traversable_tmp):
    tree = intel_two_socket(traversable_tmp)
    tree.energy_path("intel-rapl:1").chmod(0o400 if os.geteuid() == 0 else 0o000)
    if os.geteuid() == 0:
        status = _read_as_nobody(tree.sysfs)
    else:
        result = RaplSource(tree.sysfs).read()
        status = {"reason": result.status.reason, "detail": result.status.detail,
                  "readings": len(result.readings)}
    assert status["reason"] == ERROR, status
    assert "permission denied for intel-rapl:1" in status["detail"]
    assert status["readings"] == 7
