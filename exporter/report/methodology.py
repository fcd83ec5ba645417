"""The report's methodology section: formulas, the settings and data sets behind them.
Text only, apart from the arithmetic (series.py) and the queries (fetch.py)."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

from exporter.carbon import WORLD, grid_dataset
from exporter.report import metricnames as names

if TYPE_CHECKING:
    from exporter.report.compute import Request

# How far before FROM the report looks for the baseline sample of each counter.
LOOKBACK_SECONDS = 300.0
# A scrape is missing when two samples are further apart than this many typical intervals.
GAP_FACTOR = 2.0
# collector_up reasons that mean "tried and failed"; absent/superseded are not failures.
FAILURE_REASONS = ("error", "permission")
# carbon_grid_provider_up reasons that are not failures (not_yet: no fetch attempted yet).
PROVIDER_OK = ("ok", "not_yet")


def bundled_datasets() -> list[dict[str, Any]]:
    """Every CSV shipped in exporter/data: its own header comment, size, years and sources,
    so that a dataset added to the exporter shows up in the methodology by itself."""
    from exporter import data

    out: list[dict[str, Any]] = []
    for name in data.names():
        header, rows = data.header_and_rows(name)
        years: dict[str, int] = defaultdict(int)
        for row in rows:
            if row.get("year"):
                years[row["year"]] += 1
        sources = sorted({row["source"] for row in rows if row.get("source")})
        licence = next((line.split(":", 1)[1].strip() for line in header
                        if line.lower().startswith("licence")), "see exporter/data/README.md")
        out.append({
            "name": header[0].rstrip(".") if header else name,
            "file": f"exporter/data/{name}",
            "source": "; ".join(sources[:3]) + (f" (and {len(sources) - 3} more)"
                                                 if len(sources) > 3 else ""),
            "basis": "", "licence": licence, "rows": len(rows),
            "years": dict(sorted(years.items())), "world_grams_per_kwh": None,
            "header": header,
        })
    return out


def methodology(req: Request, build_info: list[dict[str, Any]],
                observed: dict[str, Any]) -> dict[str, Any]:
    from exporter.config import BY_KEY

    dataset = grid_dataset()
    datasets = bundled_datasets()
    for entry in datasets:
        if entry["file"].endswith("/grid_intensity.csv"):
            # The dataset the what-if zones and the default intensity come from.
            entry.update(basis="lifecycle, production-based annual average",
                         world_grams_per_kwh=dataset[WORLD].grams_per_kwh
                         if WORLD in dataset else None)
    settings = []
    for key in ("carbon.zone", "carbon.intensity", "carbon.pue", "sample.interval",
                "cpu_model.idle_watts_per_thread", "cpu_model.max_watts_per_thread",
                "dram_model.watts_per_gib"):
        setting = BY_KEY.get(key)
        if setting is not None:
            settings.append({"key": key, "default": setting.default, "help": setting.help})
    versions = sorted({r["metric"].get("version", "") for r in build_info} - {""})
    energy_metric = names.WORKLOAD_ENERGY if req.workload else names.ENERGY
    emissions = (names.WORKLOAD_EMISSIONS if req.workload
                 else f'{names.EMISSIONS}{{scope="operational"}}')
    return {
        "formulas": [
            f"Energy [kWh] = sum over the selected {energy_metric} series of the counter's "
            f"increases between consecutive stored samples / 3,600,000. The baseline is the "
            f"last sample at or before FROM (looked up to {LOOKBACK_SECONDS:g} s back), else "
            f"the first sample in the window; a decrease is a counter reset and counts the new "
            f"value. No extrapolation, so adjacent windows add up.",
            f"Operational emissions [gCO2e] = increase of {emissions}, integrated by the "
            f"exporter at every sample as energy [kWh] x grid intensity in force [gCO2e/kWh] x "
            f"PUE in force; the report does not recompute it from averages.",
            f"Facility energy [kWh] = sum of each energy increase x the {names.PUE} value in "
            f"force at that sample (1.0 where the exporter exported none).",
            f'Embodied emissions [gCO2e] = increase of {names.EMISSIONS}{{scope="embodied"}} '
            f"(node scope only).",
            "Intensity min/mean/max: over the stored samples of "
            f"{names.GRID_INTENSITY} on the selected nodes; mean is time-weighted (each value "
            "held until the next sample). Effective intensity = operational gCO2e / facility "
            "kWh, i.e. weighted by when the energy was used.",
            "Data quality: counter share = energy with source rapl or nvml; sampled power = "
            "source power_sample (power readings integrated); model = source model; platform "
            "remainder = source platform_remainder, what a platform meter (ACPI power meter, "
            "BMC) measured beyond the components. Totals basis: platform_meter when that "
            "remainder is present (the node totals are the meter's), else components (CPU, "
            "DRAM, GPU only: fans, disks, NICs and power-supply losses are not in them). A scrape "
            f"gap is two consecutive samples more than {GAP_FACTOR:g}x the median scrape "
            f"interval apart, or a start or end of the window that far from the nearest "
            f"sample. A collector failure is {names.COLLECTOR_UP} = 0 with reason "
            f"{' or '.join(FAILURE_REASONS)}; an intensity provider failure is "
            f"{names.PROVIDER_UP} = 0 with a reason other than {' or '.join(PROVIDER_OK)}. "
            f"Intensity is stale while "
            f"{names.GRID_INTENSITY_AGE} > {req.stale_after:g} s.",
            "What-if: facility kWh x alternative intensity. Lowest-intensity hours: per node, "
            "the mean of the k lowest hourly (UTC) time-weighted intensity means in the "
            "window, k = the number of hours in which the selection used energy. Forecast "
            f"minimum: {names.FORECAST_MIN} at TO. Zones: the bundled dataset's annual "
            "average.",
        ],
        "settings": settings,
        "observed": observed,
        "datasets": datasets,
        "exporter_versions": versions,
        "report_parameters": {"stale_after_seconds": req.stale_after,
                              "gap_threshold_factor": GAP_FACTOR,
                              "lookback_seconds": LOOKBACK_SECONDS,
                              "what_if_zones": list(req.zones)},
    }
