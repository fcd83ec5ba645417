"""Attribution: cgroup path parsing, the split and its conservation, job tagging, cardinality,
GPU split with the fake NVML, through fixture procfs + cgroup trees (v1 and v2)."""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from exporter.attribution import Attribution
from exporter.attribution.cgroups import detect_layout, parse_cgroup_path, parse_pid_stat
from exporter.attribution import discovery
from exporter.attribution.discovery import (
    FULL_LISTING_SAMPLES,
    MAX_HELD_FDS,
    RECHECK_SAMPLES,
    SECOND_LOOK_SAMPLES,
    WorkloadReader,
    fd_budget,
)
from exporter.attribution.split import IDLE, OTHER, IdleFloor, split_by_cpu
from exporter.attribution.tagging import load_rules
from exporter.config import ConfigError, resolve
from exporter.ledger import Counted
from exporter.procfs import MAX_SAME_COUNT_LISTING_SAMPLES, SAME_COUNT_LISTING_SAMPLES, cpu_times
from exporter.sampler import Sampler, _timed_read
from exporter.sources.nvml import NvmlSource
from exporter.sources.rapl import RaplSource
from tests.fakes import pynvml as fake_nvml
from tests.fixtures import PowercapTree, ProcfsTree
from tests.workload_fixtures import (
    WorkloadTree,
    container_cgroup,
    container_id,
    pod_uid,
)

HEX = "0123456789abcdef" * 4
UID = "1a2b3c4d-1111-2222-3333-444455556666"


@pytest.mark.parametrize("path, expected", [
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID.replace('-', '_')}"
     f".slice/cri-containerd-{HEX}.scope", ("container", UID, HEX, "burstable", "", "")),
    (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID.replace('-', '_')}"
     f".slice/crio-{HEX}.scope", ("container", UID, HEX, "besteffort", "", "")),
    (f"/kubepods.slice/kubepods-pod{UID.replace('-', '_')}.slice/crio-conmon-{HEX}.scope",
     ("pod", UID, "", "guaranteed", "", "")),
    (f"/kubepods/burstable/pod{UID}/{HEX}", ("container", UID, HEX, "burstable", "", "")),
    (f"/kubepods/pod{UID}/{HEX}", ("container", UID, HEX, "guaranteed", "", "")),
    (f"/kubepods/besteffort/pod{UID}", ("pod", UID, "", "besteffort", "", "")),
    (f"/system.slice/docker-{HEX}.scope", ("container", "", HEX, "", "", "")),
    (f"/docker/{HEX}", ("container", "", HEX, "", "", "")),
    (f"/machine.slice/libpod-{HEX}.scope/container", ("container", "", HEX, "", "", "")),
    ("/system.slice/resnet-train.service", ("unit", "", "", "", "resnet-train.service", "")),
    ("/system.slice/resnet-train.service/worker", ("unit", "", "", "", "resnet-train.service", "")),
    ("/user.slice/user-1000.slice/user@1000.service/app.slice/run-u42.service",
     ("unit", "", "", "", "run-u42.service", "")),
    ("/user.slice/user-1000.slice/session-3.scope", ("unit", "", "", "", "session-3.scope", "")),
    ("/slurm/uid_1000/job_4242/step_0/task_1", ("job", "", "", "", "", "4242")),
    ("/system.slice/slurmstepd.scope/job_77/step_batch/user/task_0", ("job", "", "", "", "", "77")),
    ("/system.slice/node1_slurmstepd.scope/job_78/step_0", ("job", "", "", "", "", "78")),
    ("/system.slice/slurmstepd.scope/system", ("unit", "", "", "", "slurmstepd.scope", "")),
])
def test_cgroup_paths_name_their_workload(path, expected):
    identity = parse_cgroup_path(path)
    assert (identity.kind, identity.pod_uid, identity.container_id, identity.qos,
            identity.unit, identity.slurm_job) == expected
    assert path.startswith(identity.root)


@pytest.mark.parametrize("path", ["/", "/system.slice", "/user.slice/user-1000.slice",
                                  "/job_5", "/kubepods.slice"])
def test_cgroups_of_no_workload(path):
    assert parse_cgroup_path(path) is None


def test_pid_stat_with_spaces_and_parens_in_comm():
    data = b"77 (my (odd) proc) R 1 77 77 0 -1 0 0 0 0 0 250 50 0 0 20 0 1 0 1 1 1\n"
    assert parse_pid_stat(data, 100.0) == ("my (odd) proc", 3.0)


def test_split_by_cpu_formula_and_remainder():
    a, b = ("unit", "", "", "", "a.service", ""), ("unit", "", "", "", "b.service", "")
    parts, per_second = split_by_cpu(110.0, 10.0, 4.0, {a: 1.0, b: 2.0})
    assert parts[IDLE] == 10.0
    assert parts[a] == pytest.approx(25.0) and parts[b] == pytest.approx(50.0)
    assert parts[OTHER] == pytest.approx(25.0)  # 1 s of the node's 4 busy seconds: no workload
    assert per_second == pytest.approx(25.0)
    # cgroup counters a little ahead of /proc/stat: shares are scaled, nothing negative
    parts, _ = split_by_cpu(50.0, 80.0, 1.0, {a: 3.0, b: 1.0})
    assert parts[IDLE] == 50.0 and sum(parts.values()) == pytest.approx(50.0)
    parts, _ = split_by_cpu(20.0, 0.0, 1.0, {a: 3.0, b: 1.0})
    assert parts[a] == pytest.approx(15.0) and parts[OTHER] == pytest.approx(0.0)


# --- fixtures ------------------------------------------------------------------------------

def make_config(tmp_path: Path, **settings):
    flags = {"path.procfs": str(tmp_path / "proc"), "path.sysfs": str(tmp_path / "sys"),
             "kubernetes.metadata": "none", "collector.nvml": False}
    flags.update({k.replace("__", "."): v for k, v in settings.items()})
    return resolve(flags, None, environ={})


def build_tree(tmp_path: Path, version: str, write_pid_stats: bool = True) -> WorkloadTree:
    procfs = ProcfsTree(tmp_path / "proc")
    return WorkloadTree(procfs, tmp_path / "sys", version=version, write_pid_stats=write_pid_stats)


def populate(tree: WorkloadTree, pods: int = 30, units: int = 10, jobs: int = 6,
             driver: str = "systemd") -> list[str]:
    """Several hundred processes in pods, systemd units and Slurm jobs; returns the leaf
    cgroups that get CPU time."""
    leaves = []
    qos = ("burstable", "besteffort", "guaranteed")
    for n in range(1, pods + 1):
        leaf = container_cgroup(n, qos[n % 3], driver, "crio" if n % 4 == 0 else "cri-containerd")
        tree.add(leaf, processes=5, comm="python3")
        leaves.append(leaf)
    for n in range(units):
        leaf = f"/system.slice/svc-{n}.service"
        tree.add(leaf, processes=4, comm=f"svc{n}")
        leaves.append(leaf)
    for n in range(jobs):
        job = (f"/system.slice/slurmstepd.scope/job_{100 + n}" if tree.version == "v2"
               else f"/slurm/uid_1000/job_{100 + n}")
        for step in ("step_batch", "step_0"):
            leaf = f"{job}/{step}/user/task_0" if tree.version == "v2" else f"{job}/{step}/task_0"
            tree.add(leaf, processes=6, comm="mpi_rank")
            leaves.append(leaf)
    tree.add("/system.slice/slurmstepd.scope/system" if tree.version == "v2"
             else "/system.slice/slurmd.service", processes=1, comm="slurmstepd")
    tree.add("/init.scope", processes=1, comm="systemd")
    return leaves


def counted_cpu(joules: float, grams_per_joule: float = 1e-4) -> list[Counted]:
    return [Counted("cpu", "package-0", joules * 0.6, joules * 0.6 * grams_per_joule),
            Counted("cpu", "package-1", joules * 0.4, joules * 0.4 * grams_per_joule)]


def assert_conserved(split) -> None:
    for component, energy in split.measured.items():
        assert sum(split.parts[component].values()) == pytest.approx(energy, rel=1e-9, abs=1e-9), \
            component
        assert all(j >= -1e-9 for j in split.parts[component].values()), split.parts[component]


def totals(attribution, component="cpu"):
    return {(s.kind, s.namespace, s.pod, s.container, s.unit, s.workload_job): s.joules
            for s in attribution.series if s.component == component}


def test_learned_idle_floor_is_the_lowest_power_of_the_last_hour():
    """IdleFloor keeps its minimum as samples come and buckets leave: the same answer, at every
    sample, as the lowest per-minute bucket of the last hour taken afresh (gaps of a sample,
    of minutes and of more than an hour included)."""
    rng = random.Random(7)
    floor = IdleFloor()
    lowest_by_bucket: dict[int, float] = {}
    now = 0.0
    for _ in range(20_000):
        now += rng.choice((1.0, 1.0, 1.0, 15.0, 240.0, 5_000.0)) if rng.random() < 0.01 else 1.0
        watts = rng.uniform(20.0, 200.0) if rng.random() < 0.02 else rng.uniform(150.0, 400.0)
        bucket = int(now // IdleFloor.BUCKET_SECONDS)
        lowest_by_bucket[bucket] = min(watts, lowest_by_bucket.get(bucket, watts))
        expected = min(w for b, w in lowest_by_bucket.items() if b > bucket - IdleFloor.BUCKETS)
        assert floor.watts(watts, now) == expected
        assert floor.learned == expected
    assert IdleFloor(35.0).watts(300.0, now) == 35.0  # configured: never learned


# --- the split over fixture trees ------------------------------------------------------------

@pytest.mark.parametrize("version, driver", [("v2", "systemd"), ("v1", "cgroupfs")])
def test_cpu_split_is_conserved_every_sample_over_hundreds_of_processes(tmp_path, version, driver):
    tree = build_tree(tmp_path, version, write_pid_stats=False)
    leaves = populate(tree, driver=driver)
    assert len(tree.processes) >= 200
    attribution = Attribution(make_config(tmp_path, attribution__cpu_idle_watts=20.0))
    rng = random.Random(7)
    now = 1000.0
    attribution.account(attribution.read(), [], now)
    expected: dict[str, float] = {}
    measured_total = 0.0
    for sample in range(12):
        given = {leaf: rng.choice([0, 0.05, 0.1, 0.37, 1.0]) for leaf in leaves}
        if sample == 5:  # a workload ends mid-run; its energy stays in its series
            gone = leaves.pop()
            given.pop(gone)
            tree.remove(gone)
        outside = 0.5
        tree.advance(given, outside_seconds=outside)
        node_busy = sum(round(s * 100) for s in given.values()) / 100 + outside
        now += 1.0
        energy = 120.0 + 10 * sample
        result = attribution.read()
        assert result.status.reason == "ok", result.status
        split = attribution.account(result, counted_cpu(energy), now)
        assert_conserved(split)
        measured_total += energy
        assert split.parts["cpu"][IDLE] == pytest.approx(20.0)
        active = energy - 20.0
        denominator = max(node_busy, sum(given.values()))
        for leaf, seconds in given.items():
            expected[leaf] = expected.get(leaf, 0.0) + active * seconds / denominator
    series = totals(attribution)
    assert sum(series.values()) == pytest.approx(measured_total)
    # every unit and pod got exactly its CPU-time share of the active energy
    svc = ("unit", "", "", "", "svc-3.service", "")
    assert series[svc] == pytest.approx(expected["/system.slice/svc-3.service"])
    pod7 = ("container", "", pod_uid(7), container_id(7)[:12], "", "")
    assert series[pod7] == pytest.approx(expected[container_cgroup(7, "besteffort", driver)])
    # a Slurm job is one series summing its steps, tagged slurm-<id> by default
    job = next(k for k in series if k[0] == "job" and k[5] == "slurm-101")
    steps = sum(v for leaf, v in expected.items() if "job_101/" in leaf)
    assert series[job] == pytest.approx(steps)
    if version == "v2":  # slurmstepd's own scope holds the jobs: they are taken out of it
        stepd = ("unit", "", "", "", "slurmstepd.scope", "")
        assert series.get(stepd, 0.0) == pytest.approx(0.0, abs=1e-6)
    kinds = {k[0] for k in series}
    assert kinds >= {"container", "unit", "job", "idle", "other"}


def test_cpu_split_without_nesting_gives_each_workload_its_share(tmp_path):
    """The usual case (no workload inside another, the same workloads read in full each
    sample) pairs the counters as lists: each workload still gets exactly its share."""
    tree = build_tree(tmp_path, "v2", write_pid_stats=False)
    leaves = [f"/system.slice/s{n}.service" for n in range(12)] + [
        container_cgroup(n) for n in range(1, 9)]
    for leaf in leaves:
        tree.add(leaf, processes=2)
    attribution = Attribution(make_config(tmp_path, attribution__cpu_idle_watts=10.0))
    attribution.account(attribution.read(), [], 0.0)
    rng = random.Random(3)
    expected: dict[str, float] = {}
    for sample in range(1, 6):
        given = {leaf: rng.choice([0, 0.1, 0.25, 0.5]) for leaf in leaves}
        tree.advance(given, outside_seconds=0.3)
        result = attribution.read()
        assert result.observation.order is not None
        split = attribution.account(result, counted_cpu(110.0), float(sample))
        assert_conserved(split)
        denominator = max(sum(round(v * 100) for v in given.values()) / 100 + 0.3,
                          sum(given.values()))
        for leaf, seconds in given.items():
            expected[leaf] = expected.get(leaf, 0.0) + 100.0 * seconds / denominator
    series = totals(attribution)
    for n in range(12):
        leaf = f"/system.slice/s{n}.service"
        assert series.get(("unit", "", "", "", f"s{n}.service", ""), 0.0) == \
            pytest.approx(expected[leaf])
    pod3 = ("container", "", pod_uid(3), container_id(3)[:12], "", "")
    assert series.get(pod3, 0.0) == pytest.approx(expected[container_cgroup(3)])


def test_reads_each_cgroup_file_at_most_once_per_sample(tmp_path):
    tree = build_tree(tmp_path, "v2", write_pid_stats=False)
    populate(tree)
    attribution = Attribution(make_config(tmp_path))
    first = attribution.read().observation
    second = attribution.read().observation
    workloads = len(second.usage)
    assert first.counter_reads == second.counter_reads == workloads
    assert first.pid_reads == len(tree.processes) and first.listed
    # steady state: no fork, so no listing of <procfs>; only the slow rotation reads pid files
    assert not second.listed
    assert second.pid_reads <= -(-len(tree.processes) // RECHECK_SAMPLES)


def test_procfs_listing_runs_when_processes_were_forked_or_every_n_samples(tmp_path):
    tree = build_tree(tmp_path, "v2", write_pid_stats=False)
    tree.add("/system.slice/a.service", processes=3)
    reader = Attribution(make_config(tmp_path)).reader
    assert reader.read().listed
    assert not reader.read().listed
    pids = tree.add("/system.slice/b.service", processes=2)  # forks: /proc/stat moves on
    obs = reader.read()
    assert obs.listed and "/system.slice/b.service" in obs.usage
    assert {str(p) for p in pids} <= reader.pids.keys()
    # ended without a fork (a.service keeps running): remembered until the next full
    # listing, FULL_LISTING_SAMPLES after the first (past their second look)
    for _ in range(SECOND_LOOK_SAMPLES):
        reader.read()
    tree.exit(pids)
    while reader.samples < FULL_LISTING_SAMPLES:
        obs = reader.read()
        assert not obs.listed and "/system.slice/b.service" in obs.usage
    obs = reader.read()
    assert obs.listed and "/system.slice/b.service" not in obs.usage
    assert not {str(p) for p in pids} & reader.pids.keys()
    # a fork and an exit between two samples: the process count did not move, so the listing
    # comes SAME_COUNT_LISTING_SAMPLES after the last one, and sees both (against it)
    [gone] = tree.add("/system.slice/c.service", processes=1)
    assert reader.read().listed
    [born] = tree.add("/system.slice/c.service", processes=1)
    tree.exit([gone])
    for _ in range(SAME_COUNT_LISTING_SAMPLES - 1):
        assert not reader.read().listed
    obs = reader.read()
    assert obs.listed and str(born) in reader.pids and str(gone) not in reader.pids


def test_threads_alone_do_not_list_procfs_every_sample(tmp_path):
    """/proc/stat's fork count moves with every thread a runtime starts; /proc's link count
    (2 + the processes) does not: the listing waits SAME_COUNT_LISTING_SAMPLES samples then,
    twice as long after each listing that found nothing, up to MAX_SAME_COUNT_LISTING_SAMPLES;
    a new process is listed at the next sample whatever the threads do, and brings the wait
    back."""
    tree = build_tree(tmp_path, "v2", write_pid_stats=False)
    tree.add("/system.slice/a.service", processes=3)
    reader = Attribution(make_config(tmp_path)).reader
    assert reader.read().listed

    def threads_only(samples: int) -> list[int]:
        """The samples (1 = the next one) that listed <procfs>."""
        listed = []
        for sample in range(1, samples + 1):
            tree.procfs.fork()  # a thread: the fork count moves, no /proc/<pid> appears
            if reader.read().listed:
                listed.append(sample)
        return listed

    waits = [SAME_COUNT_LISTING_SAMPLES, 2 * SAME_COUNT_LISTING_SAMPLES,
             4 * SAME_COUNT_LISTING_SAMPLES, MAX_SAME_COUNT_LISTING_SAMPLES,
             MAX_SAME_COUNT_LISTING_SAMPLES]
    assert 4 * SAME_COUNT_LISTING_SAMPLES <= MAX_SAME_COUNT_LISTING_SAMPLES
    assert threads_only(sum(waits)) == list(itertools.accumulate(waits))
    tree.procfs.fork()
    pids = tree.add("/system.slice/b.service", processes=1)
    obs = reader.read()
    assert obs.listed and "/system.slice/b.service" in obs.usage
    assert str(pids[0]) in reader.pids
    assert threads_only(SAME_COUNT_LISTING_SAMPLES) == [SAME_COUNT_LISTING_SAMPLES]


def test_procfs_link_count_follows_processes_not_threads():
    """What the listing's gate relies on, on the running kernel: /proc's link count moves
    by one for a new process and not for a new thread (proc_root_getattr: nr_processes()).
    Other processes on the machine start and end too, so a few tries are allowed."""
    for _ in range(20):
        before = os.stat("/proc").st_nlink
        release = threading.Event()
        thread = threading.Thread(target=release.wait)
        thread.start()
        with_thread = os.stat("/proc").st_nlink
        child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                                 stdin=subprocess.PIPE)
        with_child = os.stat("/proc").st_nlink
        child.communicate(b"")
        release.set()
        thread.join()
        if with_thread == before and with_child == before + 1:
            return
    pytest.fail(f"/proc's link count: {before} -> {with_thread} with a thread -> "
                f"{with_child} with a process")


def test_forks_count_is_parsed_from_a_large_proc_stat(tmp_path):
    procfs = ProcfsTree(tmp_path / "proc", threads=256)
    procfs.fork(12345)
    stat = (tmp_path / "proc" / "stat").read_text()
    # a big machine's interrupt line pushes "processes" well past one read's worth
    (tmp_path / "proc" / "stat").write_text(stat.replace("intr 0", "intr " + " 0" * 40000))
    assert len((tmp_path / "proc" / "stat").read_bytes()) > 65536
    times = cpu_times(str(tmp_path / "proc"))
    assert times.forks == 12346
    assert times.busy == pytest.approx(procfs.busy / 100)


def test_a_removed_cgroup_does_not_keep_stale_usage(tmp_path):
    """Counters are read through descriptors held open. A removed cgroup's descriptor reads
    nothing (ENODEV on the kernel): the workload goes at once, even without a listing, and a
    unit restarted under the same cgroup path is read afresh, not from the old descriptor."""
    tree = build_tree(tmp_path, "v2", write_pid_stats=False)
    tree.add("/system.slice/keep.service", processes=2)
    tree.add("/system.slice/train.service", processes=2)
    reader = Attribution(make_config(tmp_path)).reader
    tree.advance({"/system.slice/train.service": 7.0, "/system.slice/keep.service": 1.0})
    assert reader.read().usage["/system.slice/train.service"] == pytest.approx(7.0)
    held = set(os.listdir("/proc/self/fd"))
    tree.remove("/system.slice/train.service")  # its processes exit: no fork
    obs = reader.read()
    assert not obs.listed
    assert "/system.slice/train.service" not in obs.usage
    assert "/system.slice/train.service" not in obs.identities
    assert len(set(os.listdir("/proc/self/fd")) - held) == 0  # its descriptor was closed
    assert len(held - set(os.listdir("/proc/self/fd"))) == 1
    # restarted: same cgroup path, a new counter starting from zero
    tree.add("/system.slice/train.service", processes=1)
    tree.advance({"/system.slice/train.service": 0.5})
    obs = reader.read()
    assert obs.usage["/system.slice/train.service"] == pytest.approx(0.5)
    tree.advance({"/system.slice/train.service": 0.25})
    assert reader.read().usage["/system.slice/train.service"] == pytest.approx(0.75)
    assert reader.read().usage["/system.slice/keep.service"] == pytest.approx(1.0)


def test_a_restart_between_two_samples_is_not_read_from_the_old_counter(tmp_path):
    """The unit stops and starts again between two samples (its processes are replaced, the
    cgroup never looks unused to the reader): the held descriptor is on the removed file."""
    tree = build_tree(tmp_path, "v2", write_pid_stats=False)
    tree.add("/system.slice/train.service", processes=2)
    reader = Attribution(make_config(tmp_path)).reader
    tree.advance({"/system.slice/train.service": 9.0})
    assert reader.read().usage["/system.slice/train.service"] == pytest.approx(9.0)
    tree.remove("/system.slice/train.service")
    tree.add("/system.slice/train.service", processes=2)
    tree.advance({"/system.slice/train.service": 2.0})
    obs = reader.read()
    assert obs.usage["/system.slice/train.service"] == pytest.approx(2.0)


def test_a_new_process_moved_after_its_fork_is_seen_in_its_new_cgroup(tmp_path):
    """Container runtimes fork in their own cgroup, then move the child into the container's:
    a new pid's cgroup is read once more a few samples after it was first seen."""
    tree = build_tree(tmp_path, "v2", write_pid_stats=False)
    tree.add("/system.slice/containerd.service", processes=1, comm="containerd")
    reader = Attribution(make_config(tmp_path)).reader
    reader.read()
    [pid] = tree.add("/system.slice/containerd.service", processes=1, comm="runc")
    assert reader.pids.get(str(pid)) is None
    reader.read()
    assert reader.pids[str(pid)].cgroup == "/system.slice/containerd.service"
    target = container_cgroup(3)
    tree.add(target, processes=1)  # the container's cgroup (and its first process)
    (tmp_path / "proc" / str(pid) / "cgroup").write_text(f"0::{target}\n")  # the move
    for _ in range(SECOND_LOOK_SAMPLES):
        reader.read()
    assert reader.pids[str(pid)].cgroup == target


def test_a_new_process_first_seen_in_a_container_or_a_job_is_read_once(tmp_path):
    """A process first seen in a container's or a Slurm job's cgroup was moved in already and
    stays in its workload: no second look. One first seen in a unit (the runtime's service,
    where a fork waits to be moved) is read again; with process names wanted, every new one
    is (a fork takes its name when it execs)."""
    for want_comm in (False, True):
        base = tmp_path / str(want_comm)
        tree = build_tree(base, "v2", write_pid_stats=want_comm)
        tree.add("/system.slice/containerd.service", processes=1, comm="containerd")
        reader = WorkloadReader(str(base / "proc"), str(base / "sys"), want_comm=want_comm)
        reader.read()
        tree.add(container_cgroup(3), processes=2)
        tree.add("/system.slice/slurmstepd.scope/job_7/step_0/user/task_0", processes=1)
        [runc] = tree.add("/system.slice/containerd.service", processes=1, comm="runc")
        per_process = 2 if want_comm else 1  # <pid>/cgroup, and <pid>/stat for the name
        reads = [reader.read().pid_reads for _ in range(SECOND_LOOK_SAMPLES + 2)]
        assert reads[0] == 4 * per_process
        assert sum(reads[1:]) == (4 if want_comm else 1) * per_process, reads
        assert reader.pids[str(runc)].cgroup == "/system.slice/containerd.service"
        assert container_cgroup(3) in reader.workloads
        reader.close()


def test_the_rotation_notices_an_old_process_moved_without_notice(tmp_path, monkeypatch):
    monkeypatch.setattr(discovery, "RECHECK_SAMPLES", 4)
    tree = build_tree(tmp_path, "v2", write_pid_stats=False)
    pids = tree.add("/system.slice/a.service", processes=3)
    tree.add("/system.slice/b.service", processes=1)
    reader = Attribution(make_config(tmp_path)).reader
    for _ in range(SECOND_LOOK_SAMPLES + 1):
        reader.read()
    (tmp_path / "proc" / str(pids[0]) / "cgroup").write_text("0::/system.slice/b.service\n")
    for _ in range(4):  # each known pid once per RECHECK_SAMPLES samples
        obs = reader.read()
        assert not obs.listed
    assert reader.pids[str(pids[0])].cgroup == "/system.slice/b.service"


def test_counter_descriptors_are_capped_and_closed(tmp_path):
    tree = build_tree(tmp_path, "v2", write_pid_stats=False)
    leaves = [f"/system.slice/s{n}.service" for n in range(6)]
    for leaf in leaves:
        tree.add(leaf)
    def cgroup_fds() -> set[str]:  # descriptors on the cgroup tree (procfs holds its stat)
        held = set()
        for fd in os.listdir("/proc/self/fd"):
            try:
                if os.readlink(f"/proc/self/fd/{fd}").startswith(str(tmp_path / "sys")):
                    held.add(fd)
            except OSError:
                continue  # the listing's own descriptor, closed meanwhile
        return held

    before = cgroup_fds()
    reader = WorkloadReader(str(tmp_path / "proc"), str(tmp_path / "sys"), max_held_fds=2)
    reader.read()
    assert len(cgroup_fds() - before) == 2
    for sample in range(1, 4):  # beyond the cap: opened, read and closed each sample
        tree.advance({leaf: 0.1 * (n + 1) for n, leaf in enumerate(leaves)})
        obs = reader.read()
        assert obs.counter_reads == len(leaves)
        assert obs.usage == {leaf: pytest.approx(0.1 * (n + 1) * sample)
                             for n, leaf in enumerate(leaves)}
    reader.close()
    assert cgroup_fds() == before
    # derived from RLIMIT_NOFILE: what HTTP connections and the rest may need stays free
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert fd_budget(reserve=1536) == max(0, min(MAX_HELD_FDS, soft - 1536))
    assert fd_budget(reserve=soft) == 0
    attribution = Attribution(make_config(tmp_path, web__max_connections=soft - 600))
    assert attribution.reader.max_held == (88 if soft >= 688 else 0)
    attribution.close()


def test_learned_idle_floor_is_the_lowest_power_seen(tmp_path):
    tree = build_tree(tmp_path, "v2")
    tree.add("/system.slice/a.service")
    attribution = Attribution(make_config(tmp_path))
    now = 0.0
    attribution.account(attribution.read(), [], now)
    for watts in (80.0, 50.0, 90.0):
        tree.advance({"/system.slice/a.service": 0.5})
        now += 1.0
        split = attribution.account(attribution.read(), counted_cpu(watts), now)
        assert_conserved(split)
    assert split.parts["cpu"][IDLE] == pytest.approx(50.0)
    assert split.parts["cpu"][("unit", "", "", "", "a.service", "")] == pytest.approx(40.0)


def test_no_read_in_time_puts_everything_in_idle_and_other(tmp_path):
    tree = build_tree(tmp_path, "v2")
    tree.add("/system.slice/a.service")
    attribution = Attribution(make_config(tmp_path, attribution__cpu_idle_watts=10.0))
    attribution.account(attribution.read(), [], 0.0)
    split = attribution.account(None, counted_cpu(30.0) + [Counted("other", "x", 5.0, 0.0)], 1.0)
    assert_conserved(split)
    assert split.parts["cpu"] == {IDLE: 10.0, OTHER: pytest.approx(20.0)}
    # a platform meter's remainder: its (learned) idle floor is idle, the rest other
    assert split.parts["other"] == {IDLE: 5.0, OTHER: 0.0}


def test_a_failing_read_or_split_loses_no_energy(tmp_path, monkeypatch):
    tree = build_tree(tmp_path, "v2")
    tree.add("/system.slice/a.service")
    attribution = Attribution(make_config(tmp_path, attribution__cpu_idle_watts=10.0))

    def broken():
        raise OSError("EIO")

    monkeypatch.setattr(attribution.reader, "read", broken)
    result, _ = _timed_read(attribution, frozenset())  # as the sampler's worker calls it
    assert result.status.reason == "error" and "EIO" in result.status.detail
    assert_conserved(attribution.account(result, counted_cpu(30.0), 1.0))
    monkeypatch.undo()
    monkeypatch.setattr(attribution, "_cpu_deltas", lambda *a: 1 / 0)  # a bug in the split
    attribution.account(attribution.read(), [], 2.0)
    split = attribution.account(attribution.read(), counted_cpu(30.0), 3.0)
    assert_conserved(split)
    assert set(split.parts["cpu"]) == {IDLE, OTHER}


def test_no_cgroup_hierarchy_is_absent_not_a_crash(tmp_path):
    ProcfsTree(tmp_path / "proc")
    attribution = Attribution(make_config(tmp_path))
    result = attribution.read()
    assert result.status.reason == "absent" and "cgroup" in result.status.detail
    split = attribution.account(result, counted_cpu(10.0), 1.0)
    assert_conserved(split)


def test_top_n_and_grace_period_bound_the_series(tmp_path):
    tree = build_tree(tmp_path, "v2")
    leaves = [f"/system.slice/s{n}.service" for n in range(20)]
    for leaf in leaves:
        tree.add(leaf)
    attribution = Attribution(make_config(tmp_path, attribution__max_workloads=5,
                                          attribution__grace_period="10s",
                                          attribution__cpu_idle_watts=0.0))
    now = 0.0
    attribution.account(attribution.read(), [], now)
    total = 0.0
    for _ in range(3):
        # s0..s4 use the most CPU: they hold the five series
        tree.advance({leaf: (10 - n if n < 5 else 0.1) for n, leaf in enumerate(leaves)})
        now += 1.0
        assert_conserved(attribution.account(attribution.read(), counted_cpu(100.0), now))
        total += 100.0
    series = totals(attribution)
    units = sorted(k[4] for k in series if k[0] == "unit")
    assert units == [f"s{n}.service" for n in range(5)]
    assert sum(series.values()) == pytest.approx(total)
    assert series[OTHER] > 0  # the 15 small ones, summed
    for leaf in leaves[:3]:  # three of them end
        tree.remove(leaf)
    for _ in range(12):
        tree.advance({leaf: 1.0 for leaf in leaves[3:]})
        now += 1.0
        assert_conserved(attribution.account(attribution.read(), counted_cpu(100.0), now))
    units = {k[4] for k in totals(attribution) if k[0] == "unit"}
    assert not units & {"s0.service", "s1.service", "s2.service"}  # dropped after the grace
    assert len(units) == 5


def test_the_series_held_are_those_of_the_ranking_with_incumbency():
    """Book._admit's passes over the keys are map()s over builtins; the series held are
    those of ranking each workload's decayed score (a holder's times INCUMBENCY) and taking
    the top N: 3,000 samples of 40 workloads for 10 series, scores drifting, holders ending,
    newcomers rising, ties included."""
    from exporter.attribution.split import Book

    def ranked(book: Book, joules: dict, limit: int) -> set:  # one key at a time
        scores = {k: book.scores.get(k, 0.0) * book.DECAY + j for k, j in joules.items()}
        if len(scores) <= limit:
            return set(scores)
        boosted = {k: v * book.INCUMBENCY if k in book.admitted else v for k, v in scores.items()}
        cut = sorted(boosted.values(), reverse=True)[limit - 1]
        top = {k for k, v in boosted.items() if v >= cut}
        if len(top) > limit:
            top = set(sorted(boosted, key=boosted.__getitem__, reverse=True)[:limit])
        return top

    rng = random.Random(7)
    book = Book(max_workloads=10, max_processes=0, grace=60.0)
    keys = [("unit", "", "", "", f"s{n}.service", "") for n in range(40)]
    stayed = 0
    for _ in range(3000):
        live = [k for k in keys if rng.random() > 0.05]
        joules = {k: rng.choice((1.0, 2.0, rng.random() * 3)) for k in live}
        expected = ranked(book, joules, 10)
        held = set(book.admitted)
        admitted, scores = book._admit(joules, 10)
        assert admitted == expected
        assert scores == {k: book.scores.get(k, 0.0) * book.DECAY + j for k, j in joules.items()}
        stayed += admitted == held
        book.admitted, book.scores = admitted, scores
    assert 100 < stayed < 2900  # holders kept in some samples, changed in others


def test_per_process_series_are_top_n_and_carved_out_of_their_workload(tmp_path):
    tree = build_tree(tmp_path, "v2")
    tree.add("/system.slice/train.service", processes=4, comm="python3")
    tree.add("/system.slice/web.service", processes=3, comm="nginx")
    attribution = Attribution(make_config(tmp_path, attribution__processes=True,
                                          attribution__max_processes=3,
                                          attribution__cpu_idle_watts=0.0))
    now = 0.0
    attribution.account(attribution.read(), [], now)
    for _ in range(3):
        tree.advance({"/system.slice/train.service": 2.0, "/system.slice/web.service": 0.6})
        now += 1.0
        split = attribution.account(attribution.read(), counted_cpu(26.0), now)
        assert_conserved(split)
    series = totals(attribution)
    procs = {k: v for k, v in series.items() if k[0] == "process"}
    assert len(procs) == 3
    assert all(k[4] == "train.service" and k[5].startswith("python3/") for k in procs)
    # train.service: 2 of 2.6 CPU seconds of 26 J per sample; 3 of its 4 processes carved out
    unit = series[("unit", "", "", "", "train.service", "")]
    assert unit + sum(procs.values()) == pytest.approx(3 * 20.0)
    assert unit == pytest.approx(3 * 5.0)


# --- tagging -----------------------------------------------------------------------------------

RULES = """
rules:
  - match: {unit: "resnet-*.service"}
    workload_job: "{unit_name}"
  - match: {labels: {batch.kubernetes.io/job-name: "*"}}
    workload_job: "{labels[batch.kubernetes.io/job-name]}"
  - match: {slurm_job: "*"}
    workload_job: "hpc-{slurm_job}"
  - match: {process: "torchrun"}
    workload_job: "torch-{kind}"
"""


def test_tagging_rules_name_units_jobs_and_processes(tmp_path):
    rules = tmp_path / "rules.yml"
    rules.write_text(RULES)
    tree = build_tree(tmp_path, "v2")
    tree.add("/system.slice/resnet-50.service", comm="python3")
    tree.add("/system.slice/slurmstepd.scope/job_9/step_0/user/task_0", comm="mpi")
    tree.add("/user.slice/user-1000.slice/session-2.scope", comm="torchrun")
    tree.add("/system.slice/cron.service", comm="cron")
    attribution = Attribution(make_config(tmp_path, attribution__rules_file=str(rules),
                                          attribution__cpu_idle_watts=0.0))
    attribution.account(attribution.read(), [], 0.0)
    tree.advance({"/system.slice/resnet-50.service": 1, "/system.slice/cron.service": 1,
                  "/system.slice/slurmstepd.scope/job_9/step_0/user/task_0": 1,
                  "/user.slice/user-1000.slice/session-2.scope": 1})
    attribution.account(attribution.read(), counted_cpu(4.0), 1.0)
    jobs = {k[0:1] + k[4:] for k in totals(attribution)}
    assert ("unit", "resnet-50.service", "resnet-50") in jobs
    assert ("job", "", "hpc-9") in jobs
    assert ("unit", "session-2.scope", "torch-unit") in jobs
    assert ("unit", "cron.service", "") in jobs


@pytest.mark.parametrize("text, message", [
    ("rules: [{match: {unit: x}}]", "rules.0: 'workload_job' is required"),
    ("rules: [{match: {colour: x}, workload_job: a}]", "rules.0.match"),
    ("rules: [{match: {unit: x}, workload_job: '{nope}'}]", "unknown field 'nope'"),
    ("rules: [{match: {unit: x}, workload_job: '{unit'}]", "rules.0: workload_job"),
    ("rules: {", "line"),
])
def test_bad_rules_file_names_the_field(tmp_path, text, message):
    path = tmp_path / "rules.yml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="rules file") as info:
        load_rules(str(path))
    assert message in str(info.value)


def test_bad_rules_on_reload_keep_the_old_ones(tmp_path):
    rules = tmp_path / "rules.yml"
    rules.write_text(RULES)
    build_tree(tmp_path, "v2")
    attribution = Attribution(make_config(tmp_path, attribution__rules_file=str(rules)))
    before = attribution.tagger
    rules.write_text("rules: 3")
    attribution.configure(make_config(tmp_path, attribution__rules_file=str(rules)))
    assert attribution.tagger is before


# --- GPU split with the fake NVML ----------------------------------------------------------------

def gpu(n: int, **extra) -> dict:
    state = {"name": "NVIDIA H100 80GB HBM3", "uuid": f"GPU-{n}", "pci": f"00000000:{n:02x}:00.0",
             "energy_mj": 1000, "power_mw": 300000, "limit_mw": 700000}
    state.update(extra)
    return state


def test_gpu_split_by_sm_utilisation_memory_fallback_and_mig(tmp_path):
    tree = build_tree(tmp_path, "v2")
    a = tree.add(container_cgroup(1), processes=1)[0]
    b = tree.add(container_cgroup(2), processes=1)[0]
    c = tree.add("/system.slice/render.service", processes=1)[0]
    stranger = 99999  # a process NVML sees but procfs does not (another PID namespace)
    state = {"driver": "550.54.15", "gpus": [
        gpu(0, processes=[{"pid": a, "used_mem": 1 << 30}, {"pid": b, "used_mem": 1 << 30}],
            samples=[{"pid": a, "ts": 5, "sm": 10}]),
        gpu(1, processes=[{"pid": b, "used_mem": 3 << 30}, {"pid": c, "used_mem": 1 << 30}],
            samples=None),
        # A100 MIG: a 3g instance (42 SMs) and a 1g (14 SMs) of the GPU's 7 slices
        gpu(2, mig=True, mig_slices=7,
            mig_devices=[{"sm": 42, "slices": 3, "processes": [{"pid": c, "used_mem": 1}]},
                         {"sm": 14, "slices": 1, "processes": []}]),
        gpu(3, processes=[]),
    ]}
    fake_nvml.set_state(state)
    # no idle floor here: the shares alone (the floor has its own test)
    attribution = Attribution(make_config(tmp_path, collector__nvml=True,
                                          attribution__gpu_idle_watts=0.0), nvml=fake_nvml)
    attribution.account(attribution.read(), [], 0.0)
    # samples since the previous call only: the one at ts=5 was seen by the first read
    state["gpus"][0]["samples"] += [
        {"pid": a, "ts": 10, "sm": 60}, {"pid": a, "ts": 20, "sm": 60},
        {"pid": b, "ts": 20, "sm": 40}, {"pid": stranger, "ts": 20, "sm": 40}]
    counted = [Counted("gpu", f"gpu-{n}", 100.0, 0.01) for n in range(4)]
    split = attribution.account(attribution.read(), counted, 1.0)
    assert_conserved(split)
    pod_a = ("container", "", pod_uid(1), container_id(1)[:12], "", "")
    pod_b = ("container", "", pod_uid(2), container_id(2)[:12], "", "")
    unit_c = ("unit", "", "", "", "render.service", "")
    gpu_parts = split.parts["gpu"]
    # gpu-0: smUtil 120 / 40 / 40 (stranger -> other); gpu-1: memory 3:1; gpu-2: MIG, the
    # 3g instance's 42 of the whole GPU's 7 x 14 SMs, the rest (1g instance, unused) idle
    mig_c = 100.0 * 42 / 98
    assert gpu_parts[pod_a] == pytest.approx(60.0)
    assert gpu_parts[pod_b] == pytest.approx(20.0 + 75.0)
    assert gpu_parts[unit_c] == pytest.approx(25.0 + mig_c)
    assert gpu_parts[OTHER] == pytest.approx(20.0)
    assert gpu_parts[IDLE] == pytest.approx(100.0 - mig_c + 100.0)  # MIG rest, gpu-3
    assert dict(attribution.gpu_split) == {"gpu-0": "sm_utilization", "gpu-1": "memory",
                                           "gpu-2": "mig", "gpu-3": "idle"}
    grams = {s.workload_job or s.kind: s.grams for s in attribution.series if s.kind == "idle"}
    assert grams["idle"] == pytest.approx((200.0 - mig_c) * 0.01 / 100.0)
    # the next sample sees no new utilisation sample on gpu-0: the last SM shares stand
    split = attribution.account(attribution.read(), counted[:1], 2.0)
    assert dict(attribution.gpu_split) == {"gpu-0": "sm_utilization"}
    assert split.parts["gpu"][pod_a] == pytest.approx(60.0)


def test_no_nvidia_driver_is_not_an_attribution_error(tmp_path):
    tree = build_tree(tmp_path, "v2")
    tree.add("/system.slice/a.service")
    fake_nvml.set_state({"driver": "550.54.15", "init_error": "NVML_ERROR_DRIVER_NOT_LOADED",
                         "gpus": []})
    attribution = Attribution(make_config(tmp_path, collector__nvml=True), nvml=fake_nvml)
    result = attribution.read()
    assert result.status.reason == "ok", result.status
    assert result.observation.gpus == {}


def test_gpu_that_fails_goes_to_other_and_says_unavailable(tmp_path):
    build_tree(tmp_path, "v2")
    fake_nvml.set_state({"driver": "550.54.15", "gpus": [gpu(0, error="NVML_ERROR_GPU_IS_LOST")]})
    attribution = Attribution(make_config(tmp_path, collector__nvml=True), nvml=fake_nvml)
    attribution.account(attribution.read(), [], 0.0)
    split = attribution.account(attribution.read(), [Counted("gpu", "gpu-0", 7.0, 0.0)], 1.0)
    assert split.parts["gpu"][OTHER] == 7.0
    assert dict(attribution.gpu_split) == {"gpu-0": "unavailable"}


# --- the whole sampler: workload series sum to the node's energy at every cycle ------------------

def test_sampler_workload_totals_equal_node_energy_every_cycle(tmp_path):
    tree = build_tree(tmp_path, "v2", write_pid_stats=False)
    leaves = populate(tree, pods=20, units=8, jobs=4)
    gpu_pid = tree.processes[min(tree.processes)].pid
    powercap = PowercapTree(tmp_path / "sys")
    powercap.add_zone("intel-rapl:0", "package-0", 1_000_000)
    powercap.add_zone("intel-rapl:0:0", "dram", 100_000, wrap_uj=65712999613)
    state = {"driver": "550.54.15", "gpus": [gpu(0, processes=[{"pid": gpu_pid, "used_mem": 1}])]}
    fake_nvml.set_state(state)
    config = make_config(tmp_path, collector__nvml=True)
    attribution = Attribution(config, nvml=fake_nvml)
    sampler = Sampler([RaplSource(config.path_sysfs), NvmlSource(fake_nvml), attribution], 0.5,
                      _intensity(), 1.0)
    rng = random.Random(3)

    async def run() -> None:
        for cycle in range(8):
            tree.advance({leaf: rng.random() for leaf in leaves}, outside_seconds=0.2)
            # plausible energy for the time between cycles: the ledger drops > 5 kW / 3 kW
            await asyncio.sleep(0.05)
            powercap.advance("intel-rapl:0", 6 + rng.random() * 4)
            powercap.advance("intel-rapl:0:0", 0.5 + rng.random())
            state["gpus"][0]["energy_mj"] += 10_000
            snap = await sampler.cycle()
            if cycle:
                assert_conserved(attribution.last_split)
            for component in ("cpu", "dram", "gpu"):
                node = sum(e.joules for e in snap.energy if e.component == component)
                workloads = sum(w.joules for w in snap.workloads if w.component == component)
                assert workloads == pytest.approx(node, rel=1e-9), (cycle, component)
                node_grams = sum(e.grams for e in snap.energy if e.component == component)
                grams = sum(w.grams for w in snap.workloads if w.component == component)
                assert grams == pytest.approx(node_grams, rel=1e-9)
        states = {c.name: c.status.reason for c in snap.collectors}
        assert states["attribution"] == "ok" and states["kubernetes"] == "absent"
        assert ("gpu-0", "memory") in snap.gpu_split

    try:
        asyncio.run(run())
    finally:
        sampler.close()


def _intensity():
    from exporter.carbon import Intensity

    return Intensity(400.0, "DE", "static")


def test_held_counters_on_the_running_kernel():
    """The kernel's side of held descriptors, where this machine lets a test make a cgroup:
    a pread() at offset 0 on a held counter sees the CPU time used since, and after the
    cgroup is removed the read fails (ENODEV), so the workload goes and its fd is closed."""
    import subprocess
    import sys

    layout = detect_layout("/sys/fs/cgroup")
    if layout is None:
        pytest.skip("no cgroup hierarchy with CPU accounting here")
    base = layout.root + "/carbon-exporter-test.slice"
    unit = base + "/held-fd-test.service"
    try:
        os.makedirs(unit)
    except OSError as exc:
        pytest.skip(f"cannot make a cgroup here: {exc.strerror}")
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        try:
            with open(unit + "/cgroup.procs", "w") as handle:
                handle.write(str(child.pid))
        except OSError as exc:
            pytest.skip(f"cannot move a process into a cgroup here: {exc.strerror}")
        reader = WorkloadReader("/proc", "/sys")
        root = "/carbon-exporter-test.slice/held-fd-test.service"
        first = reader.read()
        assert root in first.usage and reader.counters[root] >= 0  # read through a held fd
        deadline = time.monotonic() + 10.0
        while True:  # the busy child's CPU time shows through the same descriptor
            obs = reader.read()
            if obs.usage[root] > first.usage[root] + 0.05 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert obs.usage[root] > first.usage[root] + 0.05
        held = reader.held
        child.kill()
        child.wait(10)
        os.rmdir(unit)
        obs = reader.read()
        assert root not in obs.usage and root not in reader.counters
        assert reader.held == held - 1
        reader.close()
    finally:
        child.kill()
        child.wait(10)
        for path in (unit, base):
            try:
                os.rmdir(path)
            except OSError:
                pass
