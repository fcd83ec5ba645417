"""MLflow against a real tracking server started here (`mlflow server`, SQLite store, proxied
artifacts on local disk): the record's metrics, params and artifact read back through
MLflow's REST API; compare by experiment and run tag."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.parse
import urllib.request

import pytest

from exporter.runs import track
from exporter.runs.record import load_record
from tests.harness import ROOT, free_port, http_get, require, wait_for

EXPERIMENT = "carbon-exporter-test"
SETTINGS = {"cpu_model.idle_watts": 10.0, "cpu_model.max_watts": 50.0,
            "sample.interval": "200ms", "carbon.intensity": 300.0, "runs.socket": ""}


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    try:
        import mlflow  # noqa: F401
    except ImportError:
        require("mlflow is not installed (the test extra installs it)")
    tmp = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp / 'mlflow.db'}",
         "--artifacts-destination", str(tmp / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, cwd=tmp)

    def healthy():
        if proc.poll() is not None:
            raise RuntimeError((tmp / "server.log").read_text())
        return http_get(url + "/health", timeout=2)[0] == 200
    try:
        wait_for(healthy, 120, "mlflow server /health", interval=0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def rest(url: str, endpoint: str, **params) -> dict:
    status, _, body = http_get(f"{url}{endpoint}?{urllib.parse.urlencode(params)}", timeout=30)
    assert status == 200, body
    return json.loads(body)


def rest_post(url: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def run_data(url: str, run_id: str) -> tuple[dict, dict, dict, dict]:
    run = rest(url, "/api/2.0/mlflow/runs/get", run_id=run_id)["run"]
    metrics = {m["key"]: m["value"] for m in run["data"].get("metrics", [])}
    params = {p["key"]: p["value"] for p in run["data"].get("params", [])}
    tags = {t["key"]: t["value"] for t in run["data"].get("tags", [])}
    return run["info"], metrics, params, tags


def artifact(url: str, info: dict, path: str) -> bytes:
    # proxied artifacts: mlflow-artifacts:/<experiment>/<run>/artifacts -> REST download
    root = info["artifact_uri"].split("mlflow-artifacts:/", 1)[1].lstrip("/")
    status, _, body = http_get(f"{url}/api/2.0/mlflow-artifacts/artifacts/{root}/{path}", timeout=30)
    assert status == 200, body
    return body


CHILD = """
import mlflow
with mlflow.start_run():  # joins the wrapper's run through MLFLOW_RUN_ID
    mlflow.log_param("lr", 0.1)
    mlflow.log_metric("loss", 0.5)
"""


def test_run_wrapper_logs_record_to_the_commands_mlflow_run(tmp_path, mlflow_server):
    record_path = tmp_path / "run.json"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CARBON_EXPORTER_", "MLFLOW_"))}
    env.update(MLFLOW_TRACKING_URI=mlflow_server, MLFLOW_EXPERIMENT_NAME=EXPERIMENT,
               CARBON_EXPORTER_RUNS_SOCKET="", CARBON_EXPORTER_CARBON_INTENSITY="300")
    done = subprocess.run(
        [sys.executable, "-m", "exporter", "run", "--mode", "embedded", "--mlflow", "--name",
         "mlflow-wrapped", "--unit", "images", "--units", "100", "--tag", "variant=x",
         "--json", str(record_path), "--", sys.executable, "-c", CHILD],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    record = load_record(str(record_path))
    found = rest(mlflow_server, "/api/2.0/mlflow/experiments/get-by-name",
                 experiment_name=EXPERIMENT)["experiment"]
    runs = rest_post(mlflow_server, "/api/2.0/mlflow/runs/search",
                     {"experiment_ids": [found["experiment_id"]],
                      "filter": "tags.`carbon.run_id` = '%s'" % record["run_id"]})
    assert len(runs["runs"]) == 1
    info, metrics, params, tags = run_data(mlflow_server, runs["runs"][0]["info"]["run_id"])
    assert metrics["carbon.energy_kwh"] == pytest.approx(record["energy_kwh"])
    assert metrics["carbon.emissions_grams"] == pytest.approx(record["emissions_grams"])
    assert metrics["carbon.emissions_grams.operational"] == pytest.approx(
        record["emissions"]["operational_grams"])
    assert metrics["carbon.energy_kwh.cpu"] == pytest.approx(
        next(c["energy_kwh"] for c in record["components"] if c["component"] == "cpu"))
    assert metrics["carbon.energy_joules_per_unit"] == pytest.approx(
        record["units"]["energy_joules_per_unit"])
    assert metrics["loss"] == 0.5 and params["lr"] == "0.1"  # the command's own logging
    assert params["carbon.mode"] == "embedded" and params["carbon.pue"] == "1"
    assert params["carbon.zone"] == record["intensity"]["grid_zone"]
    assert params["carbon.exporter_version"] == record["generator"]["version"]
    assert tags["variant"] == "x" and tags["carbon.name"] == "mlflow-wrapped"
    listed = rest(mlflow_server, "/api/2.0/mlflow/artifacts/list",
                  run_id=info["run_id"], path="carbon-exporter")
    assert [f["path"] for f in listed["files"]] == ["carbon-exporter/run.json"]
    assert json.loads(artifact(mlflow_server, info, "carbon-exporter/run.json")) == record


def test_api_logs_to_active_run_and_compare_by_experiment_tag(tmp_path, mlflow_server,
                                                             monkeypatch):
    import mlflow
    import numpy as np

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    mlflow.set_tracking_uri(mlflow_server)
    mlflow.set_experiment(EXPERIMENT)
    a = np.ones((200, 200))
    ids = {}
    for dtype in ("float32", "float64", "float32", "float64", "float32", "float64"):
        with mlflow.start_run() as active:
            m = a.astype(dtype)
            with track("api", unit="matmuls", mode="embedded", settings=SETTINGS,
                       tags={"dtype": dtype}, mlflow=True) as run:
                for _ in range(30):
                    m @ m
                run.add_units(30)
        assert run.mlflow_run_id == active.info.run_id
        ids.setdefault(dtype, []).append(active.info.run_id)
    info, metrics, _, tags = run_data(mlflow_server, ids["float32"][0])
    assert tags["dtype"] == "float32" and "carbon.energy_kwh" in metrics
    done = subprocess.run(
        [sys.executable, "-m", "exporter", "compare", "--mlflow-experiment", EXPERIMENT,
         "--tag", "dtype=float32", "--against-tag", "dtype=float64", "--format", "json"],
        cwd=ROOT, env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_server},
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["groups"]["a"]["runs"] == 3 and result["groups"]["b"]["runs"] == 3
    assert result["groups"]["a"]["label"] == "dtype=float32"
    assert result["per"] == "matmuls"
