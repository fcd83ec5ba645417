"""deploy/kubernetes: every manifest validates offline against the Kubernetes schemas bundled
in the pinned `kubernetes-validate` package; the Prometheus Operator objects against the
subset of their CRD schemas we use; and the security choices the README promises hold."""

from __future__ import annotations

import grp
import os
import shutil
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from exporter.cli import build_parser
from exporter.config import resolve
from tests.fixtures import intel_two_socket
from tests.harness import ROOT

KUBE = ROOT / "deploy" / "kubernetes"
# Oldest supported release (nodes/pods needs 1.33 to be used; it validates everywhere) and
# the release fine-grained kubelet authorization went on by default.
KUBERNETES_VERSIONS = ("1.30.0", "1.33.0")
OPERATOR_GROUP = "monitoring.coreos.com/v1"

DURATION = {"type": "string",
            "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?"
                       r"(([0-9]+)s)?(([0-9]+)ms)?)$"}
LABEL_SELECTOR = {"type": "object", "additionalProperties": False, "properties": {
    "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
    "matchExpressions": {"type": "array"}}}
METADATA = {"type": "object", "required": ["name"], "properties": {
    "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
    "namespace": {"type": "string"},
    "labels": {"type": "object", "additionalProperties": {"type": "string"}}}}

# The fields of monitoring.coreos.com/v1 ServiceMonitor this project uses, with the types,
# enums and patterns of the operator's CRD (example/prometheus-operator-crd/
# monitoring.coreos.com_servicemonitors.yaml); unknown fields are refused so a typo fails.
SERVICE_MONITOR_SCHEMA = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": OPERATOR_GROUP}, "kind": {"const": "ServiceMonitor"},
        "metadata": METADATA,
        "spec": {"type": "object", "required": ["selector", "endpoints"], "additionalProperties": False,
                 "properties": {
                     "jobLabel": {"type": "string"},
                     "selector": LABEL_SELECTOR,
                     "namespaceSelector": {"type": "object", "additionalProperties": False, "properties": {
                         "any": {"type": "boolean"},
                         "matchNames": {"type": "array", "items": {"type": "string"}}}},
                     "endpoints": {"type": "array", "minItems": 1, "items": {
                         "type": "object", "additionalProperties": False, "properties": {
                             "port": {"type": "string"}, "path": {"type": "string"},
                             "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                             "interval": DURATION, "scrapeTimeout": DURATION,
                             "honorLabels": {"type": "boolean"},
                             "relabelings": {"type": "array", "items": {
                                 "type": "object", "additionalProperties": False, "properties": {
                                     "sourceLabels": {"type": "array", "items": {
                                         "type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"}},
                                     "targetLabel": {"type": "string"},
                                     "regex": {"type": "string"}, "replacement": {"type": "string"},
                                     "separator": {"type": "string"},
                                     "action": {"enum": ["replace", "Replace", "keep", "Keep", "drop",
                                                         "Drop", "labelmap", "LabelMap",
                                                         "labeldrop", "LabelDrop"]}}}}}}}}},
    },
}

# monitoring.coreos.com/v1 PrometheusRule (monitoring.coreos.com_prometheusrules.yaml);
# the PromQL itself is checked by promtool below.
PROMETHEUS_RULE_SCHEMA = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": OPERATOR_GROUP}, "kind": {"const": "PrometheusRule"},
        "metadata": METADATA,
        "spec": {"type": "object", "additionalProperties": False, "properties": {"groups": {
            "type": "array", "items": {
                "type": "object", "required": ["name", "rules"], "additionalProperties": False,
                "properties": {
                    "name": {"type": "string", "minLength": 1}, "interval": DURATION,
                    "limit": {"type": "integer"}, "partial_response_strategy": {"type": "string"},
                    "query_offset": DURATION, "labels": {"type": "object"},
                    "rules": {"type": "array", "items": {
                        "type": "object", "required": ["expr"], "additionalProperties": False,
                        "oneOf": [{"required": ["record"]}, {"required": ["alert"]}],
                        "properties": {
                            "record": {"type": "string"}, "alert": {"type": "string"},
                            "expr": {"type": ["string", "integer"]}, "for": DURATION,
                            "keep_firing_for": DURATION,
                            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                            "annotations": {"type": "object",
                                            "additionalProperties": {"type": "string"}}}}}}}}}},
    },
}


OPERATOR_COMPONENT = KUBE / "components" / "prometheus-operator"


def kustomization(directory: Path = KUBE) -> dict:
    return yaml.safe_load((directory / "kustomization.yaml").read_text())


def documents(paths) -> list[tuple[str, dict]]:
    docs = []
    for path in paths:
        for doc in yaml.safe_load_all(Path(path).read_text()):
            if doc is not None:
                docs.append((Path(path).name, doc))
    return docs


def all_manifests() -> list[tuple[str, dict]]:
    listed = [KUBE / name for name in kustomization()["resources"]]
    component = [OPERATOR_COMPONENT / name for name in kustomization(OPERATOR_COMPONENT)["resources"]]
    return documents(listed + component + sorted((KUBE / "optional").glob("*.yaml")))


def by_kind(kind: str) -> dict:
    found = [doc for _, doc in all_manifests() if doc["kind"] == kind]
    assert len(found) == 1, kind
    return found[0]


def test_kustomization_lists_every_manifest():
    listed = kustomization()["resources"]
    on_disk = sorted(p.name for p in KUBE.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == on_disk
    assert kustomization()["namespace"] == "carbon-exporter"
    component = kustomization(OPERATOR_COMPONENT)
    assert component["kind"] == "Component"
    assert sorted(component["resources"]) == sorted(
        p.name for p in OPERATOR_COMPONENT.glob("*.yaml") if p.name != "kustomization.yaml")


def _kustomize(directory: Path) -> list[dict]:
    built = subprocess.run([shutil.which("kubectl") or "kubectl", "kustomize", str(directory)],
                           capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    return [doc for doc in yaml.safe_load_all(built.stdout) if doc]


def test_base_needs_no_operator_crds_and_the_component_adds_them():
    """kubectl apply -k deploy/kubernetes works on a cluster without the Prometheus
    Operator: no monitoring.coreos.com object in the base; the overlay adds exactly the
    ServiceMonitor and the PrometheusRule, in the exporter's namespace. Where kubectl is
    installed, its built-in kustomize builds both for real."""
    base_docs = documents(KUBE / name for name in kustomization()["resources"])
    assert not [d for _, d in base_docs if d["apiVersion"] == OPERATOR_GROUP]
    overlay = kustomization(ROOT / "deploy" / "kubernetes-prometheus-operator")
    assert overlay["resources"] == ["../kubernetes"]
    assert overlay["components"] == ["../kubernetes/components/prometheus-operator"]
    assert overlay["namespace"] == "carbon-exporter"
    if shutil.which("kubectl") is None:
        return
    base = _kustomize(KUBE)
    assert not [d for d in base if d["apiVersion"] == OPERATOR_GROUP]
    full = _kustomize(ROOT / "deploy" / "kubernetes-prometheus-operator")
    operator = [d for d in full if d["apiVersion"] == OPERATOR_GROUP]
    assert sorted(d["kind"] for d in operator) == ["PrometheusRule", "ServiceMonitor"]
    assert {d["metadata"]["namespace"] for d in operator} == {"carbon-exporter"}
    assert len(full) == len(base) + 2


def test_daemonset_is_scheduled_like_node_exporter():
    spec = pod_spec()
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert spec["tolerations"] == [{"operator": "Exists"}]
    assert spec["priorityClassName"] == "system-node-critical"


def test_servicemonitor_keeps_workload_labels_and_names_the_node():
    [endpoint] = by_kind("ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["honorLabels"] is True
    relabel = endpoint["relabelings"]
    assert {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "instance",
            "action": "replace"} in relabel
    assert {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node",
            "action": "replace"} in relabel
    assert {"regex": "namespace|pod|container", "action": "labeldrop"} in relabel


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_core_manifests_validate_against_kubernetes_schemas(version):
    checked = 0
    for name, doc in all_manifests():
        if doc["apiVersion"] == OPERATOR_GROUP:
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name} {doc['kind']} against Kubernetes {version}: {exc.message} at "
                        f"{'.'.join(map(str, exc.absolute_path))}")
        checked += 1
    assert checked >= 9


def test_operator_objects_validate_against_their_crd_schemas():
    schemas = {"ServiceMonitor": SERVICE_MONITOR_SCHEMA, "PrometheusRule": PROMETHEUS_RULE_SCHEMA}
    kinds = set()
    for _, doc in all_manifests():
        if doc["apiVersion"] == OPERATOR_GROUP:
            jsonschema.validate(doc, schemas[doc["kind"]])
            kinds.add(doc["kind"])
    assert kinds == {"ServiceMonitor", "PrometheusRule"}
    # and the schema is strict enough to catch a typo
    bad = by_kind("ServiceMonitor")
    bad = {**bad, "spec": {**bad["spec"], "endpoints": [{"port": "metrics", "intervall": "30s"}]}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, SERVICE_MONITOR_SCHEMA)


def pod_spec() -> dict:
    return by_kind("DaemonSet")["spec"]["template"]["spec"]


def test_daemonset_runs_with_least_privilege():
    spec = pod_spec()
    assert spec["hostPID"] is False and spec["hostNetwork"] is False
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    [main] = spec["containers"]
    ctx = main["securityContext"]
    assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] != 0
    assert ctx["allowPrivilegeEscalation"] is False and ctx["readOnlyRootFilesystem"] is True
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    assert not ctx.get("privileged")
    host_volumes = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    assert host_volumes == {"sys": "/sys", "proc": "/proc"}
    for mount in main["volumeMounts"]:
        if mount["name"] in host_volumes:
            assert mount["readOnly"] is True, mount
    [init] = spec["initContainers"]
    assert init["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN", "FOWNER"]}
    assert init["securityContext"]["allowPrivilegeEscalation"] is False
    for container in (main, init):
        assert container["resources"]["requests"] and container["resources"]["limits"]


def test_daemonset_reaches_gpus_and_knows_its_node():
    spec = pod_spec()
    [main] = spec["containers"]
    env = {e["name"]: e for e in main["env"]}
    assert env["NVIDIA_VISIBLE_DEVICES"]["value"] == "all"
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["NODE_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    assert "nvidia.com/gpu" not in str(main["resources"])  # monitoring must not take a GPU
    assert {"operator": "Exists"} in spec["tolerations"]  # nvidia.com/gpu among every taint


def test_daemonset_args_are_valid_exporter_flags():
    [main] = pod_spec()["containers"]
    flags = {k: v for k, v in vars(build_parser().parse_args(main["args"])).items()
             if v is not None and k != "config_file"}
    config = resolve(flags, None, environ={})
    assert config.path_sysfs == "/host/sys" and config.path_procfs == "/host/proc"
    assert config.rapl_min_interval == 1.0
    assert config.web_listen_address == ":9875"


def test_names_and_ports_line_up():
    labels = by_kind("DaemonSet")["spec"]["template"]["metadata"]["labels"]
    [main] = pod_spec()["containers"]
    port_names = {p["name"] for p in main["ports"]}
    service = by_kind("Service")
    assert service["spec"]["selector"].items() <= labels.items()
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    monitor = by_kind("ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for p in service["spec"]["ports"]}
    policy = by_kind("NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]} <= port_names
    probes = [main["livenessProbe"], main["readinessProbe"]]
    assert all(p["httpGet"]["path"] == "/healthz" and p["httpGet"]["port"] in port_names for p in probes)
    assert pod_spec()["serviceAccountName"] == by_kind("ServiceAccount")["metadata"]["name"]


def test_rbac_is_the_narrowest_that_works():
    roles = [doc for _, doc in documents([KUBE / "rbac.yaml"]) if doc["kind"] == "ClusterRole"]
    assert [r["rules"] for r in roles] == [[{"apiGroups": [""], "resources": ["nodes/pods"],
                                             "verbs": ["get"]}]]
    for name, doc in all_manifests():
        for rule in doc.get("rules", []):
            assert "*" not in rule["verbs"] + rule["resources"], name
            assert "nodes/proxy" not in rule["resources"], name  # would allow exec in any pod
            assert set(rule["verbs"]) <= {"get", "list"}, name


def test_init_container_grants_group_read_on_energy_files(tmp_path):
    """Run the init container's script against a fixture powercap tree."""
    [init] = pod_spec()["initContainers"]
    script = init["command"][2]
    tree = intel_two_socket(tmp_path / "sysfs")
    for zone in tree.zones:
        os.chmod(tree.energy_path(zone), 0o400)
    gid = os.getgid() if os.getuid() != 0 else grp.getgrnam("nogroup").gr_gid
    script = script.replace("/host/sys", tree.sysfs).replace("chgrp 9875", f"chgrp {gid}")
    subprocess.run(["/bin/sh", "-c", script], check=True, timeout=30)
    for zone in tree.zones:
        st = os.stat(tree.energy_path(zone))
        assert st.st_gid == gid and st.st_mode & 0o777 == 0o440, zone
    assert 9875 in pod_spec()["securityContext"]["supplementalGroups"]


def test_shipped_prometheusrule_carries_the_rule_files():
    """What kustomize applies is the rule files' groups, unchanged and in order (the
    generator's own freshness check is in test_rules.py)."""
    assert "prometheusrule.yaml" in kustomization(OPERATOR_COMPONENT)["resources"]
    rule = by_kind("PrometheusRule")
    files = sorted((ROOT / "prometheus" / "rules").glob("*.yml")) + \
        sorted((ROOT / "prometheus" / "alerts").glob("*.yml"))
    expected = [group for path in files for group in yaml.safe_load(path.read_text())["groups"]]
    assert expected and rule["spec"]["groups"] == expected
