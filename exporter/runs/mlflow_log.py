"""MLflow: log a run record to an MLflow run (metrics, params, tags and the record as an
artifact), and read records back from an experiment for `compare` and `lifecycle`.

mlflow is an optional extra (`pip install 'carbon-exporter[mlflow]'`); the tracking server
comes from MLFLOW_TRACKING_URI as MLflow itself reads it. The run logged to: the active
MLflow run in this process, else MLFLOW_RUN_ID, else a new run named after the record.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from typing import Any

from exporter import __version__
from exporter.runs.record import load_record

ARTIFACT = "carbon-exporter/run.json"
PREFIX = "carbon."


class MlflowUnavailable(RuntimeError):
    pass


def _mlflow():
    try:
        import mlflow
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise MlflowUnavailable("MLflow logging needs the mlflow extra: "
                                "pip install 'carbon-exporter[mlflow]'") from None
    return mlflow, MlflowClient


def _key(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-/ ]", "_", text)


def metrics_of(record: dict[str, Any]) -> dict[str, float]:
    out = {
        "energy_kwh": record["energy_kwh"],
        "energy_joules": record["energy_joules"],
        "emissions_grams": record["emissions_grams"],
        "emissions_grams.operational": record["emissions"]["operational_grams"],
        "emissions_grams.embodied": record["emissions"]["embodied_grams"],
        "duration_seconds": record["duration_seconds"],
        "power_mean_watts": record["power"]["mean_watts"],
        "power_peak_watts": record["power"]["peak_watts"],
    }
    for c in record["components"]:
        name = _key(c["component"])
        out[f"energy_kwh.{name}"] = c["energy_kwh"]
        out[f"emissions_grams.operational.{name}"] = c["operational_grams"]
        out[f"emissions_grams.embodied.{name}"] = c["embodied_grams"]
    units = record["units"]
    if units and units["energy_joules_per_unit"] is not None:
        out["energy_joules_per_unit"] = units["energy_joules_per_unit"]
        out["emissions_grams_per_unit"] = units["emissions_grams_per_unit"]
        out["units"] = units["count"]
    return {PREFIX + k: float(v) for k, v in out.items()}


def params_of(record: dict[str, Any]) -> dict[str, str]:
    i = record["intensity"]
    out = {"zone": i["grid_zone"], "intensity_provider": i["provider"],
           "intensity_kind": i["kind"], "basis": i["basis"] or "-", "pue": f"{i['pue']:g}",
           "mode": record["mode"], "exporter_version": __version__,
           "unit": (record["units"] or {}).get("name") or "-"}
    return {PREFIX + k: str(v) for k, v in out.items()}


def tags_of(record: dict[str, Any]) -> dict[str, str]:
    out = {PREFIX + "run_id": record["run_id"], PREFIX + "name": record["name"],
           PREFIX + "status": record["status"]}
    if record["model"]:
        out[PREFIX + "model"] = record["model"]
    if record["phase"]:
        out[PREFIX + "phase"] = record["phase"]
    out.update({_key(k): v for k, v in record["tags"].items()})  # compare selects on these
    return out


def start_run(name: str) -> str:
    """A new MLflow run for `carbon-exporter run --mlflow` (its id goes to the command as
    MLFLOW_RUN_ID, so a command that logs to MLflow logs to the same run)."""
    mlflow, client_cls = _mlflow()
    client = client_cls()
    experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME")
    experiment_id = os.environ.get("MLFLOW_EXPERIMENT_ID")
    if experiment and not experiment_id:
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    run = client.create_run(experiment_id or "0", run_name=name)
    return run.info.run_id


def log_record(record: dict[str, Any], run_id: str | None = None) -> str:
    """Log to `run_id`, else the active run, else MLFLOW_RUN_ID, else a new run; its id."""
    mlflow, client_cls = _mlflow()
    from mlflow.entities import Metric, Param, RunTag

    client = client_cls()
    created = False
    if run_id is None:
        active = mlflow.active_run()
        run_id = active.info.run_id if active else os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        run_id, created = start_run(record["name"]), True
    stamp = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(k, v, stamp, 0) for k, v in metrics_of(record).items()],
        params=[Param(k, v) for k, v in params_of(record).items()],
        tags=[RunTag(k, v) for k, v in tags_of(record).items()])
    client.log_dict(run_id, record, ARTIFACT)
    if created:
        client.set_terminated(run_id, "FINISHED" if record["status"] == "completed" else "FAILED")
    return run_id


def records_from_mlflow(experiment: str, tags: dict[str, str]) -> list[dict[str, Any]]:
    """The run records of an experiment's runs whose tags match (all of them)."""
    _, client_cls = _mlflow()
    client = client_cls()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise ValueError(f"no MLflow experiment named {experiment!r}")
    conditions = [f"tags.`{k}` = '{v}'" for k, v in tags.items()]
    conditions.append(f"tags.`{PREFIX}run_id` != ''")
    runs = client.search_runs([found.experiment_id], filter_string=" and ".join(conditions),
                              max_results=10000)
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in runs:
            path = client.download_artifacts(run.info.run_id, ARTIFACT, tmp)
            records.append(load_record(path))
            os.unlink(path)
    return records
