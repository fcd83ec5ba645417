"""Every PromQL expression the project ships (recording rules, alerts, dashboard panels and
variables) sent to a real Prometheus that loads the bundled rules and scrapes the real
exporter on fixture hardware. Each must parse; each recording rule, panel and variable must
return at least one series; each metric an alert reads must exist. Renaming a metric in the
exporter breaks this test."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from tests.fixtures import ProcfsTree, intel_two_socket
from tests.harness import ExporterProcess, PrometheusServer, wait_for
from tests.hwmon_fixtures import HwmonTree
from tests.workload_fixtures import WorkloadTree, container_cgroup, container_id, pod_uid
from tests.promql_inventory import (
    all_promql_expressions,
    recorded_names,
    referenced_metric_names,
    rule_files,
)

# What a user publishes to set emission budgets (docs/runbook.md#emission-budgets).
BUDGETS = """# TYPE carbon_emission_budget_grams gauge
carbon_emission_budget_grams{namespace="",pod="",workload_job="",window="1d"} 0
carbon_emission_budget_grams{namespace="ml",pod="",workload_job="",window="1h"} 5000
carbon_emission_budget_grams{namespace="ml",pod="",workload_job="",window="1d"} 5000
carbon_emission_budget_grams{namespace="ml",pod="train-0",workload_job="",window="1h"} 200
carbon_emission_budget_grams{namespace="ml",pod="train-0",workload_job="",window="1d"} 200
carbon_emission_budget_grams{namespace="",pod="",workload_job="slurm-42",window="1h"} 1000
carbon_emission_budget_grams{namespace="",pod="",workload_job="slurm-42",window="1d"} 1000
"""
# What kube-state-metrics serves about the fixture's pod and node (read by the SCI rules).
KUBE_STATE = """# TYPE kube_pod_container_resource_requests gauge
kube_pod_container_resource_requests{namespace="ml",pod="train-0",container="trainer",\
node="fixture-node",resource="cpu",unit="core"} 2
# TYPE kube_node_status_capacity gauge
kube_node_status_capacity{node="fixture-node",resource="cpu",unit="core"} 8
# TYPE kube_pod_status_phase gauge
kube_pod_status_phase{namespace="ml",pod="train-0",uid="u1",phase="Running"} 1
"""


# What a kubelet's read-only port answers on /pods, naming the fixture's one pod.
PODS = json.dumps({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": [{
    "metadata": {"name": "train-0", "namespace": "ml", "uid": pod_uid(1)},
    "status": {"containerStatuses": [{"name": "trainer",
                                      "containerID": f"containerd://{container_id(1)}"}]}}]})


class _BudgetHandler(BaseHTTPRequestHandler):
    body = (BUDGETS + KUBE_STATE).encode()

    def do_GET(self):
        body, kind = (PODS.encode(), "application/json") if self.path == "/pods" else (
            self.body, "text/plain; version=0.0.4")
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


# What a workload owner writes for the SCI rules (prometheus/examples/sci-workloads.rules.yml):
# functional units per second. Here the unit is a joule of the fixture node, once per node and
# once per attributed pod, so that every SCI rule has something to divide by.
SCI_UNITS = {"groups": [{"name": "sci-functional-units", "interval": "1s", "rules": [
    {"record": "instance_workload:sci_functional_units:rate5m",
     "expr": "sum by (instance) (rate(carbon_energy_joules_total[5m]))",
     "labels": {"workload": "fixture-node", "functional_unit": "joule"}},
    {"record": "namespace_pod_workload:sci_functional_units:rate5m",
     "expr": 'sum by (namespace, pod) (rate(carbon_workload_energy_joules_total{pod!=""}[5m]))',
     "labels": {"workload": "fixture-pods", "functional_unit": "joule"}},
]}]}

# A live intensity provider with a forecast (an hourly profile in a file), so the forecast
# metrics the dashboards read exist.
HOURLY_PROFILE = {"hourly": [300 + 10 * abs(hour - 12) for hour in range(24)]}


def _fast_rule_files(tmp_path):
    """The bundled rule files with every group evaluated each second, so a short test sees
    the 5-minute groups too. The expressions are untouched but for `offset 1h` (a rule that
    waits for an hour of history), which becomes `offset 2s`."""
    units = tmp_path / "sci-units.rules.yml"
    units.write_text(yaml.safe_dump(SCI_UNITS, sort_keys=False))
    copies = [units]
    for path in rule_files():
        doc = yaml.safe_load(path.read_text())
        for group in doc.get("groups", []):
            group["interval"] = "1s"
            for rule in group["rules"]:
                rule["expr"] = rule["expr"].replace("offset 1h", "offset 2s")
        copy = tmp_path / f"{path.parent.name}-{path.name}"
        copy.write_text(yaml.safe_dump(doc, sort_keys=False))
        copies.append(copy)
    return copies


@pytest.mark.usefixtures("prometheus_required")
def test_every_shipped_expression_returns_data(tmp_path):
    tree = intel_two_socket(tmp_path / "sys")
    # an ACPI power meter: the meter-vs-components panel and the platform remainder
    HwmonTree(tmp_path / "sys").add_acpi_power_meter(microwatts=2_000_000_000)
    procfs = ProcfsTree(tmp_path / "proc")
    # a pod and a Slurm job for the per-namespace, per-pod and per-job rules
    workloads = WorkloadTree(procfs, tmp_path / "sys", write_pid_stats=False)
    pod, job = container_cgroup(1), "/slurm/uid_1000/job_42/step_0/task_0"
    workloads.add(pod)
    workloads.add(job)
    gpu_state = tmp_path / "nvml.json"
    gpu_state.write_text(json.dumps({"gpus": [{
        "name": "NVIDIA A100-SXM4-80GB", "uuid": "GPU-0f1e2d3c-0000-0000-0000-00000000a100",
        "pci": "00000000:07:00.0", "energy_mj": 1000, "power_mw": 250000, "limit_mw": 400000}]}))
    profile = tmp_path / "intensity.json"
    profile.write_text(json.dumps(HOURLY_PROFILE))
    config = tmp_path / "carbon.yml"
    config.write_text(yaml.safe_dump({"carbon": {"providers": [{"type": "file", "path": str(profile)}]}}))
    budgets = ThreadingHTTPServer(("127.0.0.1", 0), _BudgetHandler)
    threading.Thread(target=budgets.serve_forever, daemon=True).start()
    exporter = ExporterProcess(tmp_path, [
        f"--path.sysfs={tree.sysfs}", f"--path.procfs={procfs.procfs}", "--sample.interval=250ms",
        "--carbon.zone=DE", "--carbon.pue=1.3", f"--config.file={config}",
        "--attribution.cpu-idle-watts=10", "--kubernetes.metadata=kubelet-readonly",
        "--power.budget-watts=5000",
        f"--kubernetes.url=http://127.0.0.1:{budgets.server_port}",
    ], fake_nvml_state=gpu_state)
    prom = None
    try:
        exporter.wait_ready()
        # the exporter with the `node` label the shipped ServiceMonitor adds; budgets and
        # kube-state-metrics series with their own labels (honor_labels, as kube-prometheus)
        prom = PrometheusServer(tmp_path, [], config={
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in _fast_rule_files(tmp_path)],
            "scrape_configs": [
                {"job_name": "carbon-exporter", "static_configs": [
                    {"targets": [f"127.0.0.1:{exporter.port}"], "labels": {"node": "fixture-node"}}]},
                {"job_name": "kube-state-metrics", "honor_labels": True, "static_configs": [
                    {"targets": [f"127.0.0.1:{budgets.server_port}"]}]},
            ]})
        stop = time.monotonic() + 12
        while time.monotonic() < stop:  # moving counters, so rates are not zero
            for dirname in ("intel-rapl:0", "intel-rapl:1", "intel-rapl:0:2", "intel-rapl:1:1"):
                tree.advance(dirname, 30.0)
            workloads.advance({pod: 0.1, job: 0.1}, outside_seconds=0.02)
            time.sleep(0.25)
        wait_for(lambda: prom.query("instance:carbon_power_watts:sum"), 20, "recording rules")

        problems = []
        for item in all_promql_expressions():
            try:
                result = prom.query(item.expr.replace("offset 1h", "offset 2s"))
            except AssertionError as exc:
                problems.append(f"{item.origin}: does not run: {exc}")
                continue
            if item.kind != "alert" and not result:
                problems.append(f"{item.origin}: no series for {' '.join(item.expr.split())}")
        for name in sorted(recorded_names()):
            if not prom.query(name):
                problems.append(f"recording rule {name}: no series recorded")
        for name in sorted(referenced_metric_names()):
            if not prom.query(name):
                problems.append(f"metric {name} is read by rules or dashboards but not exported")
        assert not problems, "\n".join(problems)
    finally:
        budgets.shutdown()
        if prom is not None:
            prom.stop()
        assert exporter.stop() == 0, exporter.output()
