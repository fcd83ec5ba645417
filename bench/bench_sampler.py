#!/usr/bin/env python3
"""Benchmark the exporter process: CPU per sample cycle, scrape latency, RSS.

Runs the real `python -m exporter` on a fixture node (2 RAPL sockets with dram, psys and
core sub-zones, 8 GPUs through the fake pynvml), with attribution on (the default) and off,
on the zero-config model-only node, and on defaults on this machine (its own /sys and /proc,
every cgroup and process on it), plus the floor: a bare asyncio loop that wakes once a second
and does nothing, and CodeCarbon's tracker measuring every second (OfflineEmissionsTracker,
measure_power_secs=1), from a separate environment: `sh bench/setup_codecarbon.sh` once
(or --codecarbon-python PATH); without it that row is left out. All processes run at once
and their CPU is measured over the same stretch of time, so machine noise falls on all of them
alike (ratios are fair on a noisy machine). The CPU figure is the whole process's CPU time,
all threads, from /proc/PID/task/*/schedstat (ns resolution; CodeCarbon's, whose timer
threads end every second, from its own getrusage(2) on SIGUSR1), per second: one cycle per
second at 1 s sampling. Then each exporter gets one scrape (as Prometheus's after its interval:
it counts the cycles queued since the last count), then its keep-alive scrapes in turn.

    .venv/bin/python bench/bench_sampler.py [--seconds 60] [--rounds 3] [--scrapes 1000]

On a shared VM one window moves by 20-30% from one run to the next (the floor too): each
round starts every process afresh, in a shuffled order, and the CPU figures and ratios
reported are the median of the rounds (each ratio taken within its round); scrapes run in
the last round.

Targets (issue 17): on defaults, CPU per second <= 2x the bare loop's and <= 0.3x
CodeCarbon's at 1 s, peak RSS <= 40 MiB; (issue 2) scrape p99 <= 5 ms.
"""

from __future__ import annotations

import argparse
import compileall
import functools
import http.client
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fake_gpus import DRIVER, gpu
from tests.fixtures import ProcfsTree, intel_two_socket
from tests.harness import ExporterProcess, free_port

CODECARBON = (
    "import resource, signal, time\n"
    "def report_cpu(*_):  # see cpu_seconds(): its own CPU, ended timer threads included\n"
    "    usage = resource.getrusage(resource.RUSAGE_SELF)\n"
    "    print(usage.ru_utime + usage.ru_stime, flush=True)\n"
    "signal.signal(signal.SIGUSR1, report_cpu)\n"
    "from codecarbon import OfflineEmissionsTracker\n"
    "tracker = OfflineEmissionsTracker(country_iso_code='DEU', measure_power_secs=1,\n"
    "                                  save_to_file=False, log_level='error', allow_multiple_runs=True)\n"
    "tracker.start()\n"
    "while True:\n"
    "    time.sleep(3600)\n")
CODECARBON_PYTHON = Path(__file__).resolve().parent / ".venv-codecarbon" / "bin" / "python"
CODECARBON_NAME = "CodeCarbon 3.3.2 OfflineEmissionsTracker, 1 s"
FLOOR = "floor: bare asyncio loop, 1 wake-up/s"
DEFAULTS = "defaults on this machine (its /sys, /proc, cgroups)"
IDLE_LOOP = "import asyncio\nasync def main():\n    while True:\n        await asyncio.sleep(1)\nasyncio.run(main())\n"


def cpu_seconds(pid: int, asked: dict[int, subprocess.Popen] | None = None) -> float:
    """CPU time of every live thread, in ns resolution (schedstat), unlike the 10 ms of
    /proc/PID/stat. A process in `asked` (CodeCarbon, which measures in a fresh timer thread
    every second: per-thread figures would miss what ended threads used) is asked for its
    own getrusage(2) instead, microseconds with ended threads, on SIGUSR1."""
    if asked and pid in asked:
        os.kill(pid, signal.SIGUSR1)
        stdout = asked[pid].stdout
        assert stdout is not None
        return float(stdout.readline())
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass  # a thread that ended between listing and reading
    return total / 1e9


def compile_bytecode(tree: Path) -> None:
    """The tree's exporter package compiled to bytecode, as a wheel install or the container
    image has it (scripts/bootstrap.sh does the same): a process started from source where
    PYTHONDONTWRITEBYTECODE is set compiles every module at each start, about 1.3 MiB more
    peak RSS than the exporter as deployed."""
    compileall.compile_dir(str(tree / "exporter"), quiet=1)


def rss_mb(pid: int) -> tuple[float, float]:
    """VmRSS and VmHWM (peak) in MiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss, hwm = (re.search(rf"{field}:\s+(\d+)", status) for field in ("VmRSS", "VmHWM"))
    assert rss is not None and hwm is not None
    return int(rss.group(1)) / 1024, int(hwm.group(1)) / 1024


def cpu_ms_per_second(pids: list[int], seconds: float,
                      asked: dict[int, subprocess.Popen] | None = None) -> list[float]:
    before = [cpu_seconds(pid, asked) for pid in pids]
    time.sleep(seconds)
    after = [cpu_seconds(pid, asked) for pid in pids]
    return [(b - a) / seconds * 1000 for a, b in zip(before, after)]


def scrape_latency(port: int, scrapes: int) -> tuple[float, float, int]:
    """p50 and p99 in ms of sequential keep-alive scrapes, and the body size."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    latencies = []
    size = 0
    for _ in range(scrapes):
        started = time.perf_counter()
        conn.request("GET", "/metrics")
        size = len(conn.getresponse().read())
        latencies.append((time.perf_counter() - started) * 1000)
    latencies.sort()
    return latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99) - 1], size


def one_round(tmp: Path, args: argparse.Namespace, with_scrapes: bool) -> list[tuple]:
    """Every process started afresh, in a shuffled order, their CPU taken over the same
    seconds; then (with_scrapes) each exporter's keep-alive scrapes in turn. One row per
    process: (name, CPU ms per second, scrape p50, p99, body bytes, RSS, peak RSS)."""
    tree = intel_two_socket(tmp / "sys")
    procfs = ProcfsTree(tmp / "proc", threads=64, sockets=2)
    state = tmp / "nvml.json"
    state.write_text(json.dumps({"driver": DRIVER, "gpus": [
        gpu(i, energy_mj=1_000_000 * (i + 1)) for i in range(8)]}))
    node = [f"--path.sysfs={tree.sysfs}", f"--path.procfs={procfs.procfs}", "--sample.interval=1s"]
    exporters: list[tuple[str, Callable[[], ExporterProcess]]] = [
        ("2 sockets + 8 GPUs (default: attribution on)",
         lambda: ExporterProcess(tmp, node, fake_nvml_state=state)),
        ("2 sockets + 8 GPUs, --no-collector.attribution",
         lambda: ExporterProcess(tmp, [*node, "--no-collector.attribution"], fake_nvml_state=state)),
        ("model only (zero config)", lambda: ExporterProcess(tmp, [
            f"--path.sysfs={tmp / 'empty'}", f"--path.procfs={procfs.procfs}",
            "--no-collector.nvml", "--sample.interval=1s"])),
        (DEFAULTS, lambda: ExporterProcess(tmp, [])),
        ("defaults on this machine, --no-collector.attribution",
         lambda: ExporterProcess(tmp, ["--no-collector.attribution"])),
    ]
    others: list[tuple[str, Callable[[], subprocess.Popen]]] = [
        (FLOOR, lambda: subprocess.Popen([sys.executable, "-c", IDLE_LOOP]))]
    for baseline in args.baseline_tree:
        others.append((f"before: {baseline.name} on defaults on this machine",
                       functools.partial(subprocess.Popen,
                                         [sys.executable, "-m", "exporter",
                                          f"--web.listen-address=127.0.0.1:{free_port()}"],
                                         cwd=baseline, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)))
    if args.codecarbon_python.exists():
        others.append((CODECARBON_NAME, lambda: subprocess.Popen(
            [str(args.codecarbon_python), "-c", CODECARBON],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)))
    # the order processes start in changes what each pays (which neighbours keep the vCPUs
    # awake): shuffled in each round, reported in the catalogue's order
    order = list(range(len(exporters) + len(others)))
    random.shuffle(order)
    runs: dict[int, ExporterProcess] = {}
    plain: dict[int, subprocess.Popen] = {}
    results: list[tuple] = []
    try:
        for index in order:
            if index < len(exporters):
                runs[index] = exporters[index][1]()
            else:
                plain[index] = others[index - len(exporters)][1]()
        for exporter in runs.values():
            exporter.wait_ready()
        time.sleep(3)  # past start-up: imports, first NVML init, table loads
        pids = [runs[i].proc.pid for i in range(len(exporters))] + \
               [plain[len(exporters) + i].pid for i in range(len(others))]
        asked = {plain[len(exporters) + i].pid: plain[len(exporters) + i]
                 for i, (name, _) in enumerate(others) if name == CODECARBON_NAME}
        cpu = cpu_ms_per_second(pids, args.seconds, asked)
        # the scrape Prometheus makes after its interval: the first after the window, so it
        # counts the cycles queued since the last count (see exporter.sampler.SETTLE_EVERY)
        first = [scrape_latency(runs[i].port, 1)[0] for i in range(len(exporters))]
        for i, (name, _) in enumerate(exporters):
            p50 = p99 = "-"
            size = 0
            if with_scrapes:
                fast, slow, size = scrape_latency(runs[i].port, args.scrapes)
                p50, p99 = f"{fast:.3f}", f"{slow:.3f}"
            rss, hwm = rss_mb(runs[i].proc.pid)
            results.append((name, cpu[i], p50, p99, size, rss, hwm, first[i]))
        for i, (name, _) in enumerate(others):
            rss, hwm = rss_mb(plain[len(exporters) + i].pid)
            results.append((name, cpu[len(exporters) + i], "-", "-", 0, rss, hwm, None))
    finally:
        for process in plain.values():
            process.kill()
            process.wait()
        for exporter in runs.values():
            exporter.stop()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="idle time to measure CPU over")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds, each with fresh processes started in a shuffled order; "
                             "CPU figures and ratios are the median of the rounds")
    parser.add_argument("--scrapes", type=int, default=1000, help="per exporter, in the last round")
    parser.add_argument("--codecarbon-python", type=Path, default=CODECARBON_PYTHON,
                        help="a Python with codecarbon installed (bench/setup_codecarbon.sh)")
    parser.add_argument("--baseline-tree", type=Path, action="append", default=[],
                        help="another checkout (e.g. git worktree add /tmp/before <commit>): its "
                             "exporter on defaults on this machine runs alongside, for before/after "
                             "(repeatable: one row per tree)")
    args = parser.parse_args()
    if not args.codecarbon_python.exists():
        print(f"no CodeCarbon at {args.codecarbon_python}: run sh bench/setup_codecarbon.sh",
              file=sys.stderr)

    for tree in (Path(__file__).resolve().parent.parent, *args.baseline_tree):
        compile_bytecode(tree)
    rounds: list[list[tuple]] = []
    for number in range(1, args.rounds + 1):
        with tempfile.TemporaryDirectory() as tmpdir:
            rounds.append(one_round(Path(tmpdir), args, with_scrapes=number == args.rounds))
        by_name = {r[0]: r[1] for r in rounds[-1]}
        line = f"round {number}: on defaults {by_name[DEFAULTS]:.3f} ms, " \
               f"{by_name[DEFAULTS] / by_name[FLOOR]:.2f}x the bare loop"
        if CODECARBON_NAME in by_name:
            line += f", {by_name[DEFAULTS] / by_name[CODECARBON_NAME]:.2f}x CodeCarbon"
        print(line, flush=True)

    last = rounds[-1]
    names = [r[0] for r in last]
    cpu = {name: statistics.median(r[i][1] for r in rounds) for i, name in enumerate(names)}
    peak = {name: max(r[i][6] for r in rounds) for i, name in enumerate(names)}
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, 1 s sampling; {args.rounds} "
          f"round(s), CPU over the same {args.seconds:g} s for all in each (median of the rounds); "
          f"then {args.scrapes} keep-alive scrapes each (last round); peak RSS: the most of any round")
    idle = {name: max((r[i][7] for r in rounds), default=None) if last[i][7] is not None else None
            for i, name in enumerate(names)}
    print("| node | CPU ms per cycle | first scrape after the window, ms (most) | scrape p50 ms "
          "| scrape p99 ms | scrape bytes | RSS MiB | peak RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, _cpu, p50, p99, size, rss, _hwm, _first in last:
        first_ms = f"{idle[name]:.3f}" if idle[name] is not None else "-"
        print(f"| {name} | {cpu[name]:.3f} | {first_ms} | {p50} | {p99} | {size} | {rss:.1f} "
              f"| {peak[name]:.1f} |")
    for name in names:
        if name == FLOOR or name == CODECARBON_NAME:
            continue
        # each ratio is taken within a round (the same seconds), then the median of the rounds
        floor_ratio = statistics.median(r[names.index(name)][1] / r[names.index(FLOOR)][1]
                                        for r in rounds)
        line = f"{name}: {floor_ratio:.2f}x the bare loop"
        if CODECARBON_NAME in names:
            codecarbon_ratio = statistics.median(
                r[names.index(name)][1] / r[names.index(CODECARBON_NAME)][1] for r in rounds)
            line += f", {codecarbon_ratio:.2f}x CodeCarbon"
        print(line)
    print("targets (issue 17): on defaults CPU <= 2x the bare loop and <= 0.3x CodeCarbon at 1 s, "
          "peak RSS <= 40 MiB; scrape p99 <= 5 ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
