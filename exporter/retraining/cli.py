"""`carbon-exporter estimate-retraining`: predict a retraining's energy, epochs and
emissions for a shift's PreIndex from measured retraining runs."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Sequence

from exporter.config import resolve
from exporter.confutil import ConfigError
from exporter.retraining.estimate import (
    RECORD_KEYS_HELP, Estimate, Prediction, RecordError, estimate, load_runs,
)
from exporter.retraining.fit import ABSOLUTE_MIN_RUNS, MIN_RUNS, FitError

EXIT_FAILURE = 1  # the estimate cannot be made (too few runs, unreadable records)
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="carbon-exporter estimate-retraining",
        description="Estimate what retraining for a distribution shift will cost, from the "
                    "shift's PreIndex and measured retraining runs: fits energy and epochs "
                    "against the index (least-squares line, prediction interval) and prices "
                    "the energy with the zone's grid intensity, and with the cleanest window "
                    f"of a provider's forecast where one is configured. {RECORD_KEYS_HELP}.",
        epilog="Example: carbon-exporter estimate-retraining --index 0.42 --carbon.zone DE "
               "runs/")
    parser.add_argument("records", nargs="+", metavar="RECORD",
                        help="run record files (.json, .jsonl) or directories of them")
    parser.add_argument("--index", type=float, required=True,
                        help="PreIndex of the new shift (computed as for the recorded runs)")
    parser.add_argument("--confidence", type=float, default=0.9,
                        help="prediction interval coverage (default: 0.9)")
    parser.add_argument("--min-runs", type=int, default=MIN_RUNS,
                        help=f"refuse to fit on fewer runs (default: {MIN_RUNS}; at least "
                             f"{ABSOLUTE_MIN_RUNS})")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    grid = parser.add_argument_group("grid intensity (as for the exporter)")
    grid.add_argument("--config.file", dest="config_file", metavar="PATH",
                      help="exporter config file: carbon.zone, carbon.intensity, "
                           "carbon.providers and carbon.pue are read from it")
    grid.add_argument("--carbon.zone", dest="carbon.zone", metavar="ZONE",
                      help="grid zone (country code, zone id or cloud region)")
    grid.add_argument("--carbon.intensity", dest="carbon.intensity", type=float,
                      metavar="G_PER_KWH", help="static grid intensity in gCO2e/kWh")
    grid.add_argument("--carbon.providers", dest="carbon.providers", metavar="TYPES",
                      help="intensity providers in fallback order (comma-separated types); "
                           "each is asked once, and a forecast gives the cleanest window")
    grid.add_argument("--carbon.pue", dest="carbon.pue", type=float, metavar="RATIO",
                      help="facility overhead multiplier on the energy (default: 1.0)")
    return parser


@dataclass(frozen=True)
class Grid:
    grams_per_kwh: float
    zone: str
    provider: str
    pue: float
    cleanest_grams_per_kwh: float | None = None
    cleanest_start: float | None = None
    cleanest_provider: str | None = None


async def _ask_providers(config: Any) -> tuple[Any, list[str]]:
    """One fetch per configured provider; the chain's own selection picks the value in force
    and the cleanest forecast window."""
    from exporter.carbon import static_intensity
    from exporter.carbon.providers import ProviderError
    from exporter.carbon.providers.chain import Chain, build_providers, client_session

    chain = Chain(build_providers(config), static_intensity(config), publish=lambda _s: None)
    notes: list[str] = []
    async with client_session() as session:
        for state in chain.states:
            provider = state.provider
            try:
                async with asyncio.timeout(provider.spec.timeout):
                    fetched = await provider.fetch(session)
            except TimeoutError:
                notes.append(f"provider {provider.name}: no answer within "
                             f"{provider.spec.timeout:g} s")
                continue
            except ProviderError as exc:
                notes.append(f"provider {provider.name}: {exc.reason} ({exc.detail})")
                continue
            state.fetched, state.forecast, state.reason = fetched, fetched.forecast, "ok"
    return chain.select(), notes


def grid_now(config: Any) -> tuple[Grid, list[str]]:
    state, notes = asyncio.run(_ask_providers(config))
    intensity = state.intensity
    cleanest = state.forecast_min
    return Grid(intensity.grams_per_kwh, intensity.grid_zone, intensity.provider,
                float(config.carbon_pue or 1.0),
                cleanest.grams_per_kwh if cleanest else None,
                cleanest.start if cleanest else None,
                cleanest.provider if cleanest else None), notes


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%MZ")


def _prediction_json(p: Prediction) -> dict[str, Any]:
    return {"value": p.value, "low": p.low, "high": p.high, "low_clipped_at_zero": p.clipped,
            "fit": {"runs": p.fit.n, "intercept": p.fit.intercept, "slope": p.fit.slope,
                    "residual_sd": p.fit.residual_sd, "r_squared": p.fit.r_squared,
                    "spearman": p.fit.spearman, "index_min": p.fit.x_min,
                    "index_max": p.fit.x_max}}


def as_json(result: Estimate, grid: Grid, notes: list[str]) -> dict[str, Any]:
    factor = grid.grams_per_kwh * grid.pue
    e = result.energy
    emissions: dict[str, Any] = {
        "now": {"grams_per_kwh": grid.grams_per_kwh, "zone": grid.zone,
                "provider": grid.provider, "pue": grid.pue,
                "grams": e.value * factor, "low": e.low * factor, "high": e.high * factor}}
    if grid.cleanest_grams_per_kwh is not None and grid.cleanest_start is not None:
        clean = grid.cleanest_grams_per_kwh * grid.pue
        emissions["cleanest_window"] = {
            "grams_per_kwh": grid.cleanest_grams_per_kwh, "start": _iso(grid.cleanest_start),
            "provider": grid.cleanest_provider, "grams": e.value * clean,
            "low": e.low * clean, "high": e.high * clean}
    return {
        "index": result.index, "confidence": result.confidence, "runs": result.runs,
        "energy_kwh": _prediction_json(e),
        "epochs": _prediction_json(result.epochs) if result.epochs else None,
        "emissions_gco2e": emissions,
        "warnings": result.warnings + ([result.epochs_note] if result.epochs_note else []),
        "notes": notes,
    }


def as_text(result: Estimate, grid: Grid, notes: list[str]) -> str:
    pct = f"{result.confidence * 100:g}%"
    e = result.energy
    lines = [f"Retraining estimate for PreIndex {result.index:.4g}, fitted on {result.runs} "
             f"measured runs (indices {e.fit.x_min:.3g}..{e.fit.x_max:.3g})"]

    def row(label: str, p: Prediction, unit: str, fmt: str, extra: str = "") -> str:
        clip = " (lower end clipped at 0)" if p.clipped else ""
        return (f"  {label:<10}{p.value:{fmt}} {unit}{extra}   {pct} prediction interval "
                f"{p.low:{fmt}}..{p.high:{fmt}}{clip}   [line fit on {p.fit.n} runs: "
                f"R^2 {p.fit.r_squared:.2f}, Spearman {p.fit.spearman:.2f}]")

    joules = f" ({e.value * 3.6e6:.4g} J)" if e.value < 0.001 else ""
    lines.append(row("energy", e, "kWh", ".4g", joules))
    if result.epochs:
        lines.append(row("epochs", result.epochs, "", ".3g"))
    factor = grid.grams_per_kwh * grid.pue
    pue = f" x PUE {grid.pue:g}" if grid.pue != 1.0 else ""
    lines.append(f"  {'emissions':<10}{e.value * factor:.4g} gCO2e   {pct} interval "
                 f"{e.low * factor:.4g}..{e.high * factor:.4g}   now: {grid.grams_per_kwh:g} "
                 f"gCO2e/kWh{pue} (zone {grid.zone or '-'}, {grid.provider})")
    if grid.cleanest_grams_per_kwh is not None and grid.cleanest_start is not None:
        clean = grid.cleanest_grams_per_kwh * grid.pue
        lines.append(f"  {'':<10}{e.value * clean:.4g} gCO2e   {pct} interval "
                     f"{e.low * clean:.4g}..{e.high * clean:.4g}   in the cleanest forecast "
                     f"window from {_iso(grid.cleanest_start)}: {grid.cleanest_grams_per_kwh:g} "
                     f"gCO2e/kWh ({grid.cleanest_provider})")
    for message in result.warnings:
        lines.append(f"warning: {message}")
    if result.epochs_note:
        lines.append(f"note: {result.epochs_note}")
    lines.extend(f"note: {n}" for n in notes)
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    args = vars(build_parser().parse_args(list(argv)))
    prog = "carbon-exporter estimate-retraining"
    if args["min_runs"] < ABSOLUTE_MIN_RUNS:
        print(f"{prog}: error: --min-runs must be at least {ABSOLUTE_MIN_RUNS}", file=sys.stderr)
        return EXIT_USAGE
    if not 0.5 <= args["confidence"] < 1.0:
        print(f"{prog}: error: --confidence must be in [0.5, 1), e.g. 0.9", file=sys.stderr)
        return EXIT_USAGE
    flags = {k: args[k] for k in ("carbon.zone", "carbon.intensity", "carbon.providers",
                                  "carbon.pue") if args[k] is not None}
    try:
        config = resolve(flags, args["config_file"])
    except ConfigError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    notes: list[str] = []
    try:
        runs, notes = load_runs(args["records"])
        result = estimate(runs, args["index"], args["confidence"], args["min_runs"])
    except RecordError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except FitError as exc:
        print(f"{prog}: error: cannot estimate: {exc}", file=sys.stderr)
        for note in notes:
            print(f"{prog}: note: {note}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        grid, grid_notes = grid_now(config)
    except ConfigError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    notes = notes + grid_notes
    if args["format"] == "json":
        print(json.dumps(as_json(result, grid, notes), indent=2))
    else:
        print(as_text(result, grid, notes))
        return 0
    for message in result.warnings:  # JSON on stdout: warnings also where a person sees them
        print(f"{prog}: warning: {message}", file=sys.stderr)
    return 0
