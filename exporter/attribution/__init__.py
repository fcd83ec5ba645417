"""Attribution: the node's measured energy split over pods, containers, systemd units, Slurm
jobs (and, opt-in, processes), with idle and unattributed energy kept apart.

The sampler runs Attribution.read() in its own worker thread, next to the power sources, so
the CPU-time counters are read at the same moments as the energy counters; account() then
splits what the ledger counted in that sample (in memory, no I/O) and keeps the counters
that scrapes render. Kubernetes names come from KubeMetadata, refreshed on the event loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from operator import sub
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from exporter.attribution import gpu as gpu_basis
from exporter.attribution.cgroups import Identity
from exporter.attribution.discovery import Observation, WorkloadReader
from exporter.attribution.gpu import GpuProcessReader
from exporter.attribution.kubelet import KubeMetadata, PodInfo
from exporter.attribution.split import (
    IDLE,
    OTHER,
    Book,
    IdleFloor,
    Key,
    split_by_cpu,
    split_by_shares,
)
from exporter.attribution.tagging import Tagger, load_rules
from exporter.confutil import ConfigError
from exporter.ledger import Counted, sum_by_component
from exporter.runs.scope import run_name
from exporter.sources import (
    ABSENT, ERROR, OK, OBSERVER, WORKLOADS, Source, SourceResult, Status,
)

if TYPE_CHECKING:
    from exporter.config import Config

log = logging.getLogger(__name__)

_NO_NAMES: dict[str, set[str]] = {}  # one object, so that "no names" compares as unchanged
CPU_SHARED = ("cpu", "dram")  # components split by CPU time (see README: DRAM by CPU share)


class WorkloadSeries(NamedTuple):  # a NamedTuple: built by the thousand every sample
    component: str
    kind: str
    namespace: str
    pod: str
    container: str
    unit: str
    workload_job: str
    joules: float
    grams: float


@dataclass(slots=True)
class AttributionResult(SourceResult):
    observation: Observation | None = None


@dataclass(slots=True)
class SampleSplit:
    """One sample's split, kept for tests and debugging: parts sum to measured."""

    measured: dict[str, float] = field(default_factory=dict)
    parts: dict[str, dict[Key, float]] = field(default_factory=dict)


def _short(container_id: str) -> str:
    return container_id[:12]


class Attribution(Source):
    name = "attribution"
    role = OBSERVER
    provides = frozenset({WORKLOADS})
    summary = (
        "CPU time per workload cgroup (pods, containers, systemd units, Slurm jobs; processes "
        "opt-in) and GPU processes through NVML: splits the measured energy of each sample "
        "(see Attribution).")

    @classmethod
    def from_config(cls, config: Config) -> Attribution:
        return cls(config)

    def __init__(self, config: Config, nvml: Any = None) -> None:
        self.config = config
        self.tagger: Tagger = load_rules(config.attribution_rules_file)
        self.reader = WorkloadReader(
            config.path_procfs, config.path_sysfs,
            per_process=config.attribution_processes,
            want_comm=self.tagger.wants_process_names,
            gpus=GpuProcessReader(nvml, config.path_procfs) if config.collector("nvml") else None,
            # counters held open never take the descriptors HTTP clients may need
            fd_reserve=int(config.web_max_connections) + 512)
        self.kube = KubeMetadata(config)
        self.book = Book(1, 1, 1.0)
        # "other": a platform meter's remainder (fans, disks, PSU losses), idle part learned
        self.floors = {"cpu": IdleFloor(), "dram": IdleFloor(), "other": IdleFloor()}
        # per GPU device: the lowest power seen while it ran no process (a GPU in a training
        # cluster may never be idle for an hour, so the CPU's rolling minimum would learn its
        # full-load draw as "idle"; a GPU's idle draw is stable, so it is kept once seen)
        self.gpu_idle_seen: dict[str, float] = {}
        self.previous: Observation | None = None
        self.last_at: float | None = None
        self.labels: dict[str, tuple[object, frozenset[str] | None, Key]] = {}
        self._keys_cache: tuple[Any, ...] | None = None
        self._order_keys: tuple[tuple[str, ...], dict[str, Key], list[Key]] | None = None
        self._series: tuple[WorkloadSeries, ...] | None = ()
        self.gpu_split: tuple[tuple[str, str], ...] = ()
        self.last_split = SampleSplit()
        self._ok: tuple[tuple[int, int], Status] = ((-1, -1), Status(OK))  # read()'s status
        # called with each sample's split before the book folds it (exporter.runs.service)
        self.listeners: list = []
        self.configure(config, initial=True)

    def configure(self, config, initial: bool = False) -> None:
        """Apply reloadable settings; a bad rules file on reload keeps the old rules."""
        if not initial:
            try:
                tagger = load_rules(config.attribution_rules_file)
            except ConfigError as exc:
                log.error("attribution: keeping the previous tagging rules: %s", exc)
                tagger = self.tagger
            if tagger.wants_process_names and not self.reader.want_comm:
                log.warning("attribution: rules on process names take effect after a restart")
            self.tagger = tagger
            self.labels = {}
        self.config = config
        self.book.max_workloads = int(config.attribution_max_workloads)
        self.book.max_processes = (int(config.attribution_max_processes)
                                   if config.attribution_processes else 0)
        self.book.grace = config.attribution_grace_period
        self.floors["cpu"].configured = config.attribution_cpu_idle_watts
        self.floors["dram"].configured = config.attribution_dram_idle_watts

    # --- worker thread ---------------------------------------------------------------------

    def read(self, covered: frozenset[str] = frozenset()) -> AttributionResult:
        obs = self.reader.read()
        if self.reader.layout is None:
            return AttributionResult(Status(ABSENT, "; ".join(obs.problems)), observation=obs)
        if obs.problems:
            return AttributionResult(Status(ERROR, "; ".join(obs.problems)), observation=obs)
        counts = (len(obs.usage), len(self.reader.pids))
        if counts != self._ok[0]:  # the same counts: the same status, not a new string
            self._ok = (counts, Status(OK, f"{counts[0]} workloads, {counts[1]} processes, "
                                           f"cgroup {self.reader.layout.version}"))
        return AttributionResult(self._ok[1], observation=obs)

    def close(self) -> None:
        self.reader.close()

    # --- event loop, after the ledger --------------------------------------------------------

    def states(self) -> list[tuple[str, Status, float, int]]:
        """Extra collector states: (name, status, duration sum, duration count)."""
        kube = self.kube
        return [("kubernetes", kube.status, kube.duration_sum, kube.duration_count)]

    def _values(self, identity: Identity, pods: Mapping[str, PodInfo]) -> dict:
        values = {"kind": identity.kind, "unit": identity.unit,
                  "unit_name": identity.unit.rsplit(".", 1)[0] if identity.unit else "",
                  "container": "", "container_id": identity.container_id, "namespace": "",
                  "pod": "", "pod_uid": identity.pod_uid, "qos": identity.qos,
                  "slurm_job": identity.slurm_job, "process": "", "labels": {}, "annotations": {}}
        if identity.pod_uid:
            pod = pods.get(identity.pod_uid)
            if pod is None:
                self.kube.want(identity.pod_uid)
                # not named yet: the UID stands in until the metadata arrives
                values.update(pod=identity.pod_uid,
                              container=_short(identity.container_id))
            else:
                values.update(pod=pod.name, namespace=pod.namespace, labels=pod.labels,
                              annotations=pod.annotations,
                              container=pod.containers.get(identity.container_id,
                                                           _short(identity.container_id)))
        elif identity.container_id:
            values["container"] = _short(identity.container_id)
        return values

    def _key(self, identity: Identity, comms: set[str] | None, pods: Mapping[str, PodInfo]) -> Key:
        """pods: the one metadata snapshot the key is named from and cached against (the event
        loop may replace kube.pods meanwhile: a key cached against the newer snapshot but named
        from the older would keep a pod unnamed until the next refresh)."""
        cached = self.labels.get(identity.root)
        comm_key = frozenset(comms) if comms and self.tagger.wants_process_names else None
        if cached is not None and cached[0] is pods and cached[1] == comm_key:
            return cached[2]
        values = self._values(identity, pods)
        # a run's scope carries its name (exporter.runs.scope): that is its workload_job
        tag = run_name(identity.unit) if identity.kind == "unit" else ""
        tag = tag or self.tagger.tag(values, comms or ())
        if not tag and identity.kind == "job":
            tag = f"slurm-{identity.slurm_job}"
        key = (identity.kind, values["namespace"], values["pod"], values["container"],
               values["unit"], tag)
        self.labels[identity.root] = (pods, comm_key, key)
        return key

    def _process_key(self, identity: Identity | None, pid: int, comm: str) -> Key:
        values = self._values(identity, self.kube.pods) if identity else {
            "kind": "", "unit": "", "unit_name": "", "container": "", "container_id": "",
            "namespace": "", "pod": "", "pod_uid": "", "qos": "", "slurm_job": "",
            "labels": {}, "annotations": {}}
        values = dict(values, process=comm, pid=pid)
        tag = self.tagger.tag(values, (comm,)) or f"{comm}/{pid}"
        return ("process", str(values["namespace"]), str(values["pod"]),
                str(values["container"]), str(values["unit"]), tag)

    def _cpu_deltas(self, obs: Observation, keys: dict[str, Key],
                    unique: bool) -> dict[Key, float]:
        """CPU seconds per workload since the previous read, with nested workloads (a Slurm
        job inside slurmstepd's scope, containers inside a pod) taken out of their parent.
        unique: no two workload cgroups share a key (then no sums are needed)."""
        previous = self.previous
        if (unique and not obs.nested and obs.order is not None and previous is not None
                and previous.order is obs.order):  # the usual case: same workloads, all read
            cached = self._order_keys
            if cached is None or cached[0] is not obs.order or cached[1] is not keys:
                cached = self._order_keys = (obs.order, keys, [keys[root] for root in obs.order])
            return {key: delta for key, delta in zip(cached[2], map(sub, obs.seconds, previous.seconds))
                    if delta > 0}
        before = previous.usage if previous else {}
        get = before.get
        if unique and not obs.nested:  # in one pass
            return {keys[root]: delta for root, seconds in obs.usage.items()
                    if (old := get(root)) is not None and (delta := seconds - old) > 0}
        raw = {root: seconds - old for root, seconds in obs.usage.items()
               if (old := get(root)) is not None}
        own = raw
        if obs.nested:
            own = dict(raw)
            for root, enclosing in obs.nested.items():
                seconds = raw.get(root)
                if seconds is None or seconds <= 0:
                    continue
                for parent in enclosing:  # the nearest one read in both samples
                    if parent in raw:
                        own[parent] -= seconds
                        break
        if unique:
            return {keys[root]: seconds for root, seconds in own.items() if seconds > 0}
        out: dict[Key, float] = {}
        for root, seconds in own.items():
            if seconds > 0:
                key = keys[root]
                out[key] = out.get(key, 0.0) + seconds
        return out

    def account(self, result: SourceResult | None, counted: list[Counted],
                now: float | None = None) -> SampleSplit:
        """Split one sample's counted energy; result None: the read did not finish in time.
        Never raises: a failure credits the sample to idle/other rather than losing it."""
        now = time.monotonic() if now is None else now
        seconds = now - self.last_at if self.last_at is not None else 0.0
        self.last_at = now
        # a read that raised comes back as a plain SourceResult, without an observation
        obs = getattr(result, "observation", None)
        if obs is not None and self.reader.layout is None:
            obs = None
        try:
            return self._account(obs, counted, now, seconds)
        except Exception:
            log.exception("attribution: split failed; this sample goes to kind=\"other\"")
            self.previous = None  # start the deltas over
            self.labels = {}
            return self._account(None, counted, now, seconds)

    def _account(self, obs: Observation | None, counted: list[Counted], now: float,
                 seconds: float) -> SampleSplit:

        measured, grams, gpu_energy = sum_by_component(counted)
        ratio = {c: grams[c] / j for c, j in measured.items() if j > 0}

        identities = obs.identities if obs else {}
        keys, live, unique = self._keys(obs, identities)
        previous = self.previous
        workload_cpu: dict[Key, float] = {}
        busy = None
        proc_cpu: dict[Key, tuple[Key, float]] = {}
        if obs is not None and previous is not None:  # deltas need two observations
            if keys:  # none without a workload cgroup (then there is no counter either)
                workload_cpu = self._cpu_deltas(obs, keys, unique)
            if obs.node_busy is not None and previous.node_busy is not None:
                busy = max(0.0, obs.node_busy - previous.node_busy)
            if obs.processes:
                proc_cpu = self._process_cpu(obs, previous, keys, identities)

        parts: dict[str, dict[Key, float]] = {}
        processes: dict[str, dict[Key, tuple[Key, float]]] = {}
        for component, energy in measured.items():
            if component in CPU_SHARED:
                floor = self.floors[component]
                idle = floor.watts(energy / seconds, now) * seconds if seconds > 0 else energy
                parts[component], per_second = split_by_cpu(energy, idle, busy, workload_cpu)
                if proc_cpu and per_second > 0:
                    processes[component] = {k: (parent, per_second * s)
                                            for k, (parent, s) in proc_cpu.items()}
            elif component == "other" and seconds > 0:
                # no CPU time says who caused it: its idle floor is idle, the rest other
                idle = min(energy, self.floors["other"].watts(energy / seconds, now) * seconds)
                parts[component] = {IDLE: idle, OTHER: energy - idle}
            elif component != "gpu":
                parts[component] = {OTHER: energy}
        if gpu_energy:
            shared = len(keys)
            keys = dict(keys)  # the GPU split may add keys: the cached ones stay as they are
            parts["gpu"], processes["gpu"] = self._split_gpus(obs, gpu_energy, keys, identities,
                                                              now, seconds)
            if len(keys) != shared:
                live = frozenset(keys.values())

        for listener in self.listeners:
            try:
                listener(parts, ratio, keys, measured, seconds, obs.at if obs else None)
            except Exception:  # a listener must not cost the split
                log.exception("attribution: a split listener failed")
        self.book.record(parts, ratio, processes, live, now)
        if obs is not None:
            self.previous = obs
        self._series = None  # built when asked for (a scrape), not at every sample
        self.last_split = SampleSplit(measured, parts)
        return self.last_split

    def _keys(self, obs: Observation | None, identities: Mapping[str, Identity]
              ) -> tuple[dict[str, Key], frozenset[Key], bool]:
        """Label keys per workload cgroup, the set of them, and whether no two cgroups share
        one; computed again only when the workloads, their names, pod metadata or the rules
        changed (the reader hands over the same dicts while they stay the same)."""
        comms = obs.comms if obs and obs.comms else _NO_NAMES
        pods = self.kube.pods  # read once: the event loop replaces it whole on a refresh
        cached = self._keys_cache
        if (cached is not None and cached[0] is identities and cached[1] is comms
                and cached[2] is pods and cached[3] is self.labels):
            return cached[4], cached[5], cached[6]
        if len(self.labels) > 2 * len(identities) + 100:  # workloads come and go: forget old ones
            self.labels = {r: v for r, v in self.labels.items() if r in identities}
        keys = {root: self._key(identity, comms.get(root), pods)
                for root, identity in identities.items()}
        live = frozenset(keys.values())
        self._keys_cache = (identities, comms, pods, self.labels, keys, live,
                            len(live) == len(keys))
        return keys, live, len(live) == len(keys)

    @property
    def series(self) -> tuple[WorkloadSeries, ...]:
        """The book's totals as series; the book changes only in _account, which drops them."""
        if self._series is None:
            self._series = tuple(
                WorkloadSeries(component, *key, total.joules, total.grams)
                for component, by_key in self.book.by_component.items()
                for key, total in by_key.items())
        return self._series

    def _process_cpu(self, obs: Observation, previous: Observation, keys: dict[str, Key],
                     identities: Mapping[str, Identity]) -> dict[Key, tuple[Key, float]]:
        before = previous.processes
        out: dict[Key, tuple[Key, float]] = {}
        for pid, (root, comm, cpu) in obs.processes.items():
            old = before.get(pid)
            if old is None or old[0] != root or root not in keys:
                continue
            delta = cpu - old[2]
            if delta <= 0:
                continue
            key = self._process_key(identities.get(root), pid, comm)
            parent, total = out.get(key, (keys[root], 0.0))
            out[key] = (parent, total + delta)
        return out

    def _split_gpus(self, obs: Observation | None, gpu_energy: dict[str, float],
                    keys: dict[str, Key], identities: Mapping[str, Identity], now: float,
                    seconds: float) -> tuple[dict[Key, float], dict[Key, tuple[Key, float]]]:
        parts: dict[Key, float] = {}
        processes: dict[Key, tuple[Key, float]] = {}
        basis = []
        for device, measured in sorted(gpu_energy.items()):
            shares = obs.gpus.get(device) if obs is not None else None
            if obs is None or shares is None:
                basis.append((device, gpu_basis.UNAVAILABLE))
                parts[OTHER] = parts.get(OTHER, 0.0) + measured
                continue
            basis.append((device, shares.basis))
            if shares.basis == gpu_basis.UNAVAILABLE:
                parts[OTHER] = parts.get(OTHER, 0.0) + measured
                continue
            # an idle floor like the CPU's: a process holding an idle context is charged for
            # what the GPU draws above idle, not for the idle draw itself
            if shares.basis == gpu_basis.IDLE and seconds > 0:
                seen = self.gpu_idle_seen.get(device)
                watts = measured / seconds
                self.gpu_idle_seen[device] = watts if seen is None else min(seen, watts)
            floor = self.config.attribution_gpu_idle_watts
            if floor is None:
                floor = self.gpu_idle_seen.get(device, 0.0)  # never seen idle: no floor
            idle = min(measured, floor * seconds) if seconds > 0 else measured
            parts[IDLE] = parts.get(IDLE, 0.0) + idle
            energy = measured - idle
            weighted: list[tuple[Key | None, float]] = []
            for pid, weight in shares.shares:
                if pid is None:
                    weighted.append((None, weight))  # an unused MIG instance: idle
                    continue
                root = obs.gpu_roots.get(pid)
                key = keys.get(root) if root else None
                if key is None and root is not None and root in identities:
                    key = keys[root] = self._key(identities[root], None, self.kube.pods)
                weighted.append((key if key is not None else OTHER, weight))
                if key is not None and self.config.attribution_processes:
                    proc_key = self._process_key(identities.get(root or ""), pid,
                                                 obs.gpu_comms.get(pid, "") or "?")
                    parent, total = processes.get(proc_key, (key, 0.0))
                    processes[proc_key] = (parent, total + energy * weight)
            for key, joules in split_by_shares(energy, weighted).items():
                parts[key] = parts.get(key, 0.0) + joules
        self.gpu_split = tuple(basis)
        parts.setdefault(IDLE, 0.0)
        return parts, processes
