#!/usr/bin/env python3
"""Embedded mode's sample cycle with the CPU caches cold, as a cycle finds them after a
second of sleep on a busy machine, but without the second: before each cycle 48 MiB are
written (evicting the caches) and the cycle's CPU time is taken with time.thread_time().
Run in turn for this tree and each --baseline-tree (another checkout), several rounds, each
tree in a fresh process, so the comparison does not wait on the machine's quiet seconds as
bench_runs.py's does. No source is read from hardware: this node's /proc and /sys, the
models, the process tree of the benchmark's own process.

    .venv/bin/python bench/bench_cold_cycle.py [--cycles 240] [--rounds 2] [--baseline-tree DIR]

Prints, per tree, the median cycle that only reads (the models and the tree capture), the
median cycle that also counts the queue (every embedded.SETTLE_EVERY cycles), and the mean
of all: the CPU per sample the reads and the counting cost together.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CYCLES = """
import os, statistics, sys, time
sys.path.insert(0, sys.argv[1])
from exporter.config import resolve
from exporter.runs.embedded import EmbeddedTracker

config = resolve({"sample.interval": "1s", "runs.socket": "", "kubernetes.metadata": "none"},
                 None, environ={})
tracker = EmbeddedTracker(config, os.getpid())
sampler = tracker.sampler
sampler._step()
sampler.settle()
evict = bytearray(48 * 1024 * 1024)
reads, counting, every = [], [], []
for cycle in range(int(sys.argv[2])):
    for at in range(0, len(evict), 64):
        evict[at] = cycle & 255
    time.sleep(0.002)
    queued = len(sampler._queued)
    started = time.thread_time_ns()
    sampler._step()
    spent = time.thread_time_ns() - started
    (counting if len(sampler._queued) <= queued else reads).append(spent)
    every.append(spent)
sampler.settle()
print(statistics.median(reads) / 1e3, statistics.median(counting or [0]) / 1e3,
      statistics.mean(every) / 1e3, sampler.settle_every)
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=240)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--baseline-tree", type=Path, action="append", default=[])
    args = parser.parse_args()
    trees = [ROOT, *args.baseline_tree]
    results: dict[Path, list[list[float]]] = {tree: [] for tree in trees}
    for _ in range(args.rounds):
        for tree in trees:
            out = subprocess.run([sys.executable, "-c", CYCLES, str(tree), str(args.cycles)],
                                 cwd="/", capture_output=True, text=True, check=True).stdout
            results[tree].append([float(v) for v in out.split()])
    print(f"python {sys.version.split()[0]}, {args.cycles} cycles per round, {args.rounds} rounds, "
          "caches evicted before each cycle\n")
    print("| tree | a cycle that reads (median) | a cycle that also counts the queue (median) "
          "| counted every | mean per cycle |")
    print("|---|---:|---:|---:|---:|")
    for tree, rounds in results.items():
        reads, counting, mean = (statistics.mean(r[i] for r in rounds) for i in range(3))
        name = "this tree" if tree == ROOT else str(tree)
        print(f"| {name} | {reads:.0f} µs | {counting:.0f} µs | {rounds[0][3]:.0f} cycles "
              f"| {mean:.0f} µs |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
