"""PreIndex: how far a shift moves a model's representations, from one forward pass.

After Sangarya, Bradford and Kim, "Estimating Environmental Cost Throughout Model's
Adaptive Life Cycle" (AIES 2024, arXiv 2408.01446). Written for this project from the
paper's description and its published code's behaviour; every choice is stated in
`exporter.preindex.core`.

- `exporter.preindex.core`: the index from per-layer activations (numpy arrays); needs
  numpy only (`pip install 'carbon-exporter[preindex]'`).
- `exporter.preindex.torch_hooks`: collects those activations from a PyTorch model with
  forward hooks; needs torch, which is never a dependency of this project.

Nothing here is imported by the exporter daemon or by `carbon-exporter estimate-retraining`
(which only reads the numbers the index produced from run records).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from exporter.preindex.core import (
        DISTANCES, PreIndexAccumulator, PreIndexResult, adjusted_rand_index, preindex,
    )

__all__ = ["DISTANCES", "PreIndexAccumulator", "PreIndexResult", "adjusted_rand_index",
           "preindex"]


def __getattr__(name: str) -> Any:
    # numpy only once the index is actually used
    if name in __all__:
        from exporter.preindex import core
        return getattr(core, name)
    raise AttributeError(name)
