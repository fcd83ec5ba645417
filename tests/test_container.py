"""Dockerfile and compose demo, checked without a Docker engine (none in CI): structure of
the Dockerfile, the HEALTHCHECK script against the real exporter, the compose file's
services, mounts, ports and flags, and its Prometheus config through promtool."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest
import yaml

from exporter.cli import build_parser
from exporter.config import resolve
from tests.harness import ROOT, ExporterProcess, free_port

DOCKER = ROOT / "deploy" / "docker"
COMPOSE = DOCKER / "compose.yaml"
HEALTHCHECK = DOCKER / "healthcheck.py"


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """[[(INSTRUCTION, arguments), ...] per stage], continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction, args.strip()))
    return stages


def test_dockerfile_is_multi_stage_non_root_without_build_tools():
    stages = dockerfile_stages()
    assert len(stages) >= 2
    final = stages[-1]
    instructions = [i for i, _ in final]
    assert "RUN" not in instructions  # nothing installed or compiled in the final stage
    users = [args for i, args in final if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert any(i == "COPY" and args.startswith("--from=build") for i, args in final)
    [healthcheck] = [args for i, args in final if i == "HEALTHCHECK"]
    assert "/opt/carbon-exporter/healthcheck.py" in healthcheck
    assert any(i == "ENTRYPOINT" and "carbon-exporter" in args for i, args in final)
    build = stages[0]
    assert any(i == "RUN" and "pip uninstall -y pip setuptools" in args for i, args in build)
    for stage in stages:
        for instruction, args in stage:
            if instruction == "COPY" and not args.startswith("--from"):
                *sources, _ = args.split()
                for source in sources:
                    assert (ROOT / source).exists(), source


def test_dockerignore_keeps_the_venv_out():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


def test_healthcheck_script_follows_healthz(tmp_path):
    exporter = ExporterProcess(tmp_path, ["--sample.interval", "0.2", "--path.sysfs", str(tmp_path)])
    try:
        exporter.wait_ready()
        env = {"CARBON_EXPORTER_HEALTHCHECK_URL": exporter.url + "/healthz"}
        ok = subprocess.run([sys.executable, str(HEALTHCHECK)], env=env, capture_output=True,
                            text=True, timeout=10)
        assert ok.returncode == 0, ok.stderr
    finally:
        assert exporter.stop() == 0
    dead = subprocess.run([sys.executable, str(HEALTHCHECK)], capture_output=True, text=True,
                          env={"CARBON_EXPORTER_HEALTHCHECK_URL":
                               f"http://127.0.0.1:{free_port()}/healthz"}, timeout=10)
    assert dead.returncode == 1 and "unhealthy" in dead.stderr


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_starts_the_four_services_on_loopback():
    services = compose()["services"]
    assert set(services) == {"exporter", "prometheus", "alertmanager", "grafana"}
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
        if "image" in service and name != "exporter":
            assert re.search(r":v?\d+\.\d+\.\d+$", service["image"]), f"{name}: pin the image tag"
    exporter = services["exporter"]
    assert exporter["read_only"] is True and exporter["cap_drop"] == ["ALL"]
    assert exporter["user"].split(":")[0] != "0"
    assert (DOCKER / exporter["build"]["context"] / exporter["build"]["dockerfile"]).exists()


def test_compose_mounts_exist():
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")) and not source.startswith(("/sys", "/proc")):
                assert (DOCKER / source).exists(), f"{name}: {source} is missing"


def test_compose_exporter_flags_are_valid():
    command = compose()["services"]["exporter"]["command"]
    flags = {k: v for k, v in vars(build_parser().parse_args(command)).items()
             if v is not None and k != "config_file"}
    config = resolve(flags, None, environ={})
    assert config.path_sysfs == "/host/sys" and config.rapl_min_interval == 1.0


def test_grafana_provisioning_points_at_the_mounted_dashboards():
    services = compose()["services"]
    mounts = dict(v.split(":")[:2] for v in services["grafana"]["volumes"])
    provider = yaml.safe_load((DOCKER / "grafana/provisioning/dashboards/carbon-exporter.yaml").read_text())
    path = provider["providers"][0]["options"]["path"]
    [source] = [s for s, target in mounts.items() if target == path]
    assert sorted((DOCKER / source).glob("*.json")), "no dashboards to provision"
    datasource = yaml.safe_load((DOCKER / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"


def test_compose_prometheus_config_and_rules_pass_promtool(tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed (scripts/test.sh installs Debian's prometheus)")
    mounts = dict(v.split(":")[:2] for v in compose()["services"]["prometheus"]["volumes"]
                  if v.startswith("."))
    # Lay the compose mounts out under tmp_path, as the container sees them under /.
    for source, target in mounts.items():
        dest = tmp_path / target.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.symlink_to((DOCKER / source).resolve())
    config = (tmp_path / "etc/prometheus/prometheus.yml").read_text()
    rewritten = tmp_path / "prometheus.yml"
    rewritten.write_text(config.replace("/etc/prometheus/", f"{tmp_path}/etc/prometheus/"))
    rule_files = list((tmp_path / "etc/prometheus/rules").glob("*.yml")) + \
        list((tmp_path / "etc/prometheus/alerts").glob("*.yml"))
    assert len(rule_files) >= 2
    result = subprocess.run([promtool, "check", "config", str(rewritten)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr
