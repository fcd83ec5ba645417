"""A simulated fleet: real exporter processes on loopback, each on its own fixture trees in
the kernel's layout, of different shapes:

  gpu   two Xeon sockets (RAPL package + dram) and two GPUs through the fake NVML, a pod and
        a Slurm job running
  cpu2  two Xeon sockets (RAPL), no GPU, a pod and a Slurm job
  vm    no RAPL, no GPU: the CPU and DRAM models, a pod

Pods are named by one fake kubelet (read-only port shape) shared by the fleet, in the
namespaces ml and web; Slurm jobs get workload_job="slurm-<n>". `advance()` moves every
counter as time passes, so rates are not zero. Used by tests/test_fleet.py (a few nodes, in
CI), tests/test_remote_write.py and bench/bench_fleet.py (50 and more).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.fixtures import PowercapTree, ProcfsTree, intel_two_socket
from tests.harness import ExporterProcess
from tests.workload_fixtures import WorkloadTree, container_cgroup, container_id, pod_uid

KINDS = ("gpu", "cpu2", "vm")
NAMESPACES = ("ml", "web")
# per step of one second: joules per RAPL zone, GPU watts
PACKAGE_WATTS, DRAM_WATTS, GPU_WATTS = 120.0, 15.0, 300.0


class _Kubelet(BaseHTTPRequestHandler):
    pods: list[dict] = []

    def do_GET(self):
        body = json.dumps({"kind": "PodList", "apiVersion": "v1", "metadata": {},
                           "items": self.server.pods}).encode()  # type: ignore[attr-defined]
        self.send_response(200 if self.path == "/pods" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@dataclass
class FleetNode:
    root: Path
    kind: str
    index: int
    procfs: ProcfsTree = field(init=False)
    workloads: WorkloadTree = field(init=False)
    rapl: PowercapTree | None = field(init=False, default=None)
    gpu_state: Path | None = field(init=False, default=None)
    gpu_energy_mj: list[int] = field(init=False, default_factory=list)
    cgroups: list[str] = field(init=False, default_factory=list)
    pod: dict = field(init=False)
    exporter: ExporterProcess | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        sysfs = self.root / "sys"
        if self.kind in ("gpu", "cpu2"):
            self.rapl = intel_two_socket(sysfs)
        self.procfs = ProcfsTree(self.root / "proc", threads=64 if self.kind != "vm" else 8,
                                 sockets=2 if self.kind != "vm" else 1)
        self.workloads = WorkloadTree(self.procfs, sysfs, write_pid_stats=False)
        pod_n = self.index + 1
        pod_cgroup = container_cgroup(pod_n)
        self.workloads.add(pod_cgroup)
        self.cgroups.append(pod_cgroup)
        if self.kind != "vm":
            job = f"/slurm/uid_1000/job_{1000 + self.index}/step_0/task_0"
            self.workloads.add(job)
            self.cgroups.append(job)
        self.pod = {"metadata": {"name": f"{self.kind}-{self.index}",
                                 "namespace": NAMESPACES[self.index % len(NAMESPACES)],
                                 "uid": pod_uid(pod_n)},
                    "status": {"containerStatuses": [{
                        "name": "main", "containerID": f"containerd://{container_id(pod_n)}"}]}}
        if self.kind == "gpu":
            self.gpu_state = self.root / "nvml.json"
            self.gpu_energy_mj = [1_000, 2_000]
            self._write_gpus()

    def _write_gpus(self) -> None:
        assert self.gpu_state is not None
        gpus = [{"name": "NVIDIA H100 80GB HBM3",
                 "uuid": f"GPU-{self.index:08x}-0000-0000-0000-{n:012x}",
                 "pci": f"00000000:{0x18 + n:02x}:00.0", "energy_mj": energy,
                 "power_mw": int(GPU_WATTS * 1000), "limit_mw": 700_000}
                for n, energy in enumerate(self.gpu_energy_mj)]
        tmp = self.gpu_state.with_suffix(".tmp")
        tmp.write_text(json.dumps({"driver": "550.54.15", "gpus": gpus}))
        tmp.replace(self.gpu_state)

    def args(self, kubelet_url: str, interval: str) -> list[str]:
        args = [f"--path.sysfs={self.root / 'sys'}", f"--path.procfs={self.procfs.procfs}",
                f"--sample.interval={interval}", "--carbon.zone=DE",
                "--kubernetes.metadata=kubelet-readonly", f"--kubernetes.url={kubelet_url}",
                "--attribution.cpu-idle-watts=20"]
        if self.kind != "gpu":
            args.append("--no-collector.nvml")
        return args

    def start(self, tmp: Path, kubelet_url: str, interval: str = "1s",
              extra: list[str] | tuple[str, ...] = ()) -> None:
        self.exporter = ExporterProcess(tmp, [*self.args(kubelet_url, interval), *extra],
                                        fake_nvml_state=self.gpu_state)

    def advance(self, seconds: float) -> None:
        if self.rapl is not None:
            for zone in ("intel-rapl:0", "intel-rapl:1"):
                self.rapl.advance(zone, PACKAGE_WATTS * seconds)
            for zone in ("intel-rapl:0:2", "intel-rapl:1:1"):
                self.rapl.advance(zone, DRAM_WATTS * seconds)
        if self.gpu_state is not None:
            self.gpu_energy_mj = [e + round(GPU_WATTS * 1000 * seconds)
                                  for e in self.gpu_energy_mj]
            self._write_gpus()
        busy = {cgroup: 2.0 * seconds for cgroup in self.cgroups}
        self.workloads.advance(busy, outside_seconds=0.5 * seconds, idle_seconds=4 * seconds)


class Fleet:
    """`counts`: nodes per kind, e.g. {"gpu": 2, "cpu2": 1, "vm": 1}."""

    def __init__(self, tmp: Path, counts: dict[str, int], interval: str = "1s") -> None:
        self.tmp = tmp
        self.nodes: list[FleetNode] = []
        index = 0
        for kind in KINDS:
            for _ in range(counts.get(kind, 0)):
                self.nodes.append(FleetNode(tmp / f"node-{index}", kind, index))
                index += 1
        self.kubelet = ThreadingHTTPServer(("127.0.0.1", 0), _Kubelet)
        self.kubelet.pods = [n.pod for n in self.nodes]  # type: ignore[attr-defined]
        threading.Thread(target=self.kubelet.serve_forever, daemon=True).start()
        self.interval = interval

    @property
    def kubelet_url(self) -> str:
        return f"http://127.0.0.1:{self.kubelet.server_port}"

    @property
    def targets(self) -> list[str]:
        return [f"127.0.0.1:{n.exporter.port}" for n in self.nodes if n.exporter]

    def start(self, timeout: float = 60.0) -> None:
        for node in self.nodes:
            node.start(self.tmp, self.kubelet_url, self.interval)
        for node in self.nodes:
            assert node.exporter is not None
            node.exporter.wait_ready(timeout)

    def advance(self, seconds: float) -> None:
        for node in self.nodes:
            node.advance(seconds)

    def run_for(self, seconds: float, step: float = 0.5) -> None:
        """Advance every node's counters in real time for `seconds`, so rates are not zero."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.advance(step)
            time.sleep(step)

    def stop(self) -> list[int]:
        codes = [node.exporter.stop() for node in self.nodes if node.exporter is not None]
        self.kubelet.shutdown()
        self.kubelet.server_close()
        return codes
