"""The SCI recording rules and the example functional-unit rules pass promtool's checks and
their exact-value unit tests."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def promtool(*args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("promtool")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool is not installed (scripts/test.sh installs the prometheus package)")
        pytest.skip("promtool not installed: run ./scripts/test.sh")
    return subprocess.run([binary, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_sci_rules_check_and_unit_tests():
    check = promtool("check", "rules", "prometheus/rules/sci.rules.yml",
                     "prometheus/examples/sci-workloads.rules.yml")
    assert check.returncode == 0, check.stdout + check.stderr
    unit = promtool("test", "rules", "prometheus/tests/sci.test.yml")
    assert unit.returncode == 0, unit.stdout + unit.stderr
