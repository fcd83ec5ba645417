"""One blocking read per sample of everything the split needs, in the attribution worker.

Cost model (bench/bench_attribution.py measures it):
  - listdir(<procfs>) once;
  - <procfs>/<pid>/cgroup only for pids not seen before, plus a rotating 1/RECHECK_SAMPLES of
    the known ones (a process moved to another cgroup is noticed within RECHECK_SAMPLES);
  - <procfs>/<pid>/stat: for new pids when process names are needed (tagging rules on
    process names), for every pid only when per-process series are enabled;
  - one CPU counter file per workload cgroup, and <procfs>/stat once.
So no cgroup file is read more than once per sample, and the steady-state cost grows with
the number of workloads, not with the number of processes.
"""

from __future__ import annotations

import collections
import logging
import os
import time
from dataclasses import dataclass, field

from exporter.attribution.cgroups import (
    Identity,
    Layout,
    cgroup_of,
    detect_layout,
    parse_cgroup_path,
    parse_cpu_seconds,
    parse_pid_stat,
    read_file,
)
from exporter.attribution.gpu import GpuProcessReader, GpuShares
from exporter.procfs import cpu_times

log = logging.getLogger(__name__)

RECHECK_SAMPLES = 60


@dataclass(slots=True)
class Process:
    cgroup: str
    comm: str = ""
    cpu_seconds: float | None = None  # cumulative, per-process mode only


@dataclass(slots=True)
class Observation:
    """What one read saw. CPU values are cumulative seconds; the split takes deltas."""

    at: float
    node_busy: float | None = None
    usage: dict[str, float] = field(default_factory=dict)  # workload cgroup -> CPU seconds
    identities: dict[str, Identity] = field(default_factory=dict)
    comms: dict[str, set[str]] = field(default_factory=dict)  # workload cgroup -> names
    processes: dict[int, tuple[str, str, float]] = field(default_factory=dict)  # pid -> (root, comm, s)
    gpus: dict[str, GpuShares] = field(default_factory=dict)
    gpu_roots: dict[int, str | None] = field(default_factory=dict)  # GPU pid -> workload cgroup
    gpu_comms: dict[int, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    counter_reads: int = 0  # cgroup counter files read in this sample
    pid_reads: int = 0  # procfs per-pid files read in this sample


class WorkloadReader:
    def __init__(self, procfs: str, sysfs: str, *, per_process: bool = False,
                 want_comm: bool = False, gpus: GpuProcessReader | None = None) -> None:
        self.procfs = procfs
        self.cgroup_root = os.path.join(sysfs, "fs", "cgroup")
        self.per_process = per_process
        self.want_comm = want_comm or per_process
        self.gpus = gpus
        self.layout: Layout | None = None
        self.user_hz = float(os.sysconf("SC_CLK_TCK"))
        # keyed by the /proc entry name: set operations on names avoid 10,000 int() calls
        self.pids: dict[str, Process] = {}
        self.paths: collections.Counter[str] = collections.Counter()  # cgroup -> processes
        self.not_pids: set[str] = set()  # /proc entries that are not processes (self, sys, ...)
        self.identities: dict[str, Identity | None] = {}  # cgroup path -> workload
        self.recheck: collections.deque[str] = collections.deque()
        # pids to read again at the next sample: moved to another cgroup (exporter.runs)
        self.recheck_now: collections.deque[str] = collections.deque()

    def _set(self, pid: str, proc: Process | None) -> None:
        old = self.pids.pop(pid, None)
        if old is not None:
            self.paths[old.cgroup] -= 1
            if not self.paths[old.cgroup]:
                del self.paths[old.cgroup]
        if proc is not None:
            self.pids[pid] = proc
            self.paths[proc.cgroup] += 1

    def _read_pid(self, pid: str, obs: Observation) -> Process | None:
        base = f"{self.procfs}/{pid}/"
        try:
            text = read_file(base + "cgroup").decode("utf-8", "replace")
            obs.pid_reads += 1
            assert self.layout is not None  # read() detects the layout before any pid
            path = cgroup_of(text, self.layout)
            if path is None:
                return None
            proc = Process(path)
            if self.want_comm:
                proc.comm, proc.cpu_seconds = parse_pid_stat(read_file(base + "stat"), self.user_hz)
                obs.pid_reads += 1
        except (OSError, ValueError, IndexError):
            return None  # the process ended between listdir and the read
        return proc

    def _identity(self, path: str) -> Identity | None:
        try:
            return self.identities[path]
        except KeyError:
            identity = self.identities[path] = parse_cgroup_path(path)
            return identity

    def read(self) -> Observation:
        obs = Observation(at=time.monotonic())
        if self.layout is None:
            self.layout = detect_layout(self.cgroup_root)
            if self.layout is None:
                obs.problems.append(f"no cgroup hierarchy with CPU accounting under {self.cgroup_root}")
                return obs
            log.info("attribution: cgroup %s at %s", self.layout.version, self.layout.root)
        try:
            obs.node_busy = cpu_times(self.procfs).busy  # one parse per cycle, shared
        except (OSError, ValueError) as exc:
            obs.problems.append(f"{self.procfs}/stat: {exc}")
        try:
            current = set(os.listdir(self.procfs))
        except OSError as exc:
            obs.problems.append(f"{self.procfs}: {exc.strerror}")
            current = set()
        current -= self.not_pids
        self._track_pids(current, obs)
        self._read_workloads(obs)
        if self.gpus is not None:
            obs.gpus = self.gpus.read()
            if self.gpus.problem:
                obs.problems.append(self.gpus.problem)
            self._map_gpu_pids(obs)
        return obs

    def _track_pids(self, current: set[str], obs: Observation) -> None:
        pids = self.pids
        for pid in pids.keys() - current:
            self._set(pid, None)
        new = current - pids.keys()
        for pid in new:
            if not pid.isdigit():
                self.not_pids.add(pid)
                continue
            self._set(pid, self._read_pid(pid, obs))
        while self.recheck_now:
            pid = self.recheck_now.popleft()
            if pid in pids and pid not in new:
                self._set(pid, self._read_pid(pid, obs))
        if not self.recheck:
            self.recheck.extend(p for p in pids if p not in new)  # those were just read
        for _ in range(min(len(self.recheck), -(-len(pids) // RECHECK_SAMPLES))):
            pid = self.recheck.popleft()
            if pid in pids:
                self._set(pid, self._read_pid(pid, obs))
        if self.per_process:
            for pid, proc in list(pids.items()):
                try:
                    proc.comm, proc.cpu_seconds = parse_pid_stat(
                        read_file(f"{self.procfs}/{pid}/stat"), self.user_hz)
                    obs.pid_reads += 1
                except (OSError, ValueError, IndexError):
                    self._set(pid, None)

    def _read_workloads(self, obs: Observation) -> None:
        layout = self.layout
        assert layout is not None  # read() detects the layout first
        roots: dict[str, Identity] = {}
        used: dict[str, Identity | None] = {}
        for path in self.paths:  # distinct cgroups: the loop grows with workloads, not pids
            identity = used[path] = self._identity(path)
            if identity is not None:
                roots[identity.root] = identity
        self.identities = used  # forget paths no process uses any more
        if self.want_comm:  # opt-in: these walk every process
            for pid, proc in self.pids.items():
                identity = used[proc.cgroup]
                if identity is None:
                    continue
                if proc.comm:
                    obs.comms.setdefault(identity.root, set()).add(proc.comm)
                if self.per_process and proc.cpu_seconds is not None:
                    obs.processes[int(pid)] = (identity.root, proc.comm, proc.cpu_seconds)
        for root, identity in roots.items():
            try:
                data = read_file(layout.counter_path(root))
                obs.counter_reads += 1
                obs.usage[root] = parse_cpu_seconds(data, layout)
            except FileNotFoundError:
                continue  # removed since its processes were listed
            except (OSError, ValueError) as exc:
                obs.problems.append(f"{layout.counter_path(root)}: {exc}")
                continue
            obs.identities[root] = identity

    def _map_gpu_pids(self, obs: Observation) -> None:
        for gpu in obs.gpus.values():
            for pid, _weight in gpu.shares:
                if pid is None or pid in obs.gpu_roots:
                    continue
                proc = self.pids.get(str(pid))
                identity = self._identity(proc.cgroup) if proc is not None else None
                obs.gpu_roots[pid] = identity.root if identity is not None else None
                if proc is not None:
                    obs.gpu_comms[pid] = proc.comm
                if identity is not None and identity.root not in obs.identities:
                    obs.identities[identity.root] = identity

    def close(self) -> None:
        if self.gpus is not None:
            self.gpus.close()
