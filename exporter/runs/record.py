"""The run record: built from a RunAccount, validated against run.schema.json, read back.

The schema (exporter/runs/run.schema.json) is versioned like the report's: a minor version
adds fields, a major version changes or removes them; readers accept any 1.x.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import time
from collections.abc import Sequence
from typing import Any

from exporter import __version__
from exporter.ledger import JOULES_PER_KWH
from exporter.runs.account import RunAccount

SCHEMA_VERSION = "1.0"
PHASES = ("data_preparation", "training", "fine_tuning", "evaluation", "inference")
METHODS = {"model": "model", "power_sample": "power_samples", "rapl": "counter",
           "nvml": "counter", "": "unknown"}


class RecordError(ValueError):
    """A run record that is not valid; the message names the file and the field."""


@functools.lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    from importlib import resources  # only where records are checked: not the daemon's start

    return json.loads(resources.files("exporter.runs").joinpath("run.schema.json").read_text())


def rfc3339(unix: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(unix)) + f".{int(unix % 1 * 1000):03d}Z"


def _method(source: str) -> str:
    return METHODS.get(source, "counter")


def build_record(*, name: str, mode: str, account: RunAccount, start: float, end: float,
                 status: str, run_id: str, error: str | None = None,
                 command: list[str] | None = None, exit_code: int | None = None,
                 unit: str | None = None, units: float = 0.0, model: str | None = None,
                 phase: str | None = None, tags: dict[str, str] | None = None,
                 params: dict[str, Any] | None = None, method: str = "",
                 interval: float = 1.0, workload_job: str | None = None,
                 cgroup: str | None = None, collectors: Sequence[tuple[str, str, str]] = (),
                 fallback_intensity=None) -> dict[str, Any]:
    duration = max(0.0, end - start)
    components: list[dict[str, Any]] = []
    for component in sorted(account.components):
        total = account.components[component]
        components.append({
            "component": component,
            "energy_joules": total.joules,
            "energy_kwh": total.joules / JOULES_PER_KWH,
            "operational_grams": total.grams,
            "embodied_grams": total.embodied_grams,
            "devices": [{"device": d, "source": s, "method": _method(s)}
                        for d, s in sorted(total.devices.items())],
        })
    joules = sum(c["energy_joules"] for c in components)
    operational = sum(c["operational_grams"] for c in components)
    embodied = sum(c["embodied_grams"] for c in components)
    seen = account.intensities
    weighted = sum(i.joules for i in seen)
    in_force = seen[-1].intensity if seen else fallback_intensity
    mean_intensity = (sum(i.intensity.grams_per_kwh * i.joules for i in seen) / weighted
                      if weighted > 0 else (in_force.grams_per_kwh if in_force else None))
    per_unit = units > 0
    methodology = [
        f"{c['component']} {d['device']}: {d['method']} (source {d['source'] or '-'})"
        for c in components for d in c["devices"]
    ]
    methodology += [f"collector {n}: {r}{f' ({d})' if d else ''}" for n, r, d in collectors]
    methodology += [
        f"run share: {method}",
        "operational emissions: each sample's energy x the grid intensity in force at that "
        f"sample x PUE {account.pue:g}",
        "embodied emissions: each device's manufacturing emissions amortised over its "
        "service life (embodied.lifetime), for the run's time, times the run's share of the "
        "device (GPU: its share of the GPU's energy; server: its share of the CPU's energy)",
    ]
    record: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "name": name,
        "mode": mode,
        "status": status,
        "error": error,
        "command": command,
        "exit_code": exit_code,
        "start": rfc3339(start),
        "end": rfc3339(end),
        "duration_seconds": duration,
        "energy_joules": joules,
        "energy_kwh": joules / JOULES_PER_KWH,
        "emissions_grams": operational + embodied,
        "emissions": {"operational_grams": operational, "embodied_grams": embodied},
        "components": components,
        "power": {"mean_watts": joules / duration if duration > 0 else 0.0,
                  "peak_watts": account.peak_watts},
        "intensity": {
            "grams_per_kwh": mean_intensity,
            "grid_zone": in_force.grid_zone if in_force else "",
            "provider": in_force.provider if in_force else "",
            "kind": in_force.kind if in_force else "",
            "basis": str(getattr(in_force, "basis", "") or ""),
            "pue": account.pue,
            "values": [{"grams_per_kwh": i.intensity.grams_per_kwh,
                        "grid_zone": i.intensity.grid_zone, "provider": i.intensity.provider,
                        "kind": i.intensity.kind, "energy_joules": i.joules} for i in seen],
        },
        "units": None if not unit else {
            "name": unit, "count": units,
            "energy_joules_per_unit": joules / units if per_unit else None,
            "emissions_grams_per_unit": (operational + embodied) / units if per_unit else None,
        },
        "model": model,
        "phase": phase,
        "tags": dict(tags or {}),
        "params": dict(params or {}),
        "node": {"energy_joules": sum(account.node_joules.values()),
                 "operational_grams": account.node_grams,
                 "idle_joules": account.idle_joules, "hostname": socket.gethostname()},
        "attribution": {"method": method, "samples": account.samples,
                        "interval_seconds": interval, "workload_job": workload_job,
                        "cgroup": cgroup},
        "methodology": methodology,
        "generator": {"name": "carbon-exporter", "version": __version__},
    }
    return record


def validate(record: Any, origin: str = "run record") -> dict[str, Any]:
    if isinstance(record, dict) and str(record.get("schema_version", "")).split(".")[0] not in ("1",):
        raise RecordError(f"{origin}: schema_version {record.get('schema_version')!r} is not "
                          f"1.x (this carbon-exporter reads 1.x)")
    import jsonschema  # only where a record is checked: the daemon imports this module too

    validator = jsonschema.Draft202012Validator(schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(record))
    if error is not None:
        path = ".".join(str(p) for p in error.absolute_path) or "top level"
        raise RecordError(f"{origin}: {path}: {error.message}")
    return record


def write_record(record: dict[str, Any], path: str) -> None:
    """Atomically: a reader never sees half a record."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=2, sort_keys=False)
        handle.write("\n")
    os.replace(tmp, path)


def load_record(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except OSError as exc:
        raise RecordError(f"{path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise RecordError(f"{path}: not JSON: {exc.msg} at line {exc.lineno}") from None
    return validate(data, path)
