"""Embedded mode: the exporter's own sources, ledger and carbon chain in a thread of the
tracked process, with the node's energy split to the run's process tree each sample.

Per sample and component, with E the energy the ledger counted (as in attribution.split):
  cpu, dram: idle = min(E, P_idle x dt), run = (E - idle) x cpu_run / max(cpu_node, cpu_run)
             (cpu_run: the tree's CPU seconds, cpu_node: the node's busy CPU seconds)
  gpu:       run = E x the tree's share of the GPU's processes (NVML, attribution.gpu)
  other:     not charged to a run (nothing says which part is the run's)
P_idle: attribution.cpu_idle_watts / attribution.dram_idle_watts when set; else, where the
figure comes from the utilisation model, the model's own idle power (its definition of idle:
the split is then exact); else learned, as in the daemon, from the lowest power seen.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field

from exporter import procfs
from exporter.attribution.gpu import GpuProcessReader, GpuShares
from exporter.attribution.split import IdleFloor, split_by_cpu
from exporter.carbon import static_intensity
from exporter.carbon.embodied import Embodied
from exporter.carbon.providers.chain import Chain, GridState
from exporter.ledger import Counted, sum_by_component
from exporter.runs.account import RunAccount, embodied_share
from exporter.runs.proctree import Member, ProcessTree
from exporter.sampler import Sampler, _Worker
from exporter.sources import (
    ABSENT, ERROR, GPU_INFO, MEASURED, MODEL, OBSERVER, OK, WORKLOADS, Source, SourceResult,
    Status,
)

log = logging.getLogger(__name__)

RUN = ("job", "", "", "", "", "run")  # the run's key in split_by_cpu's parts
# Nothing reads a run's account before the run ends (the end, and a live intensity's change,
# count the queue first), so embedded mode counts a minute of cycles at a time (at 1 s), back
# to back, where the daemon counts five (its scrapes wait for the queue): the first cycle of
# a batch runs cold, the rest warm. Queued, a cycle holds a few small objects.
SETTLE_EVERY = 60
_NO_GPUS: dict[str, GpuShares] = {}  # shared by the observations without GPUs (never changed)
_NO_PIDS: frozenset[int] = frozenset()
WATCH_EVERY = 5.0  # seconds between the embedded watchdog's looks for a stalled read


@dataclass(slots=True)
class TreeObservation:
    at: float
    times: procfs.CpuTimes  # the node's CPU times (parsed when the cycle is counted)
    # the tree's members and their CPU times (ProcessTree.take); None: <procfs> unlisted
    members: dict[int, Member] | None
    gpus: dict[str, GpuShares] = field(default_factory=dict)  # not changed once made
    tree_pids: frozenset[int] = frozenset()
    problem: str = ""  # what went wrong with the tree (ProcessTree.problem), "" if nothing


@dataclass(slots=True)
class TreeResult(SourceResult):
    observation: TreeObservation | None = None


class TreeAttribution(Source):
    """Takes attribution's place in the embedded sampler: reads the tree's CPU time next to
    the energy counters, then charges the run its share of each sample."""

    name = "run-attribution"
    role = OBSERVER
    captures = True  # the times are taken in the cycle; the result is made when it is counted
    provides = frozenset({WORKLOADS})

    def __init__(self, config, tree: ProcessTree, account: RunAccount,
                 gpus: bool | None = None) -> None:
        self.config = config
        self.tree = tree
        self.account_to = account
        self.procfs = config.path_procfs
        nvml = config.collector("nvml") if gpus is None else gpus
        self.gpu_reader = GpuProcessReader() if nvml else None
        self.user_hz = tree.user_hz
        self.floors = {"cpu": IdleFloor(config.attribution_cpu_idle_watts),
                       "dram": IdleFloor(config.attribution_dram_idle_watts)}
        self.sampler: Sampler | None = None
        self._models: dict[str, _Worker] | None = None  # component -> its model's worker
        # (ledger tracks, devices counted, their sources): see _sources()
        self._sources_cache: tuple[int, tuple[tuple[str, str], ...],
                                   dict[str, dict[str, str]]] | None = None
        self.previous: TreeObservation | None = None
        self.members: dict[int, Member] | None = None  # of the last observation with members
        self.last_at: float | None = None
        self._ok: tuple[int, Status] = (-1, Status(OK))  # read()'s status and its count
        # what Sampler._publish reads from an attribution
        self.series: tuple = ()
        self.gpu_split: tuple[tuple[str, str], ...] = ()

    def states(self) -> list[tuple[str, Status, float, int]]:
        return []

    def capture(self) -> TreeObservation | Exception:
        """In the cycle: the node's and the tree's CPU times (and the GPUs' processes)."""
        try:
            times = procfs.cpu_times(self.procfs, self.clock)  # shared with the CPU model
        except (OSError, ValueError) as exc:
            return exc
        tree = self.tree
        members = tree.take(times.forks)  # their CPU is summed when the cycle is counted
        if self.gpu_reader is None:
            return TreeObservation(time.monotonic(), times, members, _NO_GPUS, _NO_PIDS,
                                   tree.problem)
        gpus = self.gpu_reader.read()
        return TreeObservation(time.monotonic(), times, members, gpus,
                               frozenset(tree.members) | {tree.root} if gpus
                               else frozenset(),  # the pids matter only for a GPU's share
                               tree.problem)

    def read_captured(self, captured: object,
                      covered: frozenset[str] = frozenset()) -> TreeResult:
        if isinstance(captured, Exception):
            return TreeResult(Status(ERROR, f"{self.procfs}/stat: {captured}"))
        assert isinstance(captured, TreeObservation)
        if captured.problem:
            return TreeResult(Status(ERROR, captured.problem), observation=captured)
        count = len(captured.members) if captured.members is not None else len(self.tree.members)
        if count != self._ok[0]:  # the same count: the same status
            self._ok = (count, Status(OK, f"{count} processes in the run's tree"))
        return TreeResult(self._ok[1], observation=captured)

    def read(self, covered: frozenset[str] = frozenset()) -> TreeResult:
        return self.read_captured(self.capture(), covered)

    def close(self) -> None:
        if self.gpu_reader is not None:
            self.gpu_reader.close()

    def _model_idle(self, component: str) -> float | None:
        """The model's idle power where the model, not a counter, gave this sample's figure."""
        if self.sampler is None:
            return None
        if self._models is None:  # the first model of each component (the sampler's workers stay)
            self._models = {}
            for worker in self.sampler.workers:
                if worker.source.role == MODEL:
                    for name in worker.source.components:
                        self._models.setdefault(name, worker)
        model = self._models.get(component)
        if model is None or model.status.reason != OK:
            return None  # no model, superseded by a counter, or failing
        source = model.source
        if component == "cpu":
            power = getattr(source, "range", None)
            return getattr(power, "idle_watts", None)
        if component == "dram":
            installed = getattr(source, "installed_gib", None)
            per_gib = getattr(source, "watts_per_gib", None)
            if installed is not None and per_gib is not None:
                return installed * per_gib  # the DRAM model has no activity term
        return None

    def _sources(self, counted: list[Counted]) -> dict[str, dict[str, str]]:
        """component -> device -> its source label, for the devices counted. The ledger's
        tracks are only ever added to, so the answer for the same devices stands until a
        track is added (worked out again then)."""
        tracks = self.sampler.ledger.tracks if self.sampler is not None else {}
        devices = tuple([(c.component, c.device) for c in counted])
        cached = self._sources_cache
        if cached is not None and cached[0] == len(tracks) and cached[1] == devices:
            return cached[2]
        by_device = {(t.component, t.device): t.source for t in tracks.values() if t.component}
        out: dict[str, dict[str, str]] = {}
        for component, device in devices:
            out.setdefault(component, {})[device] = by_device.get((component, device), "")
        self._sources_cache = (len(tracks), devices, out)
        return out

    def account(self, result: SourceResult | None, counted: list[Counted],
                now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        seconds = now - self.last_at if self.last_at is not None else 0.0
        self.last_at = now
        obs = getattr(result, "observation", None)
        try:
            self._account(obs, counted, seconds, now)
        except Exception:  # a bug here must not stop the sampler; the sample is not charged
            log.exception("run attribution failed for one sample")
        if obs is not None:
            self.previous = obs
            if obs.members is not None:
                self.members = obs.members  # the tree as of the last sample counted

    def _account(self, obs: TreeObservation | None, counted: list[Counted],
                 seconds: float, now: float) -> None:
        measured, grams, gpu_energy = sum_by_component(counted)
        if not counted or seconds <= 0:
            return
        ratio = {c: grams[c] / j for c, j in measured.items() if j > 0}
        prev = self.previous
        run_cpu = 0.0
        busy = None
        if obs is not None and prev is not None:  # deltas need two observations
            if obs.members is not None:
                run_cpu = self.tree.cpu_between(self.members, obs.members)
            busy = max(0.0, obs.times.busy - prev.times.busy)
        run: dict[str, float] = {}
        idle_total = 0.0
        for component, energy in measured.items():
            if component in self.floors:
                floor = self.floors[component]
                model_idle = self._model_idle(component)
                if floor.configured is None and model_idle is not None:
                    idle_watts = model_idle
                else:
                    idle_watts = floor.watts(energy / seconds, now)
                if component == "dram" and floor.configured is None and model_idle is not None:
                    idle_total += energy  # the DRAM model has no activity term: all idle
                    run[component] = 0.0
                    continue
                parts, _ = split_by_cpu(energy, idle_watts * seconds, busy,
                                        {RUN: run_cpu} if run_cpu > 0 else {})
                run[component] = parts.get(RUN, 0.0)
                idle_total += parts.get(("idle", "", "", "", "", ""), 0.0)
        gpu_share: dict[str, float] = {}
        if gpu_energy and obs is not None:
            for device, energy in gpu_energy.items():
                shares = obs.gpus.get(device)
                weight = sum(w for pid, w in shares.shares if pid in obs.tree_pids) \
                    if shares is not None else 0.0
                gpu_share[device] = weight
                run["gpu"] = run.get("gpu", 0.0) + energy * weight
            self.gpu_split = tuple((d, s.basis) for d, s in sorted(obs.gpus.items()))
        embodied: dict[str, float] = {}
        sampler = self.sampler
        if sampler is not None and sampler.embodied is not None:
            embodied = embodied_share(sampler.embodied.rates(sampler.gpus), seconds, run,
                                      measured, gpu_share)
        if sampler is None or sampler.intensity is None:
            return
        intensity = sampler.intensity
        self.account_to.add(run, measured, idle_total, ratio, embodied, self._sources(counted),
                            intensity, sampler.pue, seconds)


class EmbeddedTracker:
    """Runs the sampler in its own thread of the tracked process until stop(). The event
    loop is started only for live intensity providers (their fetches are asynchronous);
    with the static figure (the default) there is none, and a sample wakes one thread."""

    mode = "embedded"
    method = ("embedded: the run's process tree; cpu and dram by its share of the node's busy "
              "CPU time above idle, gpu by its processes' NVML share")

    def __init__(self, config, root_pid: int, include_root: bool = True) -> None:
        from exporter.sources.registry import build_sources  # the daemon's own wiring

        self.config = config
        self.interval = config.sample_interval
        self.account = RunAccount()
        self.tree = ProcessTree(root_pid, config.path_procfs, include_root)
        sources = [s for s in build_sources(config, frozenset({MEASURED, MODEL}))
                   if s.role != MEASURED or self._present(s)]
        gpus = any(GPU_INFO in s.provides for s in sources)
        self.attribution = TreeAttribution(config, self.tree, self.account, gpus)
        intensity = static_intensity(config)
        # the watchdog wakes the tracked process too: it looks every 5 s at the most often (a
        # hung NVML call in a run is set aside within seconds; every wake-up is the run's cost)
        self.sampler = Sampler([*sources, self.attribution], config.sample_interval, intensity,
                               config.carbon_pue, takeover=config.sample_model_takeover,
                               watch_every=WATCH_EVERY)
        self.sampler.settle_every = SETTLE_EVERY
        self.sampler.peaks = None  # no scrape shows them; the record has the run's own peak
        self.sampler.embodied = Embodied(config)
        self.attribution.sampler = self.sampler
        self.chain = Chain.from_config(config, self._publish_grid)
        self._chain_thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._chain_stop: asyncio.Event | None = None
        self._chain_ready = threading.Event()

    @staticmethod
    def _present(source: Source) -> bool:
        """A run lasts minutes to days, not a hardware change: a measured source whose
        hardware is absent now is left out, and with it its read each sample."""
        try:
            status = source.read().status
        except Exception:  # read() should not raise; if it does, the sampler reports it
            return True
        if status.reason == ABSENT:
            source.close()
            return False
        return True

    def _publish_grid(self, state: GridState) -> None:
        # the samples before it were taken under the intensity in force until now: split
        # them (their accounts record the intensity) before it changes
        self.sampler.settle()
        self.sampler.intensity = state.intensity
        self.sampler.grid = state

    def _exclude_own_threads(self) -> None:
        """In the sampler thread, before the baseline: the tracker's own threads are
        overhead (bench/bench_runs.py), not the run's."""
        if self.tree.include_root:
            idents = [threading.get_ident()]  # the sampler thread: it reads every source
            chain = self._chain_thread
            if chain is not None and chain.ident is not None:
                idents.append(chain.ident)
            self.tree.exclude_threads(idents)
            if self.sampler.watchdog is not None:  # it notes its own CPU time after each look
                sampler = self.sampler
                self.tree.exclude_reported.append(lambda: sampler.watchdog_cpu)

    def _exclude_this_thread(self) -> None:
        if self.tree.include_root:
            self.tree.exclude_threads([threading.get_ident()])

    async def _run_chain(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._chain_stop = asyncio.Event()
        self.chain.start()
        self._chain_ready.set()
        try:
            await self._chain_stop.wait()
        finally:
            await self.chain.stop()

    def _chain_main(self) -> None:
        try:
            asyncio.run(self._run_chain())
        except BaseException:  # the static figure stays in force
            log.exception("intensity providers stopped")
        finally:
            self._chain_ready.set()

    def start(self) -> None:
        if self.chain.states:  # live providers: their own loop, in their own thread
            self._chain_thread = threading.Thread(target=self._chain_main,
                                                  name="carbon-run-providers", daemon=True)
            self._chain_thread.start()
            self._chain_ready.wait(timeout=10.0)
        else:
            self.chain.start()  # publishes the static figure; nothing to fetch
        # a sampler thread the watchdog starts after a stalled read is the tracker's too
        self.sampler.on_new_thread = self._exclude_this_thread
        self.sampler.start(before_first=self._exclude_own_threads)
        self.sampler.first_cycle.wait()  # the baseline: the run is measured from here
        if self.sampler.failed is not None:
            raise RuntimeError(f"embedded sampler failed to start: {self.sampler.failed}")

    def stop(self) -> RunAccount:
        """Take the final sample and stop; the account up to now."""
        self.sampler.halt(timeout=max(10.0, 3 * self.sampler.interval), final=True)
        self.sampler.close()
        if self._chain_thread is not None and self._loop is not None and self._chain_stop is not None:
            try:
                self._loop.call_soon_threadsafe(self._chain_stop.set)
            except RuntimeError:
                pass  # the loop already ended
            self._chain_thread.join(timeout=10.0)
        return self.account.snapshot()

    def statuses(self) -> list[tuple[str, str, str]]:
        return [(w.source.name, w.status.reason, w.status.detail) for w in self.sampler.workers]

    def intensity_state(self):
        return self.sampler.intensity
