"""Failing hardware against the real exporter process (issue 12, items 4-6): a RAPL read that
blocks for seconds, counter values no counter can hold, a counter that goes back, and a
RAPL tree that goes away and comes back. The kernel layout is the fixture tree; a blocking
read is a FIFO in place of energy_uj, served by a helper thread that decides when each read
returns (nothing faked in the exporter). Bounded in time.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter import metrics
from tests.fixtures import ProcfsTree, intel_two_socket
from tests.harness import ExporterProcess, http_get, wait_for

GLITCHES = next(spec for spec in metrics.ALL if spec.name.endswith("glitches_total"))


def samples(text: str, name: str, **labels) -> list:
    return [s for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == name and labels.items() <= s.labels.items()]


def one(text: str, name: str, **labels) -> float:
    found = samples(text, name, **labels)
    assert len(found) == 1, (name, labels, found)
    return found[0].value


def start(tmp_path: Path, tree, *args: str) -> ExporterProcess:
    procfs = ProcfsTree(tmp_path / "proc")
    exporter = ExporterProcess(tmp_path, [
        f"--path.sysfs={tree.sysfs}", f"--path.procfs={procfs.procfs}", "--no-collector.nvml",
        "--no-collector.attribution", *args])
    exporter.wait_ready()
    return exporter


# --- item 4: a read that blocks ------------------------------------------------------------

class FifoCounter(threading.Thread):
    """Serves reads of a FIFO put in place of energy_uj: each time the exporter opens it, the
    counter of a zone drawing `watts` since the start is written, after `block` seconds when
    a block is asked for. Never stuck itself: it polls for a reader with O_NONBLOCK."""

    def __init__(self, path: Path, watts: float, start_uj: int) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.watts = watts
        self.start_uj = start_uj
        self.t0 = time.monotonic()
        self.block = 0.0  # the next read returns after this long
        self.blocked = threading.Event()  # set once a read has been blocked
        self.stop = threading.Event()
        self.written: list[int] = []
        path.unlink()
        os.mkfifo(path)

    def truth_uj(self) -> int:
        return self.start_uj + round((time.monotonic() - self.t0) * self.watts * 1e6)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno != errno.ENXIO:  # ENXIO: no reader yet
                    raise
                time.sleep(0.002)
                continue
            try:
                if self.block:
                    delay, self.block = self.block, 0.0
                    self.stop.wait(delay)
                    self.blocked.set()
                value = self.truth_uj()
                self.written.append(value)  # before the reader can have it
                os.write(fd, f"{value}\n".encode())
            finally:
                os.close(fd)
            time.sleep(0.01)  # let the reader see EOF before the next open pairs up


class PowerWatch(threading.Thread):
    """Scrapes every 50 ms: the highest power and the energy seen for one device."""

    def __init__(self, url: str, device: str) -> None:
        super().__init__(daemon=True)
        self.url, self.device = url, device
        self.stop = threading.Event()
        self.max_watts = 0.0
        self.scrapes = 0
        self.slowest = 0.0  # seconds, the slowest answered scrape
        self.unanswered = 0  # scrapes with no answer within 5 s (the watch goes on)

    def run(self) -> None:
        while not self.stop.wait(0.05):
            started = time.monotonic()
            try:
                status, _, body = http_get(self.url, timeout=5)
            except OSError:
                self.unanswered += 1
                continue
            self.slowest = max(self.slowest, time.monotonic() - started)
            if status != 200:
                continue
            self.scrapes += 1
            for s in samples(body.decode(), "carbon_power_watts", component="cpu",
                             device=self.device):
                self.max_watts = max(self.max_watts, s.value)


@pytest.mark.slow  # load or fault sequence of tens of seconds: scripts/test.sh runs it
def test_blocked_read_neither_spikes_power_nor_loses_energy(tmp_path):
    """A 250 W package whose energy_uj read blocks 5 s, then 12 s. Before: stamped before the
    read, the 5 s block exported ~2,500 W and the 12 s one was dropped as implausible."""
    tree = intel_two_socket(tmp_path / "sys")
    fifo = FifoCounter(tree.energy_path("intel-rapl:1"), 250.0, tree.zones["intel-rapl:1"].energy_uj)
    fifo.start()
    exporter = start(tmp_path, tree, "--sample.interval=500ms")
    watch = PowerWatch(exporter.url + "/metrics", "package-1")
    try:
        wait_for(lambda: len(fifo.written) >= 3, 10, "reads of the FIFO")
        watch.start()
        for block in (5.0, 12.0):
            time.sleep(2)
            fifo.blocked.clear()
            fifo.block = block
            wait_for(fifo.blocked.is_set, block + 10, f"a {block:g} s block")
        time.sleep(3)
        text = exporter.metrics()
        # taken after the scrape: a read the exporter made between a count taken before it and
        # its answer would be missing (a race a loaded machine hits)
        written = list(fifo.written)
        first, count = written[0], len(written)
        joules = one(text, "carbon_energy_joules_total", component="cpu", device="package-1")
        # what the exporter has read is a prefix of what was written: find its last value
        expected = [(v - first) / 1e6 for v in written]
        print(f"\nblocked reads: {count} reads, exported {joules:.3f} J, max power "
              f"{watch.max_watts:.1f} W over {watch.scrapes} scrapes (slowest "
              f"{watch.slowest * 1000:.0f} ms, {watch.unanswered} unanswered in 5 s)")
        assert any(abs(joules - e) < 1e-6 for e in expected[-3:]), (joules, expected[-3:])
        assert joules > 250 * 20  # the blocked periods are in it
        assert watch.max_watts < 250 * 1.25, watch.max_watts
        assert not any(s.value for s in samples(text, GLITCHES.name))
    finally:
        watch.stop.set()
        code = exporter.stop()  # the FIFO is still served: shutdown does not wait on it
        fifo.stop.set()
        fifo.join(5)
        assert code == 0


# --- item 5: an outage is counted once -----------------------------------------------------

class Flow(threading.Thread):
    """Energy flowing into the fixture's counters every 20 ms: 100 W per package, 10 W per
    DRAM zone, and psys, which never goes away, as the sum: the truth to compare with."""

    ZONES = (("intel-rapl:0", 100.0), ("intel-rapl:1", 100.0), ("intel-rapl:0:2", 10.0),
             ("intel-rapl:1:1", 10.0), ("intel-rapl:2", 220.0))

    def __init__(self, tree) -> None:
        super().__init__(daemon=True)
        self.tree = tree
        self.stop = threading.Event()
        self.paused = threading.Event()  # no energy flows: every counter holds still

    def run(self) -> None:
        last = time.monotonic()
        while not self.stop.wait(0.02):
            now = time.monotonic()
            if not self.paused.is_set():
                for dirname, watts in self.ZONES:
                    self.tree.advance(dirname, watts * (now - last))
            last = now


def still(exporter: ExporterProcess, flow: Flow) -> tuple[float, float, dict[str, float]]:
    """node_and_truth with the counters holding still, so that psys and the zones read in
    one sample cannot be a flow step apart (with RAPL present: no model counts meanwhile)."""
    flow.paused.set()
    time.sleep(0.6)
    try:
        return node_and_truth(exporter)
    finally:
        flow.paused.clear()


def node_and_truth(exporter: ExporterProcess) -> tuple[float, float, dict[str, float]]:
    text = exporter.metrics()
    by_source: dict[str, float] = {}
    for s in samples(text, "carbon_energy_joules_total"):
        by_source[s.labels["source"]] = by_source.get(s.labels["source"], 0.0) + s.value
    return (sum(by_source.values()),
            one(text, "carbon_rapl_domain_joules_total", domain="psys", device="psys"), by_source)


@pytest.mark.slow  # load or fault sequence of tens of seconds: scripts/test.sh runs it
def test_outage_is_counted_once_and_the_hand_over_is_exact(tmp_path):
    """RAPL (2 x 100 W packages, 2 x 10 W DRAM) vanishes for 1.5 s, then for 6 s, with the
    model take-over at 3 s. The models are set to the same 220 W, so the node total must
    follow psys (the injected truth, never away) within 1% throughout. Before: the models
    counted the short outage too (9.8% high in the issue's 10 s case)."""
    tree = intel_two_socket(tmp_path / "sys")
    tree.remove("intel-rapl-mmio:0")
    procfs = ProcfsTree(tmp_path / "proc", mem_kib=16 * 1024 * 1024)  # 16 GiB x 1.25 W = 20 W
    exporter = ExporterProcess(tmp_path, [
        f"--path.sysfs={tree.sysfs}", f"--path.procfs={procfs.procfs}", "--no-collector.nvml",
        "--no-collector.attribution", "--sample.interval=200ms", "--sample.model-takeover=3s",
        "--cpu-model.idle-watts=200", "--cpu-model.max-watts=200",
        "--dram-model.watts-per-gib=1.25"])
    flow = Flow(tree)
    zones = [z for z in tree.zones if z not in ("intel-rapl:2", "intel-rapl-mmio:0")]
    try:
        exporter.wait_ready()
        flow.start()
        time.sleep(1.0)
        node0, truth0, _ = still(exporter, flow)

        for outage in (1.5, 6.0):
            time.sleep(0.5)  # RAPL's last reading before the outage is one with energy flowing
            for zone in zones:
                tree.remove(zone)
            time.sleep(outage)
            for zone in zones:  # one by one, across samples, as a driver reload may
                tree.restore(zone)
                time.sleep(0.1)
            time.sleep(1.5)
            node, truth, by_source = still(exporter, flow)
            error = ((node - node0) - (truth - truth0)) / (truth - truth0)
            print(f"\nafter a {outage:g} s outage: node {node - node0:.1f} J, truth "
                  f"{truth - truth0:.1f} J ({error:+.2%}), by source {by_source}")
            assert abs(error) < 0.01, (error, by_source)
            if outage < 3:  # bridged by RAPL alone: the models counted nothing
                assert by_source.get("model", 0.0) == 0.0, by_source
            else:  # the models took over, from RAPL's last reading
                assert 200 * 5.0 < by_source["model"] < 220 * 7.0, by_source
        log = exporter.output()
        assert "collector cpu-model: ok" in log and "collector rapl: error" in log
    finally:
        flow.stop.set()
        assert exporter.stop() == 0


# --- item 6: values the counter cannot hold --------------------------------------------------

def test_counter_values_out_of_range_fail_one_zone_and_lose_nothing(tmp_path):
    tree = intel_two_socket(tmp_path / "sys")
    exporter = start(tmp_path, tree, "--sample.interval=200ms")
    try:
        def energy(device: str, domain: str) -> float:
            return one(exporter.metrics(), "carbon_rapl_domain_joules_total", device=device,
                       domain=domain)

        wait_for(lambda: energy("package-0", "package") == 0.0, 10, "the first sample")
        pkg0 = tree.zones["intel-rapl:0"]

        # a value above max_energy_range_uj, for 1 s, while 188.7 J flow
        tree.set_raw("intel-rapl:0", f"{pkg0.wrap_uj + 12345}\n")
        time.sleep(1.0)
        tree.advance("intel-rapl:0", 188.7)
        wait_for(lambda: energy("package-0", "package") > 0, 10, "package-0 to read again")
        assert abs(energy("package-0", "package") - 188.7) < 1e-6

        # a 400-digit value in one zone: the others keep counting, no traceback
        tree.set_raw("intel-rapl:1:1", "9" * 400 + "\n")
        tree.advance("intel-rapl:0", 10.0)
        wait_for(lambda: abs(energy("package-0", "package") - 198.7) < 1e-6, 10,
                 "package-0 during it")
        text = exporter.metrics()
        assert one(text, "carbon_exporter_collector_up", collector="rapl") == 0
        dram1 = tree.zones["intel-rapl:1:1"]
        dram1.energy_uj += 5_000_000
        tree.write(dram1)
        wait_for(lambda: abs(energy("package-1", "dram") - 5.0) < 1e-6, 10,
                 "package-1 dram to come back")
        assert not any(s.value for s in samples(exporter.metrics(), GLITCHES.name))

        # a counter that goes back (no wrap explains it): one glitch that names the domain,
        # and the first one is logged at the default level
        tree.advance("intel-rapl:0:2", 5.0)
        wait_for(lambda: abs(energy("package-0", "dram") - 5.0) < 1e-6, 10, "dram to count")
        dram0 = tree.zones["intel-rapl:0:2"]
        dram0.energy_uj -= 1_000_000
        tree.write(dram0)
        wait_for(lambda: any(s.value for s in samples(exporter.metrics(), GLITCHES.name)),
                 10, "the glitch")
        counted = {(s.labels["device"], s.labels["domain"], s.labels["reason"]): s.value
                   for s in samples(exporter.metrics(), GLITCHES.name) if s.value}
        assert counted == {("package-0", "dram", "reset"): 1}
        log = exporter.output()
        warnings = [line for line in log.splitlines() if "dropped energy delta" in line]
        assert len(warnings) == 1 and "level=warning" in warnings[0] and "domain=dram" in warnings[0]
        assert "Traceback" not in log and "OverflowError" not in log
        errors = [line for line in log.splitlines() if "collector rapl: error" in line]
        assert any("above max_energy_range_uj" in line for line in errors), errors
        assert all(len(line) < 2000 for line in errors)  # the 400 digits are not echoed
    finally:
        assert exporter.stop() == 0
