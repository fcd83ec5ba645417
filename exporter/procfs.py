"""Node-wide procfs counters that more than one reader needs in a sample, parsed once per
sample cycle: the CPU model and attribution both want /proc/stat's CPU times, and reading
and parsing it twice on one thread was a measurable part of a cycle.

The sampler calls begin_cycle() when a cycle starts and end_cycle() when its reads are in;
reads in between share one parse. Outside a cycle nothing is shared: a read sees the file.

/proc/stat is read through a descriptor kept open (read_held): one pread() at offset 0 per
sample instead of open, read, read, close. After a second of sleep every system call is
cold (tens of microseconds each on a VM), so the three saved are a good part of a cycle.
The kernel regenerates a seq_file when a read starts at offset 0 (seq_read_iter: "if
request is to read from zero offset, reset iterator to first record"), so a held
descriptor sees fresh values; procfs's node-wide files never go away.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from typing import Callable

USER_HZ = float(os.sysconf("SC_CLK_TCK"))

_cycle = 0  # the current cycle's number; 0: not in a cycle
_cycles = 0
_lock = threading.Lock()  # held while _held changes, never around a read (reads can stall)
_cache: dict[str, tuple[int, CpuTimes]] = {}
_held: dict[str, int] = {}  # path -> a descriptor kept open on it (read_held)
MAX_HELD = 16  # a few node-wide files; more (tests with many trees): the oldest go


class CpuTimes:
    """/proc/stat as read at `at` (monotonic). The forks count is parsed at once (it decides
    whether <procfs> is listed in the cycle); busy and total when first asked for, which in
    embedded mode and for the CPU model is when the cycle is counted (see Sampler.settle),
    out of the cold cycle. A first line that cannot be parsed raises ValueError there."""

    __slots__ = ("at", "forks", "_data", "_parsed")

    def __init__(self, at: float, data: bytes, forks: int = -1) -> None:
        """data: the file, or its first line (all that busy and total are parsed from)."""
        self.at = at
        # the "processes" line: forks since boot (proc(5)); unchanged since an earlier read
        # means no process was created in between (no listing of <procfs>). -1: absent
        self.forks = forks
        self._data = data
        self._parsed: tuple[float, float] | None = None

    def _times(self) -> tuple[float, float]:
        parsed = self._parsed
        if parsed is None:  # two threads may both parse: the same result, one store each
            parsed = self._parsed = parse_cpu_line(self._data)
        return parsed

    @property
    def busy(self) -> float:
        """CPU seconds, all CPUs: user, nice, system, irq, softirq (guest is in user)."""
        return self._times()[0]

    @property
    def total(self) -> float:
        """busy + idle + iowait (steal is time the hypervisor gave to others)."""
        return self._times()[1]


def begin_cycle() -> None:
    global _cycle, _cycles
    _cycles += 1
    _cycle = _cycles


def end_cycle() -> None:
    global _cycle
    _cycle = 0


def read_file(path: str, size: int = 8192) -> bytes:
    """One open/read/close: procfs files are generated at read time and are not seekable caches."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, size)
    finally:
        os.close(fd)


def read_held(path: str, size: int = 65536) -> bytes:
    """The whole file through a descriptor kept open on it: a pread() at offset 0 per read.
    A read that fails, or reads nothing, on a held descriptor is retried once on a fresh
    one. A file replaced by another under its path is not noticed: the kernel's node-wide
    procfs files never are (test fixtures write them in place, as the kernel does)."""
    fd = _held.get(path)  # a dict read is atomic: the lock is for changing _held
    held = fd is not None
    if fd is None:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.pread(fd, size, 0)
        while len(data) % size == 0 and data:  # a full buffer: there may be more
            more = os.pread(fd, size, len(data))
            if not more:
                break
            data += more
    except OSError:
        _forget(path, fd)
        if held:
            return read_held(path, size)
        raise
    if held and not data:
        _forget(path, fd)
        return read_held(path, size)
    if not held:
        with _lock:
            if path in _held:  # another thread opened it meanwhile: keep one
                os.close(fd)
            else:
                while len(_held) >= MAX_HELD:
                    os.close(_held.pop(next(iter(_held))))
                _held[path] = fd
    return data


def _forget(path: str, fd: int) -> None:
    with _lock:
        if _held.get(path) == fd:
            del _held[path]
    try:
        os.close(fd)
    except OSError:
        pass


def parse_forks(data: bytes) -> int:
    """The forks-since-boot counter from /proc/stat's "processes" line; -1 when absent."""
    at = data.find(b"\nprocesses ")
    if at < 0:
        return -1
    end = data.find(b"\n", at + 11)
    try:
        return int(data[at + 11:end if end >= 0 else len(data)])
    except ValueError:
        return -1


_ZEROS = [b"0"] * 7


def parse_cpu_line(data: bytes) -> tuple[float, float]:
    """(busy, total) CPU seconds from /proc/stat's first line."""
    fields = data.split(b"\n", 1)[0].split()
    if not fields or fields[0] != b"cpu":
        raise ValueError("/proc/stat does not start with the cpu line")
    # older kernels print fewer fields: the missing ones are 0 (map: no Python step per field)
    user, nice, system, idle, iowait, irq, softirq = map(int, (fields[1:8] + _ZEROS)[:7])
    busy = user + nice + system + irq + softirq
    return busy / USER_HZ, (busy + idle + iowait) / USER_HZ


def cpu_times(procfs: str, clock: Callable[[], float] = time.monotonic) -> CpuTimes:
    """Node CPU times from <procfs>/stat; shared by every reader within one sample cycle."""
    path = procfs + "/stat"
    cycle = _cycle
    if cycle:
        hit = _cache.get(path)  # atomic, as in read_held
        if hit is not None and hit[0] == cycle:
            return hit[1]
    data = read_held(path)
    at = clock()  # when the times were obtained (a slow open must not skew them)
    if not data.startswith(b"cpu "):  # not /proc/stat: say so now, not when it is parsed
        raise ValueError("/proc/stat does not start with the cpu line")
    # only the first line is kept for the parse (a node with hundreds of CPUs has a
    # /proc/stat of tens of kB, and embedded mode queues a minute of cycles)
    times = CpuTimes(at, data.partition(b"\n")[0], parse_forks(data))
    if cycle:
        _cache[path] = (cycle, times)  # one store, atomic; the newest cycle's wins
    return times


# where the fork count moved but the process count did not, list <procfs> this many samples
# after the last listing (as many processes may have ended as began); each such listing that
# finds no new process doubles the wait, up to MAX_SAME_COUNT_LISTING_SAMPLES (a runtime that
# starts threads all the time moves the forks at every sample); one that finds a process, or
# a moved count, brings it back
SAME_COUNT_LISTING_SAMPLES = 3
MAX_SAME_COUNT_LISTING_SAMPLES = 16


class ProcessCount:
    """<procfs>'s link count: a constant plus the kernel's number of processes
    (proc_root_getattr(): nr_processes(), thread group leaders only). /proc/stat's fork count
    moves with every thread too, so a runtime that starts threads moves it every sample; this
    count tells those samples from ones where a process may have come. On a file system that
    does not count a directory's entries this way (btrfs reports 1; a test tree on ext4 or
    tmpfs counts its subdirectories, as procfs does) every call says it moved."""

    def __init__(self, procfs: str, max_wait: int = MAX_SAME_COUNT_LISTING_SAMPLES) -> None:
        self.procfs = procfs
        self.links = -1
        self.max_wait = max_wait  # the longest quiet_wait
        # a descriptor kept open on <procfs>: fstat(2) on it skips the path walk of stat(2)
        # (procfs answers either from proc_root_getattr, with the current count)
        self._fd: int | None = None
        # samples to wait after a listing, where only the forks moved (see SAME_COUNT_...)
        self.quiet_wait = SAME_COUNT_LISTING_SAMPLES

    def listing_found(self, processes: bool) -> None:
        """After a listing: whether it found a process not seen before."""
        self.quiet_wait = (SAME_COUNT_LISTING_SAMPLES if processes
                           else min(2 * self.quiet_wait, self.max_wait))

    def moved(self) -> bool:
        """Whether the count moved since the last call (True where it cannot tell)."""
        try:
            fd = self._fd
            if fd is None:
                fd = self._fd = os.open(self.procfs, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                weakref.finalize(self, os.close, fd)
            links = os.fstat(fd).st_nlink
        except OSError:
            return True
        moved, self.links = links != self.links, links
        if moved:
            self.quiet_wait = SAME_COUNT_LISTING_SAMPLES
        return moved or links <= 2


def mem_total_bytes(procfs: str) -> int:
    """MemTotal from <procfs>/meminfo."""
    for line in read_file(procfs + "/meminfo").splitlines():
        if line.startswith(b"MemTotal:"):
            fields = line.split()
            return int(fields[1]) * (1024 if fields[2:3] == [b"kB"] else 1)
    raise ValueError("no MemTotal line")
