"""The sampling clock: reads every source on --sample.interval, feeds the ledger and publishes
an immutable Snapshot that scrapes render. Scrapes never wait on hardware.

The sampler is a thread with its own clock: the event loop only serves HTTP and never wakes
for sampling. A scrape builds the snapshot of the last cycle (at most once per cycle) under
the sampler's lock, so it never sees a cycle half-published. The thread waits in one poll(2)
(HaltFlag). A cycle's reads are counted (ledger, peaks, attribution's split, listeners) a few
cycles at a time, in order and with each cycle's own times (SETTLE_EVERY), and always before
a snapshot is built: a scrape sees every cycle read so far.

A cycle reads every source in the sampler thread, one after the other: measured sources,
then the observer (attribution), then models, so a model stands aside for a component any
measured source covered. No thread hand-off per cycle: one thread wakes per interval (this
one; the watchdog's look once per interval is the other wake-up). A read that can stall (a
wedged driver, an ACPI meter, a FIFO nobody writes) must not hold up the rest: the watchdog
finds a read running for longer than an interval, sets that source aside and starts a fresh
sampler thread that goes on without it; the stalled read's result, when it comes, is
counted at the next cycle (counters make late readings harmless). Nothing here names a
source: roles and what a source provides are its own declarations (exporter.sources).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import select
import signal
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence, cast

from exporter import procfs
from exporter.carbon import Intensity
from exporter.ledger import PLATFORM, Ledger, Reading, grams_per_joule
from exporter.peak import PeakTracker, budgets
from exporter.sources import (
    ABSENT, ERROR, GPU_INFO, MEASURED, MODEL, OBSERVER, SUPERSEDED, Covered, GpuInfo, Source,
    SourceResult, Status,
)

if TYPE_CHECKING:
    from exporter.attribution import Attribution, WorkloadSeries
    from exporter.config import Config
    from exporter.carbon.embodied import Embodied
    from exporter.carbon.providers.chain import GridState

log = logging.getLogger(__name__)

# --sample.model-takeover default: a counter away for longer is replaced by its model.
DEFAULT_TAKEOVER = 30.0
# A cycle's reads happen on the sampler's clock; what follows them (recording each result,
# the ledger, peaks, embodied carbon, attribution's split, the listeners' Sample) is queued
# and run for several cycles at once: every SETTLE_EVERY cycles, and before anything reads
# what it produces (a snapshot, a run's start, the end of sampling). Run back to back these
# steps run warm: after a second of sleep a cycle's Python is cold (about 3x slower than the
# same code hot on this project's VM). Each queued cycle keeps its own times, intensity and
# PUE, and the cycles are counted in order, so the results are those of counting each one
# as it ends; a scrape between settles counts the queue first, so it never sees less.
# Fifteen: a scrape every 15 s (this project's Prometheus configuration; the ServiceMonitor's
# 30 s) then does most of the counting, at most 14 cycles (about 1-2 ms on this project's
# VM); counting 5 cycles at a time cost 132 µs of CPU per cycle there, 30 at a time 67 µs.
SETTLE_EVERY = 15
# ... unless counting a cycle costs more than this (thousands of workloads): the queue would
# then make a scrape wait for several cycles' counting, for a gain that a cycle's own work
# dwarfs; such a node counts each cycle as it ends, as before
SETTLE_ALONE_SECONDS = 0.0005
# The daemon's watchdog (start(alarm=True)): each cycle arms the kernel's interval timer to
# fire this many intervals after the cycle began, and the next cycle, an interval later, arms
# it again before it fires; it fires only when a cycle has not begun by then (a read has held
# the sampler thread for that long). One setitimer(2) a cycle, not an arm and a disarm: on a
# VM each cold system call is tens of microseconds. A stalled read is set aside within
# ALARM_AFTER intervals, not one.
ALARM_AFTER = 1.5
# A source whose hardware is absent (no RAPL zone in a VM, no NVIDIA driver, no Redfish URL)
# is asked again after this long, not at every cycle: hardware or a driver that appears
# after start is picked up within it.
ABSENT_RECHECK = 30.0


@dataclass(frozen=True, slots=True)
class EnergySeries:
    component: str
    device: str
    source: str
    joules: float
    watts: float | None  # None when the device was not read at the last sample
    grams: float


@dataclass(frozen=True, slots=True)
class CollectorState:
    name: str
    status: Status
    duration_sum: float
    duration_count: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything a scrape shows, frozen at the end of a sample cycle."""

    timestamp: float | None  # unix time of the cycle; None before the first one
    energy: tuple[EnergySeries, ...] = ()
    rapl_domains: tuple[tuple[str, str, float], ...] = ()  # (domain, device, joules)
    # whole-node meters as read, (device, source, joules, watts): never summed with `energy`
    platform: tuple[tuple[str, str, float, float | None], ...] = ()
    gpus: tuple[GpuInfo, ...] = ()
    intensity: Intensity | None = None
    intensity_age: float = 0.0  # seconds, at the time of the snapshot
    pue: float = 1.0
    grams_per_second: float | None = None
    collectors: tuple[CollectorState, ...] = ()
    glitches: tuple[tuple[str, str, str, str, int], ...] = ()  # (collector, device, domain, reason, n)
    workloads: tuple[WorkloadSeries, ...] = ()
    gpu_split: tuple[tuple[str, str], ...] = ()  # (device, basis)
    embodied: tuple[tuple[str, str, float], ...] = ()  # (component, device, grams)
    embodied_grams_per_second: float | None = None
    grid: GridState | None = None  # the provider chain's forecast, index, provider states
    peaks: tuple[tuple[str, str, str, float], ...] = ()  # (component, device, source, watts)
    budgets: tuple[tuple[str, str, float], ...] = ()  # (scope, device, watts)


@dataclass(slots=True)  # made every sample: not frozen, for the cost (see ledger.Reading)
class Sample:
    """A cycle's headline numbers, for listeners (the landing page's ring): a few sums over
    the ledger, so a listener does not make every cycle build a whole Snapshot. The sums are
    the ones the cycle's Snapshot gives, in the same order (the same floats)."""

    timestamp: float
    joules: float  # sum of the snapshot's energy series (operational, since start)
    grams: float  # their operational grams
    embodied_grams: float  # sum of the snapshot's embodied series
    watts: tuple[tuple[str, float], ...]  # (component, watts summed over devices), sorted
    grams_per_second: float | None


@dataclass(slots=True)
class _Worker:
    """Bookkeeping of one source: its last status and the time its reads took."""

    source: Source
    status: Status = field(default_factory=lambda: Status(ERROR, "not read yet"))
    duration_sum: float = 0.0
    duration_count: int = 0
    stuck_since: float | None = None  # a read of it has not returned since then
    absent_until: float = float("-inf")  # absent hardware: not read again before then


@dataclass(slots=True)  # made every sample: not frozen, for the cost (see ledger.Reading)
class _Published:
    """What a cycle decided that its snapshot shows; the rest is read from the ledger."""

    timestamp: float
    intensity: Intensity
    pue: float
    grams_per_second: float | None
    embodied_grams_per_second: float | None
    newest: float | None  # the newest reading's time: where the peak window ends


@dataclass(slots=True)  # made every sample: not frozen, for the cost (see ledger.Reading)
class _Captured:
    """What a capturing source (Source.captures) took in a cycle: read when it is counted."""

    inputs: object
    covered: frozenset[str]


@dataclass(slots=True)
class _CaptureFailed:
    reason: str


@dataclass(slots=True)  # made every sample: not frozen, for the cost (see ledger.Reading)
class _Queued:
    """A cycle whose reads are in, waiting to be counted (see SETTLE_EVERY)."""

    # (worker, its result or what it captured, the read's duration, status only)
    taken: list[tuple[_Worker, SourceResult | _Captured, float, bool]]
    at: float  # the sampler's clock when the reads were in
    wall: float  # unix time, then
    monotonic: float  # time.monotonic(), then (attribution's clock)
    intensity: Intensity
    pue: float


def _timed_read(source: Source, covered: frozenset[str],
                captured: _Captured | None = None) -> tuple[SourceResult, float]:
    """source.read(covered), or source.read_captured() of what it captured."""
    started = time.perf_counter()
    try:
        if captured is None:
            result = source.read(covered)
        elif isinstance(captured.inputs, _CaptureFailed):
            result = SourceResult(Status(ERROR, captured.inputs.reason))
        else:
            result = source.read_captured(captured.inputs, captured.covered)
    except Exception as exc:  # a source bug must not stop the sampler
        log.exception("collector %s raised", source.name)
        result = SourceResult(Status(ERROR, f"{type(exc).__name__}: {exc}"))
    return result, time.perf_counter() - started


def _capture(source: Source, covered: frozenset[str]) -> _Captured:
    try:
        return _Captured(source.capture(), covered)
    except Exception as exc:  # a source bug must not stop the sampler
        log.exception("collector %s raised", source.name)
        return _Captured(_CaptureFailed(f"{type(exc).__name__}: {exc}"), covered)


class _Reader:
    """One sampler thread's claim to the sources. The watchdog abandons it when a read of it
    outlives an interval: the stalled source is set aside and a fresh thread samples on; the
    stalled read, when it returns, is handed to the next cycle (counters make it harmless)."""

    def __init__(self) -> None:
        self.abandoned = False
        self.current: tuple[_Worker, float] | None = None  # (worker, monotonic start of its read)


_ROLE_ORDER = {MEASURED: 0, OBSERVER: 1, MODEL: 2}
_NOTHING_COVERED = Covered()  # what the models get where no counter ever measured anything
_NONE_COVERED: frozenset[str] = frozenset()  # what measured sources and observers are handed


class HaltFlag:
    """threading.Event's set, clear, is_set and wait, for the sampler's clock: a wait is one
    poll(2) on a pipe that set() writes to. A timed Event.wait builds a condition's waiter
    (a fresh lock, a deque entry) and waits on a semaphore with a deadline; with the wake-up
    around it that cost 0.18 ms of CPU per second on this project's 2-vCPU VM, a poll-based
    wait 0.08 ms and time.sleep 0.07 (the sleep cannot be interrupted by a halt). Each
    waiting thread uses its own poller() (a poll object is not for two threads at once)."""

    def __init__(self) -> None:
        self._set = False
        self._pipe: tuple[int, int] | None = None
        self._lock = threading.Lock()

    def _fds(self) -> tuple[int, int]:
        with self._lock:
            if self._pipe is None:
                read_end, write_end = os.pipe()
                os.set_blocking(read_end, False)
                os.set_blocking(write_end, False)
                self._pipe = (read_end, write_end)
                weakref.finalize(self, _close_pipe, self._pipe)
            return self._pipe

    def poller(self) -> select.poll:
        poller = select.poll()
        poller.register(self._fds()[0], select.POLLIN)
        return poller

    def set(self) -> None:
        self._set = True  # before the pipe is looked at: a waiter makes it before it looks
        pipe = self._pipe  # at the flag, so with no pipe yet there is no waiter to wake
        if pipe is not None:
            try:
                os.write(pipe[1], b"x")
            except BlockingIOError:  # the pipe is full of earlier wake-ups: one is enough
                pass

    def clear(self) -> None:
        self._set = False
        pipe = self._pipe
        if pipe is not None:
            try:
                while os.read(pipe[0], 4096):
                    pass
            except BlockingIOError:
                pass

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float, poller: select.poll) -> bool:
        """Until set() or `timeout` seconds (to the millisecond, rounded up); whether set."""
        if not self._set and timeout > 0:
            poller.poll(timeout * 1000.0)
        return self._set


def _close_pipe(pipe: tuple[int, int]) -> None:
    for fd in pipe:
        try:
            os.close(fd)
        except OSError:
            pass


def _settle(future: asyncio.Future[bool], outcome: bool | BaseException) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


class Sampler:
    def __init__(self, sources: Sequence[Source], interval: float, intensity: Intensity,
                 pue: float, clock: Callable[[], float] = time.monotonic,
                 peak_window: float = 60.0, takeover: float = DEFAULT_TAKEOVER,
                 watch_every: float | None = None) -> None:
        self.interval = interval
        # how often the watchdog looks for a stalled read (default: every interval); a stall
        # is set aside within interval + watch_every
        self.watch_every = interval if watch_every is None else max(interval, watch_every)
        self.takeover = takeover  # how long a counter may be away before a model takes over
        # None where nothing shows peaks (embedded mode: a run's record has its own peak)
        self.peaks: PeakTracker | None = PeakTracker(max(peak_window, interval))
        self.power_budget: object = None  # the power.budget_watts setting, set by the daemon
        self.intensity = intensity
        self.pue = pue
        self.clock = clock
        self.ledger = Ledger(max_power_gap=max(5 * interval, 5.0))
        for source in sources:
            source.clock = clock  # readings are stamped on the sampler's clock
        observers = [s for s in sources if s.role == OBSERVER]
        if len(observers) > 1:
            raise ValueError("at most one observer source (attribution)")
        self.attribution = cast("Attribution | None", observers[0] if observers else None)
        # measured sources, then the observer, then models: a model reads after every
        # measured source, so it stands aside for a component measured by any of them
        self.workers = [_Worker(s) for s in sorted(sources, key=lambda s: _ROLE_ORDER[s.role])]
        self._guard = threading.Lock()  # a reader's current read, abandonment and late results
        self._reader = _Reader()
        self._late: list[tuple[_Worker, SourceResult | _Captured, float]] = []  # stalled, returned
        self._seen: dict[str, float] = {}  # component -> when a measured read last covered it
        # component -> (where a model began counting it, where it stopped; None: counting)
        self._modelled: dict[str, tuple[float, float | None]] = {}
        self._gpus: dict[str, tuple[GpuInfo, ...]] = {}  # GPU_INFO source -> its GPUs
        self.gpus: tuple[GpuInfo, ...] = ()
        self.grid: GridState | None = None  # set by the provider chain, read at each cycle
        self.embodied: Embodied | None = None  # set by the daemon
        # The snapshot of the last cycle is built when first asked for (a scrape), at most once
        # per cycle; a cycle nobody scrapes builds none. What it shows changes only in
        # _publish, under self.lock like the snapshot's build, so building it later reads the same.
        self._snapshot: Snapshot | None = Snapshot(timestamp=None, intensity=intensity, pue=pue)
        self._published: _Published | None = None
        # called with each cycle's Sample, in the sampler thread; must be cheap and
        # thread-safe (the landing page's ring of recent samples). A Sample, not a Snapshot:
        # the snapshot stays lazy.
        self.listeners: list[Callable[[Sample], None]] = []
        self.settle_every = SETTLE_EVERY
        self._queued: list[_Queued] = []  # cycles read but not yet counted, in order
        self.settle_seconds = 0.0  # CPU seconds counting one cycle cost at the last settle
        # True while something needs each cycle settled as it ends (the run service while a
        # run is going: its end waits for a split sample)
        self.settle_each_cycle: Callable[[], bool] | None = None
        self.cycles = 0
        self.last_cycle_at: float | None = None
        # held while a cycle publishes and while a scrape builds the snapshot; others that
        # change what a cycle reads (a reload, the run socket) take it too
        self.lock = threading.RLock()
        self._thread: threading.Thread | None = None
        # run first in each sampler thread the watchdog starts (embedded mode: the new
        # thread's CPU is the tracker's, not the run's)
        self.on_new_thread: Callable[[], None] | None = None
        self._watchdog: threading.Thread | None = None
        # the watchdog thread's CPU seconds, as it last noted them itself (after each look,
        # before it waits again): embedded mode takes them out of the run's CPU time without
        # a system call of its own at every sample
        self.watchdog_cpu = 0.0
        self._alarm = False  # the watchdog is SIGALRM on the event loop (start(alarm=True))
        self._config: Config | None = None  # reloaded settings the sources take next cycle
        self._halt = HaltFlag()
        self._final = False
        self.first_cycle = threading.Event()  # set when the sampler thread's first cycle ended
        self.failed: Exception | None = None  # what before_first raised

    @property
    def sources(self) -> list[Source]:
        return [w.source for w in self.workers]

    def _record(self, worker: _Worker, result: SourceResult, duration: float) -> None:
        worker.duration_sum += duration
        worker.duration_count += 1
        previous = worker.status
        worker.status = result.status
        if previous.reason != result.status.reason or self.cycles == 0:
            level = logging.WARNING if result.status.reason in ("error", "permission") else logging.INFO
            log.log(level, "collector %s: %s%s", worker.source.name, result.status.reason,
                    f" ({result.status.detail})" if result.status.detail else "")

    def _read(self, reader: _Reader, worker: _Worker,
              covered: frozenset[str]) -> tuple[SourceResult | _Captured, float] | None:
        """One source's read (or its capture: Source.captures) in a sampler thread, under the
        watchdog's eye; None once the watchdog abandoned the thread."""
        if reader.abandoned:
            return None
        # no lock needed to start: watch() sets a reader aside only while a read of it runs
        # (current is set), and this thread is between reads here (one attribute store)
        reader.current = (worker, time.monotonic())
        source = worker.source
        result: tuple[SourceResult | _Captured, float] = (
            (_capture(source, covered), 0.0) if source.captures else _timed_read(source, covered))
        with self._guard:
            reader.current = None
            if reader.abandoned:  # this read was set aside as stalled: the next cycle takes it
                self._late.append((worker, *result))
                return None
        return result

    def configure(self, config: Config) -> None:
        """A reload (SIGHUP, on the event loop): each source takes the new settings at the start
        of the next cycle, in the sampler thread, never in the middle of one of its reads."""
        self._config = config

    def _reconfigure(self) -> None:
        config, self._config = self._config, None
        if config is None:
            return
        with self.lock:  # what queued cycles captured is read under the settings it was taken with
            self._settle()
        for worker in self.workers:
            try:
                worker.source.configure(config)
            except Exception:  # a source that cannot take it keeps its settings
                log.exception("collector %s: applying the reloaded config", worker.source.name)

    def _step(self, reader: _Reader | None = None) -> bool:
        """One sample cycle in the calling thread (the sampler's): every source once, in
        order; the results are queued for counting (see SETTLE_EVERY), and counted now when
        the queue is full. False when the watchdog abandoned this thread."""
        reader = reader or self._reader
        if self._config is not None:
            self._reconfigure()
        taken: list[tuple[_Worker, SourceResult | _Captured, float, bool]] = []
        procfs.begin_cycle()
        if self._alarm:  # the kernel's interval timer is the watchdog: see start()
            signal.setitimer(signal.ITIMER_REAL, ALARM_AFTER * self.interval)
        try:
            if self._late:  # stalled reads that came back (one appended after this: next cycle)
                with self._guard:
                    late, self._late = self._late, []
                for worker, result, duration in late:
                    worker.stuck_since = None
                    taken.append((worker, result, duration, False))
            fresh: set[str] = set()
            covered: Covered | None = None
            now = self.clock()
            for worker in self.workers:
                source = worker.source
                if worker.absent_until > now:
                    continue  # keeps its `absent` status until it is asked again
                if worker.stuck_since is not None:
                    taken.append((worker, SourceResult(Status(
                        ERROR, f"read still running after {self.clock() - worker.stuck_since:.1f} s")),
                        0.0, True))
                    continue
                if source.role == MODEL and covered is None:
                    covered = self._covered(fresh)
                read = self._read(reader, worker,
                                  covered if source.role == MODEL and covered is not None
                                  else _NONE_COVERED)
                if read is None:
                    return False
                result, duration = read
                if isinstance(result, _Captured):  # read when the cycle is counted
                    taken.append((worker, result, duration, False))
                    continue
                if result.status.reason == ABSENT:
                    worker.absent_until = now + ABSENT_RECHECK
                if source.role == MEASURED:
                    fresh.update(r.component for r in result.readings if r.component)
                taken.append((worker, result, duration, False))
            if covered is None:
                self._covered(fresh)  # remember when each component was last measured
        finally:
            procfs.end_cycle()  # the timer stays armed: the next cycle arms it again first
        with self.lock:
            with self._guard:
                if reader.abandoned:
                    return False
            self._queued.append(_Queued(taken, self.clock(), time.time(), time.monotonic(),
                                        self.intensity, self.pue))
            self._snapshot = None  # a scrape now counts the queue first
            if (len(self._queued) >= self.settle_every
                    or self.settle_seconds > SETTLE_ALONE_SECONDS
                    or (self.settle_each_cycle is not None and self.settle_each_cycle())):
                self._settle()
        return True

    def _covered(self, fresh: set[str]) -> Covered:
        """What the models are handed: components measured this cycle, and those measured
        within the hand-over time (held: their counter bridges the gap when it comes back)."""
        if not fresh and not self._seen:  # nothing measured, ever (a VM, a laptop)
            return _NOTHING_COVERED
        now = self.clock()
        for component in fresh:
            self._seen[component] = now
        held = {c for c, at in self._seen.items()
                if c not in fresh and now - at <= self.takeover}
        return Covered(fresh, held)

    def watch(self) -> None:
        """The watchdog's check: a read running for longer than an interval is set aside,
        and a fresh sampler thread goes on without it (the sources after it, the models, the
        publishing are not held up). Called by the watchdog thread, or by step()."""
        with self._guard:
            current = self._reader.current
            if current is None or time.monotonic() - current[1] < self.interval:
                return
            worker, started = current
            self._reader.abandoned = True
            self._reader = _Reader()
            worker.stuck_since = self.clock() - (time.monotonic() - started)
        log.warning("collector %s: read still running after %.1f s; set aside, sampling goes on",
                    worker.source.name, time.monotonic() - started)
        if self._thread is not None and not self._halt.is_set():
            self._spawn(self._new_thread)

    def _new_thread(self) -> None:
        hook = self.on_new_thread
        if hook is not None:
            try:
                hook()
            except Exception:  # sampling goes on without it
                log.exception("sampler: the new thread's start hook failed")

    def on_alarm(self) -> None:
        """SIGALRM, on the event loop (start(alarm=True)): no cycle has begun for ALARM_AFTER
        intervals. A read running for an interval or more is set aside; one that began later
        is given the rest of its interval."""
        self.watch()
        with self._guard:
            current = self._reader.current
        if current is not None and self._alarm:
            signal.setitimer(signal.ITIMER_REAL,
                             max(0.01, self.interval - (time.monotonic() - current[1])))

    async def step(self) -> None:
        """One sample cycle from the event loop (tests, one-shot tools), in a thread of its
        own as in the daemon, so the loop stays free; a read that outlives an interval is set
        aside as the watchdog would, and the cycle is taken again without it."""
        loop = asyncio.get_running_loop()
        while True:
            reader = self._reader
            done: asyncio.Future[bool] = loop.create_future()

            def cycle(reader: _Reader = reader, done: asyncio.Future[bool] = done) -> None:
                try:
                    outcome: bool | BaseException = self._step(reader)
                except BaseException as exc:  # raised by step(), as a cycle on the loop would
                    outcome = exc
                loop.call_soon_threadsafe(_settle, done, outcome)

            threading.Thread(target=cycle, name="sampler-step", daemon=True).start()
            while not done.done():
                try:
                    await asyncio.wait_for(asyncio.shield(done), timeout=self.interval / 4)
                except TimeoutError:
                    self.watch()
                    if reader.abandoned:
                        break
            if not reader.abandoned:
                done.result()  # a cycle's exception
                self.settle()  # one cycle at a time here: its split is there when it returns
                return

    async def cycle(self) -> Snapshot:
        """One cycle, and its snapshot (tests; the daemon's loop builds none unless scraped)."""
        await self.step()
        return self.snapshot

    def _take(self, worker: _Worker, result: SourceResult, duration: float,
              readings: list[Reading]) -> SourceResult | None:
        """Record one result; the observer's result is returned (the split needs it)."""
        self._record(worker, result, duration)
        readings.extend(self._handed_back(worker.source, result))
        if GPU_INFO in worker.source.provides:
            gpus = tuple(result.gpus)
            if gpus != self._gpus.get(worker.source.name):
                self._gpus[worker.source.name] = gpus
                self.gpus = tuple(gpu for gpus in self._gpus.values() for gpu in gpus)
        return result if worker.source is self.attribution else None

    def _handed_back(self, source: Source, result: SourceResult) -> list[Reading]:
        """The readings to count, given what models counted. A model's baseline reading marks
        where it starts counting a component (at a take-over: the counter's last reading);
        its last reading when it stands aside again, where it stopped. A counter reading whose
        previous one is older than that start spans the model's time: while the model counts
        it is a new baseline; after, only its share after the model's stop counts (a zone
        back a sample after the others)."""
        if source.role == MODEL:
            for reading in result.readings:
                if not reading.component:
                    continue
                if reading.baseline:
                    self._modelled[reading.component] = (reading.at, None)
                elif result.status.reason == SUPERSEDED and reading.component in self._modelled:
                    self._modelled[reading.component] = (
                        self._modelled[reading.component][0], reading.at)
            return result.readings
        if source.role != MEASURED or not self._modelled:
            return result.readings
        readings = []
        for reading in result.readings:
            span = self._modelled.get(reading.component or "")
            track = self.ledger.tracks.get(reading.key) if span is not None else None
            if span is not None and track is not None and track.last_at <= span[0]:
                reading = (dataclasses.replace(reading, baseline=True) if span[1] is None
                           else dataclasses.replace(reading, since=span[1]))
            readings.append(reading)
        return readings

    def _publish(self, readings: list[Reading], observed: SourceResult | None = None,
                 cycle: _Queued | None = None) -> None:
        """Count one cycle's readings (a queued cycle's, with its times; else as of now)."""
        if cycle is None:
            cycle = _Queued([], self.clock(), time.time(), time.monotonic(), self.intensity,
                            self.pue)
        intensity, pue = cycle.intensity, cycle.pue
        counted = self.ledger.update(readings, grams_per_joule(intensity.grams_per_kwh, pue))
        if self.attribution is not None:
            self.attribution.account(observed, counted, cycle.monotonic)
        grams = sum(c.grams for c in counted)
        now = cycle.at
        rate = embodied_rate = None
        if self.last_cycle_at is not None and now > self.last_cycle_at:
            rate = grams / (now - self.last_cycle_at)
            if self.embodied is not None:
                embodied_rate = self.embodied.update(self.gpus, now - self.last_cycle_at)
        self.last_cycle_at = now
        self.cycles += 1
        newest = None
        peaks = self.peaks
        if peaks is not None:
            tracks = self.ledger.tracks.values()
            for t in tracks:  # every cycle, scraped or not: a peak between scrapes still counts
                if t.component and t.present:
                    peaks.observe((t.component, t.device, t.source), t.last_at, t.watts)
            # the peak window ends at the newest reading, on the readings' own (monotonic) clock
            newest = max((t.last_at for t in tracks if t.component), default=None)
        self._published = _Published(cycle.wall, intensity, pue, rate, embodied_rate, newest)
        self._snapshot = None

    def settle(self) -> None:
        """Count the queued cycles now (see SETTLE_EVERY). Anything that reads what they
        produce (attribution's series, a run's account, the landing page's ring) settles
        first; the snapshot does it itself."""
        with self.lock:
            self._settle()

    def _settle(self) -> None:
        """Under self.lock: each queued cycle in order: its results recorded, its readings
        counted and split, its Sample to every listener."""
        queued, self._queued = self._queued, []
        if not queued:
            return
        started = time.thread_time()  # CPU time: a settle preempted on a busy node is not dear
        for cycle in queued:
            readings: list[Reading] = []
            observed: SourceResult | None = None
            for worker, result, duration, status_only in cycle.taken:
                if isinstance(result, _Captured):
                    result, duration = _timed_read(worker.source, result.covered, result)
                    if result.status.reason == ABSENT:
                        worker.absent_until = cycle.at + ABSENT_RECHECK
                if status_only:
                    self._record(worker, result, duration)
                else:
                    observed = self._take(worker, result, duration, readings) or observed
            self._publish(readings, observed, cycle)
            if not self.listeners:
                continue
            sample = self._sample()
            for listener in list(self.listeners):
                try:
                    listener(sample)
                except Exception:  # a listener bug must not stop sampling
                    log.exception("snapshot listener failed")
        self.settle_seconds = (time.thread_time() - started) / len(queued)

    def _sample(self) -> Sample:
        """The listeners' numbers, summed straight from the ledger in the order _build's
        energy and embodied series have."""
        published = self._published
        assert published is not None
        joules = grams = 0.0
        watts: dict[str, float] = {}
        for t in self.ledger.tracks.values():
            if t.component:
                joules += t.joules
                grams += t.grams
                if t.watts is not None:
                    watts[t.component] = watts.get(t.component, 0.0) + t.watts
        embodied = sum(self.embodied.totals.values()) if self.embodied is not None else 0.0
        return Sample(published.timestamp, joules, grams, embodied,
                      tuple(sorted(watts.items())), published.grams_per_second)

    @property
    def snapshot(self) -> Snapshot:
        """The last cycle's snapshot, built on first use (a scrape) under the lock the cycle
        publishes under: a scrape during a publish waits for it rather than mixing two cycles."""
        snapshot = self._snapshot
        if snapshot is None:
            with self.lock:
                if self._queued:
                    self._settle()
                if self._snapshot is None:
                    self._snapshot = self._build()
                snapshot = self._snapshot
        return snapshot

    def _build(self) -> Snapshot:
        published = self._published
        assert published is not None  # the initial snapshot stands until the first cycle
        intensity = published.intensity
        tracks = self.ledger.tracks.values()
        newest = published.newest
        return Snapshot(
            timestamp=published.timestamp,
            energy=tuple(EnergySeries(t.component, t.device, t.source, t.joules, t.watts, t.grams)
                         for t in tracks if t.component),
            rapl_domains=tuple((t.domain, t.device, t.joules) for t in tracks
                               if t.domain and t.domain != PLATFORM),
            platform=tuple((t.device, t.source, t.joules, t.watts)
                           for t in self.ledger.platform_tracks()),
            gpus=self.gpus,
            intensity=intensity,
            intensity_age=intensity.age(),
            pue=published.pue,
            grams_per_second=published.grams_per_second,
            collectors=tuple(CollectorState(w.source.name, w.status, w.duration_sum, w.duration_count)
                             for w in self.workers) + tuple(
                CollectorState(*state) for state in
                (self.attribution.states() if self.attribution is not None else ())),
            glitches=tuple((*key, n) for key, n in self.ledger.glitches.items()),
            workloads=self.attribution.series if self.attribution is not None else (),
            gpu_split=self.attribution.gpu_split if self.attribution is not None else (),
            embodied=tuple((c, d, g) for (c, d), g in self.embodied.totals.items())
            if self.embodied is not None else (),
            embodied_grams_per_second=published.embodied_grams_per_second,
            grid=self.grid,
            peaks=self.peaks.peaks(newest) if newest is not None and self.peaks is not None else (),
            budgets=budgets(self.power_budget, (g.device for g in self.gpus)),
        )

    def start(self, before_first: Callable[[], None] | None = None, alarm: bool = False) -> None:
        """Sample in the sampler's own thread until halt(); the event loop never wakes for it.

        The watchdog: with alarm (the daemon, whose event loop handles SIGALRM with
        on_alarm), each cycle arms the process's interval timer and the next cycle arms it
        again before it fires (ALARM_AFTER): one system call a cycle and no wake-up at all
        unless a read stalls. Otherwise (embedded in someone else's process, whose signals
        are not ours) a watchdog thread looks every `watch_every` seconds.
        before_first runs in the sampler thread before its first cycle; `first_cycle` is set
        after that cycle is read and counted."""
        if self._thread is not None:
            return
        self._halt.clear()
        self._final = False
        self._alarm = alarm
        if not alarm:
            ready = threading.Event()
            self._watchdog = threading.Thread(target=self._watch_loop, args=(ready,),
                                              name="sampler-watchdog", daemon=True)
            self._watchdog.start()
            ready.wait(5.0)  # its CPU time is on record before the first cycle (watchdog_cpu)
        self._spawn(before_first)

    @property
    def watchdog(self) -> threading.Thread | None:
        return self._watchdog

    def _spawn(self, before_first: Callable[[], None] | None = None) -> None:
        # daemon: a read that never returns must not keep the process from exiting on SIGTERM
        self._thread = threading.Thread(target=self._loop, args=(self._reader, before_first),
                                        name="sampler", daemon=True)
        self._thread.start()

    def _watch_loop(self, ready: threading.Event) -> None:
        poller = self._halt.poller()
        self.watchdog_cpu = time.thread_time()
        ready.set()
        while True:
            halted = self._halt.wait(self.watch_every, poller)
            if not halted:
                self.watch()
            self.watchdog_cpu = time.thread_time()  # after each look: see watchdog_cpu
            if halted:
                return

    def halt(self, timeout: float | None = None, final: bool = False) -> None:
        """Stop the sampler thread after its current cycle (at most about an interval); with
        final, after one more cycle that counts up to now (the end of a run)."""
        self._final = final
        self._halt.set()
        for thread in (self._thread, self._watchdog):
            if thread is not None and thread is not threading.current_thread():
                thread.join(2 * self.interval + 5.0 if timeout is None else timeout)
        self._thread = self._watchdog = None
        if self._alarm:
            self._alarm = False
            signal.setitimer(signal.ITIMER_REAL, 0)
        self.settle()  # the cycles up to the halt, split and heard

    def _loop(self, reader: _Reader, before_first: Callable[[], None] | None) -> None:
        """On a fixed grid, so slow cycles do not drift; an overrun skips the missed ticks."""
        if self._alarm:  # SIGALRM goes to the main thread, whose event loop handles it; a
            # signal here would interrupt a read (a driver call) for nothing
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        if before_first is not None:
            try:
                before_first()
            except Exception as exc:  # the starter learns it from `failed`
                self.failed = exc
                self.first_cycle.set()
                return
        poller = self._halt.poller()
        next_at = time.monotonic()
        while True:
            halted = self._halt.is_set()  # a final cycle must begin after the halt
            try:
                if not self._step(reader):
                    return  # set aside by the watchdog: a fresh thread samples on
            except Exception:  # keep sampling: the next cycle may work
                log.exception("sample cycle failed")
            if not self.first_cycle.is_set():  # Event.set() takes its condition's lock
                # the first cycle is counted at once, in this thread: what counting does only
                # once (a model's table lookup, the embodied rates, the first log lines) is
                # part of the start (embedded mode: of track()'s start, which waits for
                # first_cycle), not of a sample a minute later
                try:
                    self.settle()
                except Exception:  # as in a cycle: logged, and sampling goes on
                    log.exception("counting the first cycle failed")
                self.first_cycle.set()
            if self._halt.is_set():
                if halted or not self._final:
                    return
                continue  # halted during this cycle: one more, up to now
            next_at += self.interval
            delay = next_at - time.monotonic()
            if delay < 0:  # overran: skip the missed ticks rather than bunching cycles
                next_at = time.monotonic()
                delay = 0
            if self._halt.wait(delay, poller) and not self._final:
                return

    async def run(self, stop: asyncio.Event) -> None:
        """Sample in the sampler thread until `stop` is set (the daemon). In the main thread,
        the event loop takes SIGALRM for the watchdog (see start())."""
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGALRM, self.on_alarm)
            alarm = True
        except (RuntimeError, ValueError):  # not the main thread: a watchdog thread instead
            alarm = False
        self.start(alarm=alarm)
        try:
            await stop.wait()
        finally:
            await loop.run_in_executor(None, self.halt)
            if alarm:
                loop.remove_signal_handler(signal.SIGALRM)

    def close(self) -> None:
        self.halt()
        for worker in self.workers:
            if worker.stuck_since is not None:
                continue  # its read never returned: closing could block as well
            source = worker.source
            try:
                source.close()
            except Exception:
                log.exception("closing collector %s", source.name)
