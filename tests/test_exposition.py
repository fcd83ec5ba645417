"""A golden /metrics exposition for the fixture node: every family, type, help text and label
set the exporter shows there, checked by `promtool check metrics` and against the committed
tests/golden/fixture_node.prom (values blanked: they move with time). A change to the metric
contract shows here as a diff to review; to accept it, regenerate the file:

    UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_exposition.py
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from tests.fixtures import ProcfsTree, intel_two_socket
from tests.harness import ExporterProcess, require_tool, wait_for

GOLDEN = Path(__file__).resolve().parent / "golden" / "fixture_node.prom"
# Labels whose values describe the build or the interpreter, not the node.
VARYING_LABELS = ("version", "python_version", "revision", "builddate")


def normalise(text: str) -> str:
    """Blank the sample values (and the build's own label values) and sort each family's
    samples (their order follows which lane answered first); keep the rest verbatim."""
    out: list[str] = []
    samples: list[str] = []
    for line in [*text.splitlines(), "# END"]:
        if line.startswith("#") or not line.strip():
            out.extend(sorted(samples))
            samples = []
            out.append(line)
            continue
        series, _, _value = line.rpartition(" ")
        for label in VARYING_LABELS:
            series = re.sub(rf'(?<=[{{,]){label}="[^"]*"', f'{label}="*"', series)
        samples.append(f"{series} _")
    return "\n".join(out[:-1]) + "\n"


def test_fixture_node_exposition_is_the_golden_one_and_promtool_clean(tmp_path):
    promtool = require_tool("promtool", "prometheus")
    sysfs = intel_two_socket(tmp_path / "sys").sysfs
    procfs = ProcfsTree(tmp_path / "proc", threads=16, sockets=2)
    state = tmp_path / "nvml.json"
    state.write_text(json.dumps({"driver": "550.54.15", "gpus": [{
        "name": "NVIDIA H100 80GB HBM3", "uuid": f"GPU-golden-{i}", "pci": f"00000000:{i:02x}:00.0",
        "energy_mj": 1_000_000 * (i + 1), "power_mw": 300000, "limit_mw": 700000}
        for i in range(2)]}))
    exporter = ExporterProcess(tmp_path, [
        f"--path.sysfs={sysfs}", f"--path.procfs={procfs.procfs}", "--sample.interval=0.2",
        "--carbon.zone=DE", "--carbon.intensity=300", "--web.disable-exporter-metrics"],
        fake_nvml_state=state)
    try:
        exporter.wait_ready()
        # two cycles with readings: power and rates exist from the second one
        wait_for(lambda: 'carbon_power_watts{component="gpu",device="gpu-1"' in exporter.metrics(),
                 15, "GPU power")
        text = exporter.metrics()
    finally:
        exporter.stop()
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    got = normalise(text)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(got)
    assert GOLDEN.exists(), "no golden file yet: run with UPDATE_GOLDEN=1"
    assert got == GOLDEN.read_text(), (
        "the exposition changed; review the diff and regenerate with UPDATE_GOLDEN=1:\n"
        + "\n".join(sorted(set(got.splitlines()) ^ set(GOLDEN.read_text().splitlines()))))
