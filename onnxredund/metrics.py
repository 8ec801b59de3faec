"""Similarity metrics with their edge cases defined, accumulated in float64.

Pure numpy/scipy, imported by the engine (the direct path's cosine) and the analyses alike; imports
nothing of the package.

- :func:`cosine_per_channel`: the paper's eq. 1 per sample and channel.
- :func:`ncc_matrix`: normalized cross-correlation of responses, maximised over spatial lags.
"""

from __future__ import annotations

import numpy as np
import scipy.fft

__all__ = ["cosine_per_channel", "ncc_matrix", "normalize_responses"]


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


def _embed(x: np.ndarray, frame: tuple[int, int]) -> np.ndarray:
    """Centre arrays (C, M, H, W) in a zero frame (C, M, *frame)."""
    c, m, h, w = x.shape
    out = np.zeros((c, m, *frame), np.float64)
    top, left = (frame[0] - h) // 2, (frame[1] - w) // 2
    out[:, :, top : top + h, left : left + w] = x
    return out


def normalize_responses(responses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Subtract each response's mean and scale it to unit norm, over its whole (M, H, W) extent.

    Returns:
        (normalized float64 (C, M, H, W), constant mask (C,)); constant responses are left zero.
    """
    x = responses.astype(np.float64)
    x -= x.mean(axis=(1, 2, 3), keepdims=True)
    norm = np.sqrt((x**2).sum(axis=(1, 2, 3)))
    constant = norm <= 1e-12 * max(1.0, float(np.abs(responses).max(initial=0.0)))
    x[~constant] /= norm[~constant, None, None, None]
    x[constant] = 0.0
    return x, constant


def ncc_matrix(a: np.ndarray, b: np.ndarray, *, lags: bool = True) -> np.ndarray:
    """Normalized cross-correlation of every response in ``a`` with every response in ``b``.

    Each response is made zero-mean and unit-norm over its own extent. With ``lags`` NCC is the
    maximum over all spatial lags of their full (zero-padded, linear) cross-correlation, so a
    shifted copy scores 1; without, it is their correlation at lag zero, the smaller response
    centred in the larger. Two constant responses score 1 (both dead), a constant against a
    varying one 0.

    Args:
        a: responses, shape (Ca, M, Ha, Wa) (M: impulse input channels).
        b: responses, shape (Cb, M, Hb, Wb).

    Returns:
        float64, shape (Ca, Cb), in [-1, 1].
    """
    na, ca = normalize_responses(a)
    nb, cb = normalize_responses(b)
    if lags:
        size = (a.shape[2] + b.shape[2] - 1, a.shape[3] + b.shape[3] - 1)
        fa = scipy.fft.rfft2(na, s=size)
        fb = np.conj(scipy.fft.rfft2(nb, s=size))
        out = np.empty((len(a), len(b)))
        for i in range(len(a)):
            corr = scipy.fft.irfft2(fa[i][None] * fb, s=size).sum(axis=1)  # (Cb, *size), summed over M
            out[i] = corr.reshape(len(b), -1).max(axis=1)
    else:
        frame = (max(a.shape[2], b.shape[2]), max(a.shape[3], b.shape[3]))
        out = _embed(na, frame).reshape(len(a), -1) @ _embed(nb, frame).reshape(len(b), -1).T
    out = np.clip(out, -1.0, 1.0)
    out[ca[:, None] | cb[None, :]] = 0.0
    out[ca[:, None] & cb[None, :]] = 1.0
    return out
