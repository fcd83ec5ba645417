"""Node-wide procfs counters that more than one reader needs in a sample, parsed once per
sample cycle: the CPU model and attribution both want /proc/stat's CPU times, and reading
and parsing it twice on one thread was a measurable part of a cycle.

The sampler calls begin_cycle() when a cycle starts and end_cycle() when its reads are in;
reads in between share one parse. Outside a cycle nothing is shared: a read sees the file.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Callable

USER_HZ = float(os.sysconf("SC_CLK_TCK"))

_cycle = 0  # the current cycle's number; 0: not in a cycle
_cycles = 0
_lock = threading.Lock()  # held only around the cache, never around a read (reads can stall)
_cache: dict[str, tuple[int, CpuTimes]] = {}


@dataclass(frozen=True, slots=True)
class CpuTimes:
    at: float  # monotonic time of the read
    busy: float  # CPU seconds, all CPUs: user, nice, system, irq, softirq (guest is in user)
    total: float  # busy + idle + iowait (steal is time the hypervisor gave to others)


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


def parse_cpu_line(data: bytes) -> tuple[float, float]:
    """(busy, total) CPU seconds from /proc/stat's first line."""
    fields = data.split(b"\n", 1)[0].split()
    if not fields or fields[0] != b"cpu":
        raise ValueError("/proc/stat does not start with the cpu line")
    values = [int(v) for v in fields[1:8]] + [0] * 7
    user, nice, system, idle, iowait, irq, softirq = values[:7]
    busy = user + nice + system + irq + softirq
    return busy / USER_HZ, (busy + idle + iowait) / USER_HZ


def cpu_times(procfs: str, clock: Callable[[], float] = time.monotonic) -> CpuTimes:
    """Node CPU times from <procfs>/stat; shared by every reader within one sample cycle."""
    path = procfs + "/stat"
    cycle = _cycle
    if cycle:
        with _lock:
            hit = _cache.get(path)
        if hit is not None and hit[0] == cycle:
            return hit[1]
    data = read_file(path)
    at = clock()  # when the times were obtained (a slow open must not skew them)
    busy, total = parse_cpu_line(data)
    times = CpuTimes(at, busy, total)
    if cycle:
        with _lock:
            _cache[path] = (cycle, times)
    return times


def mem_total_bytes(procfs: str) -> int:
    """MemTotal from <procfs>/meminfo."""
    for line in read_file(procfs + "/meminfo").splitlines():
        if line.startswith(b"MemTotal:"):
            fields = line.split()
            return int(fields[1]) * (1024 if fields[2:3] == [b"kB"] else 1)
    raise ValueError("no MemTotal line")
