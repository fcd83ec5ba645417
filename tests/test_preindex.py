"""PreIndex properties on synthetic activations: its floor for identical data, growth with a
shift's strength, symmetry of the symmetric distances, and its parts checked against
independent implementations (numpy's histogram, scikit-learn's adjusted Rand score)."""

from __future__ import annotations

import numpy as np
import pytest

from exporter.preindex.core import (
    DISTANCES, PreIndexAccumulator, PreIndexError, adjusted_rand_index, histograms, preindex,
    row_distances,
)

N_CLASSES = 6


def activations(seed: int = 0, n: int = 600, width: int = 256, separation: float = 4.0):
    """Two ReLU layers of a made-up network whose hidden units depend on the class."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % N_CLASSES
    centres = rng.normal(size=(N_CLASSES, 16)) * separation
    inputs = centres[labels] + rng.normal(size=(n, 16))
    w1, w2 = rng.normal(size=(16, width)) / 4, rng.normal(size=(width, 64)) / 16

    def forward(x):
        h1 = np.maximum(x @ w1, 0)
        return {"fc1": h1, "fc2": np.maximum(h1 @ w2, 0), "logits": np.maximum(h1 @ w2, 0)[:, :N_CLASSES]}

    return inputs, labels, forward


def test_identical_data_gives_zero_distances_and_the_floor():
    inputs, labels, forward = activations()
    acts = forward(inputs)
    result = preindex(acts, acts, labels, embedding="fc2")
    for name in DISTANCES:
        for value in result.distances[name].values():
            assert value == 0.0
    assert result.distance == 0.0
    assert result.value == result.floor
    assert result.excess == 0.0
    # well separated classes cluster perfectly: the floor itself is 0
    assert result.floor == pytest.approx(0.0, abs=1e-12)
    assert result.layers == ("fc1", "fc2")  # logits (width == classes) left out
    assert preindex(acts, acts, labels).embedding == "logits"  # the last layer by default


def test_floor_is_one_minus_ari_of_the_original_clusters():
    inputs, labels, forward = activations(separation=0.6)  # overlapping classes
    acts = forward(inputs)
    result = preindex(acts, acts, labels, embedding="fc2")
    assert 0.05 < result.floor < 1.0
    assert result.value == pytest.approx(result.floor)


def test_index_grows_with_the_strength_of_a_shift():
    inputs, labels, forward = activations()
    rng = np.random.default_rng(1)
    noise = rng.normal(size=inputs.shape)
    values, distances, inv_aris = [], [], []
    for sigma in (0.0, 0.5, 1.5, 3.0, 6.0, 12.0):
        result = preindex(forward(inputs), forward(inputs + sigma * noise), labels, embedding="fc2")
        values.append(result.value)
        distances.append(result.distance)
        inv_aris.append(result.inv_ari)
    assert all(a < b for a, b in zip(values, values[1:])), values
    assert all(a < b for a, b in zip(distances, distances[1:])), distances
    assert inv_aris[-1] > inv_aris[0] + 0.3  # strong noise mixes the classes' clusters


@pytest.mark.parametrize("distance", DISTANCES)
def test_every_distance_grows_with_shift_strength(distance):
    inputs, labels, forward = activations()
    rng = np.random.default_rng(2)
    noise = rng.normal(size=inputs.shape)
    got = [preindex(forward(inputs), forward(inputs + s * noise), labels, distance=distance,
                    bins=16).distance for s in (0.25, 1.0, 4.0)]
    assert got[0] < got[1] < got[2]


def test_symmetric_distances_are_symmetric_and_kl_is_not():
    inputs, labels, forward = activations()
    rng = np.random.default_rng(3)
    a, b = forward(inputs), forward(inputs * 1.3 + rng.normal(size=inputs.shape))
    ab, ba = preindex(a, b, labels), preindex(b, a, labels)
    for name in ("wasserstein", "bhattacharyya", "jensen_shannon"):
        for bins in ab.distances[name]:
            assert ab.distances[name][bins] == pytest.approx(ba.distances[name][bins], rel=1e-12)
    assert ab.distances["kl"][32] != pytest.approx(ba.distances["kl"][32], rel=1e-3)


def test_shared_edges_see_a_rescaling_that_own_edges_hide():
    inputs, labels, forward = activations()
    acts = forward(inputs)
    brighter = {k: v * 1.5 for k, v in acts.items()}  # a contrast change, exactly linear
    shared = preindex(acts, brighter, labels)
    own = preindex(acts, brighter, labels, edges="own")
    assert shared.distance > 0.05
    assert own.distance == pytest.approx(0.0, abs=1e-9)


def test_histograms_match_numpy_and_distances_match_their_definitions():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(5, 300)), rng.normal(0.5, 2.0, size=(5, 300))
    p, q = histograms(a, b, 16)
    for row in range(5):
        lo = min(a[row].min(), b[row].min())
        hi = max(a[row].max(), b[row].max())
        expected_p = np.histogram(a[row], bins=16, range=(lo, hi))[0] / 300
        expected_q = np.histogram(b[row], bins=16, range=(lo, hi))[0] / 300
        np.testing.assert_allclose(p[row], expected_p, atol=1e-12)
        np.testing.assert_allclose(q[row], expected_q, atol=1e-12)
    d = row_distances(p, q)
    m = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        js = 0.5 * np.nansum(np.where(p > 0, p * np.log(p / m), 0), axis=1) \
            + 0.5 * np.nansum(np.where(q > 0, q * np.log(q / m), 0), axis=1)
    np.testing.assert_allclose(d["jensen_shannon"], js, rtol=1e-12)
    np.testing.assert_allclose(d["bhattacharyya"], 1 - np.sqrt(p * q).sum(axis=1), rtol=1e-12)
    assert np.all(d["jensen_shannon"] <= np.log(2) + 1e-12)
    assert np.all((d["wasserstein"] >= 0) & (d["wasserstein"] <= 1))
    # moving all mass from the first bin to the last is the largest move there is
    one, last = np.zeros((1, 16)), np.zeros((1, 16))
    one[0, 0], last[0, -1] = 1.0, 1.0
    assert row_distances(one, last)["wasserstein"][0] == pytest.approx(15 / 16)


def test_adjusted_rand_index_matches_scikit_learn():
    from sklearn import metrics  # test extra
    rng = np.random.default_rng(5)
    for _ in range(20):
        a, b = rng.integers(0, 7, 150), rng.integers(0, 5, 150)
        b[:100] = a[:100] % 5  # partly agreeing
        assert adjusted_rand_index(a, b) == pytest.approx(metrics.adjusted_rand_score(a, b), abs=1e-12)
    assert adjusted_rand_index([0, 0, 1, 1], [5, 5, 9, 9]) == 1.0


def test_batches_give_the_same_index_as_one_pass():
    inputs, labels, forward = activations()
    shifted = inputs + np.random.default_rng(6).normal(size=inputs.shape)
    whole = preindex(forward(inputs), forward(shifted), labels)
    acc = PreIndexAccumulator(n_classes=N_CLASSES)
    for start in range(0, len(labels), 64):
        part = slice(start, start + 64)
        acc.add(forward(inputs[part]), forward(shifted[part]), labels[part])
    batched = acc.result()
    assert batched.value == pytest.approx(whole.value, rel=1e-12)
    for name in DISTANCES:
        assert batched.distances[name] == pytest.approx(whole.distances[name], rel=1e-12)


def test_convolutional_outputs_are_averaged_per_channel_for_histograms():
    rng = np.random.default_rng(7)
    labels = np.arange(60) % 3
    conv = rng.normal(size=(60, 8, 5, 5)) + labels[:, None, None, None]
    result = preindex({"conv": conv}, {"conv": conv + 0.3}, labels)
    means = conv.reshape(60, 8, -1).mean(axis=2)
    flat = preindex({"conv": means}, {"conv": means + 0.3}, labels, embedding="conv")
    assert result.distances["bhattacharyya"] == pytest.approx(flat.distances["bhattacharyya"])


@pytest.mark.parametrize("change, message", [
    (lambda o, s, y: ({**o}, {"fc1": s["fc1"]}, y), "same layers"),
    (lambda o, s, y: (o, {**s, "fc1": s["fc1"][:-1]}, y), "must match"),
    (lambda o, s, y: (o, s, y + 10), "labels must be integers"),
    (lambda o, s, y: ({"logits": o["logits"]}, {"logits": s["logits"]}, y), "wider than"),
    (lambda o, s, y: (o, {**s, "fc1": s["fc1"] * np.nan}, y), "finite"),
])
def test_bad_inputs_are_refused_with_a_reason(change, message):
    inputs, labels, forward = activations(n=60)
    o, s, y = change(forward(inputs), forward(inputs), labels)
    with pytest.raises(PreIndexError, match=message):
        preindex(o, s, y, n_classes=N_CLASSES)


def test_the_daemon_and_the_estimate_command_do_not_load_numpy():
    import subprocess
    import sys
    code = ("import sys, exporter.cli, exporter.retraining.cli, exporter.preindex; "
            "print('numpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
