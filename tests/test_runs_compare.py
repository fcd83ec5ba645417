"""`carbon-exporter compare` on real workloads measured in embedded mode, Welch's interval
against known values, and the life-cycle roll-up."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from exporter.runs.compare import compare
from exporter.runs.lifecycle import render_markdown, rollup
from exporter.runs.record import load_record
from exporter.runs.stats import t_quantile, welch
from tests.harness import ROOT

MATMULS = 60
# One BLAS thread: OpenBLAS workers spin while waiting, which on a loaded machine would add
# CPU time unrelated to the arithmetic.
BLAS_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
MATMUL = """
import sys
import numpy as np
a = np.random.default_rng(0).random((1000, 1000)).astype(sys.argv[1])
for _ in range(int(sys.argv[2])):
    a @ a
"""


def start_run(path, dtype: str, tags: dict[str, str], model: str = "mm",
              phase: str = "training") -> subprocess.Popen:
    """One real workload under `carbon-exporter run` (embedded mode)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARBON_EXPORTER_")}
    env.update(BLAS_ENV, CARBON_EXPORTER_CPU_MODEL_IDLE_WATTS="10",
               CARBON_EXPORTER_CPU_MODEL_MAX_WATTS="50", CARBON_EXPORTER_SAMPLE_INTERVAL="100ms",
               CARBON_EXPORTER_CARBON_INTENSITY="300", CARBON_EXPORTER_RUNS_SOCKET="")
    tag_args = [arg for k, v in tags.items() for arg in ("--tag", f"{k}={v}")]
    return subprocess.Popen(
        [sys.executable, "-m", "exporter", "run", "--quiet", "--mode", "embedded", "--name",
         f"matmul-{dtype}", "--unit", "matmuls", "--units", str(MATMULS), "--model", model,
         "--phase", phase, "--json", str(path), *tag_args, "--", sys.executable, "-c", MATMUL,
         dtype, str(MATMULS)], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)


def pair(first: tuple, second: tuple) -> None:
    """Two runs at the same time, so the machine's load (other tenants, a busy hyperthread
    sibling) falls on both alike: a paired design, as an A/B test on shared hardware needs."""
    procs = [start_run(*first), start_run(*second)]
    for proc in procs:
        _, stderr = proc.communicate(timeout=180)
        assert proc.returncode == 0, stderr


def matmul_run(path, dtype: str, tags: dict[str, str], model: str = "mm",
               phase: str = "training") -> dict:
    proc = start_run(path, dtype, tags, model, phase)
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr
    return load_record(str(path))


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "exporter", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_compare_finds_float32_cheaper_and_identical_workloads_equal(tmp_path):
    f64, f32, same_a, same_b = [], [], [], []
    for i in range(5):  # 5 repeats each, in pairs
        f64.append(tmp_path / f"f64-{i}.json")
        f32.append(tmp_path / f"f32-{i}.json")
        pair((f64[-1], "float64", {"dtype": "float64"}), (f32[-1], "float32", {"dtype": "float32"}))
        same_a.append(tmp_path / f"same-a-{i}.json")
        same_b.append(tmp_path / f"same-b-{i}.json")
        pair((same_a[-1], "float32", {"group": "a"}), (same_b[-1], "float32", {"group": "b"}))
    out = tmp_path / "cmp.json"
    done = cli("compare", *map(str, f32), "--against", *map(str, f64), "--label-a", "float32",
               "--label-b", "float64", "--format", "json", "--output", str(out))
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    energy = result["comparisons"][0]
    assert result["per"] == "matmuls" and energy["metric"] == "energy_joules_per_unit"
    assert energy["verdict"] == "a_cheaper", (energy, result["groups"])
    low, high = energy["ci95_percent"]
    assert low < high < 0  # the interval excludes 0
    assert result["verdict"].startswith("float32 uses ") and "less energy per matmuls" in result["verdict"]
    emissions = result["comparisons"][1]
    assert emissions["metric"] == "emissions_grams_per_unit" and emissions["verdict"] == "a_cheaper"

    # identical workloads: no large difference. A 95% interval excludes 0 by chance one time
    # in 20, so the verdict itself is not what is asserted here
    done = cli("compare", *map(str, same_a), "--against", *map(str, same_b), "--format", "json")
    assert done.returncode == 0, done.stderr
    same = json.loads(done.stdout)["comparisons"][0]
    assert abs(same["difference_percent"]) < 25, same
    # the same group against itself: the Markdown verdict, deterministically
    done = cli("compare", *map(str, same_a), "--against", *map(str, same_a))
    assert done.returncode == 0, done.stderr
    assert "**Verdict:** no significant difference in energy per matmuls" in done.stdout, done.stdout
    assert "| A | 5 |" in done.stdout and "| B | 5 |" in done.stdout

    # too small a group says so
    done = cli("compare", str(f32[0]), "--against", *map(str, f64), "--format", "json")
    assert json.loads(done.stdout)["comparisons"][0]["verdict"] == "too_few_runs"
    done = cli("compare", str(f32[0]))
    assert done.returncode == 2 and "both groups" in done.stderr

    # life-cycle roll-up of the same model's runs: training runs, plus an inference one
    matmul_run(tmp_path / "infer.json", "float32", {}, phase="inference")
    paths = [*f64, *f32, *same_a, *same_b, tmp_path / "infer.json"]
    records = [load_record(str(p)) for p in paths]
    doc = rollup(records)
    assert doc["model"] == "mm" and doc["runs"] == 21
    assert [p["phase"] for p in doc["phases"]] == ["training", "inference"]
    assert doc["totals"]["energy_joules"] == pytest.approx(sum(r["energy_joules"] for r in records))
    assert doc["totals"]["emissions_grams"] == pytest.approx(sum(r["emissions_grams"] for r in records))
    assert doc["phases"][1]["units"] == MATMULS
    assert doc["data_quality"]["energy_share_by_method"] == {"model": pytest.approx(1.0)}
    md = render_markdown(doc)
    assert md.startswith("## Environmental footprint: mm")
    assert "| training | 20 |" in md and "| inference | 1 |" in md and "### Methodology" in md
    done = cli("lifecycle", *map(str, paths), "--format", "json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["totals"]["energy_kwh"] == pytest.approx(doc["totals"]["energy_kwh"])
    done = cli("lifecycle", *map(str, paths), "--model", "other")
    assert done.returncode == 2 and "no run of model 'other'" in done.stderr


def test_welch_interval_against_known_values():
    # t quantiles from the table: df 4 -> 2.776, df 8 -> 2.306, df 30 -> 2.042
    assert t_quantile(0.975, 4) == pytest.approx(2.7764, abs=1e-4)
    assert t_quantile(0.975, 8) == pytest.approx(2.3060, abs=1e-4)
    assert t_quantile(0.975, 30) == pytest.approx(2.0423, abs=1e-4)
    # a = 1..5 (var 2.5), b = 2..6 (var 2.5): diff -1, se 1, df 8
    result = welch([1, 2, 3, 4, 5], [2, 3, 4, 5, 6])
    assert result.difference == pytest.approx(-1)
    assert result.df == pytest.approx(8)
    assert (result.low, result.high) == pytest.approx((-1 - 2.3060, -1 + 2.3060), abs=1e-3)


def _record(joules: float, units: float = 10.0) -> dict:
    return {"run_id": f"{int(joules * 1000):032x}", "energy_joules": joules,
            "emissions_grams": joules / 10, "units": {"name": "images", "count": units}}


def test_compare_threshold_and_baseline_percent():
    a = [_record(j) for j in (90, 91, 89, 90.5, 89.5)]
    b = [_record(j) for j in (100, 101, 99, 100.5, 99.5)]
    result = compare(a, b)
    energy = result["comparisons"][0]
    assert energy["difference_percent"] == pytest.approx(-10)
    assert energy["verdict"] == "a_cheaper"
    # a 1% difference with tiny noise excludes 0 but stays inside the 2% threshold
    a = [_record(j) for j in (99, 99.01, 98.99, 99.005, 98.995)]
    b = [_record(j) for j in (100, 100.01, 99.99, 100.005, 99.995)]
    energy = compare(a, b)["comparisons"][0]
    assert energy["verdict"] == "no_significant_difference"
    assert "at the 2% threshold" in energy["verdict_text"]
    assert compare(a, b, threshold_percent=0.5)["comparisons"][0]["verdict"] == "a_cheaper"
