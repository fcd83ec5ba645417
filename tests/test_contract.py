"""The metric contract: exporter/metrics.py is the one place names are defined; the README and
docs/architecture.md (the contract) must agree with it, and names must follow Prometheus conventions."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from exporter import metrics

ROOT = Path(__file__).resolve().parent.parent
DESIGN = ROOT / "docs" / "architecture.md"
# Target labels Prometheus or common setups attach; an exporter label with these names clashes.
RESERVED_LABELS = {"job", "instance", "zone", "region", "cluster", "env", "node"}


def test_readme_tables_are_generated_from_the_code():
    result = subprocess.run([sys.executable, "scripts/gen_readme.py", "--check"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("spec", metrics.ALL, ids=lambda s: s.name)
def test_metric_names_follow_prometheus_conventions(spec):
    assert re.fullmatch(r"carbon_[a-z0-9_]+", spec.name)
    assert spec.name.endswith("_total") == (spec.type == "counter")
    units = ("_joules_total", "_grams_total", "_watts", "_seconds", "_ratio", "_grams_per_kwh",
             "_grams_per_second", "_info", "_up", "_glitches_total", "_timestamp_seconds",
             "_requests_total", "_fetches_total", "_in_flight")
    assert spec.name.endswith(units), f"{spec.name} does not end in a base unit"
    assert not set(spec.labels) & RESERVED_LABELS
    assert spec.help and spec.help[0].isupper()


def test_names_are_unique():
    names = [m.name for m in metrics.ALL]
    assert len(names) == len(set(names))


def _design_metrics() -> dict[str, str]:
    """metric -> its labels cell, from the design page's metric table."""
    rows = {}
    for line in DESIGN.read_text().splitlines():
        match = re.match(r"\| `(carbon_[a-z_]+)` \|[^|]+\|([^|]*)\|", line)
        if match:
            rows[match.group(1)] = match.group(2)
    return rows


def test_every_design_metric_exists_with_the_agreed_labels():
    by_name = {m.name: m for m in metrics.ALL}
    design = _design_metrics()
    assert len(design) >= 15, "the design page's metric table was not found"
    for name, label_cell in design.items():
        assert name in by_name, f"{name} is in the design contract but not in exporter/metrics.py"
        spec = by_name[name]
        if label_cell.strip().startswith("same"):
            continue
        agreed = re.findall(r"`([a-z_]+)`", re.sub(r"\([^)]*\)", "", label_cell))
        assert set(agreed) <= set(spec.labels), (name, agreed, spec.labels)


def test_peak_and_budget_metrics_of_contract_v2():
    """Issue 10: the peak keeps carbon_power_watts's labels; the budget is per scope and device."""
    by_name = {m.name: m for m in metrics.ALL}
    assert by_name["carbon_power_peak_watts"].type == "gauge"
    assert by_name["carbon_power_peak_watts"].labels == ("component", "device", "source")
    assert by_name["carbon_power_budget_watts"].type == "gauge"
    assert by_name["carbon_power_budget_watts"].labels == ("scope", "device")
