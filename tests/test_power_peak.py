"""carbon_power_peak_watts (the highest per-sample power over --power.peak-window) and
carbon_power_budget_watts (power.budget_watts), in the helper and in the real exporter."""

from __future__ import annotations

import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.config import ConfigError, resolve
from exporter.peak import PeakTracker, PeakWindow, budgets
from tests.fixtures import PowercapTree, ProcfsTree
from tests.harness import ExporterProcess, wait_for
from tests.power_load import PowerLoad


def test_peak_window_slides_over_samples():
    window = PeakWindow(10.0)
    assert window.peak(0.0) is None
    for at, watts in [(1, 100.0), (2, 400.0), (3, 150.0), (4, 120.0), (5, 130.0)]:
        window.add(at, watts)
    assert window.peak(5) == 400.0
    assert window.peak(11.9) == 400.0  # the 400 W sample at t=2 is in (1.9, 11.9]
    assert window.peak(12) == 150.0  # ... and out at t=12
    assert window.peak(14) == 130.0  # the later, higher sample outlives the 120 W one
    assert window.peak(15) is None
    window.add(20, 90.0)
    assert window.peak(20) == 90.0


def test_tracker_counts_a_sample_once_and_skips_missing_power():
    tracker = PeakTracker(60.0)
    key = ("cpu", "package-0", "rapl")
    tracker.observe(key, 1.0, 300.0)
    tracker.observe(key, 1.0, 300.0)
    tracker.observe(key, 2.0, None)  # a dropped delta: no power this sample
    tracker.observe(("gpu", "gpu-0", "nvml"), 2.0, 250.0)
    assert sorted(tracker.peaks(2.0)) == [("cpu", "package-0", "rapl", 300.0),
                                          ("gpu", "gpu-0", "nvml", 250.0)]
    assert tracker.peaks(100.0) == ()


def test_budgets_from_the_setting():
    assert budgets(None, ["gpu-0"]) == ()
    assert budgets(1500, ["gpu-0"]) == (("node", "", 1500.0),)
    assert budgets({"node": 1500, "gpu": 350}, ["gpu-0", "gpu-1"]) == (
        ("node", "", 1500.0), ("gpu", "gpu-0", 350.0), ("gpu", "gpu-1", 350.0))
    assert budgets({"gpu": {"gpu-1": 300}}, ["gpu-0", "gpu-1"]) == (("gpu", "gpu-1", 300.0),)


def test_peak_window_must_cover_a_sample():
    with pytest.raises(ConfigError, match=r"power.peak_window \(0.5s\) must be at least "
                                          r"sample.interval \(1s\)"):
        resolve({"power.peak_window": "500ms"}, None, {})
    assert resolve({}, None, {}).power_peak_window == 60.0


def _gauges(text: str, name: str) -> dict[tuple, float]:
    return {tuple(sorted(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples
            if s.name == name}


def test_exporter_keeps_a_short_burst_for_the_peak_window(tmp_path):
    tree = PowercapTree(tmp_path / "sys")
    tree.add_zone("intel-rapl:0", "package-0")
    procfs = ProcfsTree(tmp_path / "proc")
    config = tmp_path / "config.yml"
    config.write_text("power:\n  budget_watts: {node: 60, gpu: {gpu-0: 300}}\n")
    exporter = ExporterProcess(tmp_path, [
        f"--path.sysfs={tree.sysfs}", f"--path.procfs={procfs.procfs}", "--no-collector.nvml",
        "--no-collector.attribution", "--sample.interval=200ms", "--power.peak-window=3s",
        f"--config.file={config}"])
    key = (("component", "cpu"), ("device", "package-0"), ("source", "rapl"))
    try:
        with PowerLoad(tree, "intel-rapl:0", 20.0) as load:
            exporter.wait_ready()
            wait_for(lambda: _gauges(exporter.metrics(), "carbon_power_peak_watts").get(key),
                     10, "a peak")
            time.sleep(3.5)  # the start-up samples left the window
            load.burst(100.0, 0.5)  # shorter than any scrape interval
            time.sleep(0.6)
            text = exporter.metrics()
            assert _gauges(text, "carbon_power_watts")[key] < 50  # the gauge is back near 20 W
            assert 70 < _gauges(text, "carbon_power_peak_watts")[key] < 150  # a sample inside it
            assert _gauges(text, "carbon_power_budget_watts") == {
                (("device", ""), ("scope", "node")): 60.0,
                (("device", "gpu-0"), ("scope", "gpu")): 300.0}
            time.sleep(3.2)  # the burst left the 3 s window
            peak = _gauges(exporter.metrics(), "carbon_power_peak_watts")[key]
            assert 10 < peak < 50  # the steady 20 W, with the sampling jitter of a busy machine
    finally:
        assert exporter.stop() == 0, exporter.output()
