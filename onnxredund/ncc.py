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
  earlier match and its value are those of the float64 computation; only the responses the open pairs name
  are transformed, :data:`_CHUNK_BYTES` at a time (a small response on a big grid by DFT matrices).
"""

from __future__ import annotations

import os

import numpy as np
import scipy.fft

__all__ = [
    "SCREEN_TOLERANCE",
    "EarlierLayers",
    "best_earlier_matches",
    "best_matches_in",
    "constant_responses",
    "exact_best_matches",
    "ncc_matrix",
    "normalize_responses",
]

#: float32 screens are within ~1e-6 of float64 for unit-norm responses; candidates within this are recomputed
SCREEN_TOLERANCE = 1e-4
_BLOCK_VALUES = 1 << 18  # complex values per batch of pair products: a few MB, cache-friendly (measured)
_WORKERS = os.cpu_count() or 1
_CACHE_BYTES = 768 << 20  # earlier layers' magnitudes kept for later targets (least recently used go)
# spectra made at once, at most: fresh allocations of hundreds of MB cost page faults (0.3 GB/s written,
# against 2-8 GB/s for a few MB, measured on 2 cores)
_CHUNK_BYTES = 8 << 20
_KEPT_BYTES = 32 << 20  # an earlier layer's magnitudes on a grid kept whole up to this (bigger: made in blocks)


def _centred(responses: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each response less its mean (float64), its norm, and whether it is constant: a norm within 1e-12 of the
    largest magnitude (or of 1) is rounding, not a response."""
    x = responses.astype(np.float64)
    axes = tuple(range(1, x.ndim))
    x -= x.mean(axis=axes, keepdims=True)
    norm = np.sqrt((x**2).sum(axis=axes))
    return x, norm, norm <= 1e-12 * max(1.0, float(np.abs(responses).max(initial=0.0)))


def constant_responses(responses: np.ndarray) -> np.ndarray:
    """Which responses (C, ...) are constant, the one test (an NCC with them says nothing): bool (C,)."""
    return _centred(responses)[2]


def normalize_responses(responses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Subtract each response's mean and scale it to unit norm, over its whole (M, *spatial) extent.

    Args:
        responses: shape (C, M, *spatial).

    Returns:
        (normalized float64 (C, M, *spatial), constant mask (C,)); constant responses are left zero.
    """
    x, norm, constant = _centred(responses)
    x[~constant] /= norm[~constant].reshape(-1, *([1] * (x.ndim - 1)))
    x[constant] = 0.0
    return x, constant


def _grid(a_shape: tuple[int, ...], b_shape: tuple[int, ...]) -> tuple[int, ...]:
    """FFT sizes for the full linear cross-correlation of spatial extents ``a_shape`` and ``b_shape``."""
    return tuple(scipy.fft.next_fast_len(sa + sb - 1, real=True) for sa, sb in zip(a_shape, b_shape, strict=True))


def _bins(grid: tuple[int, ...]) -> int:
    """How many values a real signal's rFFT on ``grid`` has (the last axis halved)."""
    return int(np.prod(grid[:-1])) * (grid[-1] // 2 + 1)


def _spectra(x: np.ndarray, grid: tuple[int, ...], dtype) -> np.ndarray:
    """rFFT over the spatial axes of (C, M, *spatial) on ``grid``: (C, M, *freq) of complex ``dtype``.

    In single precision a response much smaller than the grid (an early layer's 5 x 5 against a 225 x 171
    grid) is transformed by DFT matrices, one matrix product per axis, where that costs less than the
    zero-padded FFT (about 4 times faster for the detectors' across-layer grids, within ~1e-6 of the FFT).
    """
    if dtype == np.complex64 and _dft_cheaper(x.shape[2:], grid):
        return _dft_spectra(x, grid)
    axes = tuple(range(2, x.ndim))
    return scipy.fft.rfftn(
        x.astype(np.float32 if dtype == np.complex64 else np.float64), s=grid, axes=axes, workers=_WORKERS
    ).astype(dtype, copy=False)


def _dft_cheaper(extent: tuple[int, ...], grid: tuple[int, ...]) -> bool:
    """Whether DFT matrices cost less than an FFT for a response of ``extent`` on ``grid``: real operations of
    the matrix products against the FFT's ~2.5 N log2 N, the products counted at a quarter (BLAS runs several times
    more of them per second than the FFT's butterflies; measured on 2 cores)."""
    size = int(np.prod(grid))
    fft = 2.5 * size * np.log2(max(size, 2))
    dims = list(extent)
    dims[-1] = grid[-1] // 2 + 1
    products = 2.0 * int(np.prod(extent)) * dims[-1]  # the real last axis
    for axis in range(len(grid) - 2, -1, -1):
        products += 4.0 * int(np.prod(dims)) * grid[axis]
        dims[axis] = grid[axis]
    return products < 4.0 * fft


def _dft_spectra(x: np.ndarray, grid: tuple[int, ...]) -> np.ndarray:
    """:func:`_spectra` by DFT matrices in single precision: the real last axis first, then each other axis."""
    lead, extent = x.shape[:2], x.shape[2:]
    n, g = extent[-1], grid[-1]
    angle = (-2 * np.pi / g) * ((np.arange(n)[:, None] * np.arange(g // 2 + 1)[None, :]) % g)  # exact phases
    flat = x.reshape(-1, n).astype(np.float32)
    out = np.empty((len(flat), g // 2 + 1), np.complex64)
    out.real = flat @ np.cos(angle).astype(np.float32)
    out.imag = flat @ np.sin(angle).astype(np.float32)
    out = out.reshape(*lead, *extent[:-1], g // 2 + 1)
    for axis in range(len(grid) - 2, -1, -1):
        n, g = extent[axis], grid[axis]
        matrix = np.exp((-2j * np.pi / g) * ((np.arange(g)[:, None] * np.arange(n)[None, :]) % g)).astype(np.complex64)
        # a product per response over the axis next to the last (for 2-D, the first: no transposed copies)
        out = np.moveaxis(matrix @ np.moveaxis(out, 2 + axis, -2), -2, 2 + axis)
    return np.ascontiguousarray(out)


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
        prod = np.multiply(fa[r, 0], fb_conj[c, 0])  # (P, *freq), summed over m in place
        for m in range(1, fa.shape[1]):
            prod += fa[r, m] * fb_conj[c, m]
        corr = scipy.fft.irfftn(prod, s=grid, axes=tuple(range(1, 1 + nd)), workers=_WORKERS, overwrite_x=True)
        out[p0 : p0 + step] = corr.reshape(len(r), -1).max(axis=1)
    return out


def _listed_correlation(
    na: np.ndarray,
    nb: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    grid: tuple[int, ...],
    dtype,
    fa_all: np.ndarray | None = None,
) -> np.ndarray:
    """max over lags of sum over m of corr(na[rows[p]], nb[cols[p]]) for listed pairs, transforming only the
    responses the pairs name, in blocks of :data:`_CHUNK_BYTES` of spectra (``fa_all``: every row's spectra on
    ``grid``, made before): (P,)."""
    out = np.empty(len(rows))
    step = max(1, _CHUNK_BYTES // (na.shape[1] * _bins(grid) * np.dtype(dtype).itemsize))
    ucols = np.unique(cols)
    for c0 in range(0, len(ucols), step):
        in_block = np.flatnonzero(np.isin(cols, ucols[c0 : c0 + step]))
        urows = np.unique(rows[in_block])
        for r0 in range(0, len(urows), step):
            pairs = in_block[np.isin(rows[in_block], urows[r0 : r0 + step])]
            ur, ri = np.unique(rows[pairs], return_inverse=True)
            uc, ci = np.unique(cols[pairs], return_inverse=True)
            fa = _spectra(na[ur], grid, dtype) if fa_all is None else fa_all[ur]
            fb = _spectra(nb[uc], grid, dtype).conj()
            out[pairs] = _pair_max_correlation(fa, fb, ri, ci, grid)
    return out


def _pair_ncc(
    na: np.ndarray, ca: np.ndarray, nb: np.ndarray, cb: np.ndarray, rows: np.ndarray, cols: np.ndarray, lags: bool
) -> np.ndarray:
    """float64 NCC of the listed pairs (na[rows[p]], nb[cols[p]]) of normalized responses: (P,)."""
    if lags:
        values = _listed_correlation(na, nb, rows, cols, _grid(na.shape[2:], nb.shape[2:]), np.complex128)
    else:
        frame = tuple(max(sa, sb) for sa, sb in zip(na.shape[2:], nb.shape[2:], strict=True))
        ea, eb = _embed(na, frame).reshape(len(na), -1), _embed(nb, frame).reshape(len(nb), -1)
        values = np.einsum("pi,pi->p", ea[rows], eb[cols])
    values = np.clip(values, -1.0, 1.0)
    both, either = ca[rows] & cb[cols], ca[rows] | cb[cols]
    return np.where(either, np.where(both, 1.0, 0.0), values)


def _best_of_candidates(screen_rows: np.ndarray) -> list[np.ndarray]:
    """Per row, the columns within :data:`SCREEN_TOLERANCE` of its best screen (none for an all -inf row)."""
    out = []
    for row in screen_rows:
        top = row.max()
        out.append(np.empty(0, int) if np.isneginf(top) else np.flatnonzero(row >= top - SCREEN_TOLERANCE))
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


def ncc_matrix(a: np.ndarray, b: np.ndarray | None = None, *, lags: bool = True, single: bool = False) -> np.ndarray:
    """NCC of every response in ``a`` with every response in ``b`` (``b`` None: ``a`` with itself).

    Args:
        a: responses, shape (Ca, M, *spatial) (M: impulse input channels).
        b: responses, shape (Cb, M, *spatial'), or None.
        single: correlate in float32 (within ~1e-6 of float64, about three times faster).

    Returns:
        float64, shape (Ca, Cb), in [-1, 1].
    """
    na, ca = normalize_responses(a)
    nb, cb = (na, ca) if b is None else normalize_responses(b)
    if lags:
        out = _lagged(na, nb, symmetric=b is None, dtype=np.complex64 if single else np.complex128)
    else:
        out = _zero_lag(na, nb)
    return _edge_cases(out, ca, cb)


def exact_best_matches(
    responses: np.ndarray, screen: np.ndarray, compared: np.ndarray, *, lags: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Each compared row's best other compared column by float64 NCC, where ``screen`` is the float32 matrix:
    the candidates within :data:`SCREEN_TOLERANCE` of a row's best screen are computed again in float64.

    Returns:
        (best column (C,), its float64 NCC (C,)); -1 and nan for rows not compared or without a partner.
    """
    c = len(responses)
    best, value = np.full(c, -1), np.full(c, np.nan)
    if compared.sum() < 2:
        return best, value
    candidates = _best_of_candidates(_others(screen, compared))
    rows = np.concatenate([np.full(len(cs), r) for r, cs in enumerate(candidates)]).astype(int)
    cols = np.concatenate(candidates).astype(int)
    normalized, constant = normalize_responses(responses)
    exact = _pair_ncc(normalized, constant, normalized, constant, rows, cols, lags)
    for r, v, col in zip(rows, exact, cols, strict=True):  # first the best, ties to the lower column
        if np.isnan(value[r]) or v > value[r]:
            best[r], value[r] = col, v
    return best, value


def best_matches_in(matrix: np.ndarray, compared: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each compared row's best other compared column of a float64 NCC ``matrix`` (ties to the lower column).

    Returns:
        (best column (C,), its NCC (C,)); -1 and nan for rows not compared or without a partner.
    """
    c = len(matrix)
    best, value = np.full(c, -1), np.full(c, np.nan)
    if compared.sum() < 2:
        return best, value
    masked = _others(matrix, compared)
    rows = np.flatnonzero(compared)
    best[rows] = masked[rows].argmax(axis=1)
    value[rows] = masked[rows, best[rows]]
    return best, value


def _others(matrix: np.ndarray, compared: np.ndarray) -> np.ndarray:
    """A copy of ``matrix`` with -inf on its diagonal and in the rows and columns of channels not compared."""
    masked = matrix.copy()
    np.fill_diagonal(masked, -np.inf)
    masked[:, ~compared] = -np.inf
    masked[~compared] = -np.inf
    return masked


def _window_norms(normalized: np.ndarray, window: tuple[int, ...]) -> np.ndarray:
    """Per response, the largest norm it has inside any window of shape ``window`` (clipped to its extent),
    over all its M components: (C,). Another response of that shape (unit norm) overlaps it at any lag only
    inside such a window, so by Cauchy-Schwarz their correlation is at most this."""
    energy = np.square(normalized).sum(axis=1)  # (C, *spatial)
    for axis, w in enumerate(window, start=1):
        n = energy.shape[axis]
        if w >= n:
            energy = energy.sum(axis=axis, keepdims=True)
            continue
        run = np.cumsum(energy, axis=axis)
        head = np.take(run, [w - 1], axis=axis)
        energy = np.concatenate(
            [head, np.take(run, range(w, n), axis=axis) - np.take(run, range(n - w), axis=axis)], axis=axis
        )
    return np.sqrt(energy.reshape(len(energy), -1).max(axis=1, initial=0.0))


class EarlierLayers:
    """The responses of the layers compared so far, against which each next layer's channels find their best
    earlier match (:meth:`best_matches`).

    Every pair is bounded first: for zero-mean unit-norm responses the cross-correlation at any lag is at
    most sum over frequencies of |A| |B| / N (Cauchy-Schwarz on the spectra), a matrix product over all
    pairs. Only pairs whose bound reaches a channel's best screen so far are screened (float32, max over
    lags); the candidates within :data:`SCREEN_TOLERANCE` of the best screen are computed in float64.

    The spectral bound of a pair is taken on the smallest fast grid that holds both responses' full
    correlation (rounding extents up so that more layers share a grid cached fewer transforms but made every
    product larger: YOLOv8n's impulse analysis took 20.4 s with powers of two, 16.8 s without). Before it, a
    cheaper bound, the energy of one response inside a window of the other's shape, rules out pairs of very
    different extents (a detector head's 4 x 2100 map against the backbone's maps) without a transform.
    """

    def __init__(self) -> None:
        self.layers: list[tuple[np.ndarray, np.ndarray]] = []  # normalized responses, constant mask
        self._cache: dict[tuple, np.ndarray] = {}  # (layer, grid, "mag") -> magnitudes, least recent first
        self._cached_bytes = 0
        self._windows: dict[tuple, np.ndarray] = {}  # (layer, window) -> its channels' window norms

    @staticmethod
    def _magnitudes(normalized: np.ndarray, grid: tuple[int, ...], weighted: bool) -> np.ndarray:
        """|spectra| on ``grid`` as (C, M * freq) float32 (``weighted``: bins a real signal holds twice, counted so),
        transformed :data:`_CHUNK_BYTES` at a time."""
        c, m = normalized.shape[:2]
        freq = grid[-1] // 2 + 1
        out = np.empty((c, m, *grid[:-1], freq), np.float32)
        step = max(1, _CHUNK_BYTES // (8 * out[0].size))
        for c0 in range(0, c, step):
            out[c0 : c0 + step] = np.abs(_spectra(normalized[c0 : c0 + step], grid, np.complex64))
        if weighted:  # a real signal's rfft holds the conjugate half implicitly: count those bins twice
            weights = np.full(freq, 2.0, np.float32)
            weights[0] = 1.0
            if grid[-1] % 2 == 0:
                weights[-1] = 1.0
            out *= weights
        return out.reshape(c, -1)

    def _cached(self, key: tuple, make):
        value = self._cache.pop(key, None)
        if value is None:
            value = make()
            self._cached_bytes += value.nbytes
            while self._cache and self._cached_bytes > _CACHE_BYTES:
                self._cached_bytes -= self._cache.pop(next(iter(self._cache))).nbytes
        self._cache[key] = value  # now the most recent
        return value

    def add(self, responses: np.ndarray) -> None:
        """Add a layer's responses (C, M, *spatial)."""
        self.layers.append(normalize_responses(responses))

    def best_matches(
        self, target: np.ndarray, *, lags: bool = True, floor: float = -1.0
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each target channel's best match among all channels added so far, where it reaches ``floor``.

        Args:
            floor: matches below it are not looked for (pairs whose bound is below it are never correlated).

        Returns:
            (layer index (C,), channel (C,), NCC (C,)), -1, -1 and nan where no match reaches ``floor``; the
            values are the float64 NCCs :func:`ncc_matrix` gives; ties go to the earliest layer and channel.
        """
        c = len(target)
        nt, ct = normalize_responses(target)
        if not self.layers or not c:
            return np.full(c, -1), np.full(c, -1), np.full(c, np.nan)
        if not lags:
            flat = np.concatenate([_edge_cases(_zero_lag(nt, ne), ct, ce) for ne, ce in self.layers], axis=1)
            flat[flat < floor] = -np.inf
        else:
            flat = np.concatenate(self._screens(nt, ct, floor), axis=1)
        return self._refine(nt, ct, flat, lags, floor)

    def _index(self) -> tuple[np.ndarray, np.ndarray]:
        owner = np.concatenate([np.full(len(ne), i) for i, (ne, _) in enumerate(self.layers)])
        channel = np.concatenate([np.arange(len(ne)) for ne, _ in self.layers])
        return owner, channel

    def bounds(self, nt: np.ndarray, floor: float = -1.0) -> list[np.ndarray]:
        """For normalized target responses, the upper bound of their NCC with each earlier layer's: (C, C_e) each.

        Two bounds, the lower taken: the energy each response has inside a window of the other's shape (cheap;
        it rules out responses of very different extents, a detector head's 4 x 2100 map against a 40 x 40
        one), and the spectral one, computed only where the first does not already rule out every pair
        below ``floor``.
        """
        out, targets, windows = [], {}, {}
        for i, (ne, _) in enumerate(self.layers):
            if ne.shape[2:] not in windows:  # layers of one extent share the target's window norms
                windows[ne.shape[2:]] = _window_norms(nt, ne.shape[2:])
            key = (i, nt.shape[2:])
            if key not in self._windows:  # a few floats per channel: kept for every later target of that extent
                self._windows[key] = _window_norms(ne, nt.shape[2:])
            theirs = self._windows[key]
            window = np.minimum(windows[ne.shape[2:]][:, None], theirs[None, :])
            window += SCREEN_TOLERANCE
            if window.max(initial=-np.inf) < floor - SCREEN_TOLERANCE:
                out.append(window)
                continue
            grid = _grid(nt.shape[2:], ne.shape[2:])
            if grid not in targets:
                targets[grid] = self._magnitudes(nt, grid, weighted=True)
            # the spectral bound only where the window's leaves a pair open (all of them for floor -1)
            cols = np.flatnonzero(window.max(axis=0) >= floor - SCREEN_TOLERANCE)
            bound = window.copy()
            spectral = self._spectral_bound(i, grid, cols, targets[grid])
            bound[:, cols] = np.minimum(spectral + SCREEN_TOLERANCE, window[:, cols])
            out.append(bound)
        return out

    def _spectral_bound(self, i: int, grid: tuple[int, ...], cols: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """sum over frequencies of |A| |B| / N for the targets' magnitudes against earlier layer ``i``'s channels
        ``cols``: (C, len(cols)). A layer's magnitudes are kept for later targets on the same grid when they fit
        :data:`_KEPT_BYTES`; bigger ones are made for those channels a block at a time, never whole."""
        ne = self.layers[i][0]
        scale = 1.0 / float(np.prod(grid))
        per_channel = ne.shape[1] * _bins(grid) * 4
        if len(ne) * per_channel <= _KEPT_BYTES:
            mags = self._cached((i, grid, "mag"), lambda: self._magnitudes(ne, grid, weighted=False))
            return (targets @ mags.T)[:, cols] * scale
        out = np.empty((len(targets), len(cols)))
        step = max(1, _CHUNK_BYTES // per_channel)
        for c0 in range(0, len(cols), step):
            block = self._magnitudes(ne[cols[c0 : c0 + step]], grid, weighted=False)
            out[:, c0 : c0 + step] = targets @ block.T * scale
        return out

    def _screens(self, nt: np.ndarray, ct: np.ndarray, floor: float) -> list[np.ndarray]:
        """Float32 screens (C, C_e) per earlier layer; -inf where the bound rules the pair out."""
        bounds = self.bounds(nt, floor)
        screens = [np.full(b.shape, -np.inf) for b in bounds]
        # first the pairs with the highest bound in each row, then every pair the best so far cannot rule out
        top = np.concatenate(bounds, axis=1).max(axis=1, keepdims=True)
        targets: dict[tuple[int, ...], np.ndarray | None] = {}  # the target's spectra per grid, where they fit
        for phase in ("top", "rest"):
            best = np.maximum(np.max([s.max(axis=1) for s in screens], axis=0), floor - SCREEN_TOLERANCE)
            for i, (bound, screen) in enumerate(zip(bounds, screens, strict=True)):
                if phase == "top":
                    need = (bound >= top - 0.05) & (bound >= best[:, None])
                else:
                    need = (bound >= best[:, None]) & np.isneginf(screen)
                self._screen_block(i, need, nt, ct, screen, targets)
        return screens

    def _screen_block(self, i: int, need: np.ndarray, nt, ct, screen: np.ndarray, targets: dict) -> None:
        """Screen the pairs ``need`` marks against earlier layer ``i``, transforming only the earlier responses they
        name; the target's spectra on a grid serve every earlier layer of that grid (where they fit
        :data:`_KEPT_BYTES`; else made a block at a time)."""
        rows, cols = np.nonzero(need)
        if not len(rows):
            return
        ne, ce = self.layers[i]
        grid = _grid(nt.shape[2:], ne.shape[2:])
        if grid not in targets:
            size = nt.shape[0] * nt.shape[1] * _bins(grid) * 8
            targets[grid] = _spectra(nt, grid, np.complex64) if size <= _KEPT_BYTES else None
        values = _listed_correlation(nt, ne, rows, cols, grid, np.complex64, targets[grid])
        constant = ct[rows] | ce[cols]
        values = np.where(constant, np.where(ct[rows] & ce[cols], 1.0, 0.0), np.clip(values, -1.0, 1.0))
        screen[rows, cols] = values

    def _refine(self, nt, ct, flat: np.ndarray, lags: bool, floor: float) -> tuple:
        """The float64 best among each row's candidates within the screen's tolerance, where it reaches ``floor``."""
        owner, channel = self._index()
        c = len(nt)
        best_layer, best_channel, best_value = np.full(c, -1), np.full(c, -1), np.full(c, np.nan)
        candidates = _best_of_candidates(flat)
        rows = np.concatenate([np.full(len(cs), r) for r, cs in enumerate(candidates)]).astype(int)
        cols = np.concatenate(candidates).astype(int)
        exact = np.empty(len(rows))
        for layer in np.unique(owner[cols]):
            mine = owner[cols] == layer
            ne, ce = self.layers[layer]
            exact[mine] = _pair_ncc(nt, ct, ne, ce, rows[mine], channel[cols[mine]], lags)
        for r, v, col in zip(rows, exact, cols, strict=True):  # in column order: ties go to the earliest
            if v >= floor and (np.isnan(best_value[r]) or v > best_value[r]):
                best_layer[r], best_channel[r], best_value[r] = owner[col], channel[col], v
        return best_layer, best_channel, best_value


def best_earlier_matches(
    target: np.ndarray, earlier: list[np.ndarray], *, lags: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each target channel's best match among all channels of the earlier layers (see :class:`EarlierLayers`).

    Args:
        target: responses (C, M, *spatial); earlier: the earlier layers' responses (C_e, M, *spatial_e).

    Returns:
        (earlier layer index (C,), channel (C,), NCC (C,)); -1, -1 and nan without earlier layers.
    """
    search = EarlierLayers()
    for resp in earlier:
        search.add(resp)
    return search.best_matches(target, lags=lags)
