"""One blocking read per sample of everything the split needs, in the sampler's thread.

Cost model (bench/bench_attribution.py measures it), per sample:
  - <procfs>/stat once (shared with the CPU model: one read per cycle; its busy time is
    parsed when the sample is split, out of the cold cycle). Its "processes" line counts
    forks since boot (proc(5)); while it has not moved since the last listing no process
    can have appeared, so listdir(<procfs>), the only step that grows with the number
    of processes, is skipped. It runs when the count moved and so did <procfs>'s link count
    (a constant plus the number of processes: threads do not move it), or, where only the
    forks moved, SAME_COUNT_LISTING_SAMPLES after the last listing, doubled after each such
    listing that found no process up to MAX_SAME_COUNT_LISTING_SAMPLES (then only the names that
    came or went since the previous listing are looked at), and in full every FULL_LISTING_SAMPLES
    samples, which also forgets processes that ended without a fork after them (an ended
    process only keeps its cgroup "in use" a little longer: its counter stops moving). A pid
    reused between two listings keeps its old cgroup until the rotation below reads it;
  - <procfs>/<pid>/cgroup for pids not seen before, once more SECOND_LOOK_SAMPLES samples
    later (container runtimes fork, then move the child into the container's cgroup) unless
    it was first seen in a container's or a Slurm job's cgroup (SETTLED_KINDS) and no process
    names are wanted, for
    pids in recheck_now (exporter.runs moves a pid and says so), and for a rotating
    1/RECHECK_SAMPLES of the known pids (any other move is noticed within RECHECK_SAMPLES);
  - <procfs>/<pid>/stat: for new pids when process names are needed (tagging rules on
    process names), for every pid only when per-process series are enabled;
  - one CPU counter per workload cgroup (cpu.stat on v2, cpuacct.usage on v1), read with
    pread() at offset 0 on a descriptor kept open while the workload lives (up to a cap of
    descriptors, beyond which a counter is opened, read and closed each sample).
So no cgroup file is read more than once per sample, and in steady state the cost grows
with the number of workloads (and the rotation's 1/RECHECK_SAMPLES of the processes).

Why a held descriptor sees fresh values: cgroup files are kernfs seq_files, and procfs
files seq_files too. seq_open() notes that "seq_files support lseek() and pread()", and
seq_read_iter() regenerates the content when a read starts at offset 0 ("if request is to
read from zero offset, reset iterator to first record"; sysfs has refilled on a read from
offset 0 since "sysfs: refill attribute buffer when reading from offset 0", 2008). After the
cgroup is removed, kernfs_seq_start() fails such a read with ENODEV (kernfs_get_active()
fails on a removed node), so a failed or empty read closes the descriptor and reopens the
path once: a cgroup recreated under the same name (a restarted unit) is read afresh, a gone
one has its processes read again (they ended, or moved before the rmdir).
"""

from __future__ import annotations

import collections
import logging
import os
import re
import resource
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from itertools import repeat
from operator import truediv

from exporter.attribution.cgroups import (
    V2,
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
from exporter.procfs import CpuTimes, ProcessCount, cpu_times

log = logging.getLogger(__name__)

RECHECK_SAMPLES = 600  # every known pid's cgroup is read again once per this many samples
SECOND_LOOK_SAMPLES = 2  # a new pid's cgroup is read once more this many samples later
# A process first seen in one of these has been moved in already: a runtime moves the child
# (runc init) into the container's cgroup before it runs the container's program, and nothing
# moves it out; slurmstepd's moves stay within the job, whose cgroup is the workload's. So
# it has no second look (unless its name is wanted: a fork takes its new name when it execs).
# A process first seen elsewhere (a runtime's or slurmstepd's service, a conmon scope, a
# session) may be on its way into one, and is read again.
SETTLED_KINDS = frozenset({"container", "job"})
FULL_LISTING_SAMPLES = 60  # listdir(<procfs>) at least this often, forks or not
MAX_HELD_FDS = 65536  # counter descriptors kept open at most
# descriptors left to the rest of the process: web.max_connections (the default 1,024), their
# accept backlog, sources, logs and sockets; Attribution passes its configured figure
FD_RESERVE = 1024 + 512
_COUNTER_BYTES = 32  # "usage_usec <20 digits>\n" (v2) or "<20 digits>\n" (v1) fits
_V2_VALUE = re.compile(rb"usage_usec (\d+)\n")  # cpu.stat's first line
_V1_VALUE = re.compile(rb"(\d+)\n")  # cpuacct.usage
_EMPTY: Mapping = MappingProxyType({})  # Observation's fields until assigned


@dataclass(slots=True)
class Process:
    cgroup: str
    comm: str = ""
    cpu_seconds: float | None = None  # cumulative, per-process mode only


class Observation:
    """What one read saw. CPU values are cumulative seconds; the split takes deltas.

    Made every sample, cold: only `at` is set at first; every other field is the class's
    empty default until the reader assigns it a value of its own (never filled in place).
    identities (and comms) are the reader's own dicts while the workloads (and their
    processes' names) stay the same: a reader of an Observation must not change them."""

    at: float
    times: CpuTimes | None = None  # /proc/stat this sample (node_busy parsed when asked)
    usage: Mapping[str, float] = _EMPTY  # workload cgroup -> CPU seconds
    identities: Mapping[str, Identity] = _EMPTY
    # workload cgroup -> the workload cgroups enclosing it, nearest first (only those with any)
    nested: Mapping[str, tuple[str, ...]] = _EMPTY
    comms: Mapping[str, set[str]] = _EMPTY  # workload cgroup -> names
    processes: Mapping[int, tuple[str, str, float]] = _EMPTY  # pid -> (root, comm, s)
    gpus: Mapping[str, GpuShares] = _EMPTY
    gpu_roots: Mapping[int, str | None] = _EMPTY  # GPU pid -> workload cgroup
    gpu_comms: Mapping[int, str] = _EMPTY
    problems: tuple[str, ...] = ()
    counter_reads: int = 0  # cgroup counter files read in this sample
    pid_reads: int = 0  # procfs per-pid files read in this sample
    listed: bool = False  # listdir(<procfs>) ran in this sample
    # usage again as a list in the reader's order of workloads, when every counter was read;
    # the same tuple object while that order stays, so deltas can pair lists instead of keys
    order: tuple[str, ...] | None = None
    seconds: Sequence[float] = ()

    def __init__(self, at: float) -> None:
        self.at = at

    @property
    def node_busy(self) -> float | None:
        """The node's busy CPU seconds; None where /proc/stat could not be read or parsed."""
        try:
            return self.times.busy if self.times is not None else None
        except ValueError:
            return None


def fd_budget(raise_limit: bool = False, reserve: int = FD_RESERVE) -> int:
    """How many counter descriptors attribution may hold: the soft RLIMIT_NOFILE less
    `reserve` (what the HTTP server may hold at most, and the rest of the process), at most
    MAX_HELD_FDS. raise_limit: first raise the soft limit towards the hard one (as Go's
    runtime does at start)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_HELD_FDS
    want = MAX_HELD_FDS + reserve
    if raise_limit and soft < want and (hard == resource.RLIM_INFINITY or hard > soft):
        raised = want if hard == resource.RLIM_INFINITY else min(hard, want)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            log.info("attribution: open-file limit raised from %d to %d", soft, raised)
            soft = raised
        except (ValueError, OSError) as exc:
            log.info("attribution: cannot raise the open-file limit: %s", exc)
    return max(0, min(MAX_HELD_FDS, soft - reserve))


class WorkloadReader:
    def __init__(self, procfs: str, sysfs: str, *, per_process: bool = False,
                 want_comm: bool = False, gpus: GpuProcessReader | None = None,
                 max_held_fds: int | None = None, fd_reserve: int = FD_RESERVE) -> None:
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
        self.second_look: collections.deque[tuple[int, str]] = collections.deque()
        self.recheck_due = 0.0  # pids of the rotation owed (a fraction carries over)
        self.samples = 0
        self.forks = -1  # /proc/stat's forks count at the last listing
        self.listing: set[str] = set()  # the names in the last listing of <procfs>
        self.full_at = 0  # the sample of the last full listing (0: none yet)
        self.listed_at = 0  # the sample of the last listing
        self.process_count = ProcessCount(procfs)
        # the workloads: replaced (never changed in place) when the cgroups in use change
        self.workloads: dict[str, Identity] = {}
        self.nested: dict[str, tuple[str, ...]] = {}
        self.paths_changed = True
        self.comms: dict[str, set[str]] = {}
        self.comms_changed = True
        self.counters: dict[str, int] = {}  # workload cgroup -> held counter fd, -1: none held
        self.order: tuple[str, ...] | None = None  # the counters' keys while they stay
        self.held = 0
        # None: derived from RLIMIT_NOFILE, raised once when more workloads than that appear
        self.fd_reserve = fd_reserve
        self.max_held = fd_budget(reserve=fd_reserve) if max_held_fds is None else max_held_fds
        self.may_raise_limit = max_held_fds is None

    # --- processes ---------------------------------------------------------------------------

    def _set(self, pid: str, proc: Process | None) -> None:
        old = self.pids.get(pid)
        if old is not None and proc is not None and old.cgroup == proc.cgroup:
            self.pids[pid] = proc  # re-read, not moved
            if old.comm != proc.comm:
                self.comms_changed = True
            return
        self.comms_changed = True
        if old is not None:
            del self.pids[pid]
            left = self.paths[old.cgroup] - 1
            if left:
                self.paths[old.cgroup] = left
            else:
                del self.paths[old.cgroup]
                self.paths_changed = True
        if proc is not None:
            self.pids[pid] = proc
            if proc.cgroup not in self.paths:
                self.paths_changed = True
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

    def _settled(self, path: str) -> bool:
        """Whether a process in cgroup `path` stays in its workload (see SETTLED_KINDS)."""
        identity = self._identity(path)
        return identity is not None and identity.kind in SETTLED_KINDS

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
                obs.problems += (f"no cgroup hierarchy with CPU accounting under {self.cgroup_root}",)
                return obs
            log.info("attribution: cgroup %s at %s", self.layout.version, self.layout.root)
        self.samples += 1
        forks = -1
        try:
            times = obs.times = cpu_times(self.procfs)  # one read per cycle, shared
            forks = times.forks
        except (OSError, ValueError) as exc:
            obs.problems += (f"{self.procfs}/stat: {exc}",)
        # forks are read before the listing: a process made after it moves the count on.
        # Where only the forks moved (threads), a listing is due `quiet_wait` samples after the
        # last one (SAME_COUNT_LISTING_SAMPLES, doubled by each listing that found no process)
        full = not self.full_at or self.samples - self.full_at >= FULL_LISTING_SAMPLES
        count = self.process_count
        if full or forks < 0 or (forks != self.forks and (
                count.moved() or self.samples - self.listed_at >= count.quiet_wait)):
            if self._list(obs, full):
                self.forks = forks
        # the usual sample has no pid of the rotation due and no workload cgroup to read:
        # then neither is called (after a second of sleep each call costs microseconds)
        self.recheck_due += len(self.pids) / RECHECK_SAMPLES  # whole set once per RECHECK_SAMPLES
        if (self.recheck_due >= 1.0 or self.recheck_now or not self.recheck
                or (self.second_look and self.second_look[0][0] <= self.samples)):
            self._recheck(obs)
        if self.per_process:
            for pid, proc in list(self.pids.items()):
                try:
                    proc.comm, proc.cpu_seconds = parse_pid_stat(
                        read_file(f"{self.procfs}/{pid}/stat"), self.user_hz)
                    obs.pid_reads += 1
                except (OSError, ValueError, IndexError):
                    self._set(pid, None)
        if self.paths_changed:
            self._refresh_workloads()
        if self.want_comm:
            self._names(obs)
        if self.counters or self.workloads:
            self._read_counters(obs)
        else:  # no workload cgroup: nothing to read
            if self.order is None:
                self.order = ()
            obs.order, obs.identities, obs.nested = self.order, self.workloads, self.nested
        gpus = self.gpus
        # NVML down and not due for another try (a node without the driver): nothing to ask
        if gpus is not None and (gpus.session.initialised
                                 or gpus.session.clock() >= gpus.session.next_init):
            obs.gpus = gpus.read()
            if gpus.problem:
                obs.problems += (gpus.problem,)
            if obs.gpus:
                self._map_gpu_pids(obs)
        return obs

    def _list(self, obs: Observation, full: bool) -> bool:
        """List <procfs>: against the previous listing (only the names that came or went are
        looked at), or in full (every name against the known pids: processes whose read
        failed are tried again)."""
        try:
            self.process_count.moved()  # the count the listing saw (a process after it moves it)
            current = set(os.listdir(self.procfs))
        except OSError as exc:
            obs.problems += (f"{self.procfs}: {exc.strerror}",)
            return False  # keep what is known rather than forget every process
        obs.listed = True
        self.listed_at = self.samples
        pids = self.pids
        first = not self.full_at
        if full:
            self.full_at = self.samples
            went = pids.keys() - current
            came = current - pids.keys() - self.not_pids
        else:
            changed = current ^ self.listing
            went = changed - current
            came = changed & current
        self.listing = current
        for pid in went:
            if pid in pids:
                self._set(pid, None)
        due = self.samples + SECOND_LOOK_SAMPLES
        found = False
        for pid in came:
            if pid in pids or pid in self.not_pids:
                continue
            if not pid.isdigit():
                self.not_pids.add(pid)
                continue
            found = True
            proc = self._read_pid(pid, obs)
            self._set(pid, proc)
            if not first and proc is not None and (
                    self.want_comm or not self._settled(proc.cgroup)):
                self.second_look.append((due, pid))
        self.process_count.listing_found(found)
        return True

    def _recheck(self, obs: Observation) -> None:
        """Pids read again: those moved (recheck_now), new ones' second look, and the
        rotation's share of this sample (recheck_due, added up by read())."""
        pids = self.pids
        second_look = self.second_look
        while self.recheck_now:
            pid = self.recheck_now.popleft()
            if pid in pids:
                self._set(pid, self._read_pid(pid, obs))
        while second_look and second_look[0][0] <= self.samples:
            pid = second_look.popleft()[1]
            if pid in pids:
                self._set(pid, self._read_pid(pid, obs))
        recheck = self.recheck
        count = min(len(recheck), int(self.recheck_due))
        self.recheck_due -= count
        for _ in range(count):
            pid = recheck.popleft()
            if pid in pids:
                self._set(pid, self._read_pid(pid, obs))
        if not recheck:  # the next round starts at the next sample
            recheck.extend(pids)

    # --- workloads ---------------------------------------------------------------------------

    def _refresh_workloads(self) -> None:
        """The workloads of the cgroups in use; runs only when that set of cgroups changed."""
        self.paths_changed = False
        used: dict[str, Identity | None] = {}
        roots: dict[str, Identity] = {}
        for path in self.paths:  # distinct cgroups: the loop grows with workloads, not pids
            identity = used[path] = self._identity(path)
            if identity is not None:
                roots[identity.root] = identity
        self.identities = used  # forget paths no process uses any more
        if roots == self.workloads:
            return
        for root in self.workloads.keys() - roots.keys():
            self._close(root)
        for root in roots.keys() - self.counters.keys():
            self.counters[root] = self._open(root)
        self.order = None
        self.workloads = roots
        nested: dict[str, tuple[str, ...]] = {}
        for root in roots:
            chain = []
            parent = root.rsplit("/", 1)[0]
            while parent:
                if parent in roots:
                    chain.append(parent)
                parent = parent.rsplit("/", 1)[0]
            if chain:
                nested[root] = tuple(chain)
        self.nested = nested

    def _names(self, obs: Observation) -> None:
        """Process names per workload (opt-in: this walks every process, when one changed)."""
        if self.comms_changed or self.per_process:
            self.comms_changed = False
            comms: dict[str, set[str]] = {}
            processes: dict[int, tuple[str, str, float]] = {}
            used = self.identities
            for pid, proc in self.pids.items():
                identity = used.get(proc.cgroup)
                if identity is None:
                    continue
                if proc.comm:
                    comms.setdefault(identity.root, set()).add(proc.comm)
                if self.per_process and proc.cpu_seconds is not None:
                    processes[int(pid)] = (identity.root, proc.comm, proc.cpu_seconds)
            if self.per_process:
                obs.processes = processes
            if comms != self.comms:
                self.comms = comms
        obs.comms = self.comms

    def _open(self, root: str) -> int:
        if self.held >= self.max_held and self.may_raise_limit:
            self.may_raise_limit = False
            self.max_held = fd_budget(raise_limit=True, reserve=self.fd_reserve)
        if self.held >= self.max_held:
            return -1
        assert self.layout is not None
        try:
            fd = os.open(self.layout.counter_path(root), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return -1  # read (and reported) like an unheld counter
        self.held += 1
        return fd

    def _close(self, root: str) -> None:
        fd = self.counters.pop(root, -1)
        self.order = None
        if fd >= 0:
            os.close(fd)
            self.held -= 1

    def _read_counters(self, obs: Observation) -> None:
        """The workload cgroups' CPU counters (read() calls it only where there are any)."""
        layout = self.layout
        assert layout is not None  # read() detects the layout first
        v2 = layout.version == V2
        counters = self.counters
        usage: dict[str, float] = {}
        obs.usage = usage
        values: list[bytes] = []
        if self.held == len(counters):  # all held: one pread each, then one parse of all
            try:  # map() over builtins: no Python-level step per counter
                chunks = list(map(os.pread, counters.values(), repeat(_COUNTER_BYTES), repeat(0)))
                obs.counter_reads += len(chunks)
                # a kernel counter file holds its value once: one match per file, in order
                values = (_V2_VALUE if v2 else _V1_VALUE).findall(b"".join(chunks))
            except OSError:  # a removed cgroup (ENODEV): read them one by one below
                pass
        divisor = 1e6 if v2 else 1e9
        if len(values) == len(counters):
            seconds = list(map(truediv, map(int, values), repeat(divisor)))
            usage.update(zip(counters, seconds))
            if self.order is None:
                self.order = tuple(counters)
            obs.order, obs.seconds = self.order, seconds
            failed = []
        else:
            failed = self._read_one_by_one(obs, usage, v2, divisor)
        gone = [root for root in failed if not self._reread(root, obs, usage)]
        if gone:
            self._forget(gone, obs)
        if len(usage) == len(self.workloads):
            obs.identities, obs.nested = self.workloads, self.nested
        else:
            obs.identities = {r: i for r, i in self.workloads.items() if r in usage}
            obs.nested = {r: c for r, c in self.nested.items() if r in usage}

    def _read_one_by_one(self, obs: Observation, usage: dict[str, float], v2: bool,
                         divisor: float) -> list[str]:
        """Counters read and parsed each on its own, into usage; returns those that failed."""
        assert self.layout is not None
        pattern = _V2_VALUE if v2 else _V1_VALUE
        failed = []
        obs.counter_reads += len(self.counters)
        for root, fd in self.counters.items():
            try:
                if fd >= 0:
                    data = os.pread(fd, _COUNTER_BYTES, 0)
                else:
                    data = read_file(self.layout.counter_path(root))[:_COUNTER_BYTES]
            except OSError:
                data = b""
            match = pattern.match(data)
            if match:
                usage[root] = int(match.group(1)) / divisor
            else:
                failed.append(root)
        return failed

    def _reread(self, root: str, obs: Observation, usage: dict[str, float]) -> bool:
        """A counter whose read failed or came back empty or unexpected: reopen its path once
        (a removed cgroup fails reads on a held fd). False when the cgroup is gone."""
        assert self.layout is not None
        self._close(root)
        self.counters[root] = -1
        path = self.layout.counter_path(root)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        except OSError as exc:
            obs.problems += (f"{path}: {exc.strerror or exc}",)
            return True
        keep = False
        try:
            data = os.read(fd, 4096)
            obs.counter_reads += 1
            if not data:  # never from the kernel; a fixture's cgroup being removed
                return False
            usage[root] = parse_cpu_seconds(data, self.layout)
            keep = self.held < self.max_held and data.startswith(
                b"usage_usec " if self.layout.version == V2 else b"")
        except (OSError, ValueError) as exc:
            obs.problems += (f"{path}: {exc}",)
        finally:
            if keep:
                self.counters[root] = fd
                self.held += 1
            else:
                os.close(fd)
        return True

    def _forget(self, gone: list[str], obs: Observation) -> None:
        """Cgroups removed: their processes ended or moved before the removal; read them again
        (this walks every process, only when a workload's cgroup went away)."""
        roots = set(gone)
        for pid, proc in list(self.pids.items()):
            identity = self.identities.get(proc.cgroup)
            if identity is not None and identity.root in roots:
                self._set(pid, self._read_pid(pid, obs))
        for root in gone:
            self._close(root)
        if self.paths_changed:
            self._refresh_workloads()
        else:  # their processes were all re-read into other cgroups: nothing to refresh
            self.workloads = {r: i for r, i in self.workloads.items() if r not in roots}

    def _map_gpu_pids(self, obs: Observation) -> None:
        roots: dict[int, str | None] = {}
        comms: dict[int, str] = {}
        added: dict[str, Identity] = {}  # workloads seen only on a GPU this sample
        for gpu in obs.gpus.values():
            for pid, _weight in gpu.shares:
                if pid is None or pid in roots:
                    continue
                proc = self.pids.get(str(pid))
                identity = self._identity(proc.cgroup) if proc is not None else None
                roots[pid] = identity.root if identity is not None else None
                if proc is not None:
                    comms[pid] = proc.comm
                if identity is not None and identity.root not in obs.identities:
                    added[identity.root] = identity
        obs.gpu_roots, obs.gpu_comms = roots, comms
        if added:  # a new dict: obs.identities may be the reader's own
            obs.identities = {**obs.identities, **added}

    def close(self) -> None:
        for root in list(self.counters):
            self._close(root)
        if self.gpus is not None:
            self.gpus.close()
