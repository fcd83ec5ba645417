"""The PyTorch forward-hook collector: where torch is installed (it is optional, never a
dependency), its activations and index equal those computed from the same layers by hand;
where it is not, the module says what is missing."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest

from exporter.preindex import preindex

HAS_TORCH = importlib.util.find_spec("torch") is not None


@pytest.mark.skipif(not HAS_TORCH, reason="torch is optional and not installed here")
def test_hooks_collect_the_layers_and_give_the_same_index_as_numpy():
    import torch

    from exporter.preindex.torch_hooks import ActivationCollector, default_layers, preindex_torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 12, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(12 * 8 * 8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    model.train()
    assert default_layers(model) == ["0", "3", "5"]
    rng = np.random.default_rng(0)
    labels = np.arange(90) % 3
    x = torch.tensor(rng.normal(size=(90, 1, 8, 8)) + labels[:, None, None, None],
                     dtype=torch.float32)
    shifted = x + 0.5 * torch.randn_like(x)
    batches = [(x[i:i + 30], shifted[i:i + 30], torch.tensor(labels[i:i + 30]))
               for i in range(0, 90, 30)]
    got = preindex_torch(model, batches, n_classes=3, embedding="3")
    assert model.training  # mode restored

    with torch.no_grad():
        model.eval()
        conv = model[0]
        by_hand_o = {"0": conv(x).double().numpy(), "3": model[:4](x).double().numpy(),
                     "5": model(x).double().numpy()}
        by_hand_s = {"0": conv(shifted).double().numpy(), "3": model[:4](shifted).double().numpy(),
                     "5": model(shifted).double().numpy()}
    expected = preindex(by_hand_o, by_hand_s, labels, n_classes=3, embedding="3")
    assert got.layers == ("0", "3")  # the 3-wide output layer is left out
    assert got.value == pytest.approx(expected.value, rel=1e-6)
    assert got.distances["wasserstein"] == pytest.approx(expected.distances["wasserstein"], rel=1e-6)

    with ActivationCollector(model, ["3"]) as acts:
        model(x[:5])
    assert acts.take()["3"].shape == (5, 32)
    with pytest.raises(ValueError, match="no module named nope"):
        ActivationCollector(model, ["nope"])


@pytest.mark.skipif(HAS_TORCH, reason="checks the message shown without torch")
def test_without_torch_the_module_says_what_is_missing():
    code = "import exporter.preindex.torch_hooks"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode != 0 and "needs PyTorch (pip install torch)" in out.stderr
