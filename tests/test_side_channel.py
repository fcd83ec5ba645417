"""--rapl.min-interval: RAPL is read at most once per interval whatever --sample.interval is,
and the energy of the skipped samples arrives, exactly, with the next read."""

from __future__ import annotations

import time

import pytest

from exporter.ledger import Ledger
from exporter.sources.rapl import RaplSource
from tests.fixtures import amd_one_socket
from tests.harness import ExporterProcess, FakeClock, wait_for


def test_rapl_min_interval_bounds_read_rate(tmp_path):
    tree = amd_one_socket(tmp_path)
    source, ledger = RaplSource(tree.sysfs, min_interval=0.5), Ledger()
    source.clock = clock = FakeClock()
    first = source.read()
    ledger.update(first.readings, 0.0)
    tree.advance("intel-rapl:0", 10.0)
    clock.advance(0.4)
    again = source.read()  # within 0.5 s: the same result, not a fresh read
    assert again is first
    ledger.update(again.readings, 0.0)
    package = ledger.tracks[("cpu", "package", "package-0", "rapl")]
    assert package.joules == 0.0 and package.present  # nothing new seen, nothing lost
    clock.advance(0.1)
    fresh = source.read()
    assert fresh is not first
    ledger.update(fresh.readings, 0.0)
    assert package.joules == pytest.approx(10.0)  # every joule arrives with the next read
    assert package.watts == pytest.approx(10.0 / 0.5)


def test_exported_rapl_energy_moves_at_most_once_per_min_interval(tmp_path):
    """The real process samples every 100 ms but shows new RAPL energy at most every 1 s."""
    tree = amd_one_socket(tmp_path / "sys")
    exporter = ExporterProcess(tmp_path, [f"--path.sysfs={tree.sysfs}", "--no-collector.nvml",
                                          "--sample.interval=100ms", "--rapl.min-interval=1s"])
    try:
        exporter.wait_ready()

        def package_joules() -> str:
            for line in exporter.metrics().splitlines():
                if line.startswith('carbon_energy_joules_total{component="cpu",device="package-0"'):
                    return line.rsplit(" ", 1)[1]
            return ""
        wait_for(package_joules, 10, "the package series")
        changes, last, deadline = [], package_joules(), time.monotonic() + 3.2
        while time.monotonic() < deadline:
            tree.advance("intel-rapl:0", 1.0)  # the counter moves every 50 ms
            current = package_joules()
            if current != last:
                changes.append(time.monotonic())
                last = current
            time.sleep(0.05)
        gaps = [b - a for a, b in zip(changes, changes[1:])]
        assert 2 <= len(changes) <= 4, changes
        assert all(gap > 0.8 for gap in gaps), gaps
    finally:
        assert exporter.stop() == 0
