"""The one-screen summary `carbon-exporter run` prints at the end."""

from __future__ import annotations

from typing import Any


def _g(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def format_summary(record: dict[str, Any]) -> str:
    lines = []
    code = "" if record["exit_code"] is None else f", exit code {record['exit_code']}"
    lines.append(f"carbon-exporter run {record['name']!r}: {record['status']}{code}, "
                 f"{record['duration_seconds']:.1f} s, {record['mode']} mode")
    lines.append(f"  energy     {record['energy_kwh']:.6g} kWh ({record['energy_joules']:.4g} J); "
                 f"power mean {record['power']['mean_watts']:.3g} W, "
                 f"peak {record['power']['peak_watts']:.3g} W")
    em = record["emissions"]
    lines.append(f"  emissions  {record['emissions_grams']:.4g} gCO2e = operational "
                 f"{em['operational_grams']:.4g} + embodied {em['embodied_grams']:.4g}")
    lines.append(f"  {'component':<10} {'kWh':>12} {'op. gCO2e':>12} {'emb. gCO2e':>12}  how")
    for c in record["components"]:
        how = ", ".join(f"{d['device']} {d['method']} ({d['source']})" for d in c["devices"]) or "-"
        lines.append(f"  {c['component']:<10} {c['energy_kwh']:>12.6g} "
                     f"{c['operational_grams']:>12.4g} {c['embodied_grams']:>12.4g}  {how}")
    i = record["intensity"]
    lines.append(f"  intensity  {_g(i['grams_per_kwh'])} gCO2e/kWh, zone {i['grid_zone'] or '-'}, "
                 f"provider {i['provider'] or '-'}, {i['kind'] or '-'}, basis {i['basis'] or '-'}; "
                 f"PUE {i['pue']:g}" + (f"; {len(i['values'])} values in force"
                                        if len(i["values"]) > 1 else ""))
    units = record["units"]
    if units:
        lines.append(f"  per {units['name']}: {_g(units['energy_joules_per_unit'])} J, "
                     f"{_g(units['emissions_grams_per_unit'])} gCO2e ({units['count']:g} "
                     f"{units['name']})")
    node = record["node"]
    share = (100 * record["energy_joules"] / node["energy_joules"]) if node["energy_joules"] else 0
    lines.append(f"  node       {node['energy_joules']:.4g} J over the run ({node['idle_joules']:.4g} "
                 f"J idle); this run {share:.1f}%")
    lines.append(f"  how        {record['attribution']['method']}; "
                 f"{record['attribution']['samples']} samples")
    return "\n".join(lines)
