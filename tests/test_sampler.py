"""The sampler and the source registration seam: models after every measured source (no
double count), a stalled read set aside by the watchdog, and that nothing outside a source's
own file names it."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import threading
import time
from pathlib import Path


from exporter.carbon import Intensity
from exporter.config import BY_KEY, resolve
from exporter.ledger import Reading
from exporter.sampler import Sampler
from exporter.sources import (
    MEASURED,
    MODEL,
    OK,
    PLATFORM,
    SUPERSEDED,
    Source,
    SourceResult,
    Status,
    device_name,
)
from exporter.sources.cpu_model import CpuModelSource
from exporter.sources.dram_model import DramModelSource
from exporter.sources.rapl import RaplSource
from exporter.sources.registry import check_declaration, registered
import pytest

from tests.fixtures import ProcfsTree, amd_one_socket
from tests.harness import ExporterProcess, FakeClock, wait_for

ROOT = Path(__file__).resolve().parent.parent
INTENSITY = Intensity(100.0, "", "static")




class CpuMeter(Source):
    """A measured CPU energy counter (like a BMC or an hwmon meter): 100 W."""

    name = "test-cpu-meter"
    components = ("cpu",)

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.joules = 0.0
        self.gate: threading.Event | None = None  # set: reads block until it is set
        self.returned = threading.Event()  # set when a read returns

    def read(self, covered: frozenset[str] = frozenset()) -> SourceResult:
        if self.gate is not None:
            self.gate.wait(10)
        time.sleep(self.delay)  # a slow meter: the model must still wait for it
        self.joules += 100.0 * 0.05
        self.returned.set()
        return SourceResult(Status(OK), [Reading(
            collector=self.name, device="package-0", source="meter", value=self.joules,
            at=time.monotonic(), component="cpu")])


def _cycles(sampler: Sampler, count: int) -> None:
    async def run() -> None:
        for _ in range(count):
            await sampler.cycle()
    asyncio.run(run())


def _status(sampler: Sampler, name: str) -> Status:
    return next(w.status for w in sampler.workers if w.source.name == name)


def test_model_stands_aside_for_a_cpu_source_listed_after_it(tmp_path):
    """The double count of issue 17: a measured CPU source read apart from the model (then:
    on another lane) left cpu-model at ok, and CPU energy was exported twice (source=meter
    and source=model). Listed after the model and slow, it is still read first."""
    procfs = ProcfsTree(tmp_path / "proc")
    config = resolve({"path.procfs": procfs.procfs}, None, {})
    meter = CpuMeter(delay=0.05)
    model = CpuModelSource.from_config(config)
    sampler = Sampler([model, meter], interval=0.5, intensity=INTENSITY, pue=1.0)
    assert [w.source for w in sampler.workers] == [meter, model]
    try:
        _cycles(sampler, 3)
        assert _status(sampler, "cpu-model").reason == SUPERSEDED
        cpu = [s for s in sampler.snapshot.energy if s.component == "cpu"]
        assert [s.source for s in cpu] == ["meter"], cpu
        assert cpu[0].joules > 0
    finally:
        sampler.close()


def test_a_stalled_measured_source_keeps_the_model_aside(tmp_path):
    """A counter that stalls is read late, not lost: the model must not fill its gap."""
    procfs = ProcfsTree(tmp_path / "proc")
    config = resolve({"path.procfs": procfs.procfs}, None, {})
    meter = CpuMeter()
    sampler = Sampler([meter, CpuModelSource.from_config(config)], interval=0.2,
                      intensity=INTENSITY, pue=1.0)
    async def scenario() -> None:
        for _ in range(2):
            await sampler.cycle()
        meter.gate = threading.Event()  # the next read hangs
        for _ in range(3):
            await sampler.cycle()
        assert _status(sampler, "test-cpu-meter").reason == "error"  # still running
        assert _status(sampler, "cpu-model").reason == SUPERSEDED
        assert not [s for s in sampler.snapshot.energy if s.source == "model"]
        gate, meter.gate = meter.gate, None
        meter.returned.clear()
        gate.set()
        # the stalled read returns in its own (set aside) thread: the next cycle counts it
        assert await asyncio.to_thread(meter.returned.wait, 10)
        for _ in range(2):
            await sampler.cycle()
        assert _status(sampler, "test-cpu-meter").reason == OK
        assert not [s for s in sampler.snapshot.energy if s.source == "model"]

    try:
        asyncio.run(scenario())
    finally:
        if meter.gate is not None:
            meter.gate.set()
        sampler.close()


def test_model_runs_where_no_source_measures_its_component(tmp_path):
    procfs = ProcfsTree(tmp_path / "proc")
    config = resolve({"path.procfs": procfs.procfs}, None, {})
    sampler = Sampler([CpuModelSource.from_config(config)], interval=0.2, intensity=INTENSITY,
                      pue=1.0)
    try:
        _cycles(sampler, 2)
        assert _status(sampler, "cpu-model").reason == OK
        assert [s.source for s in sampler.snapshot.energy] == ["model"]
    finally:
        sampler.close()


# --- the registration seam -----------------------------------------------------------------------

def test_every_registered_source_declares_itself_and_has_a_flag():
    names = [cls.name for cls in registered()]
    assert {"rapl", "nvml", "cpu-model", "dram-model", "attribution"} <= set(names)
    assert len(names) == len(set(names))
    roles = [cls.role for cls in registered()]
    assert roles.index(MODEL) > max(i for i, r in enumerate(roles) if r == MEASURED)
    for cls in registered():
        assert cls.summary, cls.name
        assert cls.from_config.__func__ is not Source.from_config.__func__, cls.name  # type: ignore[attr-defined]
        setting = BY_KEY[f"collector.{cls.name.replace('-', '_')}"]
        assert setting.collector == cls.name and setting.default == cls.default_enabled
        assert setting.flag == f"--collector.{cls.name}"
        if (cls.role == MEASURED and cls.provides != {PLATFORM}) or cls.role == MODEL:
            assert cls.components, cls.name  # a platform meter alone is the node total


def test_registration_refuses_a_named_source_without_from_config():
    """CpuMeter has a name but is built by hand: the registry could not build it."""
    with pytest.raises(TypeError, match="'test-cpu-meter'.*declares no from_config"):
        check_declaration(CpuMeter)
    with pytest.raises(TypeError, match="CpuMeter is not built from settings"):
        CpuMeter.from_config(resolve({}, None, {}))
    check_declaration(CpuModelSource)  # a real source passes


def test_registration_refuses_a_source_that_captures_without_capture_and_read_captured():
    """A source that sets `captures` is read in two halves (the cycle's capture, the read
    when the cycle is counted): without its own halves the default read would run off the
    sampler's clock."""
    class HalfModel(CpuModelSource):
        name = "half-model"

    HalfModel.capture = Source.capture  # the default, as a class that declares none has
    with pytest.raises(TypeError, match="'half-model'.*captures but does not declare both"):
        check_declaration(HalfModel)
    check_declaration(DramModelSource)  # the real capturing sources pass


def test_no_source_is_named_outside_its_own_files():
    """The sampler, the CLI and the collector renderer derive everything from declarations."""
    names = [cls.name for cls in registered()]
    for path in ("exporter/sampler.py", "exporter/cli.py", "exporter/collector.py",
                 "exporter/config.py"):
        text = (ROOT / path).read_text()
        code = re.sub(r'"""[\s\S]*?"""|#[^\n]*', "", text)  # docstrings and comments may
        for name in names:
            assert f'"{name}"' not in code, (path, name)


def test_enabled_collectors_come_from_flags():
    config = resolve({"collector.rapl": False}, None, {"CARBON_EXPORTER_COLLECTOR_NVML": "false"})
    assert not config.collector("rapl") and not config.collector("nvml")
    assert config.collector("cpu-model")


def test_device_names_are_vendor_neutral():
    assert device_name("gpu", 3) == "gpu-3"


# --- a read that stalls ----------------------------------------------------------------------------

class Gated(Source):
    """A measured source whose reads block while `gate` is closed (a wedged driver)."""

    name = "test-gated"
    components = ("gpu",)

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.returned = threading.Event()  # set when a read returns
        self.joules = 0.0

    def read(self, covered: frozenset[str] = frozenset()) -> SourceResult:
        self.gate.wait(30)
        self.joules += 1.0
        self.returned.set()
        return SourceResult(Status(OK), [Reading(
            collector=self.name, device="gpu-0", source="test", value=self.joules,
            at=time.monotonic(), component="gpu")])


def test_a_stalled_read_does_not_hold_up_the_sources_after_it(tmp_path):
    gated = Gated()
    meter = CpuMeter()  # read after the gated one
    sampler = Sampler([gated, meter], interval=0.2, intensity=INTENSITY, pue=1.0)
    assert [w.source for w in sampler.workers] == [gated, meter]

    async def scenario() -> None:
        for _ in range(4):
            await sampler.cycle()
        assert _status(sampler, "test-gated").reason == "error"
        assert "still running" in _status(sampler, "test-gated").detail
        assert _status(sampler, "test-cpu-meter").reason == OK
        before = meter.joules
        for _ in range(2):
            await sampler.cycle()
        assert meter.joules > before  # still read every cycle, in a fresh thread
        gated.gate.set()  # the driver comes back: its late reading is counted, then it rejoins
        assert await asyncio.to_thread(gated.returned.wait, 10)
        for _ in range(3):
            await sampler.cycle()
        assert _status(sampler, "test-gated").reason == OK
        assert [s.joules for s in sampler.snapshot.energy if s.component == "gpu"][0] > 0

    try:
        asyncio.run(scenario())
    finally:
        gated.gate.set()
        sampler.close()


def test_exporter_with_a_stalled_procfs_read_serves_and_stops_on_sigterm(tmp_path):
    """<procfs>/stat is a FIFO nobody writes: opening it blocks forever (like a wedged
    driver). The CPU model stalls; the DRAM model, read after it, keeps
    counting; scrapes are served; SIGTERM ends the process at once."""
    procfs = ProcfsTree(tmp_path / "proc")
    (procfs.root / "stat").unlink()
    os.mkfifo(procfs.root / "stat")
    sysfs = tmp_path / "sys"
    sysfs.mkdir()
    exporter = ExporterProcess(tmp_path, [f"--path.procfs={procfs.procfs}", f"--path.sysfs={sysfs}",
                                          "--sample.interval=0.2", "--no-collector.nvml",
                                          "--no-collector.attribution"])
    try:
        exporter.wait_ready()

        def dram_joules() -> float:
            text = exporter.metrics()
            found = re.search(r'^carbon_energy_joules_total\{component="dram",device="node",'
                              r'source="model"\} (\S+)$', text, re.M)
            return float(found.group(1)) if found else 0.0

        wait_for(lambda: dram_joules() > 0, 10, "DRAM model energy")
        first = dram_joules()
        wait_for(lambda: dram_joules() > first, 10, "DRAM model energy growing")
        text = exporter.metrics()
        assert re.search(r'^carbon_exporter_collector_up\{collector="cpu-model"[^}]*\} 0', text, re.M)
        started = time.monotonic()
        exporter.signal(signal.SIGTERM)
        assert exporter.proc.wait(10) == 0, exporter.output()
        assert time.monotonic() - started < 5, "SIGTERM waited on the stalled read"
    finally:
        exporter.stop()


# --- cost: one /proc/stat parse per cycle, a snapshot only when asked for --------------------------

def test_proc_stat_is_parsed_once_per_cycle_and_fresh_outside_one(tmp_path):
    from exporter import procfs as shared

    tree = ProcfsTree(tmp_path / "proc")
    shared.begin_cycle()
    try:
        first = shared.cpu_times(tree.procfs)
        tree.advance(100, 0)
        assert shared.cpu_times(tree.procfs) is first  # the CPU model and attribution share it
    finally:
        shared.end_cycle()
    assert shared.cpu_times(tree.procfs).busy == pytest.approx(first.busy + 1.0)


def test_snapshot_is_built_only_when_asked_and_once_per_cycle(tmp_path, monkeypatch):
    meter = CpuMeter()
    sampler = Sampler([meter], interval=0.2, intensity=INTENSITY, pue=1.0)
    built = []
    real_build = sampler._build
    monkeypatch.setattr(sampler, "_build", lambda: built.append(1) or real_build())

    async def scenario() -> None:
        for _ in range(3):
            await sampler.step()
        assert built == []  # nobody scraped: nothing built
        first = sampler.snapshot
        assert sampler.snapshot is first and len(built) == 1
        await sampler.step()
        assert sampler.snapshot is not first and len(built) == 2

    try:
        asyncio.run(scenario())
    finally:
        sampler.close()


def test_absent_hardware_is_asked_again_after_the_recheck_time(tmp_path):
    """No RAPL zone at start (a VM, or intel_rapl_msr not loaded yet): the RAPL source is not
    read at every cycle, keeps its `absent` status, and zones that appear later (modprobe)
    are counted from the next look, ABSENT_RECHECK seconds on."""
    from exporter.sampler import ABSENT_RECHECK
    from exporter.sources import ABSENT
    from exporter.sources.rapl import RaplSource
    from tests.fixtures import intel_two_socket

    sysfs = tmp_path / "sys"
    (sysfs / "class" / "powercap").mkdir(parents=True)
    rapl = RaplSource(str(sysfs))
    reads = []
    real_read = rapl.read
    rapl.read = lambda covered=frozenset(): reads.append(1) or real_read(covered)  # type: ignore[method-assign]
    clock = FakeClock()
    sampler = Sampler([rapl], interval=1.0, intensity=INTENSITY, pue=1.0, clock=clock)

    async def scenario() -> None:
        await sampler.cycle()
        assert _status(sampler, "rapl").reason == ABSENT and len(reads) == 1
        tree = intel_two_socket(sysfs)  # the module is loaded
        for _ in range(3):
            clock.advance(1.0)
            tree.advance("intel-rapl:0", 5.0)
            await sampler.cycle()
        assert len(reads) == 1 and _status(sampler, "rapl").reason == ABSENT
        clock.advance(ABSENT_RECHECK)
        await sampler.cycle()  # asked again: the zones are found (their first reading)
        clock.advance(1.0)
        tree.advance("intel-rapl:0", 5.0)
        await sampler.cycle()
        assert len(reads) == 3 and _status(sampler, "rapl").reason == OK
        assert any(s.source == "rapl" and s.joules > 0 for s in sampler.snapshot.energy)

    try:
        asyncio.run(scenario())
    finally:
        sampler.close()


def test_proc_stat_is_read_through_one_held_descriptor_on_the_running_kernel():
    """One pread() at offset 0 per sample on a descriptor kept open: the kernel regenerates
    the seq_file, so the held descriptor sees the CPU time used since the last read."""
    from exporter import procfs

    first = procfs.read_held("/proc/stat")
    fd = procfs._held["/proc/stat"]
    end = time.thread_time() + 0.1
    while time.thread_time() < end:  # 10 clock ticks of CPU at least
        pass
    second = procfs.read_held("/proc/stat")
    assert procfs._held["/proc/stat"] == fd  # the same descriptor, not reopened
    assert procfs.parse_cpu_line(second)[0] > procfs.parse_cpu_line(first)[0]
    assert procfs.parse_forks(second) >= procfs.parse_forks(first) > 0


def test_halt_flag_wakes_a_waiting_thread_and_times_out_otherwise():
    """The sampler's wait (one poll on a pipe): set() from another thread ends a long wait;
    unset, a wait ends by its timeout and says so; clear() after set() drains the pipe, so
    the next wait waits again; set() before anyone waits needs no pipe."""
    from exporter.sampler import HaltFlag

    flag = HaltFlag()
    flag.set()
    assert flag._pipe is None and flag.is_set()
    assert flag.wait(60.0, flag.poller())  # set before the wait: no waiting at all
    flag.clear()
    assert not flag.wait(0.02, flag.poller())  # timed out, not set

    woke: list[bool] = []
    waiter = threading.Thread(target=lambda: woke.append(flag.wait(600.0, flag.poller())))
    waiter.start()
    wait_for(lambda: flag._pipe is not None, 10, "the waiter's poller")
    flag.set()
    waiter.join(30)
    assert not waiter.is_alive() and woke == [True]

    flag.clear()  # the byte set() wrote is drained: a wait blocks again until its timeout
    poller = flag.poller()
    assert poller.poll(0) == [] and not flag.wait(0.02, poller)


def test_halt_ends_the_sampler_thread_in_its_wait(tmp_path):
    """halt() during the wait between cycles: the sampler thread ends without waiting for
    its next tick (an interval of an hour here)."""
    sampler = Sampler([], 3600.0, Intensity(400.0, "DE", "static"), 1.0)
    sampler.start()
    assert sampler.first_cycle.wait(30)
    thread = sampler._thread
    assert thread is not None
    sampler.halt(timeout=30)
    assert not thread.is_alive() and sampler.cycles == 1


def test_the_first_cycle_is_counted_before_first_cycle_is_set(tmp_path):
    """The sampler thread counts its first cycle as soon as it is read, batches or not: the
    one-time work of counting (the CPU model's table lookup, its first status) is part of the
    start (embedded mode waits for first_cycle before the tracked code runs), not of a
    sample a minute later. The CPU model on a kernel-layout tree."""
    procfs = ProcfsTree(tmp_path / "proc")
    config = resolve({"path.procfs": procfs.procfs, "path.sysfs": str(tmp_path / "sys")}, None, {})
    model = CpuModelSource.from_config(config)
    sampler = Sampler([model], 3600.0, INTENSITY, 1.0)
    sampler.settle_every = 1000  # no batch would be full for a long time
    assert model.range is None  # looked up when counted
    sampler.start()
    try:
        assert sampler.first_cycle.wait(30)
        assert sampler.cycles == 1 and not sampler._queued
        assert model.range is not None and _status(sampler, "cpu-model").reason == "ok"
    finally:
        sampler.halt(timeout=30)


def test_counting_in_batches_equals_counting_each_cycle(tmp_path, monkeypatch):
    """A cycle's reads are counted a few cycles later (SETTLE_EVERY), with the cycle's own
    times and intensity: the energy, emissions, peaks and every listener's Sample equal
    those of a sampler that counts each cycle as it ends, an intensity change in the middle
    of a batch included; nothing is counted (or heard) before the batch is full or a
    snapshot is asked for. The real sources on kernel-layout trees: RAPL (an AMD package
    whose energy counter moves 260, 320, 200 J per second in turn), the CPU model standing
    aside for it, the DRAM model counting the memory."""
    # the batches stay five cycles long: the first settle also looks the CPU up in the
    # bundled table, which on a loaded machine can cost more than SETTLE_ALONE_SECONDS a
    # cycle and switch to counting each cycle (the next test covers that switch)
    monkeypatch.setattr("exporter.sampler.SETTLE_ALONE_SECONDS", float("inf"))
    clock = FakeClock()

    def build(root: Path, settle_every: int):
        powercap = amd_one_socket(root / "sys")
        procfs = ProcfsTree(root / "proc")
        config = resolve({"path.procfs": procfs.procfs, "path.sysfs": powercap.sysfs}, None, {})
        sources = [RaplSource(powercap.sysfs), CpuModelSource.from_config(config),
                   DramModelSource.from_config(config)]
        sampler = Sampler(sources, 1.0, INTENSITY, 1.0, clock=clock)
        sampler.settle_every = settle_every
        heard: list = []
        sampler.listeners.append(heard.append)
        return powercap, procfs, sampler, heard

    batched, each = build(tmp_path / "batched", 5), build(tmp_path / "each", 1)
    try:
        for cycle in range(12):
            clock.advance(1.0)
            for powercap, procfs, sampler, _ in (batched, each):
                if cycle:
                    powercap.advance("intel-rapl:0", 200.0 + 60.0 * (cycle % 3))
                procfs.advance(busy_jiffies=40 + 30 * (cycle % 4), idle_jiffies=60)
                if cycle == 7:
                    sampler.intensity = Intensity(300.0, "", "static")
                assert sampler._step()
            if cycle == 3:  # four cycles read, none counted yet
                assert batched[2].cycles == 0 and batched[3] == [] and len(each[3]) == 4
        assert batched[2].cycles == 10 and len(batched[3]) == 10  # two batches of five

        snapshots = [sampler.snapshot for _, _, sampler, _ in (batched, each)]  # the rest
        assert batched[2].cycles == each[2].cycles == 12
        assert _status(batched[2], "cpu-model").reason == SUPERSEDED
        energy = [[(s.component, s.source, s.joules, s.grams, s.watts) for s in snap.energy]
                  for snap in snapshots]
        assert energy[0] == energy[1]
        assert {(c, source) for c, source, *_ in energy[0]} == {("cpu", "rapl"), ("dram", "model")}
        cpu = next(s for s in snapshots[0].energy if s.component == "cpu")
        # 11 intervals after the baseline: 4 x 260 + 4 x 320 + 3 x 200 J; those of cycles 1
        # to 6 at 100 g/kWh, of cycles 7 to 11 (1,360 J) at 300
        assert cpu.joules == pytest.approx(2920.0)
        assert cpu.grams == pytest.approx((1560.0 * 100 + 1360.0 * 300) / 3.6e6)
        assert snapshots[0].peaks == snapshots[1].peaks
        assert snapshots[0].grams_per_second == pytest.approx(snapshots[1].grams_per_second)
        samples = [[(s.joules, s.grams, s.watts, s.grams_per_second) for s in heard]
                   for *_, heard in (batched, each)]
        assert samples[0] == samples[1] and len(samples[0]) == 12
    finally:
        for _, _, sampler, _ in (batched, each):
            sampler.close()


def test_a_node_where_counting_is_dear_counts_each_cycle_as_it_ends(tmp_path):
    """Where counting one cycle cost more than SETTLE_ALONE_SECONDS at the last settle
    (thousands of workloads), a cycle is counted as it ends: a scrape would otherwise wait
    for several cycles' counting."""
    from exporter.sampler import SETTLE_ALONE_SECONDS

    clock = FakeClock()
    powercap = amd_one_socket(tmp_path / "sys")
    sampler = Sampler([RaplSource(powercap.sysfs)], 1.0, INTENSITY, 1.0, clock=clock)
    try:
        for _ in range(2):
            clock.advance(1.0)
            assert sampler._step()
        assert sampler.cycles == 0  # cheap: queued
        sampler.settle_seconds = 2 * SETTLE_ALONE_SECONDS  # as a dear settle would have set it
        clock.advance(1.0)
        assert sampler._step()
        assert sampler.cycles == 3
    finally:
        sampler.close()


def test_models_are_read_when_their_cycle_is_counted_from_what_it_captured(tmp_path):
    """The CPU and DRAM models capture their inputs in the cycle (/proc/stat's times, the
    time) and are read when the cycle is counted: nothing of theirs runs before, and what
    they count is what each cycle's own inputs give (the same as a sampler counting each
    cycle as it ends), however /proc/stat has moved since."""
    clock = FakeClock()

    def build(root: Path, settle_every: int):
        procfs = ProcfsTree(root / "proc")
        config = resolve({"path.procfs": procfs.procfs, "path.sysfs": str(root / "sys")},
                         None, {})
        models = [CpuModelSource.from_config(config), DramModelSource.from_config(config)]
        sampler = Sampler(models, 1.0, INTENSITY, 1.0, clock=clock)
        sampler.settle_every = settle_every
        return procfs, models, sampler

    queued, each = build(tmp_path / "queued", 100), build(tmp_path / "each", 1)
    try:
        for cycle in range(4):
            clock.advance(1.0)
            for procfs, _, sampler in (queued, each):
                procfs.advance(busy_jiffies=20 + 25 * cycle, idle_jiffies=100 - 25 * cycle)
                assert sampler._step()
        cpu_model, dram_model = queued[1]
        assert cpu_model.last is None and dram_model.last_at is None  # not read yet
        assert queued[2].cycles == 0 and each[2].cycles == 4
        queued[0].advance(busy_jiffies=10_000, idle_jiffies=0)  # after the cycles: not theirs
        clock.advance(30.0)
        energy = [[(s.component, s.source, s.joules) for s in sampler.snapshot.energy]
                  for _, _, sampler in (queued, each)]
        assert energy[0] == energy[1] and {c for c, *_ in energy[0]} == {"cpu", "dram"}
        assert all(joules > 0 for *_, joules in energy[0])
        assert dram_model.last_at == 1004.0  # the last cycle's time (FakeClock starts at 1000), not now
        assert _status(queued[2], "cpu-model").reason == OK
    finally:
        for _, _, sampler in (queued, each):
            sampler.close()


def test_a_capture_that_raises_is_an_error_and_sampling_goes_on(tmp_path):
    class Broken(Source):
        name = "broken-model"
        role = MODEL
        components = ("dram",)
        captures = True

        def capture(self) -> object:
            raise RuntimeError("no inputs today")

        def read_captured(self, captured, covered=frozenset()):
            raise AssertionError("not reached: the capture failed")

        def read(self, covered=frozenset()):
            return self.read_captured(self.capture(), covered)

    clock = FakeClock()
    procfs = ProcfsTree(tmp_path / "proc")
    config = resolve({"path.procfs": procfs.procfs, "path.sysfs": str(tmp_path / "sys")}, None, {})
    sampler = Sampler([Broken(), CpuModelSource.from_config(config)], 1.0, INTENSITY, 1.0,
                      clock=clock)
    try:
        for _ in range(3):
            clock.advance(1.0)
            procfs.advance(busy_jiffies=50, idle_jiffies=50)
            assert sampler._step()
        sampler.settle()
        broken = _status(sampler, "broken-model")
        assert broken.reason == "error" and "no inputs today" in broken.detail
        assert _status(sampler, "cpu-model").reason == OK and sampler.cycles == 3
    finally:
        sampler.close()
