"""The report's human-readable structure, shared by the HTML and Markdown renderers: each
section is a title, a few sentences, tables and charts, built from the JSON document."""

from __future__ import annotations

from dataclasses import dataclass, field

NA = "not available"


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    charts: list[str] = field(default_factory=list)
    items: list[str] = field(default_factory=list)


def energy_unit(*values) -> str:
    """One energy unit per column, like gram_unit: Wh below a thousandth of a kWh."""
    largest = max((abs(v) for v in values if v is not None), default=0.0)
    return "kWh" if largest >= 0.001 else "Wh"


def kwh(value, unit: str | None = None) -> str:
    if value is None:
        return NA
    unit = unit or energy_unit(value)
    return f"{value:,.3f} kWh" if unit == "kWh" else f"{value * 1000:,.3f} Wh"


def gram_unit(*values) -> str:
    """One unit for every number of a table column (or a group of related numbers): grams
    while they are small, kilograms from 1,000 g; so a column never mixes 985.0 gCO2e with
    1.192 kgCO2e."""
    largest = max((abs(v) for v in values if v is not None), default=0.0)
    return "kgCO2e" if largest >= 1000 else "gCO2e"


def grams(value, unit: str | None = None) -> str:
    if value is None:
        return NA
    unit = unit or gram_unit(value)
    if unit == "kgCO2e":
        return f"{value / 1000:,.3f} kgCO2e"
    return f"{value:,.1f} gCO2e"


def gpk(value) -> str:
    return NA if value is None else f"{value:,.1f} g/kWh"


def pct(value) -> str:
    return NA if value is None else f"{value * 100:.1f}%"


def seconds(value: float) -> str:
    value = round(value)
    hours, rest = divmod(value, 3600)
    minutes, secs = divmod(rest, 60)
    return (f"{hours}h{minutes:02d}m{secs:02d}s" if hours else
            f"{minutes}m{secs:02d}s" if minutes else f"{secs}s")


def ratio(value) -> str:
    return NA if value is None else f"{value:.3f}"


def build(document: dict) -> list[Section]:
    q, totals = document["query"], document["totals"]
    breakdown, intensity = document["breakdown"], document["intensity"]
    quality, what_if = document["data_quality"], document["what_if"]
    method = document["methodology"]
    out: list[Section] = []

    pue = totals["pue"]
    unit = gram_unit(totals["operational_grams"], totals["embodied_grams"], totals["total_grams"])
    pue_text = (f"PUE applied: {ratio(pue['mean'])} (time-weighted mean; min "
                f"{ratio(pue['min'])}, max {ratio(pue['max'])}), as exported by the exporter "
                f"and already included in operational emissions." if pue["available"]
                else "PUE not available from the exporter: facility energy assumes 1.0.")
    out.append(Section("Totals", [
        f"Selection {q['selector']} ({q['scope']} scope) on "
        f"{', '.join(t['instance'] for t in q['targets'])}, from {q['from']} to {q['to']}.",
        pue_text], tables=[Table(["quantity", "value"], [
            ["IT energy", kwh(totals["energy_kwh"])],
            ["facility energy (IT energy x PUE)", kwh(totals["facility_energy_kwh"])],
            ["operational emissions", grams(totals["operational_grams"], unit)],
            ["embodied emissions", grams(totals["embodied_grams"], unit)],
            ["total emissions", grams(totals["total_grams"], unit)],
        ])], items=list(totals["notes"])))

    workload = breakdown["workload"]
    by_component = gram_unit(*(r["operational_grams"] for r in breakdown["component"]))
    by_node = gram_unit(*(r[k] for r in breakdown["node"]
                          for k in ("operational_grams", "embodied_grams")))
    tables = [
        Table(["component", "energy", "operational"],
              [[r["component"] or "(none)",
                kwh(r["energy_kwh"], energy_unit(*(x["energy_kwh"] for x in breakdown["component"]))),
                grams(r["operational_grams"], by_component)] for r in breakdown["component"]]),
        Table(["node", "job", "energy", "operational", "embodied"],
              [[r["instance"], r["job"],
                kwh(r["energy_kwh"], energy_unit(*(x["energy_kwh"] for x in breakdown["node"]))),
                grams(r["operational_grams"], by_node), grams(r["embodied_grams"], by_node)]
               for r in breakdown["node"]]),
    ]
    if workload["available"]:
        shown = workload["rows"][:25]
        by_workload = gram_unit(*(r["operational_grams"] for r in shown))
        tables.append(Table(["kind", "workload", "energy", "operational"], [
            [r["kind"], "/".join(filter(None, (r["namespace"], r["pod"], r["container"],
                                                r["unit"], r["workload_job"]))) or "-",
             kwh(r["energy_kwh"], energy_unit(*(x["energy_kwh"] for x in shown))),
             grams(r["operational_grams"], by_workload)]
            for r in shown]))
    out.append(Section("Breakdown", ["By component, by node and by workload."
                                     + ("" if workload["available"]
                                        else f" Workload breakdown {workload['note']}.")],
                       tables=tables, charts=["power", "emissions"]))

    if intensity["available"]:
        out.append(Section("Grid carbon intensity", [
            f"Over the period: min {gpk(intensity['min'])}, time-weighted mean "
            f"{gpk(intensity['mean'])}, max {gpk(intensity['max'])}. Effective intensity "
            f"(weighted by when the energy was used): "
            f"{gpk(intensity['effective_grams_per_kwh'])}.",
            f"Zones: {', '.join(intensity['zones']) or '-'}; providers: "
            f"{', '.join(intensity['providers']) or '-'}; kind: "
            f"{', '.join(intensity['kinds']) or '-'} (average = the mix's mean intensity; "
            f"marginal = the plant that responds to extra load); basis: "
            f"{', '.join(intensity['bases']) or '-'} (lifecycle = CO2e with upstream emissions; "
            f"direct = CO2 from combustion only; values of different bases do not compare)."],
            tables=[Table(["node", "zone", "provider", "kind", "basis", "min", "mean", "max"],
                          [[s["instance"], s["grid_zone"], s["provider"], s["kind"], s["basis"],
                            gpk(s["min"]), gpk(s["mean"]), gpk(s["max"])]
                           for s in intensity["series"]])], charts=["intensity"]))
    else:
        out.append(Section("Grid carbon intensity", [f"Grid intensity history {NA}."]))

    stale = quality["stale_intensity"]
    out.append(Section("Data quality", [
        f"Energy measured by hardware counters: {pct(quality['counter_share'])}; from sampled "
        f"power: {pct(quality['sampled_power_share'])}; modelled: "
        f"{pct(quality['model_share'])} (basis: {quality['energy_basis']}).",
        (f"Totals basis: the platform meter (ACPI power meter or BMC): node energy is the "
         f"meter's, the components are its split, and "
         f"{pct(quality['platform_remainder_share'])} is what they do not explain "
         f"(component \"other\": fans, disks, NICs, power-supply losses)."
         if quality["totals_basis"] == "platform_meter" else
         "Totals basis: the sum of the measured and modelled components (CPU, DRAM, GPU); "
         "no platform meter, so fans, disks, NICs and power-supply losses are not included."),
        f"Scrape gaps: {len(quality['gaps'])} ({seconds(quality['gap_seconds'])}, "
        f"{quality['missing_scrapes']} missing scrapes at a typical interval of "
        f"{seconds(quality['scrape_interval_seconds'] or 0)}). Counters keep counting through "
        f"a gap, so energy is not lost, only resolution. Counter resets: "
        f"{quality['counter_resets']} (energy between the last scrape and a restart is lost).",
        f"Collector failures: {len(quality['collector_failures'])} "
        f"({seconds(quality['collector_failure_seconds'])}). Intensity provider failures: "
        f"{len(quality['provider_failures'])} ({seconds(quality['provider_failure_seconds'])}; "
        f"the last good value is kept meanwhile). Stale intensity (older than "
        f"{seconds(stale['threshold_seconds'])}): {len(stale['periods'])} period(s), "
        f"{seconds(stale['seconds'])}, covering {kwh(stale['energy_kwh'])} "
        f"({pct(stale['energy_share'])}) of the energy."
        + ("" if stale["available"] else f" Intensity age {NA}.")],
        tables=[
            Table(["source", "category", "energy", "share"],
                  [[r["source"], r["category"],
                    kwh(r["energy_kwh"], energy_unit(*(x["energy_kwh"] for x in quality["sources"]))),
                    pct(r["share"])]
                   for r in quality["sources"]]),
            *([Table(["node", "model", "method", "basis"],
                     [[m["instance"], m["collector"], m["method"], m["basis"]]
                      for m in quality["models"]])] if quality["models"] else []),
            *([Table(["node", "gap start", "gap end", "length", "missing scrapes"],
                     [[g["instance"], g["start"], g["end"], seconds(g["seconds"]),
                       str(g["missing_scrapes"])] for g in quality["gaps"]])]
              if quality["gaps"] else []),
            *([Table(["node", "collector", "reason", "start", "end", "length"],
                     [[f["instance"], f["collector"], f["reason"], f["start"], f["end"],
                       seconds(f["seconds"])] for f in quality["collector_failures"]])]
              if quality["collector_failures"] else []),
            *([Table(["node", "intensity provider", "reason", "start", "end", "length"],
                     [[f["instance"], f["provider"], f["reason"], f["start"], f["end"],
                       seconds(f["seconds"])] for f in quality["provider_failures"]])]
              if quality["provider_failures"] else []),
            *([Table(["node", "zone", "provider", "stale from", "until", "length"],
                     [[p["instance"], p["grid_zone"], p["provider"], p["start"], p["end"],
                       seconds(p["seconds"])] for p in stale["periods"]])]
              if stale["periods"] else []),
        ],
        items=[f"collector {a['collector']} absent on {a['instance']}"
               for a in quality["absent_collectors"]]))

    what_if_unit = gram_unit(*(r[k] for r in what_if["rows"]
                               for k in ("operational_grams", "difference_grams")))
    out.append(Section("What if", [
        f"The same facility energy ({kwh(what_if['facility_energy_kwh'])}) under other "
        f"intensities: to plan reruns and retraining."],
        tables=[Table(["scenario", "intensity", "operational", "difference", "note"],
                      [[r["scenario"], gpk(r["grams_per_kwh"]),
                        grams(r["operational_grams"], what_if_unit),
                        grams(r["difference_grams"], what_if_unit), r["note"] or r["description"]]
                       for r in what_if["rows"]])]))

    dataset_lines = []
    for d in method["datasets"]:
        years = ", ".join(f"{y}: {n} rows" for y, n in d["years"].items())
        dataset_lines.append(f"Dataset {d['file']}: {d['name']}. Source: {d['source']}."
                             + (f" Basis: {d['basis']}." if d["basis"] else "")
                             + f" Licence: {d['licence'].rstrip('.')}. {d['rows']} rows"
                             + (f" ({years})." if years else "."))
    observed = method["observed"]
    out.append(Section("Methodology", [
        f"Exporter version(s) seen: {', '.join(method['exporter_versions']) or NA}. Observed "
        f"settings: PUE {', '.join(ratio(v) for v in observed['pue']) or NA}; zones "
        f"{', '.join(observed['zones']) or NA}; providers "
        f"{', '.join(observed['providers']) or NA}; kinds {', '.join(observed['kinds']) or NA}."],
        items=[*method["formulas"], *dataset_lines],
        tables=[Table(["exporter setting", "default", "meaning"],
                      [[s["key"], "-" if s["default"] is None else str(s["default"]), s["help"]]
                       for s in method["settings"]])]))
    return out
