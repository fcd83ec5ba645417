"""Activations of a PyTorch model through forward hooks, for PreIndex. Needs torch, which
this project never depends on: importing this module without torch raises ImportError with
the reason.

Which layers: by default every module with `out_features` or `out_channels` (linear and
convolution layers), as the paper's code does; or the names you pass (`model.named_modules`
names). Outputs are detached, moved to the CPU and kept as numpy float arrays; a
convolution's (batch, channels, H, W) output is kept whole (PreIndex averages it over H, W
for the histograms, and flattens the embedding layer for the clustering).
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

try:
    import torch
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError("exporter.preindex.torch_hooks needs PyTorch (pip install torch); "
                      "the rest of exporter.preindex works with numpy arrays alone") from exc

from exporter.preindex.core import DEFAULT_BINS, PreIndexAccumulator, PreIndexResult


def default_layers(model: "torch.nn.Module") -> list[str]:
    return [name for name, module in model.named_modules()
            if name and (hasattr(module, "out_features") or hasattr(module, "out_channels"))]


class ActivationCollector:
    """`with ActivationCollector(model, layers) as acts: model(x)`; then `acts.take()` gives
    {layer: array} for the batches run since the last take()."""

    def __init__(self, model: "torch.nn.Module", layers: Sequence[str] | None = None) -> None:
        self.model = model
        self.layers = list(layers) if layers is not None else default_layers(model)
        modules = dict(model.named_modules())
        missing = [name for name in self.layers if name not in modules]
        if missing:
            raise ValueError(f"no module named {', '.join(missing)} in the model")
        if not self.layers:
            raise ValueError("the model has no linear or convolution layer to hook")
        self._modules = [modules[name] for name in self.layers]
        self._handles: list[Any] = []
        self._outputs: dict[str, list[np.ndarray]] = {name: [] for name in self.layers}

    def _hook(self, name: str) -> Any:
        def record(_module: Any, _inputs: Any, output: Any) -> None:
            if isinstance(output, (tuple, list)):  # e.g. attention blocks: the first output
                output = output[0]
            self._outputs[name].append(output.detach().to("cpu", torch.float64).numpy())
        return record

    def __enter__(self) -> "ActivationCollector":
        self._handles = [m.register_forward_hook(self._hook(n))
                         for n, m in zip(self.layers, self._modules)]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def take(self) -> dict[str, np.ndarray]:
        taken = {}
        for name, parts in self._outputs.items():
            if not parts:
                raise ValueError(f"layer {name!r} produced no output: is it on the forward path?")
            taken[name] = np.concatenate(parts)
            self._outputs[name] = []
        return taken


def preindex_torch(model: "torch.nn.Module", batches: Iterable[tuple[Any, Any, Any]], *,
                   n_classes: int, layers: Sequence[str] | None = None,
                   embedding: str | None = None, distance: str = "bhattacharyya",
                   bins: int = DEFAULT_BINS, device: Any = None) -> PreIndexResult:
    """PreIndex from (original_inputs, shifted_inputs, labels) batches: one forward pass of
    the model (in eval mode, without gradients) over each; the model's mode is restored."""
    collector = ActivationCollector(model, layers)
    accumulator = PreIndexAccumulator(n_classes=n_classes, embedding=embedding,
                                      distance=distance, bins=bins)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), collector:
            for original, shifted, labels in batches:
                if device is not None:
                    original, shifted = original.to(device), shifted.to(device)
                model(original)
                before = collector.take()
                model(shifted)
                after = collector.take()
                accumulator.add(before, after, np.asarray(
                    labels.cpu() if hasattr(labels, "cpu") else labels))
    finally:
        model.train(was_training)
    return accumulator.result()
