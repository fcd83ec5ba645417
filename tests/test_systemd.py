"""deploy/systemd: the unit verifies, rates 2.5 or lower in `systemd-analyze security`, its
privileged ExecStartPre gives the group read access to RAPL and nothing else, and the
environment file holds valid settings."""

from __future__ import annotations

import configparser
import ctypes
import grp
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from exporter.config import SETTINGS, resolve
from tests.fixtures import intel_two_socket
from tests.harness import ROOT, ExporterProcess

UNIT = ROOT / "deploy" / "systemd" / "carbon-exporter.service"
DEFAULTS = ROOT / "deploy" / "systemd" / "carbon-exporter.default"
INSTALLED_BINARY = "/opt/carbon-exporter/bin/carbon-exporter"
MAX_EXPOSURE = 2.5


def analyze() -> str:
    binary = shutil.which("systemd-analyze")
    if binary is None:
        pytest.fail("systemd-analyze is not installed (scripts/test.sh installs Debian's systemd)")
    return binary


@pytest.fixture
def unit_copy(tmp_path) -> Path:
    """The unit as shipped, with ExecStart pointing at this checkout's entry point: verify
    checks that the binary exists, and /opt/carbon-exporter is the install recipe's path."""
    text = UNIT.read_text()
    assert text.count(INSTALLED_BINARY) == 1
    entry = Path(sys.executable).parent / "carbon-exporter"
    assert entry.exists(), entry
    path = tmp_path / "carbon-exporter.service"
    path.write_text(text.replace(INSTALLED_BINARY, str(entry)))
    return path


def unit_sections() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser


def test_unit_verifies(unit_copy):
    result = subprocess.run([analyze(), "verify", str(unit_copy)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr  # no warnings either


def test_security_exposure_is_at_most_2_5(unit_copy):
    result = subprocess.run([analyze(), "security", "--offline=yes", "--no-pager", str(unit_copy)],
                            capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    exposure = float(match.group(1))
    print(f"systemd-analyze security exposure: {exposure}")
    assert exposure <= MAX_EXPOSURE, result.stdout


def test_runs_unprivileged_and_sandboxed():
    service = unit_sections()["Service"]
    assert service["User"] == "carbon-exporter"
    assert service["CapabilityBoundingSet"] == "" and service["AmbientCapabilities"] == ""
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                       "PrivateTmp": "yes", "DevicePolicy": "closed"}.items():
        assert service[key] == value, key
    assert "MemoryMax" in service and "SystemCallFilter" in service
    # Attribution reads /proc/<pid>/cgroup of every process: /proc must not be restricted.
    assert "ProtectProc" not in service and "ProcSubset" not in service


def test_exec_start_pre_grants_group_read_on_energy_files_only(tmp_path):
    """Run the unit's privileged ExecStartPre against a fixture powercap tree."""
    pre = unit_sections()["Service"]["ExecStartPre"]
    assert pre.startswith("+/bin/sh -c ")
    script = shlex.split(pre[1:])[2].replace("$$", "$")  # systemd's $$ is a literal $
    tree = intel_two_socket(tmp_path / "sysfs")
    group = grp.getgrgid(os.getgid()).gr_name if os.getuid() != 0 else "nogroup"
    for zone in tree.zones:
        os.chmod(tree.energy_path(zone), 0o400)  # root-only, as since CVE-2020-8694
    script = script.replace("/sys/class/powercap", f"{tree.sysfs}/class/powercap")
    script = script.replace("chgrp carbon-exporter", f"chgrp {group}")
    subprocess.run(["/bin/sh", "-c", script], check=True, timeout=30)
    gid = grp.getgrnam(group).gr_gid
    for zone in tree.zones:
        st = os.stat(tree.energy_path(zone))
        assert st.st_gid == gid and st.st_mode & 0o777 == 0o440, zone
        name = tree.energy_path(zone).parent / "name"
        assert os.stat(name).st_gid != gid or gid == 0  # only energy_uj was touched
    # and a tree without RAPL (VMs) is not an error
    empty = tmp_path / "empty"
    (empty / "class" / "powercap").mkdir(parents=True)
    subprocess.run(["/bin/sh", "-c", script.replace(f"{tree.sysfs}/", f"{empty}/")], check=True)


def test_environment_file_holds_valid_settings():
    environ = {}
    for line in DEFAULTS.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            environ[key] = value
    known = {s.env for s in SETTINGS} | {"CARBON_EXPORTER_CONFIG_FILE"}
    unknown = {k for k in environ if k.startswith("CARBON_EXPORTER_")} - known
    assert not unknown, f"not a setting: {unknown}"
    assert set(environ) - known == {"ARGS"}
    config = resolve({}, None, environ=environ)
    assert config.rapl_min_interval == 1.0
    assert config.web_config_file == "/etc/carbon-exporter/web.yml"


def _mdwe_supported() -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(66, 0, 0, 0, 0) >= 0  # PR_GET_MDWE, Linux 6.3+


@pytest.mark.skipif(not _mdwe_supported(), reason="kernel without PR_SET_MDWE (Linux < 6.3)")
def test_runs_under_memory_deny_write_execute(tmp_path):
    """The unit sets MemoryDenyWriteExecute=yes; the kernel's per-process W^X switch
    (PR_SET_MDWE, inherited across exec) shows Python, ctypes (pynvml) and TLS cope."""
    libc = ctypes.CDLL(None, use_errno=True)

    def deny_write_execute():
        if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_MDWE)")

    exporter = ExporterProcess(tmp_path, ["--sample.interval", "0.2", "--path.sysfs", str(tmp_path)],
                               preexec_fn=deny_write_execute)
    try:
        exporter.wait_ready()
        assert "carbon_exporter_build_info" in exporter.metrics()
        assert libc.prctl(66, 0, 0, 0, 0) == 0  # the test process itself stays unrestricted
    finally:
        assert exporter.stop() == 0


def test_sysusers_creates_the_service_user(tmp_path):
    """systemd-sysusers, into a scratch root, makes the user and group the unit runs as."""
    sysusers = shutil.which("systemd-sysusers")
    assert sysusers, "systemd-sysusers is part of Debian's systemd package"
    (tmp_path / "etc").mkdir()
    result = subprocess.run([sysusers, f"--root={tmp_path}",
                             str(ROOT / "deploy" / "systemd" / "carbon-exporter.sysusers")],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    passwd = (tmp_path / "etc" / "passwd").read_text()
    group = (tmp_path / "etc" / "group").read_text()
    service = unit_sections()["Service"]
    user = next(line.split(":") for line in passwd.splitlines()
                if line.startswith(service["User"] + ":"))
    assert int(user[2]) != 0 and user[6] == "/usr/sbin/nologin"
    assert any(line.startswith(service["Group"] + ":") for line in group.splitlines())
