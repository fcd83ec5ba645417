"""The SCI recording rules and the example functional-unit rules pass promtool's checks and
their exact-value unit tests."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.harness import require_tool

ROOT = Path(__file__).resolve().parent.parent


def promtool(*args: str) -> subprocess.CompletedProcess:
    binary = require_tool("promtool", "prometheus")
    return subprocess.run([binary, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_sci_rules_check_and_unit_tests():
    check = promtool("check", "rules", "prometheus/rules/sci.rules.yml",
                     "prometheus/examples/sci-workloads.rules.yml")
    assert check.returncode == 0, check.stdout + check.stderr
    unit = promtool("test", "rules", "prometheus/tests/sci.test.yml")
    assert unit.returncode == 0, unit.stdout + unit.stderr
