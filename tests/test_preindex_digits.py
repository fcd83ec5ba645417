"""The digits reproduction end to end, shortened (two strengths per shift type, one
retraining each): it trains, measures every retraining with the run accounting, and its
records feed `carbon-exporter estimate-retraining`. Correlations are the script's output,
not asserted here (eight runs on a shared machine are a smoke test, not a result)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_reproduction_writes_records_that_estimate_retraining_reads(tmp_path):
    runs = tmp_path / "runs"
    out = subprocess.run([sys.executable, "bench/preindex_digits.py", "--quick", "--repeats", "1",
                          "--runs-dir", str(runs), "--json", str(tmp_path / "result.json")],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    assert len(result["rows"]) == 8
    for row in result["rows"]:
        assert row["reached"], row  # every retraining got back to the target accuracy
        record = json.loads(Path(row["record"]).read_text())
        assert record["status"] == "completed" and record["phase"] == "fine_tuning"
        assert record["params"]["preindex"] == row["preindex"]
        assert record["params"]["epochs"] == row["epochs"]
        assert record["energy_kwh"] == row["energy_kwh"] >= 0
    assert "Spearman rank correlation with PreIndex" in out.stdout
    estimate = subprocess.run([sys.executable, "-m", "exporter", "estimate-retraining", "--index",
                               "0.4", "--carbon.zone", "FR", "--format", "json", str(runs)],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert estimate.returncode == 0, estimate.stderr
    doc = json.loads(estimate.stdout)
    assert doc["runs"] == 8 and doc["epochs"]["fit"]["runs"] == 8
