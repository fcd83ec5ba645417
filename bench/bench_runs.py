#!/usr/bin/env python3
"""Embedded mode's overhead on the tracked process, next to CodeCarbon's tracker, at the
same sampling interval, measured in one run.

Three processes run at once over the same stretch of time, so machine noise falls on all of
them alike: a bare interpreter that only sleeps (the floor), one tracking itself with
`exporter.runs.track(mode="embedded")`, and one with CodeCarbon's OfflineEmissionsTracker
(offline: no network lookups). Each signals when its tracker has started; then the CPU time
of each process is taken over the window: each process reports its own getrusage(2) on SIGUSR1
(utime + stime to the microsecond, ended threads included; /proc/PID/stat's clock ticks are
10 ms, which over a window of some 70 ms of overhead is an error of up to a quarter).
CPU per sample = (process CPU - floor CPU) / samples in the window; RSS added = RSS - the
floor's RSS (imports included: they are part of what the tracker adds).

CodeCarbon is not a dependency; it lives in its own environment under bench/:
    sh bench/setup_codecarbon.sh            # once
    .venv/bin/python bench/bench_runs.py [--seconds 120] [--interval 1] [--rounds 3]

On a shared VM one window moves by 20-30% from round to round (the order the processes start
in, what else runs); each round starts fresh processes in a shuffled order, and the summary
is the median of the rounds.

Target (issue 13): embedded mode at most 1/4 of CodeCarbon's CPU per sample.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_sampler import CODECARBON_PYTHON, compile_bytecode, rss_mb  # noqa: E402


# Every process answers SIGUSR1 with its own CPU time: getrusage(RUSAGE_SELF) keeps the time
# of threads that ended (CodeCarbon's scheduler starts a new timer thread for every sample),
# which summing the live threads' schedstat would lose, and is exact to the microsecond.
REPORT_CPU = """
import resource, signal
def _report_cpu(*_):
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(usage.ru_utime + usage.ru_stime, flush=True)
signal.signal(signal.SIGUSR1, _report_cpu)
"""
FLOOR = REPORT_CPU + "import sys, time\nprint('ready', flush=True)\ntime.sleep(float(sys.argv[1]) + 30)\n"
EMBEDDED = REPORT_CPU + """
import sys, time
from exporter.runs import track
with track("bench", mode="embedded",
           settings={"sample.interval": float(sys.argv[2]), "runs.socket": ""}) as run:
    print("ready", flush=True)
    time.sleep(float(sys.argv[1]) + 30)
"""
CODECARBON = REPORT_CPU + """
import logging, sys, time
from codecarbon import OfflineEmissionsTracker
tracker = OfflineEmissionsTracker(country_iso_code="USA", measure_power_secs=float(sys.argv[2]),
                                  save_to_file=False, log_level="error")
tracker.start()
print("ready", flush=True)
time.sleep(float(sys.argv[1]) + 30)
tracker.stop()
"""


def cpu_seconds(procs: dict[str, subprocess.Popen]) -> dict[str, float]:
    """Each process's CPU seconds, asked of all of them at once (SIGUSR1, see REPORT_CPU)."""
    for proc in procs.values():
        os.kill(proc.pid, signal.SIGUSR1)
    answers = {}
    for name, proc in procs.items():
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        try:
            answers[name] = float(line)
        except ValueError:
            raise SystemExit(f"{name} answered {line!r} instead of its CPU time") from None
    return answers


def one_round(scripts: dict[str, tuple[str, str]], seconds: float, interval: float,
              env: dict[str, str]) -> tuple[float, dict[str, float], dict[str, float]]:
    """All the processes at once, started in a shuffled order (the one started last is not
    always the same); (window seconds, CPU seconds in the window, RSS MiB) per process."""
    order = list(scripts)
    random.shuffle(order)
    procs = {name: subprocess.Popen([scripts[name][0], "-c", scripts[name][1], str(seconds),
                                     str(interval)], cwd=ROOT, env=env,
                                    stdout=subprocess.PIPE, text=True)
             for name in order}
    try:
        for name, proc in procs.items():
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise SystemExit(f"{name} did not start")
        time.sleep(3 * interval)  # past the first samples and lazy imports
        before = cpu_seconds(procs)
        started = time.monotonic()
        time.sleep(seconds)
        after = cpu_seconds(procs)
        window = time.monotonic() - started
        rss = {name: rss_mb(proc.pid)[0] for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()
    return window, {name: after[name] - before[name] for name in scripts}, rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="window of each round")
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds, each with fresh processes; the summary is their median")
    parser.add_argument("--codecarbon-python", type=Path, default=CODECARBON_PYTHON,
                        help="a Python with codecarbon installed (bench/setup_codecarbon.sh)")
    args = parser.parse_args()
    floor_name, embedded_name = "floor (bare interpreter)", "carbon-exporter embedded"
    codecarbon_name = "CodeCarbon OfflineEmissionsTracker"
    scripts = {floor_name: (sys.executable, FLOOR), embedded_name: (sys.executable, EMBEDDED)}
    if args.codecarbon_python.exists():
        scripts[codecarbon_name] = (str(args.codecarbon_python), CODECARBON)
    else:
        print("no CodeCarbon (sh bench/setup_codecarbon.sh): measuring embedded mode alone",
              file=sys.stderr)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARBON_EXPORTER_")}
    compile_bytecode(ROOT)  # as installed: see compile_bytecode
    print(f"\n{args.rounds} round(s) of {args.seconds:.0f} s, sampling every {args.interval:g} s, "
          f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs\n")
    trackers = [name for name in scripts if name != floor_name]
    print("| round | " + " | ".join(f"{name}: CPU per sample" for name in trackers)
          + (" | ratio" if len(trackers) == 2 else "") + " | floor | "
          + " | ".join(f"{name}: RSS added" for name in trackers) + " |")
    print("|---:|" + "---:|" * (2 * len(trackers) + 1 + (len(trackers) == 2)))
    per_sample: dict[str, list[float]] = {name: [] for name in trackers}
    added: dict[str, list[float]] = {name: [] for name in trackers}
    ratios: list[float] = []
    for number in range(1, args.rounds + 1):
        window, cpu, rss = one_round(scripts, args.seconds, args.interval, env)
        samples = window / args.interval
        for name in trackers:
            per_sample[name].append((cpu[name] - cpu[floor_name]) / samples)
            added[name].append(rss[name] - rss[floor_name])
        ratio = ""
        if len(trackers) == 2 and per_sample[trackers[1]][-1] > 0:
            ratios.append(per_sample[trackers[0]][-1] / per_sample[trackers[1]][-1])
            ratio = f" | {ratios[-1]:.2f}"
        print(f"| {number} | " + " | ".join(f"{1000 * per_sample[n][-1]:.2f} ms" for n in trackers)
              + ratio + f" | {1000 * cpu[floor_name] / samples:.3f} ms | "
              + " | ".join(f"{added[n][-1]:.0f} MiB" for n in trackers) + " |", flush=True)
    print()
    for name in trackers:
        print(f"{name}: CPU per sample, median of the rounds: "
              f"{1000 * statistics.median(per_sample[name]):.2f} ms; RSS added "
              f"{statistics.median(added[name]):.0f} MiB")
    if ratios:
        print(f"embedded / CodeCarbon CPU per sample: median {statistics.median(ratios):.2f} "
              f"over {len(ratios)} round(s) (target <= 0.25); each round: "
              + ", ".join(f"{r:.2f}" for r in ratios))


if __name__ == "__main__":
    main()
