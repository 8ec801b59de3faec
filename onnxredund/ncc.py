"""Normalized cross-correlation of impulse responses at scale: 1-D, 2-D and 3-D, within a layer and
against every earlier layer.

Each response (M input channels x spatial) is made zero-mean and unit-norm over its own extent; the
NCC of two responses is the maximum over all spatial lags of their full (zero-padded, linear)
cross-correlation, summed over the M input channels (a shifted copy scores 1), or the value at lag
zero with the smaller response centred in the larger. Two constant responses score 1, a constant
against a varying one 0.

How it is fast, with the numbers of the plain method (:func:`ncc_matrix`):

- the M input channels are summed in the frequency domain, so one inverse FFT per pair, not M;
- FFT sizes are the next fast lengths (``scipy.fft.next_fast_len``), not the awkward exact ones;
- a layer against itself computes each pair once (the NCC is symmetric);
- transforms run batched over many pairs at once, on every core;
- against earlier layers, every pair is screened in float32 and only the candidates within
  :data:`SCREEN_TOLERANCE` of each channel's best screen are computed again in float64, so the best
  earlier match and its value are those of the float64 computation.
"""

from __future__ import annotations

import os

import numpy as np
import scipy.fft

__all__ = ["SCREEN_TOLERANCE", "best_earlier_matches", "ncc_matrix", "normalize_responses"]

#: float32 screens are within ~1e-6 of float64 for unit-norm responses; candidates within this are recomputed
SCREEN_TOLERANCE = 1e-4
_BLOCK_VALUES = 1 << 22  # complex values per batch of pair products (64 MB in complex128)
_WORKERS = os.cpu_count() or 1


def normalize_responses(responses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Subtract each response's mean and scale it to unit norm, over its whole (M, *spatial) extent.

    Args:
        responses: shape (C, M, *spatial).

    Returns:
        (normalized float64 (C, M, *spatial), constant mask (C,)); constant responses are left zero.
    """
    x = responses.astype(np.float64)
    axes = tuple(range(1, x.ndim))
    x -= x.mean(axis=axes, keepdims=True)
    norm = np.sqrt((x**2).sum(axis=axes))
    constant = norm <= 1e-12 * max(1.0, float(np.abs(responses).max(initial=0.0)))
    x[~constant] /= norm[~constant].reshape(-1, *([1] * (x.ndim - 1)))
    x[constant] = 0.0
    return x, constant


def _grid(a_shape: tuple[int, ...], b_shape: tuple[int, ...]) -> tuple[int, ...]:
    """FFT sizes for the full linear cross-correlation of spatial extents ``a_shape`` and ``b_shape``."""
    return tuple(scipy.fft.next_fast_len(sa + sb - 1, real=True) for sa, sb in zip(a_shape, b_shape, strict=True))


def _spectra(x: np.ndarray, grid: tuple[int, ...], dtype) -> np.ndarray:
    """rFFT over the spatial axes of (C, M, *spatial) on ``grid``: (C, M, *freq) of complex ``dtype``."""
    axes = tuple(range(2, x.ndim))
    return scipy.fft.rfftn(x.astype(np.float32 if dtype == np.complex64 else np.float64), s=grid, axes=axes,
                           workers=_WORKERS).astype(dtype, copy=False)  # fmt: skip


def _max_correlation(fa: np.ndarray, fb: np.ndarray, grid: tuple[int, ...]) -> np.ndarray:
    """max over lags of sum over m of corr(a_i, b_j): (len(fa), len(fb)) from spectra (C, M, *freq)."""
    nd = len(grid)
    prod = fa[:, None, 0] * fb[None, :, 0].conj()
    for m in range(1, fa.shape[1]):
        prod += fa[:, None, m] * fb[None, :, m].conj()
    corr = scipy.fft.irfftn(prod, s=grid, axes=tuple(range(2, 2 + nd)), workers=_WORKERS)
    return corr.reshape(len(fa), len(fb), -1).max(axis=2)


def _rows_per_block(cb: int, freq: int, m: int) -> int:
    return max(1, _BLOCK_VALUES // max(1, cb * freq * max(1, m // 4)))


def _lagged(na: np.ndarray, nb: np.ndarray, *, symmetric: bool, dtype=np.complex128) -> np.ndarray:
    grid = _grid(na.shape[2:], nb.shape[2:])
    fa = _spectra(na, grid, dtype)
    fb = fa if symmetric else _spectra(nb, grid, dtype)
    freq = int(np.prod(fa.shape[2:]))
    out = np.empty((len(na), len(nb)))
    step = _rows_per_block(len(nb), freq, na.shape[1])
    for i0 in range(0, len(na), step):
        i1 = min(i0 + step, len(na))
        j0 = i0 if symmetric else 0  # the lower triangle mirrors the upper one
        out[i0:i1, j0:] = _max_correlation(fa[i0:i1], fb[j0:], grid)
    if symmetric:
        upper = np.triu(out)
        out = upper + np.triu(out, 1).T
    return out


def _embed(x: np.ndarray, frame: tuple[int, ...]) -> np.ndarray:
    """Centre arrays (C, M, *spatial) in a zero frame (C, M, *frame)."""
    out = np.zeros((*x.shape[:2], *frame), np.float64)
    index = tuple(slice((f - s) // 2, (f - s) // 2 + s) for f, s in zip(frame, x.shape[2:], strict=True))
    out[(slice(None), slice(None), *index)] = x
    return out


def _zero_lag(na: np.ndarray, nb: np.ndarray) -> np.ndarray:
    frame = tuple(max(sa, sb) for sa, sb in zip(na.shape[2:], nb.shape[2:], strict=True))
    return _embed(na, frame).reshape(len(na), -1) @ _embed(nb, frame).reshape(len(nb), -1).T


def _edge_cases(out: np.ndarray, ca: np.ndarray, cb: np.ndarray) -> np.ndarray:
    out = np.clip(out, -1.0, 1.0)
    out[ca[:, None] | cb[None, :]] = 0.0
    out[ca[:, None] & cb[None, :]] = 1.0
    return out


def ncc_matrix(a: np.ndarray, b: np.ndarray | None = None, *, lags: bool = True) -> np.ndarray:
    """NCC of every response in ``a`` with every response in ``b`` (``b`` None: ``a`` with itself).

    Args:
        a: responses, shape (Ca, M, *spatial) (M: impulse input channels).
        b: responses, shape (Cb, M, *spatial'), or None.

    Returns:
        float64, shape (Ca, Cb), in [-1, 1].
    """
    na, ca = normalize_responses(a)
    nb, cb = (na, ca) if b is None else normalize_responses(b)
    if lags:
        out = _lagged(na, nb, symmetric=b is None)
    else:
        out = _zero_lag(na, nb)
    return _edge_cases(out, ca, cb)


def best_earlier_matches(
    target: np.ndarray, earlier: list[np.ndarray], *, lags: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each target channel's best match among all channels of the earlier layers.

    Args:
        target: responses (C, M, *spatial); earlier: the earlier layers' responses (C_e, M, *spatial_e).

    Returns:
        (earlier layer index (C,), channel (C,), NCC (C,)); -1, -1 and nan without earlier layers.
        The values are float64 NCCs (as :func:`ncc_matrix` gives); ties go to the earliest layer and channel.
    """
    c = len(target)
    best_layer, best_channel, best_value = np.full(c, -1), np.full(c, -1), np.full(c, np.nan)
    if not earlier:
        return best_layer, best_channel, best_value
    nt, ct = normalize_responses(target)
    screens, normalized = [], []
    for resp in earlier:
        ne, ce = normalize_responses(resp)
        normalized.append((ne, ce))
        screen = _lagged(nt, ne, symmetric=False, dtype=np.complex64) if lags else _zero_lag(nt, ne)
        screens.append(_edge_cases(screen, ct, ce))
    flat = np.concatenate(screens, axis=1)
    owner = np.concatenate([np.full(s.shape[1], i) for i, s in enumerate(screens)])
    channel = np.concatenate([np.arange(s.shape[1]) for s in screens])
    if not lags:  # exact already
        j = flat.argmax(axis=1)
        return owner[j], channel[j], flat[np.arange(c), j]
    for i in range(c):
        candidates = np.flatnonzero(flat[i] >= flat[i].max() - SCREEN_TOLERANCE)
        exact = [_exact_pair(nt[i : i + 1], ct[i : i + 1], normalized[owner[j]], channel[j]) for j in candidates]
        k = int(np.argmax(exact))
        best_layer[i], best_channel[i], best_value[i] = owner[candidates[k]], channel[candidates[k]], exact[k]
    return best_layer, best_channel, best_value


def _exact_pair(na: np.ndarray, ca: np.ndarray, earlier: tuple[np.ndarray, np.ndarray], j: int) -> float:
    ne, ce = earlier
    value = _lagged(na, ne[j : j + 1], symmetric=False)
    return float(_edge_cases(value, ca, ce[j : j + 1])[0, 0])
