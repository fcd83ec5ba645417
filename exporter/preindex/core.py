"""PreIndex from per-layer activations of original and shifted samples (numpy only).

The method (Sangarya, Bradford, Kim; AIES 2024): run the current model once over the data
it was trained on and once over the same samples after the shift; compare, layer by layer,
the distribution of each sample's activations before and after (histogram distances), and
compare how the final embeddings cluster by class (1 - adjusted Rand index of KMeans). One
number results; the paper shows it rank-correlates with the epochs, energy and CO2e that
retraining to the shifted data then costs.

Choices, where the paper or its code leave them open or where we differ from the code
(the published code computes the components; we fix how they become one number):

Layers
    Every layer you pass whose per-sample width is larger than the number of classes (the
    code's rule: it drops the logits layer). A layer's array is (samples, features) or
    (samples, channels, *spatial); for the histograms a convolutional output is averaged
    over its spatial positions, giving one value per channel (as the code does).
Embedding (for the clustering component)
    The layer named `embedding`, else the last layer passed (dict order), flattened per
    sample without spatial averaging (as the code does with its "final conv layer").
Histograms
    One histogram per sample and layer over that sample's activation values, `bins` bins
    (default 32; the code computes 16, 32 and 64 and reports all; `distances` here holds all
    of `all_bins`). Edges: by default the original and the shifted histogram of a sample
    share edges spanning both (min..max of the pair), so they compare bin by bin and a pure
    rescaling of activations is seen. The code bins each vector over its own min..max
    instead, which hides rescaling; `edges="own"` does that.
Distances (each averaged over samples, then over layers)
    - wasserstein: 1-D earth mover's distance between the two histograms with bin centres
      placed on [0, 1] (sum |CDF_p - CDF_q| / bins), so it lies in [0, 1]. The code passes
      the two probability vectors to scipy's wasserstein_distance as if they were samples,
      which measures something else (how the bin heights are spread); we do not copy that.
    - bhattacharyya: 1 - sum sqrt(p q) (as the code; this is the squared Hellinger distance,
      in [0, 1]; the classical -ln(BC) is unbounded).
    - jensen_shannon: the divergence, natural log, in [0, ln 2].
    - kl: KL(p_original || p_shifted) with both histograms smoothed by 1e-6 per bin, so it is
      finite and >= 0. The code drops bins where the shifted histogram is empty, which can
      make the sum negative. Not symmetric.
Clustering
    KMeans (Lloyd, one run) on the original embeddings and on the shifted embeddings, both
    started from the original embeddings' class means (the code's "explicit centroids"),
    k = number of classes; ARI of the resulting clusters against the true labels.
    inv_ari = 1 - ARI(shifted); floor = 1 - ARI(original): what inv_ari is when nothing
    shifted (a model whose embeddings cluster perfectly by class has floor 0).
Combination
    value = distance + inv_ari, with `distance` the chosen histogram distance (default
    bhattacharyya at 32 bins, in [0, 1] like inv_ari, so neither term dominates by its
    unit). For identical original and shifted data, distance = 0 and value = floor.
    excess = value - floor is the part due to the shift. The paper's summary formula also
    scales by a noise-variance term that needs the shift's own parameters (a noise level);
    that is not available for a shift you only observe, so it is left out.

All randomness is fixed: the KMeans start is the class means, ties break by lowest index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np
from numpy.typing import ArrayLike, NDArray

DISTANCES = ("wasserstein", "bhattacharyya", "jensen_shannon", "kl")
DEFAULT_BINS = 32
ALL_BINS = (16, 32, 64)
KL_SMOOTHING = 1e-6
KMEANS_MAX_ITER = 300
KMEANS_TOL = 1e-4  # relative to the data's variance, as scikit-learn does

Array = NDArray[np.float64]


class PreIndexError(ValueError):
    """Inputs that cannot give an index (shapes, labels, too few samples)."""


@dataclass(frozen=True)
class PreIndexResult:
    value: float  # distance + inv_ari
    distance: float  # the chosen histogram distance, averaged over samples and layers
    inv_ari: float  # 1 - ARI of the shifted embeddings' clusters
    floor: float  # 1 - ARI of the original embeddings' clusters (value when nothing shifted)
    distance_name: str
    bins: int
    # every distance at every bin count: {name: {bins: mean over samples and layers}}
    distances: dict[str, dict[int, float]]
    # per layer: {layer: {name: {bins: mean over samples}}}
    per_layer: dict[str, dict[str, dict[int, float]]]
    layers: tuple[str, ...]  # the layers that entered the distances
    embedding: str  # the layer that was clustered
    n_samples: int
    n_classes: int

    @property
    def excess(self) -> float:
        return self.value - self.floor

    def as_dict(self) -> dict[str, object]:
        """JSON-ready, e.g. for a run record's params."""
        return {
            "value": self.value, "distance": self.distance, "inv_ari": self.inv_ari,
            "floor": self.floor, "excess": self.excess, "distance_name": self.distance_name,
            "bins": self.bins, "layers": list(self.layers), "embedding": self.embedding,
            "n_samples": self.n_samples, "n_classes": self.n_classes,
            "distances": {k: {str(b): v for b, v in d.items()} for k, d in self.distances.items()},
        }


# --- histograms and distances -----------------------------------------------------------------

def per_sample_values(activations: ArrayLike) -> Array:
    """(samples, features) as is; (samples, channels, *spatial) averaged over the spatial axes."""
    array = np.asarray(activations, dtype=np.float64)
    if array.ndim == 1:
        return array.reshape(-1, 1)
    if array.ndim > 2:
        array = array.reshape(array.shape[0], array.shape[1], -1).mean(axis=2)
    return array


def histograms(original: Array, shifted: Array, bins: int, edges: str = "shared"
               ) -> tuple[Array, Array]:
    """Row-wise probability histograms (rows sum to 1) of two (samples, values) arrays."""
    if edges == "shared":
        lo = np.minimum(original.min(axis=1), shifted.min(axis=1))
        hi = np.maximum(original.max(axis=1), shifted.max(axis=1))
        return _row_hist(original, lo, hi, bins), _row_hist(shifted, lo, hi, bins)
    if edges == "own":
        return (_row_hist(original, original.min(axis=1), original.max(axis=1), bins),
                _row_hist(shifted, shifted.min(axis=1), shifted.max(axis=1), bins))
    raise PreIndexError(f"edges must be 'shared' or 'own', not {edges!r}")


def _row_hist(values: Array, lo: Array, hi: Array, bins: int) -> Array:
    rows, width = values.shape
    span = hi - lo
    # a constant row puts all its mass in the first bin (like np.histogram's 0.5-wide range)
    scale = np.where(span > 0, bins / np.where(span > 0, span, 1.0), 0.0)
    index = np.floor((values - lo[:, None]) * scale[:, None]).astype(np.int64)
    np.clip(index, 0, bins - 1, out=index)  # the max lands in the last bin, as in np.histogram
    flat = (np.arange(rows, dtype=np.int64)[:, None] * bins + index).ravel()
    counts = np.bincount(flat, minlength=rows * bins).reshape(rows, bins)
    return counts / float(width)


def _xlogy_ratio(p: Array, q: Array) -> Array:
    """p * ln(p / q) with 0 where p == 0 (q > 0 wherever p > 0 for our callers)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0) / np.where(q > 0, q, 1.0)), 0.0)
    return terms


def row_distances(p: Array, q: Array) -> dict[str, Array]:
    """Each distance of DISTANCES between matching rows of two probability-histogram arrays."""
    bins = p.shape[1]
    wasserstein = np.abs(np.cumsum(p, axis=1) - np.cumsum(q, axis=1)).sum(axis=1) / bins
    bhattacharyya = 1.0 - np.sqrt(p * q).sum(axis=1)
    m = 0.5 * (p + q)
    jensen_shannon = 0.5 * _xlogy_ratio(p, m).sum(axis=1) + 0.5 * _xlogy_ratio(q, m).sum(axis=1)
    ps = (p + KL_SMOOTHING) / (1.0 + bins * KL_SMOOTHING)
    qs = (q + KL_SMOOTHING) / (1.0 + bins * KL_SMOOTHING)
    kl = (ps * np.log(ps / qs)).sum(axis=1)
    # rounding can leave -1e-17 where the histograms are equal
    return {"wasserstein": wasserstein, "bhattacharyya": np.maximum(bhattacharyya, 0.0),
            "jensen_shannon": np.maximum(jensen_shannon, 0.0), "kl": np.maximum(kl, 0.0)}


# --- clustering -------------------------------------------------------------------------------

def class_means(embeddings: Array, labels: NDArray[np.int64], n_classes: int) -> Array:
    sums = np.zeros((n_classes, embeddings.shape[1]))
    np.add.at(sums, labels, embeddings)
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    if np.any(counts == 0):
        missing = [int(c) for c in np.flatnonzero(counts == 0)]
        raise PreIndexError(f"classes {missing} have no sample: every class needs one")
    return sums / counts[:, None]


def kmeans(data: Array, centroids: Array, max_iter: int = KMEANS_MAX_ITER,
           tol: float = KMEANS_TOL) -> NDArray[np.int64]:
    """Lloyd's algorithm from the given centroids; the cluster of each row.

    An emptied cluster keeps its previous centroid (deterministic; scikit-learn instead
    moves it to a far point). Stops when the centroids move less than tol * mean variance.
    """
    centroids = centroids.copy()
    threshold = tol * float(np.mean(np.var(data, axis=0)))
    norms = (data * data).sum(axis=1)
    assignment = np.zeros(data.shape[0], dtype=np.int64)
    for _ in range(max_iter):
        squared = norms[:, None] - 2.0 * data @ centroids.T + (centroids * centroids).sum(axis=1)
        assignment = np.argmin(squared, axis=1)
        moved = 0.0
        for k in range(centroids.shape[0]):
            members = assignment == k
            if members.any():
                new = data[members].mean(axis=0)
                moved += float(((new - centroids[k]) ** 2).sum())
                centroids[k] = new
        if moved <= threshold:
            break
    squared = norms[:, None] - 2.0 * data @ centroids.T + (centroids * centroids).sum(axis=1)
    return np.argmin(squared, axis=1)


def adjusted_rand_index(truth: ArrayLike, predicted: ArrayLike) -> float:
    """Hubert and Arabie's adjusted Rand index of two labelings (1 = same partition)."""
    a = np.unique(np.asarray(truth), return_inverse=True)[1]
    b = np.unique(np.asarray(predicted), return_inverse=True)[1]
    if a.shape != b.shape:
        raise PreIndexError("the two labelings have different lengths")
    n = a.size
    table = np.zeros((a.max() + 1, b.max() + 1), dtype=np.float64)
    np.add.at(table, (a, b), 1.0)

    def pairs(x: Array) -> float:
        return float((x * (x - 1.0) / 2.0).sum())

    index = pairs(table)
    rows, cols = pairs(table.sum(axis=1)), pairs(table.sum(axis=0))
    total = n * (n - 1) / 2.0
    if total == 0:
        return 1.0
    expected = rows * cols / total
    maximum = (rows + cols) / 2.0
    if maximum == expected:  # both labelings trivial (one cluster, or all singletons)
        return 1.0
    return (index - expected) / (maximum - expected)


# --- the index --------------------------------------------------------------------------------

@dataclass
class PreIndexAccumulator:
    """Feed batches of (original, shifted) activations; `result()` gives the index.

    Distances are summed per sample as batches come, so only the embeddings (for the
    clustering) are kept in memory.
    """

    n_classes: int
    embedding: str | None = None
    distance: str = "bhattacharyya"
    bins: int = DEFAULT_BINS
    all_bins: tuple[int, ...] = ALL_BINS
    edges: str = "shared"
    _sums: dict[str, dict[str, dict[int, float]]] = field(default_factory=dict)
    _layers: list[str] = field(default_factory=list)
    _embedding: str | None = None
    _original_embeddings: list[Array] = field(default_factory=list)
    _shifted_embeddings: list[Array] = field(default_factory=list)
    _labels: list[NDArray[np.int64]] = field(default_factory=list)
    _samples: int = 0

    def __post_init__(self) -> None:
        if self.distance not in DISTANCES:
            raise PreIndexError(f"distance must be one of {', '.join(DISTANCES)}, "
                                f"not {self.distance!r}")
        if self.n_classes < 2:
            raise PreIndexError("n_classes must be at least 2")
        if self.edges not in ("shared", "own"):
            raise PreIndexError(f"edges must be 'shared' or 'own', not {self.edges!r}")
        self.all_bins = tuple(sorted(set(self.all_bins) | {self.bins}))
        if min(self.all_bins) < 2:
            raise PreIndexError("bins must be at least 2")

    def add(self, original: Mapping[str, ArrayLike], shifted: Mapping[str, ArrayLike],
            labels: ArrayLike) -> None:
        names = list(original)
        if list(shifted) != names:
            raise PreIndexError("original and shifted activations must name the same layers "
                                "in the same order")
        if not names:
            raise PreIndexError("no layers given")
        label_array = np.asarray(labels).astype(np.int64).ravel()
        if label_array.min(initial=0) < 0 or label_array.max(initial=0) >= self.n_classes:
            raise PreIndexError(f"labels must be integers in 0..{self.n_classes - 1}")
        embedding = self.embedding if self.embedding is not None else names[-1]
        if embedding not in original:
            raise PreIndexError(f"embedding layer {embedding!r} is not among the layers "
                                f"({', '.join(names)})")
        if self._embedding is None:
            self._embedding = embedding
            self._layers = [n for n in names
                            if per_sample_values(np.asarray(original[n])[:1]).shape[1]
                            > self.n_classes]
            if not self._layers:
                raise PreIndexError("no layer is wider than the number of classes: "
                                    "pass hidden layers, not only the logits")
            self._sums = {n: {d: {b: 0.0 for b in self.all_bins} for d in DISTANCES}
                          for n in self._layers}
        count = label_array.size
        for name in self._layers:
            o = per_sample_values(original[name])
            s = per_sample_values(shifted[name])
            if o.shape != s.shape or o.shape[0] != count:
                raise PreIndexError(f"layer {name!r}: original {o.shape} and shifted {s.shape} "
                                    f"activations must match each other and the {count} labels")
            if not (np.isfinite(o).all() and np.isfinite(s).all()):
                raise PreIndexError(f"layer {name!r}: activations must be finite")
            for b in self.all_bins:
                p, q = histograms(o, s, b, self.edges)
                for d, values in row_distances(p, q).items():
                    self._sums[name][d][b] += float(values.sum())
        eo = np.asarray(original[embedding], dtype=np.float64).reshape(count, -1)
        es = np.asarray(shifted[embedding], dtype=np.float64).reshape(count, -1)
        if eo.shape != es.shape:
            raise PreIndexError(f"embedding {embedding!r}: shapes {eo.shape} and {es.shape} differ")
        self._original_embeddings.append(eo)
        self._shifted_embeddings.append(es)
        self._labels.append(label_array)
        self._samples += count

    def result(self) -> PreIndexResult:
        if self._samples < self.n_classes or self._embedding is None:
            raise PreIndexError(f"{self._samples} samples: need at least one per class "
                                f"({self.n_classes})")
        n = self._samples
        per_layer = {name: {d: {b: total / n for b, total in by_bins.items()}
                            for d, by_bins in sums.items()}
                     for name, sums in self._sums.items()}
        distances = {d: {b: math.fsum(per_layer[name][d][b] for name in self._layers)
                         / len(self._layers) for b in self.all_bins} for d in DISTANCES}
        labels = np.concatenate(self._labels)
        original = np.concatenate(self._original_embeddings)
        shifted = np.concatenate(self._shifted_embeddings)
        start = class_means(original, labels, self.n_classes)
        floor = 1.0 - adjusted_rand_index(labels, kmeans(original, start))
        inv_ari = 1.0 - adjusted_rand_index(labels, kmeans(shifted, start))
        distance = distances[self.distance][self.bins]
        return PreIndexResult(
            value=distance + inv_ari, distance=distance, inv_ari=inv_ari, floor=floor,
            distance_name=self.distance, bins=self.bins, distances=distances,
            per_layer=per_layer, layers=tuple(self._layers), embedding=self._embedding,
            n_samples=n, n_classes=self.n_classes)


def preindex(original: Mapping[str, ArrayLike], shifted: Mapping[str, ArrayLike],
             labels: ArrayLike, *, n_classes: int | None = None, embedding: str | None = None,
             distance: str = "bhattacharyya", bins: int = DEFAULT_BINS,
             all_bins: Iterable[int] = ALL_BINS, edges: str = "shared") -> PreIndexResult:
    """PreIndex of a shift from all activations at once: {layer: array} for the original and
    the shifted versions of the same samples (same order), and their class labels 0..k-1."""
    label_array = np.asarray(labels).astype(np.int64).ravel()
    if n_classes is None:
        n_classes = int(label_array.max(initial=0)) + 1
    acc = PreIndexAccumulator(n_classes=n_classes, embedding=embedding, distance=distance,
                              bins=bins, all_bins=tuple(all_bins), edges=edges)
    acc.add(original, shifted, label_array)
    return acc.result()
