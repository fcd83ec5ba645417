#!/usr/bin/env python3
"""Per-sample CPU cost of attribution (discovery read + split) against fixture trees of
N workload cgroups and M processes (pods, units and Slurm jobs, cgroup v2), and how it grows.

    .venv/bin/python bench/bench_attribution.py [--samples 60] [--block 5] [--quick] [--real-cgroups]

For each size it builds the trees (in /dev/shm when there is one), takes a cold first sample
(every /proc/<pid>/cgroup read once), then measures steady-state samples: the trees are moved
on between samples (not measured), and read() + account() are timed with
time.process_time(), i.e. CPU seconds of this process. The sizes of one table are measured
side by side: each takes --block samples in turn, so a ratio between two sizes (the growth
the targets are about) is taken over the same minutes of a shared machine, whose speed
moves by tens of percent from one minute to the next. In the steady rows no process starts
or ends between samples, so /proc is listed only every FULL_LISTING_SAMPLES samples (the mean
column includes those); in the churn rows 1% of the processes are replaced every sample (one
exits, a new one starts in the same cgroup, moving /proc/stat's forks count), so /proc is
listed every sample. It also reports reads per cgroup counter file per sample, per-pid
procfs reads per sample and /proc listings per sample, and then, the trees moved on in the
same way, the counter files' pread()s alone (the kernel's part: here tmpfs, on a node
kernfs). Not a pass/fail test.

With --real-cgroups (root, and a cgroup2 hierarchy it may write: the mount point read from
/proc/self/mounts), it also takes the steady rows on real cgroups: the same workload cgroups
are made under that hierarchy (--path.sysfs's fs/cgroup a link to them), and a helper
process moves every counter on between samples by running a moment in each cgroup, so the
pread()s are the kernel's own cpu.stat reads (cgroup2's rstat flush and seq_file, not tmpfs).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import repeat
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from exporter.attribution import Attribution  # noqa: E402
from exporter.config import resolve  # noqa: E402
from exporter.ledger import Counted  # noqa: E402
from tests.fixtures import ProcfsTree  # noqa: E402
from tests.workload_fixtures import WorkloadTree, container_cgroup  # noqa: E402

TARGETS_MS = {100: 0.5, 1_000: 5.0}  # issue 17: at 100 and 1,000 cgroups (10 processes each)
GROWTH_TARGET = 10.0  # 100 -> 1,000 cgroups: no faster than the cgroup count


# the helper that moves real counters on: it runs a moment in each cgroup in turn, giving up
# the CPU there (sched_yield) so that the time is charged to that cgroup, then goes home
_HOPPER = r"""
import os, sys
me = str(os.getpid()).encode()
home = os.open(sys.argv[1], os.O_WRONLY)
procs = [os.open(line.rstrip("\n"), os.O_WRONLY) for line in iter(sys.stdin.readline, "\n")]
for command in iter(sys.stdin.readline, ""):
    for fd in procs:
        os.write(fd, me)
        sum(range(50))
        os.sched_yield()
    os.write(home, me)
    sys.stdout.write("done\n")
    sys.stdout.flush()
"""


def writable_cgroup2() -> tuple[Path | None, str]:
    """A cgroup2 hierarchy this process may make cgroups in, or None and why not."""
    if os.geteuid() != 0:
        return None, "not root"
    try:
        with open("/proc/self/mounts") as mounts:
            points = [line.split()[1] for line in mounts if line.split()[2:3] == ["cgroup2"]]
    except OSError as exc:
        return None, f"/proc/self/mounts: {exc}"
    for point in points:
        probe = Path(point) / f"carbon-exporter-bench-probe-{os.getpid()}"
        try:
            probe.mkdir()
            ok = (probe / "cpu.stat").exists()
            probe.rmdir()
        except OSError:
            continue
        if ok:
            return Path(point), ""
    return None, "no writable cgroup2 hierarchy" if points else "no cgroup2 mount"


def remove_cgroups(top: Path, keep_top: bool) -> None:
    """The cgroups under `top` (and `top` itself unless keep_top), deepest first: a cgroup's
    directory goes with rmdir, its files with it, once no process is in it."""
    for directory, _, _ in sorted(os.walk(top), key=lambda entry: -entry[0].count("/")):
        if not (keep_top and Path(directory) == top):
            os.rmdir(directory)


class RealCgroupTree(WorkloadTree):
    """The fixture's processes, in real cgroups: --path.sysfs's fs/cgroup is a link to a
    directory under a cgroup2 hierarchy. The kernel keeps the counters, so nothing is written
    to them; advance() has a helper process run a moment in each workload cgroup instead."""

    def __post_init__(self) -> None:
        self.root = self.counter_root = self.sysfs / "fs" / "cgroup"  # the link, made first
        self.usage_ns["/"] = 0
        self.hopper: subprocess.Popen[str] | None = None

    def _write_counter(self, cgroup: str) -> None:
        if cgroup not in self.usage_ns:  # the kernel counts; only the cgroup is made
            self._dir(cgroup).mkdir(parents=True, exist_ok=True)
            self.usage_ns[cgroup] = 0

    def start(self, leaves: list[str]) -> None:
        real = self.root.resolve()
        self.hopper = subprocess.Popen([sys.executable, "-c", _HOPPER, str(real / "cgroup.procs")],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.hopper.stdin is not None
        self.hopper.stdin.write("".join(f"{self._dir(leaf).resolve()}/cgroup.procs\n"
                                        for leaf in leaves) + "\n")
        self.hopper.stdin.flush()

    def advance(self, cpu_seconds: dict[str, float], outside_seconds: float = 0.0,
                idle_seconds: float = 1.0) -> None:
        super().advance(cpu_seconds, outside_seconds, idle_seconds)  # /proc's side
        assert self.hopper is not None and self.hopper.stdin and self.hopper.stdout
        self.hopper.stdin.write("go\n")
        self.hopper.stdin.flush()
        if self.hopper.stdout.readline() != "done\n":
            raise RuntimeError("the cgroup helper stopped")

    def close(self) -> None:
        """The helper ends (it is home, outside the workload cgroups), then the cgroups go,
        deepest first."""
        if self.hopper is not None:
            assert self.hopper.stdin is not None
            self.hopper.stdin.close()
            self.hopper.wait(timeout=30)
        remove_cgroups(self.root.resolve(), keep_top=True)


def build(base: Path, cgroups: int, processes: int, per_process: bool,
          real: Path | None = None) -> tuple[WorkloadTree, list[str]]:
    procfs = ProcfsTree(base / "proc")
    if real is None:
        tree = WorkloadTree(procfs, base / "sys", write_pid_stats=per_process)
    else:
        (base / "sys" / "fs").mkdir(parents=True)
        os.symlink(real, base / "sys" / "fs" / "cgroup")
        tree = RealCgroupTree(procfs, base / "sys", write_pid_stats=per_process)
    per = max(1, processes // cgroups)
    leaves = []
    for n in range(cgroups):
        if n % 10 < 6:
            leaf = container_cgroup(n + 1, ("burstable", "besteffort", "guaranteed")[n % 3])
        elif n % 10 < 9:
            leaf = f"/system.slice/svc-{n}.service"
        else:
            leaf = f"/system.slice/slurmstepd.scope/job_{n}/step_0/user/task_0"
        tree.add(leaf, processes=per)
        leaves.append(leaf)
    if isinstance(tree, RealCgroupTree):
        tree.start(leaves)
    return tree, leaves


class Row:
    """One size's fixture trees and attribution, sampled in turns with the other rows of its
    table (see measure()); the first, cold sample is taken when it is built."""

    def __init__(self, cgroups: int, processes: int, per_process: bool = False,
                 churn: float = 0.0, cgroup2: Path | None = None) -> None:
        scratch = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        self.base = Path(tempfile.mkdtemp(prefix="bench-attribution-", dir=scratch))
        self.cgroups, self.per_process, self.churn = cgroups, per_process, churn
        self.real: Path | None = None
        if cgroup2 is not None:  # this row's own directory of real cgroups
            self.real = cgroup2 / f"carbon-exporter-bench-{self.base.name}"
            self.real.mkdir()
        try:
            self.tree, self.leaves = build(self.base, cgroups, processes, per_process, self.real)
        except BaseException:  # no cgroups or scratch files left behind by a row never built
            if self.real is not None:
                remove_cgroups(self.real, keep_top=False)
            shutil.rmtree(self.base, ignore_errors=True)
            raise
        config = resolve({"path.procfs": str(self.base / "proc"), "path.sysfs": str(self.base / "sys"),
                          "kubernetes.metadata": "none", "collector.nvml": False,
                          "attribution.processes": per_process,
                          "attribution.cpu_idle_watts": 40.0, "attribution.dram_idle_watts": 3.0,
                          "attribution.max_workloads": 500}, None, environ={})
        self.attribution = Attribution(config)
        self.rng = random.Random(1)
        started = time.process_time()
        self.attribution.account(self.attribution.read(), [], 0.0)
        self.cold = time.process_time() - started
        self.costs: list[float] = []
        self.counter_reads: list[int] = []
        self.pid_reads: list[int] = []
        self.workloads: list[int] = []
        self.listings: list[bool] = []
        self.moved: list[float] = []  # the share of the workloads' counters that moved on
        self.last_usage = dict(self.attribution.previous.usage) if self.attribution.previous else {}
        self.bare: list[float] = []  # the counters' pread()s alone: what the kernel (here tmpfs) costs
        self.now = 0.0
        self.replaced = round(len(self.tree.processes) * churn)

    def _move_on(self) -> None:
        for leaf in self.rng.sample(self.leaves, self.replaced):  # one ends, another starts there
            self.tree.exit([self.tree.members[leaf][0].pid])
            self.tree.add(leaf)
        self.tree.advance({leaf: self.rng.random() * 0.01 for leaf in self.leaves},
                          outside_seconds=0.1)

    def sample(self) -> None:
        """The trees moved on (not measured), then one read + split, timed."""
        self._move_on()
        self.now += 1.0
        counted = [Counted("cpu", "package-0", 150.0, 0.02), Counted("dram", "package-0", 9.0, 0.001)]
        started = time.process_time()
        result = self.attribution.read()
        split = self.attribution.account(result, counted, self.now)
        self.costs.append(time.process_time() - started)
        obs = result.observation
        assert obs is not None
        self.counter_reads.append(obs.counter_reads)
        self.pid_reads.append(obs.pid_reads)
        self.workloads.append(len(obs.usage))
        self.listings.append(obs.listed)
        before = self.last_usage
        self.moved.append(sum(before.get(root, value) != value for root, value in obs.usage.items())
                          / max(1, len(obs.usage)))
        self.last_usage = dict(obs.usage)
        for component, energy in split.measured.items():
            assert abs(sum(split.parts[component].values()) - energy) < 1e-6

    def bare_sample(self) -> None:
        """The trees moved on, then the same counter files' pread()s alone, timed."""
        self.tree.advance({leaf: self.rng.random() * 0.01 for leaf in self.leaves},
                          outside_seconds=0.1)
        fds = [fd for fd in self.attribution.reader.counters.values() if fd >= 0]
        started = time.process_time()
        list(map(os.pread, fds, repeat(32), repeat(0)))
        self.bare.append(time.process_time() - started)

    def result(self) -> dict:
        costs = self.costs
        return {
            "cgroups": self.cgroups, "processes": len(self.tree.processes),
            "per_process": self.per_process, "churn": self.churn, "cold_ms": self.cold * 1e3,
            "median_ms": statistics.median(costs) * 1e3, "mean_ms": statistics.mean(costs) * 1e3,
            "bare_ms": statistics.median(self.bare) * 1e3,
            "p95_ms": sorted(costs)[int(0.95 * (len(costs) - 1))] * 1e3,
            "reads_per_cgroup_file": max(r / w for r, w in zip(self.counter_reads, self.workloads)),
            "pid_reads": statistics.mean(self.pid_reads),
            "listings": statistics.mean(self.listings),
            "series": len(self.attribution.series),
            "cgroupfs": "cgroup2" if self.real else "tmpfs",
            "moved": statistics.mean(self.moved),
        }

    def close(self) -> None:
        self.attribution.close()
        if self.real is not None:
            assert isinstance(self.tree, RealCgroupTree)
            self.tree.close()
            self.real.rmdir()
        shutil.rmtree(self.base, ignore_errors=True)


def measure(specs: list[tuple[int, int]], samples: int, block: int, per_process: bool = False,
            churn: float = 0.0, cgroup2: Path | None = None) -> list[dict]:
    """The rows of one table side by side: every row's trees are built first, then each row
    takes `block` samples in turn (the order reversed at every turn) until each has
    `samples`, so all of them see the same minutes of this shared machine; the growth
    between two sizes is then taken within one stretch of time, not across two."""
    rows: list[Row] = []
    try:
        for cgroups, processes in specs:
            rows.append(Row(cgroups, processes, per_process, churn, cgroup2))
        for step in (Row.sample, Row.bare_sample):
            for turn, first in enumerate(range(0, samples, block)):
                for row in rows if turn % 2 == 0 else rows[::-1]:
                    for _ in range(min(block, samples - first)):
                        step(row)
        return [row.result() for row in rows]
    finally:
        for row in rows:
            row.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=60,
                        help="steady samples per row (default 60: one full /proc listing each)")
    parser.add_argument("--block", type=int, default=5,
                        help="samples a row takes in one turn before the next row's (default 5)")
    parser.add_argument("--quick", action="store_true", help="only the two reference sizes")
    parser.add_argument("--real-cgroups", action="store_true",
                        help="also the steady rows on real cgroup2 cgroups: as root, it makes and "
                             "removes cgroups at the top of the cgroup2 mount, where systemd "
                             "expects only its own (a test machine, not a node in service)")
    args = parser.parse_args()
    reference = [(100, 1_000), (1_000, 10_000)]
    sizes = reference if args.quick else [
        (100, 1_000), (250, 2_500), (500, 5_000), (1_000, 10_000), (2_000, 20_000)]
    cgroup2, why_not = writable_cgroup2() if args.real_cgroups else (None, "without --real-cgroups")
    rows = measure(sizes, args.samples, args.block)
    rows += measure(reference, args.samples, args.block, churn=0.01)
    rows += measure([(1_000, 10_000)], max(5, args.samples // 4), args.block, per_process=True)
    if cgroup2 is not None:
        rows += measure(reference, args.samples, args.block, cgroup2=cgroup2)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {args.samples} steady samples "
          f"each; the rows of each table sampled in turns of {args.block}; real cgroups: "
          f"{f'under {cgroup2}' if cgroup2 else f'none ({why_not})'}\n")
    print("| cgroup files | cgroups | processes | processes replaced per sample | per-process "
          "| cold first sample (ms CPU) | per sample, median (ms CPU) | mean (ms CPU) | p95 (ms CPU) "
          "| of the median: the counters' pread()s alone (ms CPU) "
          "| reads per cgroup file per sample | counters moved per sample "
          "| per-pid reads per sample | /proc listings per sample | series |")
    print("|:---|---:|---:|---:|:---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['cgroupfs']} | {r['cgroups']:,} | {r['processes']:,} | {r['churn']:.0%} "
              f"| {'yes' if r['per_process'] else 'no'} "
              f"| {r['cold_ms']:.1f} | {r['median_ms']:.2f} | {r['mean_ms']:.2f} | {r['p95_ms']:.2f} "
              f"| {r['bare_ms']:.2f} "
              f"| {r['reads_per_cgroup_file']:.2f} | {r['moved']:.0%} | {r['pid_reads']:.0f} "
              f"| {r['listings']:.2f} | {r['series']} |")

    def row(cgroups: int, churn: float, cgroupfs: str) -> dict | None:
        return next((r for r in rows if r["cgroups"] == cgroups and not r["per_process"]
                     and r["churn"] == churn and r["cgroupfs"] == cgroupfs), None)

    print()
    for cgroupfs, churn in (("tmpfs", 0.0), ("tmpfs", 0.01), ("cgroup2", 0.0)):
        small, large = row(100, churn, cgroupfs), row(1_000, churn, cgroupfs)
        if small is None or large is None:
            continue
        label = f"{cgroupfs}, " + ("steady" if not churn else f"{churn:.0%} churn")
        for size, target in TARGETS_MS.items():
            cost = (small if size == 100 else large)["median_ms"]
            verdict = "meets" if cost <= target else "MISSES"
            print(f"{label}: {size:,} cgroups / {10 * size:,} processes: {cost:.2f} ms CPU per "
                  f"sample (median), {verdict} the {target:g} ms target")
        growth = large["median_ms"] / small["median_ms"]
        verdict = "meets" if growth <= GROWTH_TARGET else "MISSES"
        # the kernel's part apart: its reads grow faster than the count of files (more of
        # them are colder per read), on tmpfs and on cgroup2 alike
        own = (large["median_ms"] - large["bare_ms"]) / (small["median_ms"] - small["bare_ms"])
        bare = large["bare_ms"] / small["bare_ms"]
        print(f"{label}: growth 100 -> 1,000 cgroups (10x): {growth:.1f}x per-sample cost, "
              f"{verdict} the {GROWTH_TARGET:g}x target; without the counters' pread()s "
              f"{own:.1f}x, the pread()s alone {bare:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
