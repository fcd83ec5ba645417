"""The embedded run's process tree against a procfs in the kernel's layout: children that
join through fork(), a quiet sample (no fork since the last listing: <procfs> is not listed),
and a child that ends and is reaped (its CPU is not counted twice)."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from exporter.procfs import SAME_COUNT_LISTING_SAMPLES, cpu_times
from exporter.attribution.cgroups import read_file
from exporter.runs.proctree import ProcessTree, parse_stat
from tests.fixtures import ProcfsTree

HZ = os.sysconf("SC_CLK_TCK")


def write_pid(procfs: ProcfsTree, pid: int, ppid: int, utime: int, cutime: int = 0,
              start: int = 1000, comm: str = "python3") -> None:
    """<procfs>/<pid>/stat as the kernel writes it (proc(5)): fields 4 (ppid), 14-17 (utime,
    stime, cutime, cstime, in clock ticks) and 22 (starttime) are the ones read."""
    fields = ["S", str(ppid), str(pid), str(pid), "0", "-1", "4194560", "100", "0", "0", "0",
              str(utime), "0", str(cutime), "0", "20", "0", "1", "0", str(start), "1000000",
              "100"] + ["0"] * 30
    directory = Path(procfs.procfs) / str(pid)
    directory.mkdir(exist_ok=True)
    (directory / "stat").write_text(f"{pid} ({comm}) {' '.join(fields)}\n")


def read(tree: ProcessTree, procfs: ProcfsTree) -> float:
    return tree.read(cpu_times(procfs.procfs).forks)  # as embedded mode passes the count


def node(tmp_path, monkeypatch, root_ticks: int = 0, other_ticks: int = 0
         ) -> tuple[ProcfsTree, ProcessTree, list[str]]:
    """init, the tracked process (pid 100) and another process on the node (pid 200); the
    returned list collects each listing of <procfs>."""
    procfs = ProcfsTree(tmp_path / "proc")
    write_pid(procfs, 1, 0, 0)
    write_pid(procfs, 100, 1, root_ticks)
    write_pid(procfs, 200, 1, other_ticks)
    listings: list[str] = []
    real_listdir = os.listdir
    monkeypatch.setattr(os, "listdir", lambda path: listings.append(path) or real_listdir(path))
    return procfs, ProcessTree(100, procfs.procfs, include_root=True), listings


def test_tree_follows_forks_and_skips_the_listing_while_none_happen(tmp_path, monkeypatch):
    procfs, tree, listings = node(tmp_path, monkeypatch, root_ticks=100, other_ticks=500)

    assert read(tree, procfs) == 0.0  # the baseline
    write_pid(procfs, 100, 1, 100 + HZ)  # one CPU second of the tracked process
    write_pid(procfs, 200, 1, 500 + 5 * HZ)  # not the tree's
    assert read(tree, procfs) == pytest.approx(1.0)
    assert len(listings) == 1  # no fork since the baseline's listing: not listed again

    procfs.fork()  # the tracked process forks a worker, which works for 2 s
    write_pid(procfs, 300, 100, 2 * HZ, start=2000)
    assert read(tree, procfs) == pytest.approx(3.0)
    assert len(listings) == 2 and 300 in tree.members

    # the worker ends and is reaped: its 2.5 s land in the parent's cutime, no fork
    shutil.rmtree(Path(procfs.procfs) / "300")
    write_pid(procfs, 100, 1, 100 + HZ, cutime=int(2.5 * HZ))
    assert read(tree, procfs) == pytest.approx(3.5)  # only the 0.5 s not seen before
    assert 300 not in tree.members and len(listings) == 2


def test_threads_alone_do_not_list_and_a_child_found_late_loses_nothing(tmp_path, monkeypatch):
    """Threads move /proc/stat's fork count, not /proc's link count (the kernel's process
    count; the fixture's directory counts its entries the same way): the listing then waits
    SAME_COUNT_LISTING_SAMPLES reads, twice that after a listing that found no process. A
    child that replaced another process between two reads leaves the count still: found at
    that listing, with all its CPU since it began; finding it brings the wait back."""
    procfs, tree, listings = node(tmp_path, monkeypatch)
    assert read(tree, procfs) == 0.0  # the baseline, listed
    for _ in range(SAME_COUNT_LISTING_SAMPLES - 1):
        procfs.fork()  # a thread of some runtime: no new <procfs>/<pid>
        read(tree, procfs)
    assert len(listings) == 1
    procfs.fork()
    read(tree, procfs)
    assert len(listings) == 2  # the listing is due anyway; it found no process
    wait = tree.process_count.quiet_wait
    assert wait == 2 * SAME_COUNT_LISTING_SAMPLES

    shutil.rmtree(Path(procfs.procfs) / "200")  # ended, and the tracked process forked
    procfs.fork()
    write_pid(procfs, 300, 100, 2 * HZ, start=2000)  # a worker that worked for 2 s already
    seen = [read(tree, procfs) for _ in range(wait)]
    assert seen[:-1] == [0.0] * (wait - 1)
    assert seen[-1] == pytest.approx(2.0) and 300 in tree.members and len(listings) == 3
    assert tree.process_count.quiet_wait == SAME_COUNT_LISTING_SAMPLES


def test_a_reused_pid_outside_the_tree_is_not_counted(tmp_path):
    procfs = ProcfsTree(tmp_path / "proc")
    write_pid(procfs, 100, 1, 0)
    procfs.fork()
    write_pid(procfs, 300, 100, 0, start=2000)
    tree = ProcessTree(100, procfs.procfs, include_root=True)
    read(tree, procfs)
    # pid 300 ends; an unrelated process gets the pid (a fork) and runs for 4 s
    shutil.rmtree(Path(procfs.procfs) / "300")
    procfs.fork()
    write_pid(procfs, 300, 1, 4 * HZ, start=9000)
    assert read(tree, procfs) == 0.0


def _burn(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_this_process_as_root_is_read_without_files_and_its_tracker_threads_excluded():
    """The Python API tracks its own process: getrusage(2) gives the same totals as
    /proc/self/stat (utime + stime), to the microsecond, without a file read; the tracker's
    own threads are taken out through their CPU clocks, other threads stay the run's."""
    tree = ProcessTree(os.getpid(), "/proc", include_root=True)
    go, release = threading.Event(), threading.Event()

    def tracker_work() -> None:  # like the sampler thread: busy, alive for the whole run
        go.wait(30)
        _burn(0.3)
        release.wait(30)

    tracker = threading.Thread(target=tracker_work)
    worker = threading.Thread(target=_burn, args=(0.2,))
    tracker.start()
    tree.exclude_threads([tracker.ident])
    tree.read()
    stat_before = parse_stat(read_file(f"/proc/{os.getpid()}/stat"), HZ)
    go.set()
    _burn(0.3)  # the run's own work, in the main thread
    worker.start()
    worker.join()
    while tracker.is_alive() and time.clock_gettime(
            time.pthread_getcpuclockid(tracker.ident)) < 0.3:
        time.sleep(0.01)
    try:
        run = tree.read()
        stat_after = parse_stat(read_file(f"/proc/{os.getpid()}/stat"), HZ)
    finally:
        release.set()
        tracker.join()
    assert run == pytest.approx(0.5, abs=0.05)  # main 0.3 + worker 0.2, not the tracker's 0.3
    whole = stat_after.own - stat_before.own  # the process as /proc sees it: all three
    assert whole == pytest.approx(0.8, abs=0.06)


def test_a_thread_that_notes_its_own_cpu_time_is_taken_out_as_noted():
    """The embedded sampler's watchdog notes its own CPU time after each look (no system
    call of the sampler's at every sample): what it noted is taken out of the run's."""
    tree = ProcessTree(os.getpid(), "/proc", include_root=True)
    noted = [0.0]
    tree.exclude_reported.append(lambda: noted[0])
    tree.read()
    _burn(0.3)
    noted[0] = 0.1  # as if 0.1 s of that was the noting thread's
    assert tree.read() == pytest.approx(0.2, abs=0.05)


def test_takes_counted_later_or_skipped_sum_as_the_reads_do(tmp_path, monkeypatch):
    """Embedded mode takes the members on the sampler's clock and sums their CPU when the
    cycle is counted (ProcessTree.take, cpu_between). A take that is never counted (its
    cycle was set aside by the watchdog) loses nothing: the next one is compared with the
    last take counted, as read()'s running total does, a child born and reaped in between
    included."""
    procfs, tree, _ = node(tmp_path, monkeypatch, root_ticks=100)
    twin = ProcessTree(100, procfs.procfs, include_root=True)  # the same tree, read()
    forks = cpu_times(procfs.procfs).forks
    first = tree.take(forks)
    assert read(twin, procfs) == 0.0 and first is not None

    write_pid(procfs, 100, 1, 100 + HZ)  # 1 s of the tracked process
    procfs.fork()  # a worker that works 2 s ...
    write_pid(procfs, 300, 100, 2 * HZ, start=2000)
    skipped = tree.take(cpu_times(procfs.procfs).forks)  # never counted
    assert skipped is not None and 300 in skipped and read(twin, procfs) == pytest.approx(3.0)

    shutil.rmtree(Path(procfs.procfs) / "300")  # ... ends after 2.5 s and is reaped
    write_pid(procfs, 100, 1, 100 + 2 * HZ, cutime=int(2.5 * HZ))  # and 1 s more of the root
    last = tree.take(cpu_times(procfs.procfs).forks)
    assert last is not None and 300 not in last
    assert tree.cpu_between(first, last) == pytest.approx(4.5) == read(twin, procfs)
    assert tree.cpu_between(None, last) == 0.0  # the first take is the baseline
