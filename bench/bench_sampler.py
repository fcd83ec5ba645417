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
second at 1 s sampling. Then each exporter gets its keep-alive scrapes in turn.

    .venv/bin/python bench/bench_sampler.py [--seconds 60] [--scrapes 1000]

Targets (issue 17): on defaults, CPU per second <= 2x the bare loop's and <= 0.3x
CodeCarbon's at 1 s, peak RSS <= 40 MiB; (issue 2) scrape p99 <= 5 ms.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

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


def rss_mb(pid: int) -> tuple[float, float]:
    """VmRSS and VmHWM (peak) in MiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024
    hwm = int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024
    return rss, hwm


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="idle time to measure CPU over")
    parser.add_argument("--scrapes", type=int, default=1000)
    parser.add_argument("--codecarbon-python", type=Path, default=CODECARBON_PYTHON,
                        help="a Python with codecarbon installed (bench/setup_codecarbon.sh)")
    parser.add_argument("--baseline-tree", type=Path, action="append", default=[],
                        help="another checkout (e.g. git worktree add /tmp/before <commit>): its "
                             "exporter on defaults on this machine runs alongside, for before/after "
                             "(repeatable: one row per tree)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        tree = intel_two_socket(tmp / "sys")
        procfs = ProcfsTree(tmp / "proc", threads=64, sockets=2)
        state = tmp / "nvml.json"
        state.write_text(json.dumps({"driver": "550.54.15", "gpus": [{
            "name": "NVIDIA H100 80GB HBM3", "uuid": f"GPU-bench-{i}", "pci": f"00000000:{i:02x}:00.0",
            "energy_mj": 1_000_000 * (i + 1), "power_mw": 300000, "limit_mw": 700000}
            for i in range(8)]}))
        node = [f"--path.sysfs={tree.sysfs}", f"--path.procfs={procfs.procfs}", "--sample.interval=1s"]
        runs = [
            ("2 sockets + 8 GPUs (default: attribution on)",
             ExporterProcess(tmp, node, fake_nvml_state=state)),
            ("2 sockets + 8 GPUs, --no-collector.attribution",
             ExporterProcess(tmp, [*node, "--no-collector.attribution"], fake_nvml_state=state)),
            ("model only (zero config)", ExporterProcess(tmp, [
                f"--path.sysfs={tmp / 'empty'}", f"--path.procfs={procfs.procfs}",
                "--no-collector.nvml", "--sample.interval=1s"])),
            ("defaults on this machine (its /sys, /proc, cgroups)", ExporterProcess(tmp, [])),
            ("defaults on this machine, --no-collector.attribution",
             ExporterProcess(tmp, ["--no-collector.attribution"])),
        ]
        floor = subprocess.Popen([sys.executable, "-c", IDLE_LOOP])
        others = [("floor: bare asyncio loop, 1 wake-up/s", floor)]
        for baseline in args.baseline_tree:
            others.append((f"before: {baseline.name} on defaults on this machine",
                           subprocess.Popen([sys.executable, "-m", "exporter",
                                             f"--web.listen-address=127.0.0.1:{free_port()}"],
                                            cwd=baseline, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL)))
        if args.codecarbon_python.exists():
            others.append(("CodeCarbon 3.3.2 OfflineEmissionsTracker, 1 s",
                           subprocess.Popen([str(args.codecarbon_python), "-c", CODECARBON],
                                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                            text=True)))
        else:
            print(f"no CodeCarbon at {args.codecarbon_python}: run sh bench/setup_codecarbon.sh",
                  file=sys.stderr)
        results = []
        try:
            for _, exporter in runs:
                exporter.wait_ready()
            time.sleep(3)  # past start-up: imports, first NVML init, table loads
            cpu = cpu_ms_per_second([e.proc.pid for _, e in runs] + [p.pid for _, p in others],
                                    args.seconds, {p.pid: p for name, p in others
                                                   if name.startswith("CodeCarbon")})
            for (name, exporter), cpu_ms in zip(runs, cpu):
                p50, p99, size = scrape_latency(exporter.port, args.scrapes)
                rss, hwm = rss_mb(exporter.proc.pid)
                results.append((name, cpu_ms, f"{p50:.3f}", f"{p99:.3f}", size, rss, hwm))
            for (name, process), cpu_ms in zip(others, cpu[len(runs):]):
                rss, hwm = rss_mb(process.pid)
                results.append((name, cpu_ms, "-", "-", 0, rss, hwm))
        finally:
            for _, process in others:
                process.kill()
                process.wait()
            for _, exporter in runs:
                exporter.stop()

    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, 1 s sampling; CPU over the "
          f"same {args.seconds:g} s for all; then {args.scrapes} keep-alive scrapes each")
    print("| node | CPU ms per cycle | scrape p50 ms | scrape p99 ms | scrape bytes | RSS MiB | peak RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, cpu_ms, p50, p99, size, rss, hwm in results:
        print(f"| {name} | {cpu_ms:.3f} | {p50} | {p99} | {size} | {rss:.1f} | {hwm:.1f} |")
    floor_ms = next(r[1] for r in results if r[0].startswith("floor"))
    by_name = {r[0]: r[1] for r in results}
    codecarbon = next((ms for name, ms in by_name.items() if name.startswith("CodeCarbon")), None)
    for name, cpu_ms, *_ in results[:len(runs)]:
        ratio = f", {cpu_ms / codecarbon:.2f}x CodeCarbon" if codecarbon else ""
        print(f"{name}: {cpu_ms / floor_ms:.2f}x the bare loop{ratio}")
    print("targets (issue 17): on defaults CPU <= 2x the bare loop and <= 0.3x CodeCarbon at 1 s, "
          "peak RSS <= 40 MiB; scrape p99 <= 5 ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
