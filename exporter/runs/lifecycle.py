"""Life-cycle roll-up: every run of a model summed by phase (data preparation, training,
fine-tuning, evaluation, inference), operational and embodied, as a footprint statement to
publish with the model: a model-card section in Markdown, and JSON.
"""

from __future__ import annotations

import time
from typing import Any

from exporter import __version__
from exporter.ledger import JOULES_PER_KWH
from exporter.runs.record import PHASES

UNSPECIFIED = "unspecified"
METHOD_WORDS = {"counter": "energy counters (RAPL, NVML)",
                "power_samples": "integrated power samples",
                "model": "utilisation models", "unknown": "unknown"}


class RollupError(ValueError):
    pass


def _method_joules(record: dict[str, Any]) -> dict[str, float]:
    """The run's energy by how it was obtained; a component read by several methods is
    shared evenly among its devices."""
    out: dict[str, float] = {}
    for component in record["components"]:
        devices = component["devices"] or [{"method": "unknown"}]
        for device in devices:
            method = device["method"]
            out[method] = out.get(method, 0.0) + component["energy_joules"] / len(devices)
    return out


def rollup(records: list[dict[str, Any]], model: str | None = None) -> dict[str, Any]:
    if model is not None:
        records = [r for r in records if r.get("model") == model]
    else:
        models = {r.get("model") for r in records}
        if len(models) > 1:
            raise RollupError(f"runs of several models ({', '.join(sorted(map(str, models)))}): "
                              "name one with --model")
        model = next(iter(models), None)
    if not records:
        raise RollupError(f"no run of model {model!r}")
    phases = []
    for phase in (*PHASES, UNSPECIFIED):
        runs = [r for r in records if (r.get("phase") or UNSPECIFIED) == phase]
        if not runs:
            continue
        joules = sum(r["energy_joules"] for r in runs)
        operational = sum(r["emissions"]["operational_grams"] for r in runs)
        embodied = sum(r["emissions"]["embodied_grams"] for r in runs)
        units = {(r.get("units") or {}).get("name") for r in runs}
        unit = units.pop() if len(units) == 1 else None
        count = sum((r.get("units") or {}).get("count", 0) for r in runs) if unit else 0
        phases.append({
            "phase": phase, "runs": len(runs),
            "failed_runs": sum(r["status"] != "completed" for r in runs),
            "duration_seconds": sum(r["duration_seconds"] for r in runs),
            "energy_joules": joules, "energy_kwh": joules / JOULES_PER_KWH,
            "operational_grams": operational, "embodied_grams": embodied,
            "emissions_grams": operational + embodied,
            "unit": unit, "units": count,
            "emissions_grams_per_unit": (operational + embodied) / count if count else None,
            "first_start": min(r["start"] for r in runs), "last_end": max(r["end"] for r in runs),
        })
    joules = sum(p["energy_joules"] for p in phases)
    by_method: dict[str, float] = {}
    for r in records:
        for method, value in _method_joules(r).items():
            by_method[method] = by_method.get(method, 0.0) + value
    weighted = [(v["grams_per_kwh"], v["energy_joules"]) for r in records
                for v in r["intensity"]["values"]]
    weight = sum(j for _, j in weighted)
    return {
        "rollup_version": "1.0",
        "model": model,
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "generator": {"name": "carbon-exporter", "version": __version__},
        "runs": len(records),
        "phases": phases,
        "totals": {
            "energy_joules": joules, "energy_kwh": joules / JOULES_PER_KWH,
            "operational_grams": sum(p["operational_grams"] for p in phases),
            "embodied_grams": sum(p["embodied_grams"] for p in phases),
            "emissions_grams": sum(p["emissions_grams"] for p in phases),
            "duration_seconds": sum(p["duration_seconds"] for p in phases),
        },
        "data_quality": {
            "energy_share_by_method": {m: (v / joules if joules else 0.0)
                                       for m, v in sorted(by_method.items())},
            "runs_not_completed": sum(r["status"] != "completed" for r in records),
            "modes": sorted({r["mode"] for r in records}),
            "grid_zones": sorted({v["grid_zone"] for r in records
                                  for v in r["intensity"]["values"]} - {""}),
            "intensity_providers": sorted({v["provider"] for r in records
                                           for v in r["intensity"]["values"]} - {""}),
            "intensity_basis": sorted({r["intensity"]["basis"] for r in records} - {""}),
            "mean_grams_per_kwh": (sum(g * j for g, j in weighted) / weight) if weight else None,
            "pue": sorted({r["intensity"]["pue"] for r in records}),
            "hosts": sorted({r["node"]["hostname"] for r in records}),
            "period": [min(r["start"] for r in records), max(r["end"] for r in records)],
        },
        "methodology": methodology(),
        "run_ids": [r["run_id"] for r in records],
    }


def methodology() -> dict[str, Any]:
    from exporter.report.compute import bundled_datasets  # the report's own statement

    return {
        "formulas": [
            "Run energy: the run's share of the node's energy at every sample (attribution: "
            "CPU and DRAM by the run's share of busy CPU time above idle, GPUs by its "
            "processes' NVML share), from energy counters where the hardware has them, else "
            "integrated power samples or utilisation models (see data quality).",
            "Operational gCO2e: each sample's energy x the grid intensity in force at that "
            "sample x PUE, summed over the run.",
            "Embodied gCO2e: each device's manufacturing emissions (bundled table or "
            "configured) amortised evenly over its service life, for the run's duration, "
            "times the run's share of the device.",
            "Phase totals: the sum of the phase's runs; failed and interrupted runs count "
            "(their energy was used).",
        ],
        "datasets": [{k: d[k] for k in ("name", "file", "source", "licence", "years")}
                     for d in bundled_datasets()],
    }


def _g(grams: float) -> str:
    return f"{grams / 1000:.3g} kgCO2e" if grams >= 1000 else f"{grams:.3g} gCO2e"


def render_markdown(doc: dict[str, Any]) -> str:
    t = doc["totals"]
    q = doc["data_quality"]
    lines = [f"## Environmental footprint: {doc['model']}", "",
             f"Over its life cycle so far ({q['period'][0]} to {q['period'][1]}, {doc['runs']} "
             f"runs), training and using **{doc['model']}** used **{t['energy_kwh']:.4g} kWh** "
             f"and emitted **{_g(t['emissions_grams'])}** ({_g(t['operational_grams'])} "
             f"operational, {_g(t['embodied_grams'])} embodied hardware share).", "",
             "| phase | runs | duration | energy (kWh) | operational | embodied | total | per unit |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for p in doc["phases"]:
        per_unit = (f"{p['emissions_grams_per_unit']:.3g} g/{p['unit']}"
                    if p["emissions_grams_per_unit"] is not None else "-")
        failed = f" ({p['failed_runs']} not completed)" if p["failed_runs"] else ""
        lines.append(f"| {p['phase'].replace('_', ' ')} | {p['runs']}{failed} | "
                     f"{p['duration_seconds'] / 3600:.2f} h | {p['energy_kwh']:.4g} | "
                     f"{_g(p['operational_grams'])} | {_g(p['embodied_grams'])} | "
                     f"{_g(p['emissions_grams'])} | {per_unit} |")
    lines.append(f"| **total** | {doc['runs']} | {t['duration_seconds'] / 3600:.2f} h | "
                 f"{t['energy_kwh']:.4g} | {_g(t['operational_grams'])} | "
                 f"{_g(t['embodied_grams'])} | {_g(t['emissions_grams'])} | |")
    shares = ", ".join(f"{100 * v:.0f}% from {METHOD_WORDS.get(m, m)}"
                       for m, v in q["energy_share_by_method"].items() if v > 0) or "none"
    mean = q["mean_grams_per_kwh"]
    lines += ["", "### Data quality", "",
              f"- Energy: {shares}.",
              f"- Grid intensity: {', '.join(q['intensity_providers']) or '-'} for zone(s) "
              f"{', '.join(q['grid_zones']) or '-'}"
              + (f", basis {', '.join(q['intensity_basis'])}" if q["intensity_basis"] else "")
              + (f"; energy-weighted mean {mean:.4g} gCO2e/kWh" if mean is not None else "")
              + f"; PUE {', '.join(f'{p:g}' for p in q['pue'])}.",
              f"- Measured in {' and '.join(q['modes'])} mode on {len(q['hosts'])} host(s); "
              f"{q['runs_not_completed']} run(s) did not complete and are included.",
              "", "### Methodology", ""]
    lines += [f"- {f}" for f in doc["methodology"]["formulas"]]
    lines += ["", "Bundled data: " + "; ".join(
        f"{d['name']} ({d['source']}, {d['licence']}"
        + (f", {min(d['years'])}-{max(d['years'])}" if d["years"] else "") + ")"
        for d in doc["methodology"]["datasets"]) + ".",
        "", f"_Generated {doc['generated_at']} by carbon-exporter "
        f"{doc['generator']['version']} from {doc['runs']} run records._", ""]
    return "\n".join(lines)
