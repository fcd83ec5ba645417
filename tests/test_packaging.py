"""Packaging and conventions: licence and metadata, --version as node_exporter prints it, the
bootstrap's apt handling, README links, dashboards ready for grafana.com import and loadable
by the Grafana that compose pins, the container's NVIDIA variables."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib

import yaml

from exporter import __version__
from tests.harness import ROOT

sys.path.insert(0, str(ROOT / "grafana"))
import generate

# Dashboard schemaVersion each Grafana release reads natively (its DashboardMigrator's
# latest version); a newer one would not load faithfully.
GRAFANA_SCHEMA = {"11.2": 39, "11.3": 40, "11.4": 40, "11.5": 40, "11.6": 41}


def test_license_file_and_pyproject_metadata():
    assert (ROOT / "LICENSE").read_text().lstrip().startswith("Apache License")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"  # an SPDX expression, not a table
    assert project["license-files"] == ["LICENSE"]
    assert {"Homepage", "Source", "Issues"} <= set(project["urls"])
    assert all(url.startswith("https://") for url in project["urls"].values())
    classifiers = project["classifiers"]
    assert "Programming Language :: Python :: 3.11" in classifiers
    assert "Topic :: System :: Monitoring" in classifiers
    assert not [c for c in classifiers if c.startswith("License ::")]  # PEP 639: the SPDX string


def test_version_prints_revision_and_build_date_like_node_exporter():
    result = subprocess.run([sys.executable, "-m", "exporter", "--version"], cwd=ROOT,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert re.fullmatch(rf"carbon-exporter, version {re.escape(__version__)} "
                        r"\(branch: \S+, revision: \S+\)", lines[0]), lines[0]
    fields = dict(line.strip().split(":", 1) for line in lines[1:])
    assert set(fields) == {"build user", "build date", "python version", "platform"}
    if (ROOT / ".git").exists():  # a source checkout: the revision of HEAD
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True).stdout.strip()
        assert head in lines[0]
        assert re.fullmatch(r"\d{8}-\d\d:\d\d:\d\d", fields["build date"].strip())


def test_version_from_the_build_file(tmp_path):
    """An installed build has no .git: the Dockerfile freezes revision and date at build time."""
    copy = tmp_path / "exporter"
    shutil.copytree(ROOT / "exporter", copy, ignore=shutil.ignore_patterns("__pycache__",
                                                                           "_build.json"))
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    wrote = subprocess.run([sys.executable, "-m", "exporter.version", "--write", "abc1234"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert wrote.returncode == 0, wrote.stderr
    build = json.loads((copy / "_build.json").read_text())
    assert build["revision"] == "abc1234" and re.fullmatch(r"\d{8}-\d\d:\d\d:\d\d",
                                                           build["builddate"])
    shown = subprocess.run([sys.executable, "-c", "from exporter.version import version_text;"
                            "print(version_text())"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=30)
    assert "revision: abc1234)" in shown.stdout
    assert f"build date:       {build['builddate']}" in shown.stdout


def test_bootstrap_hint_names_every_package_and_apt_waits_for_the_lock(tmp_path):
    """As a non-root user with none of the tools: one hint naming every package, exit 1."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "id").write_text("#!/bin/sh\necho 1000\n")  # not root
    (fake_bin / "id").chmod(0o755)
    for name in ("sh", "cat", "cksum", "dirname"):  # the tools under test stay hidden
        target = shutil.which(name)
        assert target, name
        os.symlink(target, fake_bin / name)
    os.symlink(os.path.realpath(sys.executable), fake_bin / "python3")
    result = subprocess.run(["sh", str(ROOT / "scripts" / "bootstrap.sh"), "--test-tools"],
                            cwd=ROOT, env={"PATH": str(fake_bin), "HOME": str(tmp_path)},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    hints = [line for line in result.stderr.splitlines() if "apt-get install" in line]
    assert len(hints) == 1, result.stderr
    packages = hints[0].split("apt-get install -y", 1)[1].split()
    assert set(packages) == {"prometheus", "prometheus-alertmanager", "chromium", "systemd",
                             "victoria-metrics"}
    # as root, every apt-get call waits for a dpkg lock another apt holds
    script = (ROOT / "scripts" / "bootstrap.sh").read_text()
    calls = re.findall(r"apt-get \$lock (update|install)", script)
    assert sorted(calls) == ["install", "update"]
    assert 'lock="-o DPkg::Lock::Timeout=' in script


def test_readme_links_nothing_outside_the_repository():
    text = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)]+)\)", text) + re.findall(r"<(https?://[^>]+)>", text)
    for link in links:
        if link.startswith(("http://localhost", "http://127.0.0.1")):
            continue  # the user's own running services
        assert not re.match(r"[a-z]+://", link), f"README links outside the repository: {link}"
        path = (ROOT / link.split("#")[0]).resolve()
        assert path.is_relative_to(ROOT) and path.exists(), f"broken README link: {link}"
    assert "shared/design.md" not in text


def test_dashboards_import_on_grafana_com_and_load_in_the_pinned_grafana():
    compose = yaml.safe_load((ROOT / "deploy" / "docker" / "compose.yaml").read_text())
    image = compose["services"]["grafana"]["image"]
    pinned = image.rsplit(":", 1)[1]
    assert pinned == generate.GRAFANA_VERSION
    for path in sorted((ROOT / "grafana" / "dashboards").glob("*.json")):
        board = json.loads(path.read_text())
        assert board["schemaVersion"] <= GRAFANA_SCHEMA[".".join(pinned.split(".")[:2])], path
        (ds_input,) = board["__inputs"]
        assert ds_input["type"] == "datasource" and ds_input["pluginId"] == "prometheus"
        requires = {(r["type"], r["id"]): r for r in board["__requires"]}
        assert requires[("grafana", "grafana")]["version"] == pinned
        assert ("datasource", "prometheus") in requires
        used = {p["type"] for p in board["panels"]} - {"row"}
        assert {i for t, i in requires if t == "panel"} == used, path
        (variable,) = [v for v in board["templating"]["list"] if v["type"] == "datasource"]
        assert variable["current"]["value"] == "${" + ds_input["name"] + "}"


def test_container_image_sets_the_nvidia_variables():
    dockerfile = (ROOT / "Dockerfile").read_text()
    final = dockerfile.rsplit("\nFROM ", 1)[1]
    assert "NVIDIA_VISIBLE_DEVICES=all" in final
    assert "NVIDIA_DRIVER_CAPABILITIES=utility" in final
    readme = (ROOT / "README.md").read_text()
    assert "CDI" in readme and "device plugin" in readme
    assert "accept-nvidia-visible-devices-envvar-when-unprivileged" in readme
