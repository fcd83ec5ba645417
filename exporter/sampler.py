"""The sampling clock: reads every source on --sample.interval, feeds the ledger and publishes
an immutable Snapshot that scrapes render. Scrapes never wait on hardware.

Reads run off the event loop in worker threads named by `Source.thread`, each reading its
sources one after the other. The sources that call NVML (the GPUs, and attribution's GPU
process queries) share the "nvml" thread, so a wedged driver stalls only them; the kernel
pseudo-file readers (RAPL, the models, cgroup attribution without GPUs) share the "host"
thread, where the models go last and stand aside for a component RAPL measured. One thread
hand-off per thread and cycle, instead of one per source, keeps a cycle cheap. A read still running after one interval is reported as an error;
its result, when it comes, is used at the next cycle (counters make late readings harmless).
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from exporter.carbon import Intensity
from exporter.ledger import PLATFORM, Ledger, grams_per_joule
from exporter.sources import ERROR, GpuInfo, Source, SourceResult, Status

log = logging.getLogger(__name__)


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
    glitches: tuple[tuple[str, str, str, int], ...] = ()  # (collector, device, reason, count)
    workloads: tuple = ()  # exporter.attribution.WorkloadSeries
    gpu_split: tuple[tuple[str, str], ...] = ()  # (device, basis)
    embodied: tuple[tuple[str, str, float], ...] = ()  # (component, device, grams)
    embodied_grams_per_second: float | None = None
    grid: object = None  # carbon.providers.chain.GridState: forecast, index, provider states


@dataclass(slots=True)
class _Worker:
    """Bookkeeping of one source: its last status and the time its reads took."""

    source: Source
    status: Status = field(default_factory=lambda: Status(ERROR, "not read yet"))
    duration_sum: float = 0.0
    duration_count: int = 0


@dataclass(slots=True)
class _Thread:
    """A worker thread and the sources it reads in order; models go last."""

    executor: ThreadPoolExecutor
    workers: list[_Worker]
    pending: Future | None = None
    pending_since: float = 0.0


def _timed_read(source: Source, covered: frozenset[str]) -> tuple[SourceResult, float]:
    started = time.perf_counter()
    try:
        result = source.read(covered)
    except Exception as exc:  # a source bug must not stop the sampler
        log.exception("collector %s raised", source.name)
        result = SourceResult(Status(ERROR, f"{type(exc).__name__}: {exc}"))
    return result, time.perf_counter() - started


def _read_in_order(workers: list[_Worker]) -> list[tuple[SourceResult, float]]:
    """Runs in a worker thread: each source once; a model learns what the counters read
    before it already cover."""
    results = []
    covered: set[str] = set()
    for worker in workers:
        result, duration = _timed_read(worker.source, frozenset(covered))
        covered.update(r.component for r in result.readings
                       if r.component and worker.source.component is None)
        results.append((result, duration))
    return results


class Sampler:
    def __init__(self, measured: list[Source], models: list[Source], interval: float,
                 intensity: Intensity, pue: float, attribution=None) -> None:
        self.interval = interval
        self.intensity = intensity
        self.pue = pue
        self.ledger = Ledger(max_power_gap=max(5 * interval, 5.0))
        self.attribution = attribution
        # attribution reads CPU-time counters in the same cycle as the energy counters
        groups: dict[str, list[Source]] = {}
        for source in [*measured, *([attribution] if attribution is not None else []), *models]:
            groups.setdefault(source.thread, []).append(source)
        self.threads = [_Thread(ThreadPoolExecutor(1, thread_name_prefix=f"collector-{name}"),
                                [_Worker(s) for s in sources]) for name, sources in groups.items()]
        self.gpus: tuple[GpuInfo, ...] = ()
        self.grid = None  # set by the provider chain, read at each cycle like intensity
        self.embodied = None  # carbon.embodied.Embodied, set by the daemon
        self.snapshot = Snapshot(timestamp=None, intensity=intensity, pue=pue)
        self.cycles = 0
        self.last_cycle_at: float | None = None

    @property
    def workers(self) -> list[_Worker]:
        return [w for t in self.threads for w in t.workers]

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

    async def cycle(self) -> Snapshot:
        loop = asyncio.get_running_loop()
        readings = []
        observed = None
        now = time.monotonic()
        for thread in self.threads:
            if thread.pending is None:
                thread.pending = loop.run_in_executor(thread.executor, _read_in_order,
                                                      thread.workers)
                thread.pending_since = now
        if self.threads:
            await asyncio.wait([t.pending for t in self.threads], timeout=self.interval)
        for thread in self.threads:
            if not thread.pending.done():
                stuck = time.monotonic() - thread.pending_since
                for worker in thread.workers:
                    self._record(worker, SourceResult(Status(
                        ERROR, f"read still running after {stuck:.1f} s")), 0.0)
                continue
            results, thread.pending = thread.pending.result(), None
            for worker, (result, duration) in zip(thread.workers, results):
                self._record(worker, result, duration)
                readings.extend(result.readings)
                if worker.source.name == "nvml":
                    self.gpus = tuple(result.gpus)
                if worker.source is self.attribution:
                    observed = result
        return self._publish(readings, observed)

    def _publish(self, readings, observed=None) -> Snapshot:
        intensity, pue = self.intensity, self.pue
        counted = self.ledger.update(readings, grams_per_joule(intensity.grams_per_kwh, pue))
        extra: tuple[CollectorState, ...] = ()
        if self.attribution is not None:
            self.attribution.account(observed, counted)
            extra = tuple(CollectorState(*state) for state in self.attribution.states())
        grams = sum(c.grams for c in counted)
        now = time.monotonic()
        rate = embodied_rate = None
        if self.last_cycle_at is not None and now > self.last_cycle_at:
            rate = grams / (now - self.last_cycle_at)
            if self.embodied is not None:
                embodied_rate = self.embodied.update(self.gpus, now - self.last_cycle_at)
        self.last_cycle_at = now
        self.cycles += 1
        tracks = self.ledger.tracks.values()
        self.snapshot = Snapshot(
            timestamp=time.time(),
            energy=tuple(EnergySeries(t.component, t.device, t.source, t.joules, t.watts, t.grams)
                         for t in tracks if t.component),
            rapl_domains=tuple((t.domain, t.device, t.joules) for t in tracks
                               if t.domain and t.domain != PLATFORM),
            platform=tuple((t.device, t.source, t.joules, t.watts)
                           for t in self.ledger.platform_tracks()),
            gpus=self.gpus,
            intensity=intensity,
            intensity_age=intensity.age(),
            pue=pue,
            grams_per_second=rate,
            collectors=tuple(CollectorState(w.source.name, w.status, w.duration_sum, w.duration_count)
                             for w in self.workers) + extra,
            glitches=tuple((c, d, r, n) for (c, d, r), n in self.ledger.glitches.items()),
            workloads=self.attribution.series if self.attribution is not None else (),
            gpu_split=self.attribution.gpu_split if self.attribution is not None else (),
            embodied=tuple((c, d, g) for (c, d), g in self.embodied.totals.items())
            if self.embodied is not None else (),
            embodied_grams_per_second=embodied_rate,
            grid=self.grid,
        )
        return self.snapshot

    async def run(self, stop: asyncio.Event) -> None:
        """Sample until `stop` is set, on a fixed grid so slow cycles do not drift."""
        stopped = asyncio.ensure_future(stop.wait())  # one waiter for the whole run
        next_at = time.monotonic()
        try:
            while not stop.is_set():
                try:
                    await self.cycle()
                except Exception:  # keep sampling: the next cycle may work
                    log.exception("sample cycle failed")
                next_at += self.interval
                delay = next_at - time.monotonic()
                if delay < 0:  # overran: skip the missed ticks rather than bunching cycles
                    next_at = time.monotonic()
                    delay = 0
                await asyncio.wait([stopped], timeout=delay)
        finally:
            stopped.cancel()

    def close(self) -> None:
        for thread in self.threads:
            thread.executor.shutdown(wait=False, cancel_futures=True)
        for source in self.sources:
            try:
                source.close()
            except Exception:
                log.exception("closing collector %s", source.name)
