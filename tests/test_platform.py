"""The node total from a platform meter: components are its split, component="other" is what
they leave, nothing is counted twice, and emissions and attribution add up to the meter."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.attribution import Attribution
from exporter.carbon import Intensity
from exporter.config import resolve
from exporter.ledger import (
    PLATFORM,
    REMAINDER_SOURCE,
    Ledger,
    Reading,
    grams_per_joule,
)
from exporter.sampler import Sampler

INTENSITY = Intensity(400.0, "DE", "static")
GPJ = grams_per_joule(400.0, 1.0)


def meter(watts: float, at: float, collector: str = "hwmon",
          device: str = "power_meter-ACPI000D:00") -> Reading:
    return Reading(collector=collector, device=device, source=collector, value=watts, at=at,
                   counter=False, max_watts=20000.0, domain=PLATFORM)


def rapl(device: str, component: str, joules: float, at: float) -> Reading:
    return Reading(collector="rapl", device=device, source="rapl", value=joules, at=at,
                   counter=True, wrap=262143.0, component=component,
                   domain="package" if component == "cpu" else "dram")


def components(at: float, seconds_so_far: float) -> list[Reading]:
    """RAPL counters at 250 W (package) + 50 W (dram) = 300 W."""
    return [rapl("package-0", "cpu", 1000.0 + 250.0 * seconds_so_far, at),
            rapl("package-0", "dram", 10.0 + 50.0 * seconds_so_far, at)]


def make_config(tmp_path: Path):
    return resolve({"path.procfs": str(tmp_path / "proc"), "path.sysfs": str(tmp_path / "sys"),
                    "kubernetes.metadata": "none", "collector.nvml": False}, None, environ={})


def test_conservation_platform_400w_components_300w(tmp_path):
    """Platform 400 W, components 300 W: node total 400 W, other 100 W; emissions and
    attribution add up to the total, every sample."""
    attribution = Attribution(make_config(tmp_path))
    sampler = Sampler([attribution], 1.0, INTENSITY, 1.0)
    try:
        for t in range(11):
            sampler._publish(components(100.0 + t, t) + [meter(400.0, 100.0 + t)], None)
            snap = sampler.snapshot
            if t == 0:
                continue
            node = sum(e.joules for e in snap.energy)
            assert node == pytest.approx(400.0 * t)
            other = [e for e in snap.energy if e.component == "other"]
            assert [(e.device, e.source) for e in other] == [
                ("power_meter-ACPI000D:00", REMAINDER_SOURCE)]
            assert other[0].joules == pytest.approx(100.0 * t)
            assert other[0].watts == pytest.approx(100.0)
            assert sum(e.watts for e in snap.energy) == pytest.approx(400.0)
            # the meter itself, exported apart, equals the node total
            assert snap.platform == (("power_meter-ACPI000D:00", "hwmon", pytest.approx(400.0 * t),
                                      pytest.approx(400.0)),)
            # emissions once, on the total
            assert sum(e.grams for e in snap.energy) == pytest.approx(400.0 * t * GPJ)
            assert snap.grams_per_second is not None
            # attribution conserves the total: per component, and the remainder to kind=other
            assert sum(w.joules for w in snap.workloads) == pytest.approx(node)
            assert sum(w.grams for w in snap.workloads) == pytest.approx(node * GPJ)
            for component in ("cpu", "dram", "other"):
                assert sum(w.joules for w in snap.workloads if w.component == component) == \
                    pytest.approx(sum(e.joules for e in snap.energy if e.component == component))
            assert {w.kind for w in snap.workloads if w.component == "other"} <= {"idle", "other"}
        # RAPL domains are not mixed with the meter
        assert {d for d, _, _ in snap.rapl_domains} == {"package", "dram"}
    finally:
        sampler.close()


def test_without_a_platform_reading_nothing_changes():
    with_meter, without = Ledger(), Ledger()
    for t in range(5):
        plain = without.update(components(float(t), t), GPJ)
        with_meter.update(components(float(t), t) + [meter(400.0, float(t))], GPJ)
    assert {c.component for c in plain} == {"cpu", "dram"}
    assert not without.platform_tracks()
    assert not [t for t in without.tracks.values() if t.source == REMAINDER_SOURCE]
    # the components' own series are the same either way
    for key in (("cpu", "package", "package-0", "rapl"), ("dram", "dram", "package-0", "rapl")):
        assert with_meter.tracks[key].joules == without.tracks[key].joules


def test_components_ahead_of_the_meter_are_repaid_not_subtracted():
    """A stale BMC value below the components for a while: other stays at 0 (a counter never
    goes back), and later samples repay the deficit so the total catches up with the meter."""
    ledger = Ledger()
    meter_watts = [400.0, 400.0, 250.0, 250.0, 400.0, 400.0, 400.0, 400.0]
    others = []
    for t, watts in enumerate(meter_watts):
        counted = ledger.update(components(float(t), t) + [meter(watts, float(t))], GPJ)
        others.append(sum(c.joules for c in counted if c.component == "other"))
    assert all(o >= 0 for o in others)
    # per-sample meter energy (trapezoid): 400, 325, 250, 325, 400...; components 300 each
    assert others[1:] == pytest.approx([100.0, 25.0, 0.0, 0.0, 75.0, 100.0, 100.0])
    # trapezoid meter energy: 400, 325, 250, 325, 400, 400, 400 over 7 s = 2500 J;
    # components 300 W x 7 s = 2100 J; the remainder ends at the difference
    node = sum(t.joules for t in ledger.tracks.values() if t.component)
    meter_joules = ledger.platform_tracks()[0].joules
    assert meter_joules == pytest.approx(2500.0)
    assert node == pytest.approx(meter_joules)
    assert ledger.platform.deficit == pytest.approx(0.0)


def test_hwmon_meter_is_the_basis_over_redfish_and_both_are_exported():
    ledger = Ledger()
    for t in range(4):
        ledger.update(components(float(t), t)
                      + [meter(410.0, float(t), "redfish", "chassis-1U"), meter(400.0, float(t))],
                      GPJ)
    remainder = [t for t in ledger.tracks.values() if t.source == REMAINDER_SOURCE]
    assert [(t.device, round(t.joules, 6)) for t in remainder] == [
        ("power_meter-ACPI000D:00", 300.0)]
    assert sorted(t.device for t in ledger.platform_tracks()) == [
        "chassis-1U", "power_meter-ACPI000D:00"]


def test_meter_gone_stops_the_remainder_and_components_carry_on():
    ledger = Ledger()
    for t in range(3):
        ledger.update(components(float(t), t) + [meter(400.0, float(t))], GPJ)
    counted = ledger.update(components(3.0, 3), GPJ)
    assert {c.component for c in counted} == {"cpu", "dram"}
    remainder = next(t for t in ledger.tracks.values() if t.source == REMAINDER_SOURCE)
    assert remainder.watts is None and remainder.joules == pytest.approx(200.0)


def test_components_far_above_the_meter_are_reported_once(caplog):
    """A meter that misses a power supply (or models that overestimate): the total follows
    the components, never less than what they measured, and the log says so once."""
    ledger = Ledger()
    with caplog.at_level("WARNING", logger="exporter.ledger"):
        for t in range(80):
            ledger.update(components(float(t), t) + [meter(200.0, float(t))], GPJ)
    warnings = [r for r in caplog.records if "more than platform meter" in r.getMessage()]
    assert len(warnings) == 1
    node = sum(t.joules for t in ledger.tracks.values() if t.component)
    assert node == pytest.approx(300.0 * 79)  # the components, nothing subtracted


def test_report_says_the_totals_follow_the_platform_meter(tmp_path):
    """Real exporter (ACPI power meter 400 W, an AMD GPU at 300 W as the only component),
    real Prometheus, real `carbon-exporter report`: the data-quality section names the
    platform meter as the totals' basis and the remainder's share of the energy."""
    import json
    import subprocess
    import sys
    import time

    from tests.harness import ExporterProcess, PrometheusServer, prometheus_binary, require
    from tests.hwmon_fixtures import HwmonTree

    if prometheus_binary() is None:
        require("prometheus is not installed (Debian package prometheus)")
    tree = HwmonTree(tmp_path / "sys")
    tree.add_acpi_power_meter(microwatts=400_000_000)
    tree.add_amdgpu("0000:03:00.0", average_uw=300_000_000)
    exporter = ExporterProcess(tmp_path, [
        f"--path.sysfs={tree.sysfs}", f"--path.procfs={tmp_path / 'proc'}",
        "--sample.interval=200ms", "--carbon.intensity=400", "--no-collector.rapl",
        "--no-collector.nvml", "--no-collector.cpu-model", "--no-collector.dram-model",
        "--no-collector.attribution"])
    prom = None
    try:
        exporter.wait_ready()
        prom = PrometheusServer(tmp_path, [f"127.0.0.1:{exporter.port}"], interval="500ms")
        started = time.time()
        time.sleep(8)
        result = subprocess.run(
            [sys.executable, "-m", "exporter", "report", f"--prometheus={prom.url}",
             f"--node=127.0.0.1:{exporter.port}", "--format=json",
             f"--from={time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(started))}",
             "--to=now"], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        quality = json.loads(result.stdout)["data_quality"]
        assert quality["totals_basis"] == "platform_meter"
        assert quality["platform_remainder_share"] == pytest.approx(0.25, abs=0.05)
        categories = {row["source"]: row["category"] for row in quality["sources"]}
        assert categories == {"power_sample": "sampled_power",
                              "platform_remainder": "platform_remainder"}
        markdown = subprocess.run(
            [sys.executable, "-m", "exporter", "report", f"--prometheus={prom.url}",
             f"--node=127.0.0.1:{exporter.port}", "--format=md", f"--output={tmp_path / 'r.md'}",
             f"--from={time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(started))}",
             "--to=now"], capture_output=True, text=True, timeout=120)
        assert markdown.returncode == 0, markdown.stderr
        assert "Totals basis: the platform meter" in (tmp_path / "r.md").read_text()
    finally:
        if prom is not None:
            prom.stop()
        exporter.stop()


def test_remainder_is_split_into_its_idle_floor_and_other(tmp_path):
    """The remainder by the same rule as CPU and DRAM idle: its lowest power is idle, the
    rest other (no CPU time says which workload spun the fans)."""
    from exporter.ledger import Counted

    attribution = Attribution(make_config(tmp_path))
    attribution.account(None, [], 0.0)
    for t, watts in enumerate([100.0, 100.0, 150.0, 130.0], start=1):
        split = attribution.account(None, [Counted("other", "power_meter-ACPI000D:00", watts,
                                                   watts * GPJ)], float(t))
        assert sum(split.parts["other"].values()) == pytest.approx(watts)
    by_kind = {s.kind: s.joules for s in attribution.series if s.component == "other"}
    assert by_kind["idle"] == pytest.approx(400.0)  # 4 samples x the 100 W floor
    assert by_kind["other"] == pytest.approx(80.0)  # 50 + 30 above it
