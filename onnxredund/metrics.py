"""Similarity metrics with their edge cases defined, accumulated in float64.

Pure numpy/scipy, imported by the engine (the direct path's cosine) and the analyses alike; imports
nothing of the package.

- :func:`cosine_per_channel`: the paper's eq. 1 per sample and channel; :func:`flat_cosine` per sample.
- output drift: :func:`error_bins`, :func:`bin_counts` and :func:`histogram_quantile` (absolute errors on fixed
  log-spaced bins, so that sums over batches merge), :func:`log_softmax`, :func:`kl_divergence`,
  :func:`top1`, :func:`top_k_hits`.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "ERROR_BINS",
    "ERROR_EDGES",
    "bin_counts",
    "cosine_per_channel",
    "error_bins",
    "flat_cosine",
    "histogram_quantile",
    "kl_divergence",
    "log_softmax",
    "relative_l2_per_sample",
    "top1",
    "top_k_hits",
]

#: bin edges for absolute errors: [0, 1e-12), then 20 bins per decade up to 1e8, then [1e8, inf)
ERROR_EDGES = np.concatenate([[0.0], np.logspace(-12, 8, 401), [np.inf]])
ERROR_BINS = len(ERROR_EDGES) - 1


def cosine_per_channel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of ``a`` and ``b`` per sample and channel (eq. 1).

    Args:
        a, b: activations, shape (N, C, ...).

    Returns:
        float64, shape (N, C), in [-1, 1]. Both vectors zero gives 1 (nothing changed); one zero gives 0.
    """
    a = a.reshape(a.shape[0], a.shape[1], -1).astype(np.float64)
    b = b.reshape(b.shape[0], b.shape[1], -1).astype(np.float64)
    dot = np.einsum("ncs,ncs->nc", a, b)
    na = np.sqrt(np.einsum("ncs,ncs->nc", a, a))
    nb = np.sqrt(np.einsum("ncs,ncs->nc", b, b))
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.clip(dot / (na * nb), -1.0, 1.0)
    cos = np.where((na == 0) | (nb == 0), 0.0, cos)
    return np.where((na == 0) & (nb == 0), 1.0, cos)


def flat_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each sample's flattened ``a`` and ``b`` (N, ...): float64 (N,), eq. 1's edge cases."""
    return cosine_per_channel(a.reshape(a.shape[0], 1, -1), b.reshape(b.shape[0], 1, -1))[:, 0]


def relative_l2_per_sample(ref: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Per sample, ||new - ref|| / ||ref|| of the flattened ``ref`` and ``new`` (N, ...): float64 (N,). A zero
    reference gives 0 where nothing changed and inf where something did (a change of nothing has no scale).
    (:class:`~onnxredund.analyses.effects.EffectMeter`'s ``relative_l2`` is the other estimator, the ratio of
    the sums over all samples.)"""
    ref = ref.reshape(ref.shape[0], -1).astype(np.float64)
    err = np.linalg.norm(new.reshape(new.shape[0], -1).astype(np.float64) - ref, axis=1)
    norm = np.linalg.norm(ref, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(norm > 0, err / norm, np.where(err == 0, 0.0, np.inf))


def error_bins(abs_error: np.ndarray) -> np.ndarray:
    """The bin of :data:`ERROR_EDGES` each absolute error falls in (edges[i] <= e < edges[i + 1]; infinities and
    NaN in the last bin): int64, the shape of ``abs_error``."""
    index = np.searchsorted(ERROR_EDGES, abs_error, side="right") - 1
    return np.minimum(index, ERROR_BINS - 1)


def bin_counts(bins: np.ndarray) -> np.ndarray:
    """Counts per bin of each row of ``bins`` (K, ...) from :func:`error_bins`: int64 (K, ERROR_BINS)."""
    rows = bins.shape[0]
    index = bins.reshape(rows, -1).astype(np.int64) + np.arange(rows)[:, None] * ERROR_BINS
    return np.bincount(index.ravel(), minlength=rows * ERROR_BINS).reshape(rows, ERROR_BINS)


def histogram_quantile(counts: np.ndarray, q: float, maximum: float) -> float:
    """The ``q`` quantile of errors counted by :func:`bin_counts`: the upper edge of the bin that holds
    it (within a factor 10**(1/20) = 1.12 above the exact value), never above the exact ``maximum``."""
    total = int(counts.sum())
    if total == 0:
        return 0.0
    bin_index = int(np.searchsorted(np.cumsum(counts), q * total, side="left"))
    return float(min(ERROR_EDGES[bin_index + 1], maximum))


def log_softmax(scores: np.ndarray, kind: str = "logits") -> np.ndarray:
    """Log-probabilities over the last axis, float64, from ``logits``, ``probabilities`` (zeros floored at
    1e-30) or ``log_probabilities``."""
    x = np.asarray(scores, np.float64)
    if kind == "probabilities":
        return np.log(np.maximum(x, 1e-30))
    if kind == "log_probabilities":
        return x
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def kl_divergence(log_p: np.ndarray, log_q: np.ndarray) -> np.ndarray:
    """KL(p || q) per row of log-probabilities (N, C), in nats: float64 (N,), >= 0."""
    p = np.exp(log_p)
    return np.maximum((p * (log_p - log_q)).sum(axis=-1), 0.0)


def top1(scores: np.ndarray) -> np.ndarray:
    """Each sample's highest class of class scores (N, classes) or (N, classes, 1, ...): int (N,)."""
    return scores.reshape(len(scores), -1).argmax(axis=1)


def top_k_hits(scores: np.ndarray, target: np.ndarray, k: int) -> np.ndarray:
    """Whether ``target`` (N,) is among the ``k`` highest of ``scores`` (N, C) (ties to the lower index, as
    argmax): bool (N,)."""
    k = min(k, scores.shape[-1])
    if k == 1:
        return scores.argmax(axis=-1) == target
    order = np.argsort(-scores, axis=-1, kind="stable")[:, :k]
    return (order == target[:, None]).any(axis=-1)
