"""The real exporter process attributing a fixture node's energy: workload series on /metrics."""

from __future__ import annotations

import threading

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures import PowercapTree, ProcfsTree
from tests.harness import ExporterProcess, wait_for
from tests.workload_fixtures import WorkloadTree, container_cgroup


def samples(text: str, name: str) -> list:
    return [s for family in text_string_to_metric_families(text) for s in family.samples
            if s.name == name]


def test_exporter_serves_workload_series_that_sum_to_the_node(tmp_path):
    powercap = PowercapTree(tmp_path / "sys")
    powercap.add_zone("intel-rapl:0", "package-0", 1_000_000)
    procfs = ProcfsTree(tmp_path / "proc")
    tree = WorkloadTree(procfs, tmp_path / "sys", write_pid_stats=False)
    train, pod = "/system.slice/resnet-train.service", container_cgroup(4)
    tree.add(train, processes=3)
    tree.add(pod, processes=2)
    exporter = ExporterProcess(tmp_path, [
        f"--path.sysfs={tmp_path / 'sys'}", f"--path.procfs={tmp_path / 'proc'}",
        "--no-collector.nvml", "--sample.interval=200ms", "--attribution.cpu-idle-watts=5",
        "--kubernetes.metadata=none"])
    stop = threading.Event()

    def load() -> None:  # the node keeps working while the exporter samples it
        while not stop.wait(0.1):
            tree.advance({train: 0.3, pod: 0.1}, outside_seconds=0.1)
            powercap.advance("intel-rapl:0", 5.0)

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    try:
        exporter.wait_ready()

        def unit_energy():
            text = exporter.metrics()
            found = [s for s in samples(text, "carbon_workload_energy_joules_total")
                     if s.labels["unit"] == "resnet-train.service"]
            return text if found and found[0].value > 5 else None

        text = wait_for(unit_energy, 20, "attributed energy of resnet-train.service")
        workloads = samples(text, "carbon_workload_energy_joules_total")
        node = sum(s.value for s in samples(text, "carbon_energy_joules_total")
                   if s.labels["component"] == "cpu")
        assert sum(s.value for s in workloads if s.labels["component"] == "cpu") == \
            pytest.approx(node, rel=1e-6)
        kinds = {s.labels["kind"] for s in workloads}
        assert {"unit", "container", "idle", "other"} <= kinds
        for s in workloads:
            assert set(s.labels) == {"component", "kind", "namespace", "pod", "container", "unit",
                                     "workload_job"}
        emissions = samples(text, "carbon_workload_emissions_grams_total")
        assert len(emissions) == len(workloads) and all(s.value >= 0 for s in emissions)
        up = {s.labels["collector"]: s.value for s in samples(text, "carbon_exporter_collector_up")}
        assert up["attribution"] == 1 and up["kubernetes"] == 0
    finally:
        stop.set()
        worker.join()
        exporter.stop()
