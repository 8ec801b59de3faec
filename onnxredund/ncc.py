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
- against earlier layers, a bound from the spectra's magnitudes (one matrix product for every pair)
  rules out most pairs; the rest are screened in float32, and only the candidates within
  :data:`SCREEN_TOLERANCE` of each channel's best screen are computed again in float64, so the best
  earlier match and its value are those of the float64 computation.
"""

from __future__ import annotations

import os

import numpy as np
import scipy.fft

__all__ = ["SCREEN_TOLERANCE", "EarlierLayers", "best_earlier_matches", "ncc_matrix", "normalize_responses"]

#: float32 screens are within ~1e-6 of float64 for unit-norm responses; candidates within this are recomputed
SCREEN_TOLERANCE = 1e-4
_BLOCK_VALUES = 1 << 18  # complex values per batch of pair products: a few MB, cache-friendly (measured)
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


def _max_correlation(fa: np.ndarray, fb_conj: np.ndarray, grid: tuple[int, ...]) -> np.ndarray:
    """max over lags of sum over m of corr(a_i, b_j): (len(fa), len(fb)) from spectra (C, M, *freq) (``fb``
    already conjugated)."""
    nd = len(grid)
    prod = np.multiply(fa[:, None, 0], fb_conj[None, :, 0])
    if fa.shape[1] > 1:
        term = np.empty_like(prod)
        for m in range(1, fa.shape[1]):
            prod += np.multiply(fa[:, None, m], fb_conj[None, :, m], out=term)
    corr = scipy.fft.irfftn(prod, s=grid, axes=tuple(range(2, 2 + nd)), workers=_WORKERS, overwrite_x=True)
    return corr.reshape(len(fa), len(fb_conj), -1).max(axis=2)


def _pair_max_correlation(
    fa: np.ndarray, fb_conj: np.ndarray, rows: np.ndarray, cols: np.ndarray, grid: tuple[int, ...]
) -> np.ndarray:
    """max over lags of sum over m of corr(a_rows[p], b_cols[p]) for listed pairs: (P,)."""
    nd = len(grid)
    freq = int(np.prod(fa.shape[2:]))
    step = max(1, _BLOCK_VALUES // max(1, freq))
    out = np.empty(len(rows))
    for p0 in range(0, len(rows), step):
        r, c = rows[p0 : p0 + step], cols[p0 : p0 + step]
        prod = (fa[r] * fb_conj[c]).sum(axis=1)  # (P, *freq), summed over m
        corr = scipy.fft.irfftn(prod, s=grid, axes=tuple(range(1, 1 + nd)), workers=_WORKERS, overwrite_x=True)
        out[p0 : p0 + step] = corr.reshape(len(r), -1).max(axis=1)
    return out


def _rows_per_block(cb: int, freq: int, m: int) -> int:
    return max(1, _BLOCK_VALUES // max(1, cb * freq * max(1, m // 4)))


def _lagged(na: np.ndarray, nb: np.ndarray, *, symmetric: bool, dtype=np.complex128) -> np.ndarray:
    grid = _grid(na.shape[2:], nb.shape[2:])
    fa = _spectra(na, grid, dtype)
    fb = (fa if symmetric else _spectra(nb, grid, dtype)).conj()
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


class EarlierLayers:
    """The responses of the layers compared so far, against which each next layer's channels find their best
    earlier match (:meth:`best_matches`).

    Every pair is bounded first: for zero-mean unit-norm responses the cross-correlation at any lag is at
    most sum over frequencies of |A| |B| / N (Cauchy-Schwarz on the spectra), a matrix product over all
    pairs. Only pairs whose bound reaches a channel's best screen so far are screened (float32, max over
    lags); the candidates within :data:`SCREEN_TOLERANCE` of the best screen are computed in float64.

    Args:
        extent: the largest spatial extent of any response that will be added or compared (per axis).
    """

    def __init__(self, extent: tuple[int, ...]) -> None:
        self.grid = tuple(scipy.fft.next_fast_len(2 * e - 1, real=True) for e in extent)
        self.layers: list[tuple[np.ndarray, np.ndarray]] = []  # normalized responses, constant mask
        self.magnitudes: list[np.ndarray] = []  # (C, M * freq) float32 spectra magnitudes on self.grid

    def _magnitudes(self, normalized: np.ndarray, weighted: bool) -> np.ndarray:
        spectra = _spectra(normalized, self.grid, np.complex64)
        mags = np.abs(spectra)
        if weighted:  # a real signal's rfft holds the conjugate half implicitly: count those bins twice
            weights = np.full(mags.shape[-1], 2.0, np.float32)
            weights[0] = 1.0
            if self.grid[-1] % 2 == 0:
                weights[-1] = 1.0
            mags *= weights
        return mags.reshape(len(normalized), -1)

    def add(self, responses: np.ndarray) -> None:
        """Add a layer's responses (C, M, *spatial)."""
        normalized, constant = normalize_responses(responses)
        self.layers.append((normalized, constant))
        self.magnitudes.append(self._magnitudes(normalized, weighted=False))

    def best_matches(self, target: np.ndarray, *, lags: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each target channel's best match among all channels added so far.

        Returns:
            (layer index (C,), channel (C,), NCC (C,)), -1, -1 and nan without earlier layers; the values are
            the float64 NCCs :func:`ncc_matrix` gives; ties go to the earliest layer and channel.
        """
        c = len(target)
        nt, ct = normalize_responses(target)
        if not self.layers or not c:
            return np.full(c, -1), np.full(c, -1), np.full(c, np.nan)
        if not lags:
            flat = np.concatenate([_edge_cases(_zero_lag(nt, ne), ct, ce) for ne, ce in self.layers], axis=1)
            owner, channel = self._index()
            j = flat.argmax(axis=1)
            return owner[j], channel[j], flat[np.arange(c), j]
        screens = self._screens(nt, ct)
        return self._refine(nt, ct, screens)

    def _index(self) -> tuple[np.ndarray, np.ndarray]:
        owner = np.concatenate([np.full(len(ne), i) for i, (ne, _) in enumerate(self.layers)])
        channel = np.concatenate([np.arange(len(ne)) for ne, _ in self.layers])
        return owner, channel

    def _screens(self, nt: np.ndarray, ct: np.ndarray) -> list[np.ndarray]:
        """Float32 screens (C, C_e) per earlier layer; -inf where the bound rules the pair out."""
        mt = self._magnitudes(nt, weighted=True)
        n = float(np.prod(self.grid))
        bounds = [mt @ me.T / n + SCREEN_TOLERANCE for me in self.magnitudes]
        screens = [np.full(b.shape, -np.inf) for b in bounds]
        spectra: dict = {}
        # first the pairs with the highest bound in each row, then every pair the best so far cannot rule out
        top = np.concatenate(bounds, axis=1).max(axis=1, keepdims=True)
        for phase in ("top", "rest"):
            best = np.max([s.max(axis=1) for s in screens], axis=0)
            for i, (bound, screen) in enumerate(zip(bounds, screens, strict=True)):
                need = (bound >= top - 0.05) if phase == "top" else (bound >= best[:, None]) & np.isneginf(screen)
                self._screen_block(i, need, nt, ct, screen, spectra)
        return screens

    def _screen_block(self, i: int, need: np.ndarray, nt, ct, screen: np.ndarray, spectra: dict) -> None:
        """Screen the pairs ``need`` marks against earlier layer ``i``, pair by pair (no block around them)."""
        rows, cols = np.nonzero(need)
        if not len(rows):
            return
        ne, ce = self.layers[i]
        grid = _grid(nt.shape[2:], ne.shape[2:])
        key = (i, grid)
        if key not in spectra:
            spectra[key] = _spectra(ne, grid, np.complex64).conj()
        if ("target", grid) not in spectra:
            spectra["target", grid] = _spectra(nt, grid, np.complex64)
        values = _pair_max_correlation(spectra["target", grid], spectra[key], rows, cols, grid)
        constant = ct[rows] | ce[cols]
        values = np.where(constant, np.where(ct[rows] & ce[cols], 1.0, 0.0), np.clip(values, -1.0, 1.0))
        screen[rows, cols] = values

    def _refine(self, nt, ct, screens: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        owner, channel = self._index()
        flat = np.concatenate(screens, axis=1)
        c = len(nt)
        best_layer, best_channel, best_value = np.full(c, -1), np.full(c, -1), np.full(c, np.nan)
        for r in range(c):
            candidates = np.flatnonzero(flat[r] >= flat[r].max() - SCREEN_TOLERANCE)
            exact = [self._exact(nt[r : r + 1], ct[r : r + 1], owner[j], channel[j]) for j in candidates]
            k = int(np.argmax(exact))
            best_layer[r], best_channel[r], best_value[r] = owner[candidates[k]], channel[candidates[k]], exact[k]
        return best_layer, best_channel, best_value

    def _exact(self, na: np.ndarray, ca: np.ndarray, layer: int, j: int) -> float:
        ne, ce = self.layers[layer]
        return float(_edge_cases(_lagged(na, ne[j : j + 1], symmetric=False), ca, ce[j : j + 1])[0, 0])


def best_earlier_matches(
    target: np.ndarray, earlier: list[np.ndarray], *, lags: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each target channel's best match among all channels of the earlier layers (see :class:`EarlierLayers`).

    Args:
        target: responses (C, M, *spatial); earlier: the earlier layers' responses (C_e, M, *spatial_e).

    Returns:
        (earlier layer index (C,), channel (C,), NCC (C,)); -1, -1 and nan without earlier layers.
    """
    extent = tuple(max(r.shape[2 + a] for r in [target, *earlier]) for a in range(target.ndim - 2))
    search = EarlierLayers(extent)
    for resp in earlier:
        search.add(resp)
    return search.best_matches(target, lags=lags)
