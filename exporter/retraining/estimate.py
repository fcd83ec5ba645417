"""From run records to an estimate: read the runs, fit, predict, price the energy."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Iterable

from exporter.retraining.fit import MIN_RUNS, FitError, LineFit, fit_line

# Where a run record keeps the PreIndex of the shift the run retrained for, and its epoch
# count: user-set values of the run (see RECORD_KEYS_HELP).
PREINDEX_KEY = "preindex"
EPOCHS_KEY = "epochs"
RECORD_KEYS_HELP = (f"A run record (written by `carbon-exporter run --param {PREINDEX_KEY}=X` "
                    f"or exporter.runs.track's run.set({PREINDEX_KEY}=X)) counts when it "
                    f"completed and its params carry {PREINDEX_KEY!r}, the PreIndex of the shift "
                    f"it retrained for; {EPOCHS_KEY!r} adds it to the epochs fit")


class RecordError(ValueError):
    """A file that is not a run record we can read."""


@dataclass(frozen=True)
class RetrainingRun:
    source: str  # file (and position) it came from
    index: float
    energy_kwh: float
    epochs: float | None = None
    run_id: str = ""


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                return None
        else:
            return None
    value = float(value)
    return value if math.isfinite(value) else None


def run_from_record(record: Any, source: str) -> tuple[RetrainingRun | None, str | None]:
    """(RetrainingRun, None) for a completed run record with params.preindex; (None, why)
    for a valid record that does not count; RecordError for one that is not valid."""
    from exporter.runs.record import RecordError as SchemaError
    from exporter.runs.record import validate

    if not isinstance(record, dict) or "schema_version" not in record:
        raise RecordError(f"{source}: not a run record (no schema_version; records come from "
                          f"`carbon-exporter run` or exporter.runs.track)")
    try:
        validate(record, source)
    except SchemaError as exc:
        raise RecordError(str(exc)) from None
    params = record.get("params") or {}
    if PREINDEX_KEY not in params:
        return None, f"without params.{PREINDEX_KEY}"
    if record.get("status") != "completed":
        return None, f"{record.get('status')} (not completed)"
    index = _number(params[PREINDEX_KEY])
    if index is None:
        raise RecordError(f"{source}: params.{PREINDEX_KEY} is {params[PREINDEX_KEY]!r}, "
                          f"not a number")
    energy = _number(record.get("energy_kwh"))
    if energy is None or energy < 0:
        raise RecordError(f"{source}: energy_kwh is {record.get('energy_kwh')!r}")
    epochs = None
    if params.get(EPOCHS_KEY) is not None:
        epochs = _number(params[EPOCHS_KEY])
        if epochs is None or epochs < 0:
            raise RecordError(f"{source}: params.{EPOCHS_KEY} is {params[EPOCHS_KEY]!r}, "
                              f"not a count")
    return RetrainingRun(source, index, energy, epochs, str(record.get("run_id") or "")), None


def _record_files(paths: Iterable[str]) -> list[str]:
    files: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            for root, _dirs, names in os.walk(path):
                files.extend(os.path.join(root, n) for n in sorted(names)
                             if n.endswith((".json", ".jsonl")))
        elif os.path.exists(path):
            files.append(path)
        else:
            raise RecordError(f"{path}: no such file or directory")
    return sorted(files)


def load_runs(paths: Iterable[str]) -> tuple[list[RetrainingRun], list[str]]:
    """Runs with a PreIndex from record files (.json: one record or a list; .jsonl: one per
    line) and directories of them; plus notes on what was skipped and why."""
    runs: list[RetrainingRun] = []
    notes: list[str] = []
    seen: set[str] = set()
    skipped: dict[str, int] = {}
    for file in _record_files(paths):
        try:
            with open(file, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as exc:
            raise RecordError(f"{file}: {exc.strerror or exc}") from None
        try:
            if file.endswith(".jsonl"):
                docs = [(f"{file}:{i}", json.loads(line))
                        for i, line in enumerate(text.splitlines(), 1) if line.strip()]
            else:
                doc = json.loads(text)
                docs = ([(f"{file}[{i}]", d) for i, d in enumerate(doc)] if isinstance(doc, list)
                        else [(file, doc)])
        except ValueError as exc:
            raise RecordError(f"{file}: not JSON ({exc})") from None
        for source, doc in docs:
            run, why = run_from_record(doc, source)
            if run is None:
                skipped[why or ""] = skipped.get(why or "", 0) + 1
                continue
            if run.run_id and run.run_id in seen:  # the same run found twice (copies)
                notes.append(f"{source}: run {run.run_id} already read, counted once")
                continue
            if run.run_id:
                seen.add(run.run_id)
            runs.append(run)
    for why, count in skipped.items():
        notes.append(f"{count} record{'s' if count != 1 else ''} {why} skipped")
    return runs, notes


@dataclass(frozen=True)
class Prediction:
    measure: str  # energy_kwh or epochs
    value: float
    low: float
    high: float
    clipped: bool  # the interval's lower end was below 0 and is shown as 0
    fit: LineFit


def predict(fit: LineFit, measure: str, index: float, confidence: float) -> Prediction:
    low, high = fit.interval(index, confidence)
    value = fit.predict(index)
    clipped = low < 0
    return Prediction(measure, max(value, 0.0), max(low, 0.0), max(high, 0.0), clipped, fit)


@dataclass
class Estimate:
    index: float
    confidence: float
    runs: int
    energy: Prediction
    epochs: Prediction | None
    epochs_note: str | None
    warnings: list[str] = field(default_factory=list)


def estimate(runs: list[RetrainingRun], index: float, confidence: float = 0.9,
             min_runs: int = MIN_RUNS) -> Estimate:
    """Fit energy (and epochs where runs record them) against the index; predict at index.

    FitError when the energy fit cannot be made (too few runs, all at one index)."""
    if not 0.5 <= confidence < 1.0:
        raise FitError("confidence must be in [0.5, 1)")
    if not math.isfinite(index):
        raise FitError("the index must be a finite number")
    try:
        energy_fit = fit_line([r.index for r in runs], [r.energy_kwh for r in runs], min_runs)
    except FitError as exc:
        raise FitError(f"energy: {exc} (runs count when their record has params."
                       f"{PREINDEX_KEY} and measured energy)") from None
    warnings: list[str] = []
    if energy_fit.extrapolates(index):
        warnings.append(f"index {index:.4g} is outside the fitted range {energy_fit.x_min:.4g}.."
                        f"{energy_fit.x_max:.4g}: extrapolating, the interval understates the "
                        f"uncertainty")
    with_epochs = [r for r in runs if r.epochs is not None]
    epochs: Prediction | None = None
    epochs_note: str | None = None
    try:
        epochs_fit = fit_line([r.index for r in with_epochs], [float(r.epochs or 0)
                                                               for r in with_epochs], min_runs)
        epochs = predict(epochs_fit, "epochs", index, confidence)
    except FitError as exc:
        epochs_note = f"epochs not estimated: {exc}"
    return Estimate(index, confidence, energy_fit.n,
                    predict(energy_fit, "energy_kwh", index, confidence), epochs, epochs_note,
                    warnings)
