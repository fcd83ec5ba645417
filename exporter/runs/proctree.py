"""CPU time of a process tree, from procfs, for embedded mode.

The tree is a root pid and every process descended from it. Per sample: <pid>/stat of each
member (its CPU times); and, when /proc/stat's fork count moved since the last listing and
so did the process count (exporter.procfs.ProcessCount: threads move the first, not the
second; where only the forks moved, `quiet_wait` reads after the last listing: see
exporter.procfs.SAME_COUNT_LISTING_SAMPLES),
or every FULL_LISTING_READS reads, listdir(<procfs>) and <pid>/stat of each new pid (to learn
its parent). While the fork count stands still no process can have joined the tree, so a
quiet sample costs one small read per member, not one step per process on the node. A child
found late loses nothing: all of a new member's CPU since it began is the run's. A
member's CPU is utime+stime plus cutime+cstime, the times of children it has waited for, so
a child that lives and ends between two samples is still counted once its parent reaps it.
When a known member ends, its last CPU total is taken back out of its parent's cutime jump,
so it is not counted twice. The wrapper (`carbon-exporter run`) becomes the child
subreaper, so orphans of the tree are reparented to it, not to init, and stay counted.
"""

from __future__ import annotations

import ctypes
import os
import resource
import time
from dataclasses import dataclass
from typing import Callable

from exporter.attribution.cgroups import read_file
from exporter.procfs import ProcessCount

PR_SET_CHILD_SUBREAPER = 36
FULL_LISTING_READS = 60  # list <procfs> at least this often, forks or not (forget ended pids)
# where only the forks moved, wait at most this many reads between listings (the daemon's
# attribution waits at most 16: a workload found late has that CPU time in kind="other"; a
# child found late here loses nothing, all its CPU since it began is the run's)
QUIET_LISTING_READS = 30


@dataclass(slots=True)
class Member:
    ppid: int
    start: int  # starttime in clock ticks: tells a reused pid from the process we knew
    own: float  # utime + stime, seconds
    reaped: float  # cutime + cstime, seconds


def parse_stat(data: bytes, user_hz: float) -> Member:
    close_at = data.rfind(b")")
    rest = data[close_at + 2:].split()
    # after comm: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14) ... starttime(19)
    return Member(int(rest[1]), int(rest[19]), (int(rest[11]) + int(rest[12])) / user_hz,
                  (int(rest[13]) + int(rest[14])) / user_hz)


def become_subreaper() -> bool:
    """Orphaned descendants are reparented to this process instead of init (Linux 3.4+)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


class ProcessTree:
    """Not thread-safe: read from the sampler's host thread only.

    include_root: count the root's own CPU time (the Python API: the tracked process is the
    one doing the work); False for the wrapper, whose tree is the command it started (the
    wrapper's cutime still counts: that is where the command's final CPU time lands).
    """

    def __init__(self, root: int, procfs: str = "/proc", include_root: bool = True) -> None:
        self.root = root
        self.procfs = procfs
        self.include_root = include_root
        self.user_hz = float(os.sysconf("SC_CLK_TCK"))
        self.members: dict[int, Member] = {}
        self.outside: dict[int, int] = {}  # pid -> starttime of processes not in the tree
        self.cpu_seconds = 0.0  # cumulative CPU of the tree since the first read
        # CPU clocks (time.pthread_getcpuclockid) of the root's threads not charged to the
        # run: the tracker's own (embedded mode), alive for the whole run; clock -> its last
        # value (an ended thread's time stays in the process's total, so its last value stays
        # subtracted; what it used after the last read before it ended is charged)
        self.exclude_clocks: dict[int, float] = {}
        # and those that note their own CPU seconds where this can read them (the sampler's
        # watchdog, after each look: exporter.sampler.Sampler.watchdog_cpu)
        self.exclude_reported: list[Callable[[], float]] = []
        self.root_start: int | None = None  # the root's starttime, when it is this process
        self.root_is_self = root == os.getpid()  # then its CPU comes from getrusage(2)
        self.root_ppid = 0
        self.started = False
        self.problem = ""
        self.forks = -1  # /proc/stat's fork count at the last listing
        self.reads = 0
        self.listed_at = 0  # the read of the last listing
        self.process_count = ProcessCount(procfs, QUIET_LISTING_READS)

    def _stat(self, pid: int) -> Member | None:
        try:
            return parse_stat(read_file(f"{self.procfs}/{pid}/stat"), self.user_hz)
        except (OSError, ValueError, IndexError):
            return None

    def exclude_threads(self, idents: list[int]) -> None:
        """Threads of this process (threading idents) whose CPU is not the run's."""
        for ident in idents:
            try:
                self.exclude_clocks[time.pthread_getcpuclockid(ident)] = 0.0
            except OSError:
                continue  # it ended already

    def _excluded(self) -> float:
        total = 0.0
        for reported in self.exclude_reported:
            total += reported()
        for clock, last in list(self.exclude_clocks.items()):  # a new sampler thread may add
            try:
                last = self.exclude_clocks[clock] = time.clock_gettime(clock)
            except OSError:
                pass  # ended: its time is in the process's total, keep subtracting it
            total += last
        return total

    def _own(self) -> Member | None:
        """The root when it is this process (the Python API): its CPU and its reaped
        children's from getrusage(2), without a file read, to the microsecond; the same
        totals as utime+stime and cutime+cstime in /proc/self/stat."""
        if self.root_start is None:
            stat = self._stat(self.root)
            if stat is None:
                return None
            self.root_start, self.root_ppid = stat.start, stat.ppid
        usage = resource.getrusage(resource.RUSAGE_SELF)
        reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
        own = usage.ru_utime + usage.ru_stime
        if self.include_root and (self.exclude_clocks or self.exclude_reported):
            own -= self._excluded()
        return Member(self.root_ppid, self.root_start, own, reaped.ru_utime + reaped.ru_stime)

    def read(self, forks: int = -1) -> float:
        """Cumulative CPU seconds of the tree since the first read (the first read is 0).
        forks: /proc/stat's fork count (exporter.procfs.CpuTimes.forks) read before this
        call, -1 if unknown; while it stands still, the listing of <procfs> is skipped."""
        before = self.members if self.started else None
        now = self.take(forks)
        if now is not None:
            self.cpu_seconds += self.cpu_between(before, now)
        return self.cpu_seconds

    def take(self, forks: int = -1) -> dict[int, Member] | None:
        """The members and their CPU times now: the part of read() that must happen on the
        sampler's clock (cpu_between() can wait until the cycle is counted). None when
        <procfs> could not be listed (the members stay as they were)."""
        self.reads += 1
        present: set[int] | None = None
        if (forks < 0 or not self.started or self.reads - self.listed_at >= FULL_LISTING_READS
                or (forks != self.forks and (
                    self.process_count.moved()
                    or self.reads - self.listed_at >= self.process_count.quiet_wait))):
            try:
                self.process_count.moved()  # the count the listing saw
                names = os.listdir(self.procfs)
            except OSError as exc:
                self.problem = f"{self.procfs}: {exc.strerror}"
                return None
            present = {int(n) for n in names if n.isdigit()}
            self.forks, self.listed_at = forks, self.reads
        current: dict[int, Member] = {}
        if self.root_is_self:
            root = self._own()
        else:
            root = self._stat(self.root) if present is None or self.root in present else None
        if root is not None:
            current[self.root] = root
        # members, then new pids whose parent is a member (ascending pids: parents first)
        for pid, old in self.members.items():
            if pid in current or (present is not None and pid not in present):
                continue
            now = self._stat(pid)  # None: it ended (a quiet sample finds out this way)
            if now is not None and now.start == old.start:
                current[pid] = now
        if present is not None:
            # pids not seen before (those seen outside the tree stay outside: a reused pid is
            # rare and short), set operations rather than a step per process on the node
            new = present - current.keys() - self.outside.keys()
            for pid in sorted(new):
                now = self._stat(pid)
                if now is None:
                    continue
                if now.ppid in current:
                    current[pid] = now
                else:
                    self.outside[pid] = now.start
            self.process_count.listing_found(bool(new))
            for pid in self.outside.keys() - present:  # forget the pids outside that ended
                del self.outside[pid]
        self.members = current
        self.started = True
        self.problem = ""
        return current

    def cpu_between(self, before: dict[int, Member] | None, now: dict[int, Member]) -> float:
        """The tree's CPU seconds from one take to a later one (0 from None: the first);
        takes in between may be skipped."""
        return max(0.0, self._delta(before, now)) if before is not None else 0.0

    def _delta(self, members: dict[int, Member], current: dict[int, Member]) -> float:
        gone: dict[int, float] = {}  # parent pid -> CPU totals of its children that ended
        for pid, old in members.items():
            if pid not in current:
                gone[old.ppid] = gone.get(old.ppid, 0.0) + old.own + old.reaped
        delta = 0.0
        for pid, now in current.items():
            before = members.get(pid)
            own_before, reaped_before = (before.own, before.reaped) if before else (0.0, 0.0)
            if before is None and pid != self.root:
                own_before = 0.0  # born in the tree since the last read: all of it is the run's
            if pid != self.root or self.include_root:
                delta += max(0.0, now.own - own_before)
            reaped = now.reaped - reaped_before - gone.pop(pid, 0.0)
            delta += max(0.0, reaped)
        return delta
