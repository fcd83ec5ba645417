"""`carbon-exporter compare`: energy and gCO2e per unit of two groups of runs, the difference
in percent with a 95% confidence interval (Welch), and a plain verdict.

Each run is one observation: its energy (and gCO2e) divided by its units when every run of
both groups counted units, else per run. The difference is A - B relative to B's mean (B is
the baseline, `--against`); the interval is Welch's for the difference of the means, divided
by B's mean. A difference is called when the interval excludes 0 *and* reaches beyond the
threshold (default 2%): an interval that excludes 0 but lies within +-threshold is "no
significant difference" at that threshold, because run-to-run noise of that size is not a
saving anyone should act on.
"""

from __future__ import annotations

from typing import Any

from exporter.runs.stats import mean_sd, welch

METRICS = (("energy_joules", "energy", "J"), ("emissions_grams", "gCO2e", "g"))
MIN_RUNS = 2


def _unit(records: list[dict[str, Any]]) -> str | None:
    """The common unit name when every run counted units, else None (per run)."""
    names = {(r.get("units") or {}).get("name") for r in records}
    if len(names) == 1 and all((r.get("units") or {}).get("count", 0) > 0 for r in records):
        return names.pop()
    return None


def _values(records: list[dict[str, Any]], field: str, per_unit: bool) -> list[float]:
    return [r[field] / r["units"]["count"] if per_unit else r[field] for r in records]


def compare(a: list[dict[str, Any]], b: list[dict[str, Any]], a_label: str = "A",
            b_label: str = "B", threshold_percent: float = 2.0) -> dict[str, Any]:
    unit = _unit(a + b)
    per = unit or "run"
    groups = {}
    for key, label, records in (("a", a_label, a), ("b", b_label, b)):
        group: dict[str, Any] = {"label": label, "runs": len(records),
                                 "run_ids": [r["run_id"] for r in records]}
        for field, _, _ in METRICS:
            values = _values(records, field, unit is not None)
            mean, sd = mean_sd(values) if values else (None, None)
            group[f"{field}_per_{'unit' if unit else 'run'}"] = {
                "mean": mean, "sd": sd, "values": values}
        groups[key] = group
    comparisons = []
    for field, word, _ in METRICS:
        name = f"{field}_per_{'unit' if unit else 'run'}"
        av, bv = groups["a"][name]["values"], groups["b"][name]["values"]
        comparisons.append(_compare_one(name, word, av, bv, a_label, b_label, per,
                                        threshold_percent))
    return {
        "comparison_version": "1.0",
        "per": per,
        "threshold_percent": threshold_percent,
        "confidence": 0.95,
        "groups": groups,
        "comparisons": comparisons,
        "verdict": comparisons[0]["verdict_text"],
        "methodology": (
            "Each run is one observation (its total divided by its units when every run "
            "counted units). Difference = mean(A) - mean(B), in percent of mean(B); 95% "
            "interval by Welch's t (unequal variances, Welch-Satterthwaite degrees of "
            f"freedom). Called only when the interval excludes 0 and reaches beyond "
            f"+-{threshold_percent:g}%; at least {MIN_RUNS} runs per group."),
    }


def _compare_one(name: str, word: str, av: list[float], bv: list[float], a_label: str,
                 b_label: str, per: str, threshold: float) -> dict[str, Any]:
    out: dict[str, Any] = {"metric": name, "difference": None, "difference_percent": None,
                           "ci95": None, "ci95_percent": None, "df": None,
                           "significant": False}
    if len(av) < MIN_RUNS or len(bv) < MIN_RUNS:
        out["verdict"] = "too_few_runs"
        out["verdict_text"] = (f"too few runs to say: {word} needs at least {MIN_RUNS} runs "
                               f"per group (have {len(av)} and {len(bv)})")
        return out
    result = welch(av, bv)
    base = mean_sd(bv)[0]
    out.update(difference=result.difference, ci95=[result.low, result.high], df=result.df)
    if base <= 0:
        out["verdict"] = "no_significant_difference"
        out["verdict_text"] = f"{b_label} used no {word}: no percentage to state"
        return out
    pct, low, high = (100 * v / base for v in (result.difference, result.low, result.high))
    out.update(difference_percent=pct, ci95_percent=[low, high])
    interval = f"95% CI {low:+.1f}% to {high:+.1f}%"
    excludes_zero = low > 0 or high < 0
    beyond = high < -threshold or low > threshold
    out["significant"] = excludes_zero and beyond
    if not excludes_zero:
        out["verdict"] = "no_significant_difference"
        out["verdict_text"] = (f"no significant difference in {word} per {per}: "
                               f"{a_label} vs {b_label} {pct:+.1f}% ({interval} includes 0)")
    elif not beyond:
        out["verdict"] = "no_significant_difference"
        out["verdict_text"] = (f"no significant difference in {word} per {per} at the "
                               f"{threshold:g}% threshold: {pct:+.1f}% ({interval})")
    else:
        cheaper = pct < 0
        out["verdict"] = "a_cheaper" if cheaper else "b_cheaper"
        out["verdict_text"] = (
            f"{a_label} uses {abs(pct):.1f}% {'less' if cheaper else 'more'} {word} per {per} "
            f"than {b_label} ({interval})")
    return out


def _fmt(value: float | None, unit: str) -> str:
    return "-" if value is None else f"{value:.4g} {unit}"


def render_markdown(result: dict[str, Any]) -> str:
    per = result["per"]
    a, b = result["groups"]["a"], result["groups"]["b"]
    lines = [f"## Comparison: {a['label']} vs {b['label']}", "",
             f"**Verdict:** {result['verdict']}.", "",
             f"| group | runs | energy per {per} (mean ± sd) | gCO2e per {per} (mean ± sd) |",
             "|---|---:|---:|---:|"]
    for group in (a, b):
        cells = []
        for field, _, symbol in METRICS:
            stats = group[f"{field}_per_{'run' if per == 'run' else 'unit'}"]
            sd = "" if stats["sd"] is None else f" ± {stats['sd']:.3g}"
            cells.append(_fmt(stats["mean"], symbol) + sd)
        lines.append(f"| {group['label']} | {group['runs']} | {cells[0]} | {cells[1]} |")
    lines += ["", "| metric | difference A - B | 95% interval | verdict |", "|---|---:|---:|---|"]
    for c in result["comparisons"]:
        diff = "-" if c["difference_percent"] is None else f"{c['difference_percent']:+.1f}%"
        ci = "-" if c["ci95_percent"] is None else \
            f"{c['ci95_percent'][0]:+.1f}% to {c['ci95_percent'][1]:+.1f}%"
        lines.append(f"| {c['metric']} | {diff} | {ci} | {c['verdict_text']} |")
    lines += ["", f"Method: {result['methodology']}", ""]
    return "\n".join(lines)
