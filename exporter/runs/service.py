"""Daemon mode, the exporter's side: a local Unix socket where a run registers itself.

    {"op": "start", "name": N}  the daemon creates /carbon.slice/carbon-run-<N>-<id>.scope
                                (exporter.runs.scope) in the cgroup hierarchy attribution
                                reads (v2 unified, or v1 cpuacct), and moves the *caller*,
                                identified by the kernel (SO_PEERCRED), into it. Its children
                                follow. Nobody can claim another process: the pid is never
                                taken from the request.
    {"op": "end", "run_id": I}  only the starter's uid (or root) may end it; the answer waits
                                for the first sample read after the request, so the run's
                                last moments are in; the caller goes back to its cgroup.

While it runs, attribution credits the scope like any unit workload, with workload_job=<N>
(the name is in the cgroup's name: no other state), so the run is a Prometheus series and
the dashboards show it live. The run's own totals are summed from the same per-sample split,
before cardinality limits fold small series into "other". The socket is a file: nothing is
exposed on the network, and its directory's permissions decide who may use it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import struct
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from exporter import __version__
from exporter.attribution.cgroups import Layout, cgroup_of, detect_layout
from exporter.attribution.split import IDLE
from exporter.runs.account import RunAccount, embodied_share
from exporter.runs.protocol import MAX_LINE
from exporter.runs.scope import SLICE, cgroup_path, check_name

log = logging.getLogger(__name__)

MAX_RUNS_PER_UID = 64
ABANDONED_SECONDS = 600.0  # a started run whose cgroup stayed empty this long is dropped


@dataclass(slots=True)
class ActiveRun:
    run_id: str
    name: str
    uid: int
    pid: int
    cgroup: str
    original: str | None
    started_at: float
    account: RunAccount = field(default_factory=RunAccount)
    ended: bool = False
    empty_since: float | None = None


class RunService:
    def __init__(self, sampler, path: str, cgroup_root: str, procfs: str) -> None:
        self.sampler = sampler
        self.path = path
        self.cgroup_root = cgroup_root
        self.procfs = procfs
        self.runs: dict[str, ActiveRun] = {}
        self.cleanup: dict[str, float] = {}  # cgroup dirs to remove once empty -> since
        self.waiters: list[tuple[float, asyncio.Future]] = []
        self.server: asyncio.AbstractServer | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.attribution = sampler.attribution

    # --- lifecycle ---------------------------------------------------------------------------

    def _layout(self) -> Layout | None:
        layout = getattr(self.attribution.reader, "layout", None)
        return layout or detect_layout(self.cgroup_root)

    async def start(self) -> bool:
        if self.attribution is None:
            log.info("run socket off: attribution is disabled")
            return False
        if os.path.exists(self.path):
            try:
                with socket.socket(socket.AF_UNIX) as probe:
                    probe.settimeout(1.0)
                    probe.connect(self.path)
                log.info("run socket off: %s is in use by another process", self.path)
                return False
            except OSError:
                try:
                    os.unlink(self.path)  # a stale socket of an exporter that died
                except OSError as exc:
                    log.info("run socket off: cannot remove stale %s: %s", self.path, exc.strerror)
                    return False
        try:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            self.server = await asyncio.start_unix_server(self._serve, self.path, limit=MAX_LINE)
            os.chmod(self.path, 0o666)  # any local user may track a run (only their own)
        except OSError as exc:
            log.info("run socket off: cannot listen on %s: %s", self.path, exc.strerror or exc)
            return False
        self.loop = asyncio.get_running_loop()
        self.attribution.listeners.append(self.on_split)
        # while a run goes on, each sample is split as it ends (its end waits for one)
        self.sampler.settle_each_cycle = lambda: bool(self.runs or self.waiters or self.cleanup)
        log.info("runs: listening on %s (cgroup %s)", self.path,
                 getattr(self._layout(), "version", "none"))
        return True

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            try:
                os.unlink(self.path)
            except OSError:
                pass
        with self.sampler.lock:
            waiters, self.waiters = self.waiters, []
        _wake([future for _, future in waiters])
        if self.on_split in self.attribution.listeners:
            self.attribution.listeners.remove(self.on_split)
        self.sampler.settle_each_cycle = None

    # --- the socket --------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            sock = writer.get_extra_info("socket")
            pid, uid, _gid = struct.unpack(
                "3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
            try:
                line = await asyncio.wait_for(reader.readline(), timeout=10.0)
                request = json.loads(line)
                if not isinstance(request, dict):
                    raise ValueError("not an object")
            except (ValueError, asyncio.LimitOverrunError, TimeoutError):
                answer: dict[str, Any] = {"ok": False, "error": "bad request"}
            else:
                answer = await self._handle(request, pid, uid)
        except Exception as exc:  # a bad client must never hurt the daemon
            log.exception("run socket request failed")
            answer = {"ok": False, "error": f"internal error: {type(exc).__name__}"}
        try:
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
            writer.close()
            await writer.wait_closed()
        except (OSError, ConnectionError):
            pass

    async def _handle(self, request: dict[str, Any], pid: int, uid: int) -> dict[str, Any]:
        op = request.get("op")
        layout = self._layout()
        if op == "hello":
            return {"ok": True, "version": __version__, "interval": self.sampler.interval,
                    "cgroup_version": layout.version if layout else None}
        if op == "start":
            return self._start(str(request.get("name", "")), pid, uid, layout)
        if op == "end":
            return await self._end(str(request.get("run_id", "")), pid, uid, layout)
        return {"ok": False, "error": f"unknown op {op!r}"}

    def _start(self, name: str, pid: int, uid: int, layout: Layout | None) -> dict[str, Any]:
        try:
            check_name(name)
        except ValueError as exc:
            return {"ok": False, "error": str(exc)}
        if layout is None:
            return {"ok": False, "error": f"no cgroup hierarchy with CPU accounting under "
                                          f"{self.cgroup_root}"}
        if sum(1 for r in self.runs.values() if r.uid == uid) >= MAX_RUNS_PER_UID:
            return {"ok": False, "error": f"more than {MAX_RUNS_PER_UID} runs of this user"}
        run_id = uuid.uuid4().hex
        path = cgroup_path(name, run_id)
        try:
            with open(f"{self.procfs}/{pid}/cgroup", encoding="utf-8") as handle:
                original = cgroup_of(handle.read(), layout)
            directory = layout.root + path
            os.makedirs(layout.root + "/" + SLICE, exist_ok=True)
            os.mkdir(directory)
            with open(directory + "/cgroup.procs", "w", encoding="ascii") as handle:
                handle.write(str(pid))
        except OSError as exc:
            return {"ok": False, "error": f"cannot place the run in cgroup {path}: "
                                          f"{exc.strerror or exc}"}
        recheck = getattr(self.attribution.reader, "recheck_now", None)
        if recheck is not None:
            recheck.append(str(pid))  # the reader learns the move at its next sample
        with self.sampler.lock:  # the sampler thread walks the runs at each sample
            self.sampler.settle()  # samples before the start are split before it is a run
            self.runs[run_id] = ActiveRun(run_id, name, uid, pid, path, original, time.time())
        log.info("run %s started: %s (pid %d, uid %d) in %s", run_id[:8], name, pid, uid, path)
        return {"ok": True, "run_id": run_id, "cgroup": path, "workload_job": name}

    async def _end(self, run_id: str, pid: int, uid: int, layout: Layout | None) -> dict[str, Any]:
        run = self.runs.get(run_id)
        if run is None or (uid != run.uid and uid != 0):
            return {"ok": False, "error": "no such run of this user"}
        # the answer waits for a sample whose reads started after this request
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        with self.sampler.lock:
            self.waiters.append((time.monotonic(), future))
        try:
            await asyncio.wait_for(asyncio.shield(future),
                                   timeout=3 * self.sampler.interval + 10.0)
        except TimeoutError:
            log.warning("run %s: no sample after its end within the timeout", run_id[:8])
        with self.sampler.lock:
            run.ended = True
            self.runs.pop(run_id, None)
        if layout is not None and pid == run.pid and run.original is not None:
            try:  # back where it was: the process may go on after the run (a notebook)
                with open(layout.root + run.original.rstrip("/") + "/cgroup.procs", "w",
                          encoding="ascii") as handle:
                    handle.write(str(pid))
            except OSError:
                pass
        with self.sampler.lock:
            if layout is not None:
                self.cleanup[layout.root + run.cgroup] = time.monotonic()
            account = run.account.snapshot()
        intensity = self.sampler.intensity
        return {"ok": True, "account": account_to_wire(account),
                "collectors": [(w.source.name, w.status.reason, w.status.detail)
                               for w in self.sampler.workers],
                "intensity": {"grams_per_kwh": intensity.grams_per_kwh,
                              "grid_zone": intensity.grid_zone, "provider": intensity.provider,
                              "kind": intensity.kind,
                              "basis": getattr(intensity, "basis", "")}}

    # --- every sample (the sampler thread, under sampler.lock, from Attribution._account) ---

    def on_split(self, parts: dict[str, dict], ratio: dict[str, float], keys: dict[str, Any],
                 measured: dict[str, float], seconds: float, observed_at: float | None) -> None:
        if not (self.runs or self.waiters or self.cleanup):  # the usual sample: no run
            return
        sampler = self.sampler
        devices: dict[str, dict[str, str]] = {}
        for track in sampler.ledger.tracks.values():
            if track.component and track.present:
                devices.setdefault(track.component, {})[track.device] = track.source
        idle = sum(parts.get(c, {}).get(IDLE, 0.0) for c in ("cpu", "dram"))
        now = time.monotonic()
        for run in self.runs.values():
            key = keys.get(run.cgroup)
            run.empty_since = None if key is not None else (run.empty_since or now)
            run_joules = {c: by_key.get(key, 0.0) for c, by_key in parts.items()} \
                if key is not None else {}
            gpu_total = measured.get("gpu", 0.0)
            gpu_share = run_joules.get("gpu", 0.0) / gpu_total if gpu_total > 0 else 0.0
            embodied: dict[str, float] = {}
            if sampler.embodied is not None and seconds > 0:
                embodied = embodied_share(sampler.embodied.rates(sampler.gpus), seconds,
                                          run_joules, measured,
                                          {g.device: gpu_share for g in sampler.gpus})
            if seconds > 0:
                run.account.add(run_joules, measured, idle, ratio, embodied,
                                {c: d for c, d in devices.items() if c in run_joules},
                                sampler.intensity, sampler.pue, seconds)
        for run_id in [r.run_id for r in self.runs.values()
                       if r.empty_since is not None and now - r.empty_since > ABANDONED_SECONDS]:
            run = self.runs.pop(run_id)
            layout = self._layout()
            log.info("run %s (%s) abandoned: its cgroup stayed empty", run_id[:8], run.name)
            if layout is not None:
                self.cleanup[layout.root + run.cgroup] = now
        if observed_at is not None and self.waiters:
            ready = [f for t, f in self.waiters if t <= observed_at]
            self.waiters = [(t, f) for t, f in self.waiters if t > observed_at]
            if ready and self.loop is not None:
                try:  # the futures belong to the event loop; this runs in the sampler thread
                    self.loop.call_soon_threadsafe(_wake, ready)
                except RuntimeError:
                    pass  # the loop has ended
        for directory, since in list(self.cleanup.items()):
            try:
                os.rmdir(directory)  # fails while a process is left in it: try again later
                del self.cleanup[directory]
            except FileNotFoundError:
                del self.cleanup[directory]
            except OSError:
                if now - since > 24 * 3600:
                    del self.cleanup[directory]


def _wake(futures: list[asyncio.Future]) -> None:
    for future in futures:
        if not future.done():
            future.set_result(None)


def account_to_wire(account: RunAccount) -> dict[str, Any]:
    return {
        "components": {c: {"joules": t.joules, "grams": t.grams,
                           "embodied_grams": t.embodied_grams, "devices": t.devices}
                       for c, t in account.components.items()},
        "node_joules": account.node_joules, "node_grams": account.node_grams,
        "idle_joules": account.idle_joules, "samples": account.samples,
        "seconds": account.seconds, "peak_watts": account.peak_watts, "pue": account.pue,
        "intensities": [{"grams_per_kwh": i.intensity.grams_per_kwh,
                         "grid_zone": i.intensity.grid_zone, "provider": i.intensity.provider,
                         "kind": i.intensity.kind, "joules": i.joules,
                         "basis": getattr(i.intensity, "basis", "")}
                        for i in account.intensities],
    }
