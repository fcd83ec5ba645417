"""Does PreIndex predict what retraining costs? A small reproduction on scikit-learn's digits.

A small multilayer perceptron (numpy, written here) is trained on the clean 8x8 digits of
scikit-learn's `load_digits` until it reaches a target accuracy. Then, for each shift
(Gaussian noise, rotation, translation, contrast loss; several strengths each):

1. PreIndex of the shift from one forward pass of the trained model over the clean and the
   shifted training images (exporter.preindex, its defaults; hidden layers fc1 and fc2,
   fc2 is the clustered embedding);
2. retrain a copy of the model on the shifted training images until it reaches the same
   target accuracy on the shifted held-out images (or a cap of epochs), each retraining
   measured as one run by the project's own run accounting;
3. finally the Spearman rank correlation of PreIndex with measured energy and with epochs,
   over all shifts, beside the paper's figures.

Run: .venv/bin/python bench/preindex_digits.py [--runs-dir DIR] [--quick]
(needs `pip install 'carbon-exporter[preindex-digits]'`; the test extra has it).
It prints a table and a summary; with --runs-dir the run records stay there, and
`carbon-exporter estimate-retraining --index X DIR` then works on them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

# One BLAS thread: on a small shared machine more threads only contend, and one thread
# makes a retraining's CPU time (what the energy model prices) stable.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from exporter.preindex import preindex  # noqa: E402
from exporter.retraining.fit import spearman  # noqa: E402

SEED = 20240801
TARGET_ACCURACY = 0.93  # on held-out images, for the first training and every retraining
MAX_EPOCHS = 100  # a retraining that has not reached the target by then is reported as capped
HIDDEN = (256, 128)
BATCH = 32
LEARNING_RATE = 3e-4
SAMPLE_INTERVAL = "200ms"  # the run accounting's sampling period (the daemon's default is 1s)

# (type, parameter values of increasing strength)
SHIFTS: dict[str, tuple[float, ...]] = {
    "noise": (0.04, 0.08, 0.12, 0.16, 0.2),        # std of Gaussian noise on [0, 1] pixels
    "rotation": (5.0, 10.0, 20.0, 30.0, 45.0),     # degrees
    "translation": (0.25, 0.5, 1.0, 1.5, 2.0),     # pixels, down and right
    "contrast": (0.7, 0.5, 0.35, 0.25, 0.15),      # factor around each image's mean
}


# --- data and shifts --------------------------------------------------------------------------

def load() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    digits = load_digits()
    images = digits.images.astype(np.float64) / 16.0  # 0..16 -> 0..1
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(SEED).permutation(len(labels))
    images, labels = images[order], labels[order]
    split = int(0.7 * len(labels))
    return images[:split], labels[:split], images[split:], labels[split:]


def shift(images: np.ndarray, kind: str, level: float, seed: int) -> np.ndarray:
    from scipy import ndimage
    if kind == "noise":
        noisy = images + np.random.default_rng(seed).normal(0.0, level, images.shape)
        return np.clip(noisy, 0.0, 1.0)
    if kind == "rotation":
        return np.clip(ndimage.rotate(images, level, axes=(1, 2), reshape=False, order=1,
                                      mode="constant"), 0.0, 1.0)
    if kind == "translation":
        return np.clip(ndimage.shift(images, (0.0, level, level), order=1, mode="constant"),
                       0.0, 1.0)
    if kind == "contrast":
        mean = images.mean(axis=(1, 2), keepdims=True)
        return mean + level * (images - mean)
    raise ValueError(kind)


# --- the model --------------------------------------------------------------------------------

class MLP:
    """64 -> 256 -> 128 -> 10, ReLU, softmax cross-entropy, Adam."""

    def __init__(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        sizes = (64, *HIDDEN, 10)
        self.weights = [rng.normal(0.0, np.sqrt(2.0 / a), (a, b)) for a, b in zip(sizes, sizes[1:])]
        self.biases = [np.zeros(b) for b in sizes[1:]]
        self.moments = [(np.zeros_like(p), np.zeros_like(p)) for p in self.params()]
        self.steps = 0

    def params(self) -> list[np.ndarray]:
        return [*self.weights, *self.biases]

    def copy(self) -> "MLP":
        other = MLP.__new__(MLP)
        other.weights = [w.copy() for w in self.weights]
        other.biases = [b.copy() for b in self.biases]
        other.moments = [(np.zeros_like(p), np.zeros_like(p)) for p in other.params()]
        other.steps = 0
        return other

    def forward(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Every layer's output, named as for PreIndex."""
        out: dict[str, np.ndarray] = {}
        h = x.reshape(len(x), -1)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            z = h @ w + b
            if i < len(self.weights) - 1:
                h = np.maximum(z, 0.0)
                out[f"fc{i + 1}"] = h
            else:
                out["logits"] = z
        return out

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        return float((self.forward(x)["logits"].argmax(axis=1) == y).mean())

    def train_epoch(self, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> None:
        x = x.reshape(len(x), -1)
        order = rng.permutation(len(y))
        for start in range(0, len(y), BATCH):
            idx = order[start:start + BATCH]
            self._step(x[idx], y[idx])

    def _step(self, x: np.ndarray, y: np.ndarray) -> None:
        activations = [x]
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            z = activations[-1] @ w + b
            activations.append(np.maximum(z, 0.0) if i < len(self.weights) - 1 else z)
        logits = activations[-1]
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        delta = probs
        delta[np.arange(len(y)), y] -= 1.0
        delta /= len(y)
        grads_w, grads_b = [], []
        for i in range(len(self.weights) - 1, -1, -1):
            grads_w.append(activations[i].T @ delta)
            grads_b.append(delta.sum(axis=0))
            if i:
                delta = (delta @ self.weights[i].T) * (activations[i] > 0)
        grads = [*reversed(grads_w), *reversed(grads_b)]
        self.steps += 1
        b1, b2, eps = 0.9, 0.999, 1e-8
        for p, g, (m, v) in zip(self.params(), grads, self.moments):
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            m_hat = m / (1 - b1 ** self.steps)
            v_hat = v / (1 - b2 ** self.steps)
            p -= LEARNING_RATE * m_hat / (np.sqrt(v_hat) + eps)


def train_to_target(model: MLP, x: np.ndarray, y: np.ndarray, x_test: np.ndarray,
                    y_test: np.ndarray, seed: int) -> tuple[int, float, bool]:
    """Epochs until the held-out accuracy reaches the target; (epochs, accuracy, reached)."""
    rng = np.random.default_rng(seed)
    accuracy = model.accuracy(x_test, y_test)
    epochs = 0
    while accuracy < TARGET_ACCURACY and epochs < MAX_EPOCHS:
        model.train_epoch(x, y, rng)
        epochs += 1
        accuracy = model.accuracy(x_test, y_test)
    return epochs, accuracy, accuracy >= TARGET_ACCURACY


# --- measuring --------------------------------------------------------------------------------

@dataclass
class Measured:
    energy_kwh: float
    seconds: float
    emissions_g: float
    record: str  # path of the run record


def measured_run(runs_dir: str, name: str, params: dict[str, Any], mode: str,
                 body: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], Measured]:
    """body() as one run of the project's run accounting (exporter.runs.track); what body
    returns (epochs, accuracy) joins the record's params; the record lands in runs_dir."""
    from exporter.runs import track

    path = os.path.join(runs_dir, f"{name}.json")
    with track(name, model="digits-mlp", phase="fine_tuning", params=params, json=path,
               mode=mode, settings={"sample.interval": SAMPLE_INTERVAL}) as run:
        result = body()
        run.set(**result)
    record = run.record
    assert record is not None
    return result, Measured(record["energy_kwh"], record["duration_seconds"],
                            record["emissions_grams"], path)


# --- the experiment ---------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs-dir", help="keep the run records here (default: a temp dir)")
    parser.add_argument("--quick", action="store_true",
                        help="two strengths per shift type (a smoke test, not a result)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--mode", choices=("embedded", "auto", "daemon"), default="embedded",
                        help="run accounting mode (default: embedded, sampled in this process)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="retrainings per shift, each with its own shuffling seed (default 3)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    runs_dir = args.runs_dir or tempfile.mkdtemp(prefix="preindex-digits-")
    os.makedirs(runs_dir, exist_ok=True)

    x_train, y_train, x_test, y_test = load()
    base = MLP(SEED)
    epochs, accuracy, reached = train_to_target(base, x_train, y_train, x_test, y_test, SEED)
    print(f"trained on clean digits: {epochs} epochs to {accuracy:.3f} held-out accuracy "
          f"({len(y_train)} training, {len(y_test)} held-out images)")
    if not reached:
        print("the clean model did not reach the target accuracy", file=sys.stderr)
        return 1

    rows: list[dict[str, Any]] = []
    clean_acts = base.forward(x_train)
    for kind, levels in SHIFTS.items():
        for n, level in enumerate(levels[1::2] if args.quick else levels):
            seed = SEED + 1000 * n + len(rows)
            shifted_train = shift(x_train, kind, level, seed)
            shifted_test = shift(x_test, kind, level, seed + 1)
            t0 = time.monotonic()
            index = preindex(clean_acts, base.forward(shifted_train), y_train, n_classes=10,
                             embedding="fc2")
            index_seconds = time.monotonic() - t0
            accuracy_before = base.accuracy(shifted_test, y_test)
            for repeat in range(args.repeats):
                model = base.copy()

                def retrain(model: MLP = model, x: np.ndarray = shifted_train,
                            x_test: np.ndarray = shifted_test,
                            seed: int = seed + 7 * repeat) -> dict[str, Any]:
                    e, acc, ok = train_to_target(model, x, y_train, x_test, y_test, seed + 2)
                    return {"epochs": e, "accuracy": acc, "reached": ok}

                result, measured = measured_run(
                    runs_dir, f"retrain-{kind}-{level:g}-{repeat}",
                    {"preindex": index.value, "shift": kind, "level": level, "repeat": repeat,
                     "preindex_distance": index.distance, "preindex_inv_ari": index.inv_ari},
                    args.mode, retrain)
                rows.append({"shift": kind, "level": level, "repeat": repeat,
                             "preindex": index.value, "distance": index.distance,
                             "inv_ari": index.inv_ari, "index_seconds": index_seconds,
                             "accuracy_before": accuracy_before, **result,
                             "energy_kwh": measured.energy_kwh, "seconds": measured.seconds,
                             "record": measured.record})
                print(f"{kind:<12}{level:>6g}  PreIndex {index.value:.4f} (distance "
                      f"{index.distance:.4f}, 1-ARI {index.inv_ari:.4f}, {index_seconds:.2f} s)"
                      f"  accuracy before {accuracy_before:.3f}  retrained "
                      f"{result['epochs']:>3} epochs{'' if result['reached'] else ' (capped)'}"
                      f"  {measured.seconds:5.2f} s  {measured.energy_kwh * 3.6e6:7.2f} J",
                      flush=True)

    summary = summarise(rows)
    elapsed = time.monotonic() - started
    print()
    for line in summary["lines"]:
        print(line)
    print(f"\nrun records: {runs_dir}\ntotal run time: {elapsed:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "summary": summary["table"],
                                               "seconds": elapsed}, indent=2))
    return 0


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    table: dict[str, dict[str, float]] = {}
    lines = ["Spearman rank correlation with PreIndex (and its components) over "
             f"{len(rows)} retrainings ({len({(r['shift'], r['level']) for r in rows})} shifts):",
             f"{'':<22}{'energy':>10}{'epochs':>10}{'seconds':>10}"]
    for key, label in (("preindex", "PreIndex"), ("distance", "distance part"),
                       ("inv_ari", "1 - ARI part"), ("accuracy_before", "accuracy before")):
        xs = [r[key] for r in rows]
        table[key] = {m: spearman(xs, [r[m] for r in rows])
                      for m in ("energy_kwh", "epochs", "seconds")}
        lines.append(f"{label:<22}" + "".join(f"{table[key][m]:>10.2f}"
                                              for m in ("energy_kwh", "epochs", "seconds")))
    per_type = {}
    for kind in SHIFTS:
        part = [r for r in rows if r["shift"] == kind]
        if len(part) >= 3:
            per_type[kind] = {m: spearman([r["preindex"] for r in part], [r[m] for r in part])
                              for m in ("energy_kwh", "epochs")}
            lines.append(f"  within {kind:<13} energy {per_type[kind]['energy_kwh']:.2f}, "
                         f"epochs {per_type[kind]['epochs']:.2f} ({len(part)} retrainings)")
    table["per_type"] = per_type  # type: ignore[assignment]
    holdout = leave_one_type_out(rows)
    table["leave_one_type_out"] = holdout  # type: ignore[assignment]
    lines.append("estimate-retraining's fit, leave one shift type out (fit energy on the other "
                 "three types' runs, predict the held-out type's runs):")
    for kind, h in holdout.items():
        lines.append(f"  {kind:<13} {h['inside']:.0%} of {h['runs']} runs inside the 90% "
                     f"prediction interval, median |error| {h['median_abs_error']:.0%} of the "
                     f"measured energy, {h['extrapolated']} runs extrapolated")
    return {"table": table, "lines": lines}


def leave_one_type_out(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    from exporter.retraining.estimate import RetrainingRun, estimate

    out: dict[str, dict[str, float]] = {}
    for kind in SHIFTS:
        train = [RetrainingRun(r["record"], r["preindex"], r["energy_kwh"], r["epochs"])
                 for r in rows if r["shift"] != kind]
        held = [r for r in rows if r["shift"] == kind]
        if len(train) < 5 or not held:
            continue
        inside, errors, extrapolated = 0, [], 0
        for r in held:
            e = estimate(train, r["preindex"], confidence=0.9)
            inside += e.energy.low <= r["energy_kwh"] <= e.energy.high
            extrapolated += bool(e.warnings)
            if r["energy_kwh"] > 0:
                errors.append(abs(e.energy.value - r["energy_kwh"]) / r["energy_kwh"])
        out[kind] = {"runs": len(held), "inside": inside / len(held),
                     "median_abs_error": float(np.median(errors)) if errors else float("nan"),
                     "extrapolated": extrapolated}
    return out


if __name__ == "__main__":
    sys.exit(main())
