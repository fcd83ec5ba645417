"""`carbon-exporter estimate-retraining`: the line fit and its prediction interval on
synthetic runs with a known relation, the refusals and warnings, and the command itself on
record files, with the grid intensity from the bundled dataset and from a provider that
forecasts (the fake grid API on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from exporter.retraining.estimate import RecordError, RetrainingRun, estimate, load_runs
from exporter.retraining.fit import (
    FitError, fit_line, spearman, student_t_cdf, student_t_quantile,
)
from tests.fake_grid import FakeGrid

# a retraining costs 2 Wh plus 10 Wh per unit of index; epochs 2 + 12 per unit
INTERCEPT_KWH, SLOPE_KWH, NOISE_KWH = 0.002, 0.010, 0.0004


def synthetic_runs(n: int, seed: int, lo: float = 0.1, hi: float = 0.9) -> list[RetrainingRun]:
    rng = random.Random(seed)
    runs = []
    for i in range(n):
        x = lo + (hi - lo) * i / max(n - 1, 1)
        runs.append(RetrainingRun(f"synthetic-{i}", x,
                                  INTERCEPT_KWH + SLOPE_KWH * x + rng.gauss(0, NOISE_KWH),
                                  round(2 + 12 * x + rng.gauss(0, 0.5)), f"{seed:08x}{i:024x}"))
    return runs


@pytest.mark.parametrize("p, df, expected", [
    (0.975, 1, 12.7062047), (0.95, 3, 2.3533634), (0.975, 10, 2.2281389),
    (0.95, 30, 1.6972609), (0.995, 5, 4.0321430), (0.975, 1e6, 1.9599664),
])
def test_student_t_quantiles_match_tables(p, df, expected):
    assert student_t_quantile(p, df) == pytest.approx(expected, rel=2e-6)
    assert student_t_quantile(1 - p, df) == pytest.approx(-expected, rel=2e-6)
    assert student_t_cdf(expected, df) == pytest.approx(p, abs=1e-8)


def test_student_t_agrees_with_scipy_where_installed():
    from scipy import stats  # comes with scikit-learn (test extra)
    for df in (1, 2, 3, 7, 25):
        for p in (0.6, 0.95, 0.999):
            assert student_t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-7)


def test_spearman_with_ties_matches_definition():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    from scipy import stats
    xs, ys = [1, 2, 2, 3, 5, 5, 5, 8], [3, 1, 4, 1, 5, 9, 2, 6]
    assert spearman(xs, ys) == pytest.approx(stats.spearmanr(xs, ys).statistic, rel=1e-12)


def test_known_relation_is_recovered():
    fit = fit_line(*zip(*[(r.index, r.energy_kwh) for r in synthetic_runs(60, seed=1)]))
    assert fit.slope == pytest.approx(SLOPE_KWH, rel=0.05)
    assert fit.intercept == pytest.approx(INTERCEPT_KWH, abs=0.0005)
    assert fit.residual_sd == pytest.approx(NOISE_KWH, rel=0.25)
    assert fit.r_squared > 0.95 and fit.spearman > 0.95
    result = estimate(synthetic_runs(60, seed=1), 0.5, confidence=0.9)
    assert result.runs == 60
    assert result.energy.value == pytest.approx(INTERCEPT_KWH + SLOPE_KWH * 0.5, rel=0.03)
    assert result.epochs is not None and result.epochs.value == pytest.approx(8.0, abs=0.4)
    assert not result.warnings


def test_prediction_interval_covers_new_runs_at_its_stated_rate():
    """90% intervals from 8-run fits contain a fresh run's energy about 90% of the time."""
    rng = random.Random(7)
    hits, trials = 0, 600
    for trial in range(trials):
        runs = synthetic_runs(8, seed=1000 + trial)
        x = rng.uniform(0.1, 0.9)
        truth = INTERCEPT_KWH + SLOPE_KWH * x + rng.gauss(0, NOISE_KWH)
        p = estimate(runs, x, confidence=0.9).energy
        hits += p.low <= truth <= p.high
    assert 0.86 <= hits / trials <= 0.94, hits / trials


def test_too_few_runs_are_refused():
    with pytest.raises(FitError, match="4 runs to fit on, the minimum is 5"):
        estimate(synthetic_runs(4, seed=2), 0.5)
    assert estimate(synthetic_runs(4, seed=2), 0.5, min_runs=4).runs == 4
    with pytest.raises(FitError, match="minimum is 3"):
        estimate(synthetic_runs(2, seed=2), 0.5, min_runs=1)
    same = [RetrainingRun(f"s{i}", 0.3, 0.001 * i) for i in range(6)]
    with pytest.raises(FitError, match="same index"):
        estimate(same, 0.3)


def test_epochs_missing_leaves_energy_estimate_and_says_why():
    runs = [RetrainingRun(r.source, r.index, r.energy_kwh, None) for r in synthetic_runs(6, 3)]
    result = estimate(runs, 0.4)
    assert result.epochs is None and "0 runs to fit on" in (result.epochs_note or "")


def test_extrapolation_warns_and_widens():
    runs = synthetic_runs(10, seed=4, lo=0.2, hi=0.6)
    inside = estimate(runs, 0.4)
    outside = estimate(runs, 1.2)
    assert not inside.warnings
    assert len(outside.warnings) == 1 and "outside the fitted range 0.2..0.6" in outside.warnings[0]
    assert (outside.energy.high - outside.energy.low) > 2 * (inside.energy.high - inside.energy.low)


ROOT = Path(__file__).resolve().parent.parent


def carbon_exporter_run(tmp: Path, *args: str, seconds: float = 0.05) -> dict:
    """A real run record: `carbon-exporter run` around a short busy Python loop."""
    path = tmp / f"record-{len(list(tmp.glob('record-*.json')))}.json"
    loop = f"import time; end = time.monotonic() + {seconds}\nwhile time.monotonic() < end: pass"
    out = subprocess.run([sys.executable, "-m", "exporter", "run", "--quiet", "--json", str(path),
                          *args, "--", sys.executable, "-c", loop],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> dict:
    return carbon_exporter_run(tmp_path_factory.mktemp("template"))


def write_records(folder: Path, runs: list[RetrainingRun], template: dict) -> None:
    """Records as `carbon-exporter run` writes them, with the synthetic runs' numbers."""
    folder.mkdir(parents=True, exist_ok=True)
    for r in runs:
        record = json.loads(json.dumps(template))
        record.update(run_id=r.run_id, energy_kwh=r.energy_kwh, energy_joules=r.energy_kwh * 3.6e6,
                      params={"preindex": r.index, "epochs": r.epochs})
        (folder / f"{r.run_id}.json").write_text(json.dumps(record))


def test_records_are_read_skipped_and_refused_with_reasons(tmp_path, template):
    write_records(tmp_path / "runs", synthetic_runs(5, seed=5), template)
    (tmp_path / "runs" / "unrelated.json").write_text(json.dumps({**template, "run_id": "a" * 32}))
    failed = {**template, "run_id": "f" * 32, "status": "failed", "params": {"preindex": 0.3}}
    (tmp_path / "runs" / "failed.json").write_text(json.dumps(failed))
    lines = [json.dumps({**template, "run_id": f"{i:032x}", "params": {"preindex": str(0.1 * i)}})
             for i in range(3)]
    (tmp_path / "runs" / "more.jsonl").write_text("\n".join(lines) + "\n")
    twice = sorted((tmp_path / "runs").glob("00000005*.json"))[0]
    runs, notes = load_runs([str(tmp_path / "runs"), str(twice)])
    assert len(runs) == 8  # 5 + 3, the file named twice counted once
    assert "1 record without params.preindex skipped" in notes
    assert "1 record failed (not completed) skipped" in notes
    (tmp_path / "bad.json").write_text(json.dumps({**template, "params": {"preindex": "high"}}))
    with pytest.raises(RecordError, match="not a number"):
        load_runs([str(tmp_path / "bad.json")])
    (tmp_path / "invalid.json").write_text(json.dumps({**template, "energy_kwh": "lots"}))
    with pytest.raises(RecordError, match="invalid.json: energy_kwh"):
        load_runs([str(tmp_path / "invalid.json")])
    (tmp_path / "other.json").write_text(json.dumps({"params": {"preindex": 0.2}}))
    with pytest.raises(RecordError, match="not a run record"):
        load_runs([str(tmp_path / "other.json")])
    with pytest.raises(RecordError, match="no such file"):
        load_runs([str(tmp_path / "missing")])


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "exporter", "estimate-retraining", *args],
                          capture_output=True, text=True, timeout=60,
                          cwd=ROOT)


def test_cli_end_to_end_on_records_written_by_carbon_exporter_run(tmp_path):
    """Six real measured runs, each tagged with an index, then the estimate from their files;
    the fit must be the least-squares line through the recorded numbers."""
    import numpy as np
    runs = tmp_path / "runs"
    runs.mkdir()
    for i in range(6):
        carbon_exporter_run(runs, "--param", f"preindex={0.1 * (i + 1):g}", "--param",
                            f"epochs={2 * (i + 1)}", "--carbon.zone", "DE",
                            seconds=0.05 * (i + 1))
    out = cli("--index", "0.35", "--carbon.zone", "DE", "--format", "json", str(runs))
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    records = [json.loads(p.read_text()) for p in sorted(runs.glob("*.json"))]
    xs = [r["params"]["preindex"] for r in records]
    ys = [r["energy_kwh"] for r in records]
    slope, intercept = np.polyfit(xs, ys, 1)
    assert doc["runs"] == 6
    assert doc["energy_kwh"]["fit"]["slope"] == pytest.approx(slope, rel=1e-6, abs=1e-15)
    assert doc["energy_kwh"]["value"] == pytest.approx(max(intercept + slope * 0.35, 0), rel=1e-6,
                                                       abs=1e-15)
    assert doc["epochs"]["value"] == pytest.approx(7.0)  # epochs = 20 * index exactly
    assert doc["emissions_gco2e"]["now"]["zone"] == "DE"
    assert not doc["warnings"]


def test_cli_estimates_with_the_zone_intensity(tmp_path, template):
    write_records(tmp_path, synthetic_runs(12, seed=6), template)
    out = cli("--index", "0.5", "--carbon.zone", "FR", "--format", "json", str(tmp_path))
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["runs"] == 12 and doc["energy_kwh"]["fit"]["runs"] == 12
    energy = doc["energy_kwh"]
    assert energy["low"] < energy["value"] < energy["high"]
    now = doc["emissions_gco2e"]["now"]
    assert now["zone"] == "FR" and now["provider"] == "dataset"
    assert now["grams"] == pytest.approx(energy["value"] * now["grams_per_kwh"])
    assert "cleanest_window" not in doc["emissions_gco2e"]  # the dataset has no forecast
    text = cli("--index", "0.5", "--carbon.intensity", "100", "--carbon.pue", "1.5", str(tmp_path))
    assert text.returncode == 0, text.stderr
    assert "fitted on 12 measured runs" in text.stdout
    assert "100 gCO2e/kWh x PUE 1.5" in text.stdout


def test_cli_refuses_too_few_runs_and_warns_on_extrapolation(tmp_path, template):
    write_records(tmp_path / "few", synthetic_runs(3, seed=7), template)
    out = cli("--index", "0.5", str(tmp_path / "few"))
    assert out.returncode == 1
    assert "cannot estimate: energy: 3 runs to fit on, the minimum is 5" in out.stderr
    write_records(tmp_path / "many", synthetic_runs(6, seed=8, lo=0.1, hi=0.4), template)
    out = cli("--index", "0.9", "--format", "json", str(tmp_path / "many"))
    assert out.returncode == 0
    assert "outside the fitted range" in json.loads(out.stdout)["warnings"][0]
    assert "warning: index 0.9 is outside the fitted range" in out.stderr
    assert cli("--index", "0.5", "--min-runs", "2", str(tmp_path / "many")).returncode == 2
    assert cli("--index", "0.5", "--confidence", "95", str(tmp_path / "many")).returncode == 2
    assert cli("--index", "0.5", "--carbon.zone", "Atlantis!", str(tmp_path / "many")).returncode == 2


def test_cli_prices_the_cleanest_forecast_window(tmp_path, template):
    grid = FakeGrid()
    grid.value["json"] = 400.0  # in force now, no forecast
    grid.value["uk"] = 150.0  # forecast: 150 + |n - 10| per half hour, cleanest 10 steps ahead
    config = {"carbon": {"zone": "GB", "providers": [
        {"type": "http_json", "url": f"{grid.url}/json", "field": "reading.co2",
         "unit_field": "reading.unit", "time_field": "reading.at",
         "token_env": "TEST_JSON_TOKEN", "timeout": 5, "retries": 0},
        {"type": "ukgrid", "url": f"{grid.url}/uk", "timeout": 5, "retries": 0}]}}
    (tmp_path / "carbon.yml").write_text(yaml.safe_dump(config))
    write_records(tmp_path / "runs", synthetic_runs(8, seed=9), template)
    env = {"TEST_JSON_TOKEN": grid.json_token}
    out = subprocess.run([sys.executable, "-m", "exporter", "estimate-retraining", "--index", "0.5",
                          f"--config.file={tmp_path / 'carbon.yml'}", "--format", "json",
                          str(tmp_path / "runs")], capture_output=True, text=True, timeout=60,
                         env={**os.environ, **env}, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    emissions = doc["emissions_gco2e"]
    assert emissions["now"]["grams_per_kwh"] == 400.0
    clean = emissions["cleanest_window"]
    assert clean["grams_per_kwh"] == 150.0 and clean["provider"] == "ukgrid"
    assert clean["grams"] == pytest.approx(doc["energy_kwh"]["value"] * 150.0)
    assert clean["grams"] < emissions["now"]["grams"]
    text = subprocess.run([sys.executable, "-m", "exporter", "estimate-retraining", "--index", "0.5",
                           f"--config.file={tmp_path / 'carbon.yml'}", str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=60, env={**os.environ, **env},
                          cwd=ROOT)
    assert text.returncode == 0, text.stderr
    assert "now: 400 gCO2e/kWh" in text.stdout
    assert "in the cleanest forecast window from " in text.stdout
    assert ": 150 gCO2e/kWh (ukgrid)" in text.stdout
