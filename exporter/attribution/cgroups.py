"""Workload discovery from procfs and the cgroup filesystem.

Every process is mapped to its cgroup (<procfs>/<pid>/cgroup) and the cgroup path is parsed
into the workload that owns it:

  Slurm job        /slurm/uid_1000/job_42/step_0/task_1                      (v1, cgroup/v1 plugin)
                   /system.slice/slurmstepd.scope/job_42/step_batch/user/... (v2, cgroup/v2 plugin)
  Kubernetes pod   systemd driver: /kubepods.slice/kubepods-burstable.slice/
                       kubepods-burstable-pod<uid with _>.slice/cri-containerd-<id>.scope
                   cgroupfs driver: /kubepods/besteffort/pod<uid>/<id>, /kubepods/pod<uid>/<id>
                   (guaranteed pods sit directly under kubepods); CRI-O: crio-<id>.scope,
                   crio-conmon-<id>.scope is the pod's runtime monitor (pod-level)
  container        /system.slice/docker-<id>.scope, /docker/<id>, libpod-<id>.scope, ...
  systemd unit     the deepest *.service / *.scope directly under a slice:
                   /system.slice/train.service, /user.slice/user-1000.slice/
                   user@1000.service/app.slice/run-u12.service
Anything else (the root cgroup, kernel threads, bare slices) belongs to no workload: its CPU
time ends up in kind="other" through the node's total.

The workload's cgroup ("root" below) is the path prefix up to the component that identifies
it, so its CPU counter includes every sub-cgroup (Slurm steps, a unit's delegated children).

On cgroup v2 the CPU counter is <root>/cpu.stat usage_usec; on v1 (and the v1 part of a
hybrid setup) it is cpuacct/<path>/cpuacct.usage in nanoseconds, with the path taken from the
process's cpuacct line, because with the cgroupfs driver the name=systemd path of a container
is the runtime's service, not the container.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

V2 = "v2"
V1 = "v1"

_HEX64 = r"[0-9a-f]{64}"
_UID = r"[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}"
_SLURM_JOB = re.compile(r"^job_(\d+)$")
_POD_SYSTEMD = re.compile(rf"^kubepods(?:-(burstable|besteffort))?-pod({_UID})\.slice$")
_POD_CGROUPFS = re.compile(rf"^pod({_UID})$")
_CONTAINER_SCOPE = re.compile(
    rf"^(cri-containerd|crio|docker|libpod|nerdctl)-({_HEX64})\.scope$")
_CONMON_SCOPE = re.compile(rf"^(crio|libpod)-conmon-({_HEX64})\.scope$")
_CONTAINER_BARE = re.compile(rf"^(?:(crio|docker|libpod)-)?({_HEX64})$")
_UNIT = re.compile(r"^[^/]+\.(service|scope)$")
_RUNTIME = {"cri-containerd": "containerd", "crio": "cri-o", "docker": "docker",
            "libpod": "podman", "nerdctl": "containerd", None: ""}


@dataclass(frozen=True, slots=True)
class Identity:
    """The workload a cgroup belongs to. kind: job, container, pod or unit."""

    kind: str
    root: str  # the workload's cgroup path, e.g. /system.slice/train.service
    unit: str = ""
    container_id: str = ""
    runtime: str = ""  # containerd, cri-o, docker, podman
    pod_uid: str = ""
    qos: str = ""  # guaranteed, burstable, besteffort
    slurm_job: str = ""


def _join(parts: list[str], end: int) -> str:
    return "/" + "/".join(parts[:end + 1])


def parse_cgroup_path(path: str) -> Identity | None:
    """Identity of the workload owning cgroup `path`, or None for no workload."""
    parts = [p for p in path.split("/") if p]
    # Slurm first: a job's cgroup sits inside slurmstepd's scope on v2.
    for i, part in enumerate(parts):
        match = _SLURM_JOB.match(part)
        if match and any("slurm" in p for p in parts[:i]):
            return Identity("job", _join(parts, i), slurm_job=match.group(1))
    for i, part in enumerate(parts):
        qos = ""
        match = _POD_SYSTEMD.match(part)
        if match:
            qos, uid = match.group(1) or "guaranteed", match.group(2).replace("_", "-")
        else:
            match = _POD_CGROUPFS.match(part)
            if not match or not any(p.startswith("kubepods") for p in parts[:i]):
                continue
            uid = match.group(1)
            qos = parts[i - 1] if parts[i - 1] in ("burstable", "besteffort") else "guaranteed"
        if i + 1 < len(parts):
            child = parts[i + 1]
            found = _CONTAINER_SCOPE.match(child) or _CONTAINER_BARE.match(child)
            if found:
                return Identity("container", _join(parts, i + 1), container_id=found.group(2),
                                runtime=_RUNTIME.get(found.group(1), "containerd"),
                                pod_uid=uid, qos=qos)
        return Identity("pod", _join(parts, i), pod_uid=uid, qos=qos)
    for i, part in enumerate(parts):
        match = _CONTAINER_SCOPE.match(part)
        if match:
            return Identity("container", _join(parts, i), container_id=match.group(2),
                            runtime=_RUNTIME[match.group(1)])
        if _CONMON_SCOPE.match(part):
            break  # a runtime monitor outside Kubernetes: the unit rule below names it
        match = _CONTAINER_BARE.match(part)
        if match and i > 0 and parts[i - 1] in ("docker", "libpod_parent", "containerd", "default"):
            return Identity("container", _join(parts, i), container_id=match.group(2),
                            runtime=_RUNTIME.get(match.group(1) or parts[i - 1], "containerd"))
    unit_at = None
    for i, part in enumerate(parts):
        if _UNIT.match(part) and (i == 0 or parts[i - 1].endswith(".slice")):
            unit_at = i
    if unit_at is not None:
        return Identity("unit", _join(parts, unit_at), unit=parts[unit_at])
    return None


@dataclass(frozen=True, slots=True)
class Layout:
    """Where the CPU counters live: v2 unified, or v1 cpuacct."""

    version: str
    root: str  # <sysfs>/fs/cgroup (v2) or the cpuacct hierarchy (v1)
    counter: str  # file name: cpu.stat or cpuacct.usage
    controller: str  # v1: the /proc/<pid>/cgroup controller to take the path from

    def counter_path(self, cgroup: str) -> str:
        return self.root + cgroup.rstrip("/") + "/" + self.counter


def detect_layout(cgroup_root: str) -> Layout | None:
    """v2 when the unified hierarchy is mounted at the root (cgroup.controllers there);
    v1/hybrid when a cpuacct hierarchy exists; None when neither does."""
    if os.path.exists(os.path.join(cgroup_root, "cgroup.controllers")):
        return Layout(V2, cgroup_root, "cpu.stat", "")
    for name in ("cpuacct", "cpu,cpuacct", "cpuacct,cpu"):
        candidate = os.path.join(cgroup_root, name)
        if os.path.isdir(candidate):
            return Layout(V1, candidate, "cpuacct.usage", "cpuacct")
    return None


def cgroup_of(text: str, layout: Layout) -> str | None:
    """The accounting cgroup path from the text of /proc/<pid>/cgroup."""
    for line in text.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if layout.version == V2:
            if hierarchy == "0" and controllers == "":
                return path
        elif layout.controller in controllers.split(","):
            return path
    return None


def read_file(path: str) -> bytes:
    """One open/read/close; procfs and cgroup files are small and not seekable caches."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 8192)
    finally:
        os.close(fd)


def parse_cpu_seconds(data: bytes, layout: Layout) -> float:
    """Cumulative CPU seconds from cpu.stat (usage_usec) or cpuacct.usage (ns)."""
    if layout.version == V2:
        # usage_usec is the first line of cpu.stat
        first = data.split(b"\n", 1)[0]
        name, _, value = first.partition(b" ")
        if name != b"usage_usec":
            for line in data.split(b"\n"):
                name, _, value = line.partition(b" ")
                if name == b"usage_usec":
                    break
            else:
                raise ValueError("cpu.stat has no usage_usec")
        return int(value) / 1e6
    return int(data) / 1e9


def parse_pid_stat(data: bytes, user_hz: float) -> tuple[str, float]:
    """(comm, utime + stime seconds) from /proc/<pid>/stat; comm may hold spaces and ')'."""
    open_at = data.find(b"(")
    close_at = data.rfind(b")")
    comm = data[open_at + 1:close_at].decode("utf-8", "replace")
    rest = data[close_at + 2:].split()
    # fields after comm: state(3) ... utime(14) stime(15), so indexes 11 and 12 here
    return comm, (int(rest[11]) + int(rest[12])) / user_hz
