"""What the daemon imports at start: heavy modules only where they are used (issue 17)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import json, sys
from exporter.config import resolve
from exporter.cli import Daemon
daemon = Daemon(resolve({}, None, environ={}), {})
daemon.sampler._step()
print(json.dumps(sorted(sys.modules)))
"""


def test_daemon_start_leaves_heavy_modules_unimported():
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    modules = set(json.loads(out.splitlines()[-1]))
    assert "exporter.sampler" in modules  # the probe did build the daemon
    # run records' schema checks, the report, unconfigured intensity providers, MLflow
    for heavy in ("jsonschema", "exporter.report", "exporter.report.compute", "mlflow",
                  "exporter.carbon.providers.electricitymaps", "exporter.carbon.providers.watttime",
                  "exporter.carbon.providers.ukgrid", "exporter.carbon.providers.http_json",
                  "exporter.runs.embedded", "exporter.runs.service", "exporter.retraining"):
        assert heavy not in modules, heavy
