"""Fake process and cgroup trees for attribution, in the kernel's layout as read through
--path.procfs and --path.sysfs:

  <procfs>/<pid>/cgroup   v2: "0::/path"; v1 (hybrid): "N:cpu,cpuacct:/path", memory,
                          name=systemd and "0::" lines, the systemd ones naming the runtime's
                          service as the cgroupfs driver leaves them
  <procfs>/<pid>/stat     pid (comm) state ... utime stime ...
  <procfs>/stat           node CPU times (through ProcfsTree)
  <sysfs>/fs/cgroup       v2: cgroup.controllers, <path>/cpu.stat with usage_usec
                          v1: cpu,cpuacct/<path>/cpuacct.usage (ns), cpuacct -> cpu,cpuacct
Counters are hierarchical like the kernel's: CPU time given to a cgroup counts in every
ancestor too. Like the kernel's, a counter file keeps its inode while it counts (it is
rewritten in place, so a reader holding it open sees each new value), and a removed cgroup's
files read nothing through a descriptor held on them (the kernel fails such a read with
ENODEV). Adding processes moves /proc/stat's "processes" (forks) line on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from tests.fixtures import ProcfsTree

USER_HZ = 100


def pod_uid(n: int) -> str:
    return f"{n:08x}-aaaa-4bbb-8ccc-{n:012x}"


def container_id(n: int) -> str:
    return f"{n:064x}"


def pod_cgroup(n: int, qos: str = "burstable", driver: str = "systemd") -> str:
    uid = pod_uid(n)
    if driver == "systemd":
        prefix = "/kubepods.slice" + ("" if qos == "guaranteed" else f"/kubepods-{qos}.slice")
        slice_name = "kubepods" + ("" if qos == "guaranteed" else f"-{qos}")
        return f"{prefix}/{slice_name}-pod{uid.replace('-', '_')}.slice"
    return "/kubepods" + ("" if qos == "guaranteed" else f"/{qos}") + f"/pod{uid}"


def container_cgroup(n: int, qos: str = "burstable", driver: str = "systemd",
                     runtime: str = "cri-containerd") -> str:
    cid = container_id(n)
    leaf = f"{runtime}-{cid}.scope" if driver == "systemd" else cid
    return f"{pod_cgroup(n, qos, driver)}/{leaf}"


@dataclass
class FakeProcess:
    pid: int
    comm: str
    cgroup: str
    ticks: int = 0  # utime, in USER_HZ


@dataclass
class WorkloadTree:
    procfs: ProcfsTree
    sysfs: Path
    version: str = "v2"
    next_pid: int = 1000
    processes: dict[int, FakeProcess] = field(default_factory=dict)
    usage_ns: dict[str, int] = field(default_factory=dict)  # cgroup path -> cumulative ns
    members: dict[str, list[FakeProcess]] = field(default_factory=dict)  # cgroup -> processes
    write_pid_stats: bool = True

    def __post_init__(self) -> None:
        self.root = self.sysfs / "fs" / "cgroup"
        self.root.mkdir(parents=True, exist_ok=True)
        if self.version == "v2":
            (self.root / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids\n")
            self.counter_root = self.root
        else:
            self.counter_root = self.root / "cpu,cpuacct"
            self.counter_root.mkdir(exist_ok=True)
            os.symlink("cpu,cpuacct", self.root / "cpuacct")
            (self.root / "unified").mkdir(exist_ok=True)
        self._write_counter("/")

    # --- layout ---------------------------------------------------------------------------

    def _dir(self, cgroup: str) -> Path:
        return self.counter_root / cgroup.strip("/") if cgroup != "/" else self.counter_root

    def _write_counter(self, cgroup: str) -> None:
        directory = self._dir(cgroup)
        directory.mkdir(parents=True, exist_ok=True)
        ns = self.usage_ns.setdefault(cgroup, 0)
        if self.version == "v2":
            usec = ns // 1000
            text = (f"usage_usec {usec}\nuser_usec {usec}\nsystem_usec 0\nnr_periods 0\n"
                    "nr_throttled 0\nthrottled_usec 0\n")
            name = "cpu.stat"
        else:
            text, name = f"{ns}\n", "cpuacct.usage"
        data = text.encode()
        path = directory / name
        try:
            fd = os.open(path, os.O_WRONLY)  # in place: the inode stays, as the kernel's does
        except FileNotFoundError:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:  # counters only grow: writing first, then cutting, never shows an empty file
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
        finally:
            os.close(fd)

    def _ancestors(self, cgroup: str) -> list[str]:
        parts = [p for p in cgroup.split("/") if p]
        return ["/" + "/".join(parts[:i]) for i in range(1, len(parts) + 1)]

    def _proc_cgroup_text(self, cgroup: str) -> str:
        if self.version == "v2":
            return f"0::{cgroup}\n"
        return (f"12:cpu,cpuacct:{cgroup}\n11:memory:{cgroup}\n"
                "1:name=systemd:/system.slice/containerd.service\n"
                "0::/system.slice/containerd.service\n")

    def _write_stat(self, proc: FakeProcess) -> None:
        path = self.procfs.root / str(proc.pid) / "stat"
        tmp = path.with_name("stat.tmp")  # atomic: a reader never sees half a stat line
        tmp.write_text(f"{proc.pid} ({proc.comm}) S 1 {proc.pid} {proc.pid} 0 -1 4194560 100 0 "
                        f"0 0 {proc.ticks} 0 0 0 20 0 1 0 100 1000000 100 "
                        "18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0\n")
        os.replace(tmp, path)

    # --- changes --------------------------------------------------------------------------

    def add(self, cgroup: str, processes: int = 1, comm: str = "python3") -> list[int]:
        """A cgroup (and its parents) with `processes` processes in it; returns their pids."""
        for path in self._ancestors(cgroup):
            if path not in self.usage_ns:
                self._write_counter(path)
        pids = []
        for _ in range(processes):
            pid = self.next_pid
            self.next_pid += 1
            proc = FakeProcess(pid, comm, cgroup)
            directory = self.procfs.root / str(pid)
            directory.mkdir()
            (directory / "cgroup").write_text(self._proc_cgroup_text(cgroup))
            self._write_stat(proc)
            self.processes[pid] = proc
            self.members.setdefault(cgroup, []).append(proc)
            pids.append(pid)
        self.procfs.fork(processes)
        return pids

    def exit(self, pids: list[int]) -> None:
        """Processes exit; their cgroups stay (no fork: /proc/stat's forks line stays)."""
        for pid in pids:
            proc = self.processes.pop(pid)
            self.members[proc.cgroup].remove(proc)
            directory = self.procfs.root / str(pid)
            for name in ("cgroup", "stat"):
                (directory / name).unlink()
            directory.rmdir()

    def remove(self, cgroup: str) -> None:
        """The workload ended: its processes exit and the cgroup is removed."""
        for proc in self.members.pop(cgroup, []):
            pid = proc.pid
            directory = self.procfs.root / str(pid)
            for name in ("cgroup", "stat"):
                (directory / name).unlink()
            directory.rmdir()
            del self.processes[pid]
        directory = self._dir(cgroup)
        for child in directory.iterdir():
            with open(child, "r+b") as handle:  # a descriptor held on it reads nothing now
                handle.truncate(0)
            child.unlink()
        directory.rmdir()
        del self.usage_ns[cgroup]

    def advance(self, cpu_seconds: dict[str, float], outside_seconds: float = 0.0,
                idle_seconds: float = 1.0) -> None:
        """Give CPU time to cgroups (split evenly over their processes), `outside_seconds` to
        no workload (kernel threads), and move the node's /proc/stat on by the sum."""
        total = outside_seconds
        touched = set()
        for cgroup, seconds in cpu_seconds.items():
            ns = round(seconds * 1e9)
            for path in self._ancestors(cgroup):
                self.usage_ns[path] += ns
                touched.add(path)
            self.usage_ns["/"] += ns
            total += seconds
            members = self.members.get(cgroup, [])
            for proc in members:
                proc.ticks += round(seconds * USER_HZ / len(members))
                if self.write_pid_stats:
                    self._write_stat(proc)
        for path in touched | {"/"}:
            self._write_counter(path)
        self.procfs.advance(round(total * USER_HZ), round(idle_seconds * USER_HZ))
