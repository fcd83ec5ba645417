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
    .venv/bin/python bench/bench_runs.py [--seconds 120] [--interval 1]

Target (issue 13): embedded mode at most 1/4 of CodeCarbon's CPU per sample.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_sampler import CODECARBON_PYTHON, rss_mb  # noqa: E402


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--codecarbon-python", type=Path, default=CODECARBON_PYTHON,
                        help="a Python with codecarbon installed (bench/setup_codecarbon.sh)")
    args = parser.parse_args()
    scripts = {"floor (bare interpreter)": (sys.executable, FLOOR),
               "carbon-exporter embedded": (sys.executable, EMBEDDED)}
    if args.codecarbon_python.exists():
        scripts["CodeCarbon OfflineEmissionsTracker"] = (str(args.codecarbon_python), CODECARBON)
    else:
        print("no CodeCarbon (sh bench/setup_codecarbon.sh): measuring embedded mode alone",
              file=sys.stderr)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARBON_EXPORTER_")}
    procs = {name: subprocess.Popen([python, "-c", code, str(args.seconds),
                                     str(args.interval)], cwd=ROOT, env=env,
                                    stdout=subprocess.PIPE, text=True)
             for name, (python, code) in scripts.items()}
    try:
        for name, proc in procs.items():
            if proc.stdout.readline().strip() != "ready":
                raise SystemExit(f"{name} did not start")
        time.sleep(3 * args.interval)  # past the first samples and lazy imports
        pids = {name: proc.pid for name, proc in procs.items()}
        before = cpu_seconds(procs)
        started = time.monotonic()
        time.sleep(args.seconds)
        after = cpu_seconds(procs)
        window = time.monotonic() - started
        rss = {name: rss_mb(pid)[0] for name, pid in pids.items()}
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()
    samples = window / args.interval
    floor_name = next(iter(procs))
    floor_cpu = after[floor_name] - before[floor_name]
    print(f"\n{window:.0f} s window, sampling every {args.interval:g} s "
          f"({samples:.0f} samples), Python {sys.version.split()[0]}, {os.cpu_count()} CPUs\n")
    print("| process | CPU per sample | RSS | RSS added |")
    print("|---|---:|---:|---:|")
    per_sample = {}
    for name in procs:
        cpu = after[name] - before[name]
        if name == floor_name:
            print(f"| {name} | {1000 * cpu / samples:.2f} ms (floor) | {rss[name]:.0f} MiB | |")
            continue
        per_sample[name] = (cpu - floor_cpu) / samples
        print(f"| {name} | {1000 * per_sample[name]:.2f} ms | {rss[name]:.0f} MiB | "
              f"{rss[name] - rss[floor_name]:.0f} MiB |")
    names = list(per_sample)
    if len(names) == 2 and per_sample[names[1]] > 0:
        print(f"\nembedded / CodeCarbon CPU per sample: "
              f"{per_sample[names[0]] / per_sample[names[1]]:.2f} (target <= 0.25)")


if __name__ == "__main__":
    main()
