"""Kubernetes labels that hold, with a real Prometheus: the target labels the Prometheus
Operator generates for the shipped ServiceMonitor, on the real exporter attributing a fixture
node's energy to two pods (cgroups as the kubelet lays them out, names from a kubelet's
read-only /pods).

The scrape config is what the Operator writes for a ServiceMonitor endpoint (its generated
relabelings for `role: endpoints`, in its order: namespace, service, pod, container, job from
jobLabel, endpoint from the port name), followed by the ServiceMonitor's own relabelings and
honorLabels, read from deploy/kubernetes/components/prometheus-operator/servicemonitor.yaml.
Service discovery is replaced by a static target carrying the __meta_kubernetes_* labels
Kubernetes SD would give the exporter's pod.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from tests.fixtures import PowercapTree, ProcfsTree
from tests.harness import ROOT, ExporterProcess, PrometheusServer, wait_for
from tests.power_load import PowerLoad
from tests.workload_fixtures import WorkloadTree, container_cgroup, container_id, pod_uid

SERVICE_MONITOR = ROOT / "deploy" / "kubernetes" / "components" / "prometheus-operator" / \
    "servicemonitor.yaml"
NODE = "node-a"
EXPORTER_POD = "carbon-exporter-x7k2p"
# (n, namespace, pod, container) of the workloads on the fixture node
PODS = [(1, "ml", "train-0", "trainer"), (2, "web", "api-0", "server")]


class _Kubelet(BaseHTTPRequestHandler):
    body = json.dumps({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": [{
        "metadata": {"name": pod, "namespace": namespace, "uid": pod_uid(n)},
        "status": {"containerStatuses": [{"name": container,
                                          "containerID": f"containerd://{container_id(n)}"}]},
    } for n, namespace, pod, container in PODS]}).encode()

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


def _snake(relabeling: dict) -> dict:
    """A ServiceMonitor relabeling (camelCase) as the Operator writes it into prometheus.yml."""
    names = {"sourceLabels": "source_labels", "targetLabel": "target_label"}
    out = {names.get(k, k): v for k, v in relabeling.items()}
    if "action" in out:
        out["action"] = out["action"].lower()
    return out


def operator_scrape_config(monitor: dict, address: str, job_name: str) -> dict:
    """The scrape config the Prometheus Operator generates for endpoint 0 of `monitor`."""
    spec = monitor["spec"]
    [endpoint] = spec["endpoints"]
    [(selector_key, selector_value)] = spec["selector"]["matchLabels"].items()
    meta_label = "".join(c if c.isalnum() else "_" for c in selector_key)
    job_meta = "".join(c if c.isalnum() else "_" for c in spec["jobLabel"])
    generated = [
        {"source_labels": ["job"], "target_label": "__tmp_prometheus_job_name"},
        {"action": "keep", "source_labels": [f"__meta_kubernetes_service_label_{meta_label}",
                                              f"__meta_kubernetes_service_labelpresent_{meta_label}"],
         "regex": f"({selector_value});true"},
        {"action": "keep", "source_labels": ["__meta_kubernetes_endpoint_port_name"],
         "regex": endpoint["port"]},
        {"source_labels": ["__meta_kubernetes_endpoint_address_target_kind",
                           "__meta_kubernetes_endpoint_address_target_name"],
         "separator": ";", "regex": "Node;(.*)", "replacement": "${1}", "target_label": "node"},
        {"source_labels": ["__meta_kubernetes_endpoint_address_target_kind",
                           "__meta_kubernetes_endpoint_address_target_name"],
         "separator": ";", "regex": "Pod;(.*)", "replacement": "${1}", "target_label": "pod"},
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
        {"action": "drop", "source_labels": ["__meta_kubernetes_pod_phase"],
         "regex": "(Failed|Succeeded)"},
        {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job",
         "replacement": "${1}"},
        {"source_labels": [f"__meta_kubernetes_service_label_{job_meta}"], "target_label": "job",
         "regex": "(.+)", "replacement": "${1}"},
        {"target_label": "endpoint", "replacement": endpoint["port"]},
    ]
    return {
        "job_name": job_name,
        "honor_labels": bool(endpoint.get("honorLabels", False)),
        "metrics_path": endpoint.get("path", "/metrics"),
        "static_configs": [{"targets": [address], "labels": {
            "__meta_kubernetes_namespace": "carbon-exporter",
            "__meta_kubernetes_service_name": "carbon-exporter",
            f"__meta_kubernetes_service_label_{meta_label}": selector_value,
            f"__meta_kubernetes_service_labelpresent_{meta_label}": "true",
            "__meta_kubernetes_endpoint_port_name": endpoint["port"],
            "__meta_kubernetes_endpoint_address_target_kind": "Pod",
            "__meta_kubernetes_endpoint_address_target_name": EXPORTER_POD,
            "__meta_kubernetes_pod_name": EXPORTER_POD,
            "__meta_kubernetes_pod_container_name": "carbon-exporter",
            "__meta_kubernetes_pod_node_name": NODE,
            "__meta_kubernetes_pod_phase": "Running",
        }}],
        "relabel_configs": generated + [_snake(r) for r in endpoint.get("relabelings", [])],
    }


def _series(prom: PrometheusServer, expr: str) -> list[dict]:
    return [r["metric"] for r in prom.query(expr)]


@pytest.mark.usefixtures("prometheus_required")
def test_operator_target_labels_keep_workload_pods(tmp_path):
    powercap = PowercapTree(tmp_path / "sys")
    powercap.add_zone("intel-rapl:0", "package-0")
    procfs = ProcfsTree(tmp_path / "proc")
    tree = WorkloadTree(procfs, tmp_path / "sys", write_pid_stats=False)
    cgroups = [container_cgroup(n) for n, *_ in PODS]
    for cgroup in cgroups:
        tree.add(cgroup)
    kubelet = ThreadingHTTPServer(("127.0.0.1", 0), _Kubelet)
    threading.Thread(target=kubelet.serve_forever, daemon=True).start()
    exporter = ExporterProcess(tmp_path, [
        f"--path.sysfs={tmp_path / 'sys'}", f"--path.procfs={procfs.procfs}",
        "--no-collector.nvml", "--sample.interval=250ms", "--attribution.cpu-idle-watts=5",
        "--attribution.grace-period=2s", "--kubernetes.metadata=kubelet-readonly",
        f"--kubernetes.url=http://127.0.0.1:{kubelet.server_port}"])
    monitor = yaml.safe_load(SERVICE_MONITOR.read_text())
    # What the same Operator made of the ServiceMonitor before issue 10 (no honorLabels, no
    # relabelings of its own): the test must tell the two apart.
    before = {**monitor, "spec": {**monitor["spec"], "endpoints": [
        {k: v for k, v in monitor["spec"]["endpoints"][0].items()
         if k not in ("honorLabels", "relabelings")}]}}
    address = f"127.0.0.1:{exporter.port}"
    shipped_job = operator_scrape_config(monitor, address, "serviceMonitor/carbon-exporter/carbon-exporter/0")
    old_job = operator_scrape_config(before, address, "old")
    old_job["relabel_configs"].append({"target_label": "job", "replacement": "old-servicemonitor"})
    stop = threading.Event()

    def load() -> None:  # both pods keep working while the exporter samples the node
        while not stop.wait(0.1):
            tree.advance({cgroups[0]: 0.15, cgroups[1]: 0.05}, outside_seconds=0.02)

    worker = threading.Thread(target=load, daemon=True)
    prom = None
    try:
        with PowerLoad(powercap, "intel-rapl:0", 40.0):
            worker.start()
            exporter.wait_ready()
            # Until the first kubelet answer lands, a pod's series carries pod=<uid> (README,
            # Kubernetes names), kept for the grace period once credited; on a loaded machine
            # it can give the UID a rate of its own. This test is about the Operator's target
            # labels: it starts scraping once the exporter names both pods and no UID.
            def named() -> bool:
                text = exporter.metrics()
                return all(f'pod="{pod}"' in text for _, _, pod, _ in PODS) and \
                    not any(pod_uid(n) in text for n, *_ in PODS)
            wait_for(named, 20, "the exporter naming both pods from the kubelet's /pods")
            prom = PrometheusServer(tmp_path, [], config={
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(ROOT / "prometheus" / "rules" / "carbon.rules.yml")],
                "scrape_configs": [shipped_job, old_job],
            })
            wanted = 'namespace_pod:carbon_workload_energy_joules:rate5m{job="carbon-exporter"}'
            wait_for(lambda: len(prom.query(wanted)) == len(PODS), 40,
                     "a rate per workload pod from the recording rules")
            time.sleep(1)

            # the target: named by its node, as the ServiceMonitor's relabelings say
            [up] = _series(prom, 'up{job="carbon-exporter"}')
            assert up == {"__name__": "up", "job": "carbon-exporter", "instance": NODE, "node": NODE,
                          "service": "carbon-exporter", "endpoint": "metrics"}

            # workload series keep the workload's namespace, pod and container
            pods = _series(prom, 'carbon_workload_energy_joules_total{job="carbon-exporter",kind="container"}')
            assert {(s["namespace"], s["pod"], s["container"]) for s in pods} == {
                (namespace, pod, container) for _, namespace, pod, container in PODS}
            for s in pods:
                assert not any(k.startswith("exported_") for k in s), s
                assert (s["instance"], s["node"]) == (NODE, NODE)

            # node-level series are nobody's pod
            for s in _series(prom, 'carbon_power_watts{job="carbon-exporter"}') + \
                    _series(prom, 'carbon_workload_energy_joules_total{job="carbon-exporter",kind=~"idle|other"}'):
                assert not {"namespace", "pod", "container"} & set(s), s

            # the namespace/pod recording rules name the workloads' pods, never the exporter's
            for rule in ("namespace_pod:carbon_workload_energy_joules:rate5m",
                         "instance_namespace_pod:carbon_workload_energy_joules:rate5m",
                         "namespace_pod:carbon_workload_emissions_grams:rate5m"):
                got = sorted((s["namespace"], s["pod"]) for s in _series(prom, f'{rule}{{job="carbon-exporter"}}'))
                assert got == sorted((namespace, pod) for _, namespace, pod, _ in PODS), rule
            by_instance = 'instance_namespace_pod:carbon_workload_energy_joules:rate5m{job="carbon-exporter"}'
            for s in _series(prom, by_instance):
                assert s["instance"] == NODE
            namespaces = sorted(s["namespace"] for s in _series(
                prom, 'namespace:carbon_workload_energy_joules:rate5m{job="carbon-exporter"}'))
            assert namespaces == sorted(namespace for _, namespace, _, _ in PODS)

            # the old ServiceMonitor credited every workload to the exporter's pod
            old = _series(prom, 'namespace_pod:carbon_workload_energy_joules:rate5m{job="old-servicemonitor"}')
            assert {(s["namespace"], s["pod"]) for s in old} == {("carbon-exporter", EXPORTER_POD)}
            renamed = _series(prom, 'carbon_workload_energy_joules_total{job="old-servicemonitor",kind="container"}')
            assert {s["exported_pod"] for s in renamed} == {pod for _, _, pod, _ in PODS}
            assert {s["pod"] for s in renamed} == {EXPORTER_POD}
    finally:
        stop.set()
        if worker.is_alive():
            worker.join()
        if prom is not None:
            prom.stop()
        kubelet.shutdown()
        assert exporter.stop() == 0, exporter.output()
