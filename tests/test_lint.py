"""The lint and type gate: `ruff check .` and `mypy exporter` must pass (configured in
pyproject.toml; the tools are pinned in the test extra, so scripts/test.sh installs them).

Run them alone while working: `.venv/bin/ruff check .` and `.venv/bin/mypy exporter`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_check_passes():
    result = _run(str(BIN / "ruff"), "check", "--output-format", "concise", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_exporter_passes():
    result = _run(str(BIN / "mypy"), "exporter")
    assert result.returncode == 0, result.stdout + result.stderr
