#!/usr/bin/env python3
"""What a sample cycle's scheduling costs, before any source is read: the alternatives for
the sampler's shape, each in its own process, all measured over the same seconds.

- asyncio-sleep: a bare asyncio loop waking once per interval (the floor);
- asyncio+lanes: an asyncio loop that hands one job to each of N lane threads per cycle and
  awaits them (the exporter's sampler: the event loop wakes for the tick and for each lane);
- thread+lanes: a sampler thread with its own clock (Event.wait) that hands one job to each
  lane thread and waits on them; the event loop would not wake at all for sampling;
- thread-inline: a sampler thread that does the lanes' work itself (no hand-off, no
  watchdog: the lower bound);
- thread-inline+watchdog-thread: the same, plus a watchdog thread that wakes every interval
  to look for a stalled read (embedded mode's shape, there every 5 s);
- thread-inline+itimer: the same, the watchdog being the process's interval timer, armed
  and disarmed around each cycle, its SIGALRM handled by an idle event loop (the daemon's
  shape in rounds 3 and 4: no wake-up unless a read stalls);
- thread-inline+itimer+poll: the same, the sampler waiting in poll(2) on a pipe that a halt
  writes to instead of a timed threading.Event.wait (the daemon's and embedded mode's wait
  since round 5, exporter.sampler.HaltFlag);
- thread-inline+sleep: a sampler thread waiting in time.sleep (a halt could not cut the wait
  short: the lower bound of a wait, for comparison).

    .venv/bin/python bench/bench_handoff.py [--seconds 30] [--interval 1] [--lanes 2]

Prints CPU milliseconds per cycle (all threads, from /proc/PID/task/*/schedstat).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

# The lane threads both "+lanes" shapes hand their jobs to: one queue and thread per lane.
LANE_THREADS = """
import concurrent.futures, queue, threading
def lane(jobs):
    while True:
        job = jobs.get()
        job.set_result(sum(range(50)))
queues = [queue.SimpleQueue() for _ in range(LANES)]
for q in queues:
    threading.Thread(target=lane, args=(q,), daemon=True).start()"""

# The daemon's shape since round 3, the watchdog being the interval timer: the sampler
# thread's wait (WAIT_SETUP, WAIT) is what the two itimer shapes differ in.
ITIMER_SHAPE = """
import asyncio, os, select, signal, threading
def sampler():
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    WAIT_SETUP
    while not WAIT:
        signal.setitimer(signal.ITIMER_REAL, INTERVAL)
        for _ in range(LANES):
            sum(range(50))
        signal.setitimer(signal.ITIMER_REAL, 0)
async def main():
    asyncio.get_running_loop().add_signal_handler(signal.SIGALRM, lambda: None)
    threading.Thread(target=sampler, daemon=True).start()
    await asyncio.Event().wait()  # the event loop serving HTTP: it never wakes here
asyncio.run(main())
"""

PROGRAMS = {
    "asyncio-sleep": """
import asyncio
async def main():
    while True:
        await asyncio.sleep(INTERVAL)
asyncio.run(main())
""",
    "asyncio+lanes": "import asyncio" + LANE_THREADS + """
async def main():
    while True:
        futures = []
        for q in queues:
            f = concurrent.futures.Future()
            q.put(f)
            futures.append(asyncio.wrap_future(f))
        await asyncio.wait(futures, timeout=INTERVAL)
        await asyncio.sleep(INTERVAL)
asyncio.run(main())
""",
    "thread+lanes": LANE_THREADS + """
stop = threading.Event()
while not stop.wait(INTERVAL):
    futures = []
    for q in queues:
        f = concurrent.futures.Future()
        q.put(f)
        futures.append(f)
    concurrent.futures.wait(futures, timeout=INTERVAL)
""",
    "thread-inline": """
import threading
stop = threading.Event()
while not stop.wait(INTERVAL):
    for _ in range(LANES):
        sum(range(50))
""",
    # the exporter's shape since round 3: inline reads, and a watchdog for a stalled one
    "thread-inline+watchdog-thread": """
import threading, time
stop = threading.Event()
current = [None]
def watchdog():
    while not stop.wait(INTERVAL):
        started = current[0]
        if started is not None and time.monotonic() - started > INTERVAL:
            pass  # (the sampler would set the read aside here)
threading.Thread(target=watchdog, daemon=True).start()
while not stop.wait(INTERVAL):
    for _ in range(LANES):
        current[0] = time.monotonic()
        sum(range(50))
        current[0] = None
""",
    "thread-inline+itimer": ITIMER_SHAPE.replace("WAIT_SETUP", "stop = threading.Event()")
    .replace("WAIT", "stop.wait(INTERVAL)"),
    "thread-inline+itimer+poll": ITIMER_SHAPE.replace(
        "WAIT_SETUP", "halt, _ = os.pipe()  # halting writes a byte to the other end\n"
        "    poller = select.poll()\n    poller.register(halt, select.POLLIN)")
    .replace("WAIT", "poller.poll(INTERVAL * 1000.0)"),
    "thread-inline+sleep": """
import threading, time
def sampler():
    while True:
        time.sleep(INTERVAL)
        for _ in range(LANES):
            sum(range(50))
threading.Thread(target=sampler, daemon=True).start()
threading.Event().wait()
""",
}


def cpu_seconds(pid: int) -> float:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total / 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--lanes", type=int, default=2)
    args = parser.parse_args()
    procs = {name: subprocess.Popen([sys.executable, "-c", code.replace("INTERVAL", repr(args.interval))
                                     .replace("LANES", str(args.lanes))])
             for name, code in PROGRAMS.items()}
    try:
        time.sleep(2)
        before = {name: cpu_seconds(p.pid) for name, p in procs.items()}
        time.sleep(args.seconds)
        after = {name: cpu_seconds(p.pid) for name, p in procs.items()}
    finally:
        for p in procs.values():
            p.kill()
            p.wait()
    cycles = args.seconds / args.interval
    floor = (after["asyncio-sleep"] - before["asyncio-sleep"]) / cycles * 1000
    print(f"python {sys.version.split()[0]}, {args.lanes} lanes, {args.interval:g} s interval, "
          f"{args.seconds:g} s side by side")
    print("| shape | CPU ms per cycle | x the bare loop |")
    print("|---|---:|---:|")
    for name in PROGRAMS:
        ms = (after[name] - before[name]) / cycles * 1000
        print(f"| {name} | {ms:.3f} | {ms / floor:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
