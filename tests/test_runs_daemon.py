"""Daemon mode: `carbon-exporter run` against the real exporter process on this machine
(cgroup v1 hybrid here: the run's scope is made in the cpuacct hierarchy), with a real
Prometheus scraping it; and the cgroup v2 layout through a fixture tree."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import tempfile
import sys
from pathlib import Path

import pytest

from exporter.attribution import Attribution
from exporter.attribution.cgroups import detect_layout
from exporter.carbon import static_intensity
from exporter.sources.registry import build_sources
from exporter.runs.protocol import ProtocolError, request
from exporter.runs.record import load_record
from exporter.runs.scope import run_name, scope_name
from exporter.runs.service import RunService
from exporter.sampler import Sampler
from tests.fixtures import ProcfsTree
from tests.harness import ROOT, ExporterProcess, FakeClock, PrometheusServer, require, wait_for
from tests.test_runs_embedded import BUSY, threads
from tests.workload_fixtures import WorkloadTree

IDLE_W, MAX_W = 10.0, 50.0
ENV = {"CARBON_EXPORTER_CPU_MODEL_IDLE_WATTS": str(IDLE_W),
       "CARBON_EXPORTER_CPU_MODEL_MAX_WATTS": str(MAX_W),
       "CARBON_EXPORTER_ATTRIBUTION_CPU_IDLE_WATTS": str(IDLE_W),
       "CARBON_EXPORTER_CARBON_INTENSITY": "400"}
INTERVAL = 0.5


def _require_cgroup_control() -> None:
    layout = detect_layout("/sys/fs/cgroup")
    if layout is None or os.geteuid() != 0 or not os.access(layout.root, os.W_OK):
        require("daemon mode needs root and a writable cgroup hierarchy with CPU accounting")


def workload_joules(metrics: str, job: str) -> float:
    pattern = re.compile(r'^carbon_workload_energy_joules_total\{[^}]*workload_job="'
                         + re.escape(job) + r'"[^}]*\} (\S+)$', re.M)
    return sum(float(v) for v in pattern.findall(metrics))


@pytest.fixture
def daemon(tmp_path):
    _require_cgroup_control()
    # the socket's directory: reachable by another user (the test of who may end a run)
    socket_dir = Path(tempfile.mkdtemp(prefix="carbon-runs-"))
    socket_dir.chmod(0o755)
    socket_path = socket_dir / "runs.sock"
    exporter = ExporterProcess(tmp_path, ["--runs.socket", str(socket_path),
                                          f"--sample.interval={INTERVAL}",
                                          "--kubernetes.metadata=none"], env=ENV)
    try:
        exporter.wait_ready()
        wait_for(socket_path.exists, 10, "run socket")
        yield exporter, socket_path
    finally:
        exporter.stop()
        shutil.rmtree(socket_dir, ignore_errors=True)


def test_daemon_run_equals_workload_series_and_prometheus_sees_it(tmp_path, daemon,
                                                                  prometheus_required):
    exporter, socket_path = daemon
    prom = PrometheusServer(tmp_path, [f"127.0.0.1:{exporter.port}"], interval="1s")
    try:
        name = f"daemon-test-{os.getpid()}"
        record_path = tmp_path / "run.json"
        cpu_file = tmp_path / "cpu"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CARBON_EXPORTER_")}
        proc = subprocess.run(
            [sys.executable, "-m", "exporter", "run", "--mode", "daemon", "--daemon",
             exporter.url, "--runs.socket", str(socket_path), "--name", name, "--json",
             str(record_path), "--", sys.executable, "-c", BUSY, str(cpu_file), "4"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr + exporter.output()
        record = load_record(str(record_path))
        assert record["mode"] == "daemon"
        assert record["attribution"]["workload_job"] == name
        cgroup = record["attribution"]["cgroup"]
        assert cgroup.startswith("/carbon.slice/carbon-run-") and run_name(cgroup.rsplit("/", 1)[1]) == name
        # the daemon's own split: the child's CPU share of the model's active power
        child_cpu = float(cpu_file.read_text())
        expected = (MAX_W - IDLE_W) / threads() * child_cpu
        assert record["energy_joules"] == pytest.approx(expected, rel=0.25), (record, child_cpu)
        one_sample = record["power"]["peak_watts"] * INTERVAL + 1e-9
        # the daemon's workload series for the run, after a sample more
        wait_for(lambda: workload_joules(exporter.metrics(), name) > 0, 10, "workload series")
        series = workload_joules(exporter.metrics(), name)
        assert abs(series - record["energy_joules"]) <= one_sample, (series, record["energy_joules"])
        # Prometheus scraping the daemon sees the run as a workload, with the same joules
        selector = f'sum(carbon_workload_energy_joules_total{{workload_job="{name}"}})'

        def scraped():
            result = prom.query(selector)
            return result and abs(float(result[0]["value"][1]) - series) <= one_sample
        wait_for(scraped, 20, "Prometheus to scrape the run's series")
        kinds = prom.query(f'carbon_workload_energy_joules_total{{workload_job="{name}"}}')
        assert {r["metric"]["kind"] for r in kinds} == {"unit"}
        assert {r["metric"]["unit"] for r in kinds} == {cgroup.rsplit("/", 1)[1]}
        # the scope is removed once the run's processes have left it
        layout = detect_layout("/sys/fs/cgroup")
        wait_for(lambda: not os.path.exists(layout.root + cgroup), 10, "scope removed")
    finally:
        prom.stop()


CLAIM = """
import json, os, sys
from exporter.runs.protocol import request
sock = sys.argv[1]
mine = lambda: [l for l in open("/proc/self/cgroup") if ":cpuacct" in l or l.startswith("0::")]
before = mine()
init = open("/proc/1/cgroup").read()
answer = request(sock, {"op": "start", "name": "claim", "pid": 1})  # a pid is not honoured
inside = mine()
print(json.dumps({"answer": answer, "before": before, "inside": inside,
                  "init_unchanged": open("/proc/1/cgroup").read() == init}), flush=True)
sys.stdin.readline()  # the test tries to end the run as another user meanwhile
request(sock, {"op": "end", "run_id": answer["run_id"]})
print(json.dumps({"after": mine()}), flush=True)
"""

# run by the system Python as user nobody, who cannot read this checkout's venv
END_AS_NOBODY = """
import json, socket, sys
sock = socket.socket(socket.AF_UNIX)
sock.connect(sys.argv[1])
sock.sendall(json.dumps({"op": "end", "run_id": sys.argv[2]}).encode() + b"\\n")
print(sock.makefile().readline().strip())
"""


def test_a_run_claims_only_its_caller_and_only_the_caller_ends_it(tmp_path, daemon):
    exporter, socket_path = daemon
    child = subprocess.Popen([sys.executable, "-c", CLAIM, str(socket_path)], cwd=ROOT,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    first = json.loads(child.stdout.readline())
    cgroup = first["answer"]["cgroup"]
    assert any(line.rstrip().endswith(cgroup) for line in first["inside"])
    assert first["init_unchanged"]
    nobody = subprocess.run(["/usr/bin/python3", "-c", END_AS_NOBODY, str(socket_path),
                             first["answer"]["run_id"]], cwd="/", capture_output=True,
                            text=True, user=65534, group=65534, timeout=30)
    assert json.loads(nobody.stdout) == {"ok": False, "error": "no such run of this user"}, \
        nobody.stdout + nobody.stderr
    child.stdin.write("\n")
    child.stdin.flush()
    after = json.loads(child.stdout.readline())["after"]
    assert after == first["before"]  # moved back where it was
    assert child.wait(30) == 0
    with pytest.raises(ProtocolError, match="name"):
        request(str(socket_path), {"op": "start", "name": ""})
    with pytest.raises(ProtocolError, match="unknown op"):
        request(str(socket_path), {"op": "delete"})


def test_v2_layout_run_scope_and_split_by_fixture(tmp_path):
    """cgroup v2 (unified) through a fixture tree: the scope is made in the unified
    hierarchy, the caller's pid is written to its cgroup.procs, and the run's totals equal
    the workload series attribution exports for workload_job=<name>."""
    procfs = ProcfsTree(tmp_path / "proc", threads=8)
    tree = WorkloadTree(procfs, tmp_path / "sys", version="v2")
    tree.add("/system.slice/other.service", processes=2, comm="other")
    tree.next_pid = os.getpid()  # the caller the kernel names through SO_PEERCRED
    tree.add("/user.slice/user-0.slice/session-1.scope", processes=1, comm="python3")
    from exporter.config import resolve
    config = resolve({"path.procfs": str(tmp_path / "proc"), "path.sysfs": str(tmp_path / "sys"),
                      "kubernetes.metadata": "none", "collector.nvml": False,
                      "collector.rapl": False, "cpu_model.idle_watts": IDLE_W,
                      "cpu_model.max_watts": MAX_W, "attribution.cpu_idle_watts": IDLE_W},
                     None, environ={})
    clock = FakeClock()  # the sampler's: cycles an interval apart without waiting for it
    sampler = Sampler(build_sources(config), INTERVAL, static_intensity(config), 1.0, clock=clock)
    assert isinstance(sampler.attribution, Attribution)
    socket_path = str(tmp_path / "runs.sock")
    service = RunService(sampler, socket_path, str(tmp_path / "sys" / "fs" / "cgroup"),
                         str(tmp_path / "proc"))
    name = "v2 run/ü"

    async def scenario():
        assert await service.start()
        await sampler.cycle()
        answer = await asyncio.to_thread(request, socket_path, {"op": "start", "name": name})
        path = answer["cgroup"]
        scope_dir = tmp_path / "sys" / "fs" / "cgroup" / path.lstrip("/")
        assert (scope_dir / "cgroup.procs").read_text() == str(os.getpid())
        assert path == f"/carbon.slice/{scope_name(name, answer['run_id'])}"
        # the kernel's side of the move, in the fixture: the process is now in the scope
        proc = tree.processes[os.getpid()]
        tree.members[proc.cgroup].remove(proc)
        proc.cgroup = path
        tree.members[path] = [proc]
        for ancestor in ("/carbon.slice", path):
            tree.usage_ns.setdefault(ancestor, 0)
            tree._write_counter(ancestor)
        (tmp_path / "proc" / str(os.getpid()) / "cgroup").write_text(f"0::{path}\n")
        for _ in range(4):
            tree.advance({path: 2.0, "/system.slice/other.service": 1.0}, idle_seconds=5.0)
            clock.advance(INTERVAL)
            await sampler.cycle()
        ending = asyncio.create_task(asyncio.to_thread(
            request, socket_path, {"op": "end", "run_id": answer["run_id"]}, 30.0))
        while not ending.done():  # the run's process is done: only the other one works
            tree.advance({"/system.slice/other.service": 1.0}, idle_seconds=5.0)
            clock.advance(INTERVAL)
            await sampler.cycle()
        return path, await ending

    try:
        path, ended = asyncio.run(scenario())
    finally:
        sampler.close()
    run_joules = sum(c["joules"] for c in ended["account"]["components"].values())
    series = [s for s in sampler.attribution.series if s.workload_job == name]
    assert series and {s.kind for s in series} == {"unit"}
    assert {s.unit for s in series} == {path.rsplit("/", 1)[1]}
    assert run_joules > 0
    assert run_joules == pytest.approx(sum(s.joules for s in series), rel=1e-9)
    # the other service got a share too: the run is a part of the node, not all of it
    assert run_joules < sum(ended["account"]["node_joules"].values())
