"""NCC at scale equals the plain definition: a numpy reference over every lag, in 1-D, 2-D and 3-D, within a
layer and for each channel's best match among earlier layers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.signal import correlate

from onnxredund.ncc import (
    EarlierLayers,
    _window_norms,
    best_earlier_matches,
    best_matches_in,
    exact_best_matches,
    ncc_matrix,
    normalize_responses,
)

RNG = np.random.default_rng(0)


def reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """max over all lags of the full cross-correlation, summed over input channels, by scipy.signal directly."""
    na, _ = normalize_responses(a)
    nb, _ = normalize_responses(b)
    out = np.empty((len(a), len(b)))
    for i in range(len(a)):
        for j in range(len(b)):
            corr = sum(correlate(na[i, m], nb[j, m], mode="full", method="direct") for m in range(a.shape[1]))
            out[i, j] = corr.max()
    return np.clip(out, -1, 1)


@pytest.mark.parametrize("spatial", [(7,), (4, 5), (3, 3, 4)])
@pytest.mark.parametrize("m", [1, 3])
def test_ncc_matrix_equals_the_direct_correlation_in_any_dimension(spatial, m):
    a = RNG.normal(size=(6, m, *spatial))
    b = RNG.normal(size=(4, m, *[s + 2 for s in spatial]))
    np.testing.assert_allclose(ncc_matrix(a, b), reference(a, b), atol=1e-12)
    within = ncc_matrix(a)  # one layer with itself: computed once per pair, mirrored
    np.testing.assert_allclose(within, reference(a, a), atol=1e-12)
    np.testing.assert_array_equal(within, within.T)


def _layers():
    """Earlier layers of several sizes, and a target holding an exact copy of earlier channels, a scaled copy,
    and unrelated responses."""
    earlier = [RNG.normal(size=(5, 2, 3, 3)), RNG.normal(size=(8, 2, 5, 4)), RNG.normal(size=(3, 2, 2, 6))]
    target = np.concatenate([earlier[1][[6]], 3.0 * earlier[1][[2]], RNG.normal(size=(4, 2, 5, 4))])
    return target, earlier


@pytest.mark.parametrize("lags", [True, False])
def test_best_earlier_matches_equal_the_full_matrices(lags):
    target, earlier = _layers()
    layer, channel, value = best_earlier_matches(target, earlier, lags=lags)
    full = [ncc_matrix(target, e, lags=lags) for e in earlier]
    flat = np.concatenate(full, axis=1)
    owner = np.concatenate([np.full(e.shape[0], i) for i, e in enumerate(earlier)])
    index = np.concatenate([np.arange(e.shape[0]) for e in earlier])
    best = flat.argmax(axis=1)
    np.testing.assert_array_equal(layer, owner[best])
    np.testing.assert_array_equal(channel, index[best])
    np.testing.assert_allclose(value, flat.max(axis=1), atol=1e-12)
    assert (layer[0], channel[0]) == (1, 6) and value[0] == pytest.approx(1.0)
    assert (layer[1], channel[1]) == (1, 2) and value[1] == pytest.approx(1.0)


def test_the_spectral_bound_is_never_below_the_ncc():
    target, earlier = _layers()
    search = EarlierLayers()
    for e in earlier:
        search.add(e)
    nt, _ = normalize_responses(target)
    for e, bound in zip(earlier, search.bounds(nt), strict=True):
        assert (bound >= ncc_matrix(target, e) - 1e-5).all()


@pytest.mark.parametrize(("spatial", "window"), [((9,), (4,)), ((5, 7), (2, 9)), ((4, 3, 6), (3, 3, 2))])
def test_window_norms_are_the_largest_norm_inside_any_window(spatial, window):
    x = RNG.normal(size=(4, 2, *spatial))
    got = _window_norms(x, window)
    clipped = [min(w, n) for w, n in zip(window, spatial, strict=True)]
    starts = itertools.product(*[range(n - w + 1) for n, w in zip(spatial, clipped, strict=True)])
    energy = [
        np.sqrt(
            (x[(slice(None), slice(None), *(slice(s, s + w) for s, w in zip(st, clipped, strict=True)))] ** 2).sum(
                axis=tuple(range(1, x.ndim))
            )
        )
        for st in starts
    ]
    np.testing.assert_allclose(got, np.max(energy, axis=0), rtol=1e-12)


def test_responses_of_very_different_extents_are_bounded_by_their_window_norms_and_still_found():
    """A long, spread response against small ones: the window bound rules the unrelated pairs out without a
    transform, and a small copy hidden in a long response is still its best match, at its true NCC."""
    small = RNG.normal(size=(6, 2, 3, 3))
    spread = RNG.normal(size=(2, 2, 4, 300))  # energy spread over 1,200 positions: any 3 x 3 window holds little
    hidden = np.zeros((1, 2, 4, 300))
    hidden[0, :, 1:4, 100:103] = small[4]
    target = np.concatenate([spread, hidden])
    search = EarlierLayers()
    search.add(small)
    nt, _ = normalize_responses(target)
    (bound,) = search.bounds(nt, floor=0.9)
    assert (bound >= ncc_matrix(target, small) - 1e-5).all()
    assert bound[:2].max() < 0.5  # ruled out from the window energy alone
    layer, channel, value = search.best_matches(target, floor=0.9)
    assert (layer[:2] == -1).all() and (layer[2], channel[2]) == (0, 4)
    assert value[2] == pytest.approx(ncc_matrix(target[2:], small)[0, 4], abs=1e-12)


def test_a_floor_leaves_out_matches_below_it():
    target, earlier = _layers()
    layer, channel, value = best_earlier_matches(target, earlier)
    floored = EarlierLayers()
    for e in earlier:
        floored.add(e)
    fl, fc, fv = floored.best_matches(target, floor=0.9)
    kept = value >= 0.9
    assert kept[:2].all() and not kept[2:].all()
    np.testing.assert_array_equal(fl[kept], layer[kept])
    np.testing.assert_array_equal(fc[kept], channel[kept])
    assert (fl[~kept] == -1).all() and np.isnan(fv[~kept]).all()


@pytest.mark.parametrize("how", ["float32 screen refined", "float64 matrix"])
def test_best_matches_are_the_float64_answer_from_a_screen_or_from_the_exact_matrix(how):
    responses = RNG.normal(size=(12, 2, 5, 5))
    responses[7] = 2.0 * responses[3]
    compared = np.ones(12, bool)
    compared[5] = False
    full = ncc_matrix(responses)
    if how == "float64 matrix":
        best, value = best_matches_in(full, compared)
    else:
        best, value = exact_best_matches(responses, ncc_matrix(responses, single=True), compared)
    masked = full.copy()
    np.fill_diagonal(masked, -np.inf)
    masked[:, 5] = -np.inf
    for r in range(12):
        if r == 5:
            assert best[r] == -1 and np.isnan(value[r])
        else:
            assert best[r] == masked[r].argmax() and value[r] == pytest.approx(masked[r].max(), abs=1e-12)
    assert (best[3], best[7]) == (7, 3)


def test_no_earlier_layer_gives_no_match():
    layer, channel, value = best_earlier_matches(RNG.normal(size=(3, 1, 3, 3)), [])
    assert (layer == -1).all() and (channel == -1).all() and np.isnan(value).all()


def test_a_cache_too_small_for_one_transform_gives_the_same_matches(monkeypatch):
    from onnxredund import ncc

    target, earlier = _layers()
    full = best_earlier_matches(target, earlier)
    monkeypatch.setattr(ncc, "_CACHE_BYTES", 1)  # every transform is made again when it is next needed
    search = EarlierLayers()
    for e in earlier:
        search.add(e)
    tiny = search.best_matches(target)
    assert len(search._cache) == 1  # only the last one made is kept
    for a, b in zip(tiny, full, strict=True):
        np.testing.assert_array_equal(a, b)


def test_magnitudes_made_in_blocks_of_the_channels_needed_give_the_same_bounds_and_matches(monkeypatch):
    from onnxredund import ncc

    target, earlier = _layers()
    search = EarlierLayers()
    for e in earlier:
        search.add(e)
    nt, _ = normalize_responses(target)
    kept_bounds, kept = search.bounds(nt), search.best_matches(target)
    monkeypatch.setattr(ncc, "_KEPT_BYTES", 0)  # no layer's magnitudes kept whole
    monkeypatch.setattr(ncc, "_CHUNK_BYTES", 1)  # one channel's at a time
    blocks = EarlierLayers()
    for e in earlier:
        blocks.add(e)
    for a, b in zip(blocks.bounds(nt), kept_bounds, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    for a, b in zip(blocks.best_matches(target), kept, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not blocks._cache


def test_transforms_made_one_response_at_a_time_give_the_same_matches(monkeypatch):
    from onnxredund import ncc

    target, earlier = _layers()
    full = best_earlier_matches(target, earlier)
    monkeypatch.setattr(ncc, "_CHUNK_BYTES", 1)  # every block of spectra holds one response
    for a, b in zip(best_earlier_matches(target, earlier), full, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("extent", "grid"), [((5,), (64,)), ((3, 4), (40, 27)), ((5, 5), (225, 171)), ((2, 3, 2), (9, 8, 7))]
)
def test_dft_matrices_give_the_fft_spectra_of_a_small_response_on_a_big_grid(extent, grid):
    from onnxredund.ncc import _dft_spectra

    x = RNG.normal(size=(4, 3, *extent))
    fft = np.fft.rfftn(x, s=grid, axes=tuple(range(2, x.ndim)))
    got = _dft_spectra(x, grid)
    assert got.dtype == np.complex64 and got.shape == fft.shape
    np.testing.assert_allclose(got, fft, atol=1e-5 * np.abs(fft).max())


def test_a_response_is_constant_by_one_test_for_the_comparison_and_the_normalization():
    from onnxredund.ncc import constant_responses, normalize_responses

    responses = RNG.normal(size=(4, 2, 5, 5))
    responses[1] = 3.0  # a bias and nothing else
    responses[2] = 0.0
    responses[3] = 7.0
    responses[3, 0, 0, 0] += 1e-14  # rounding on a flat response
    mask = constant_responses(responses)
    assert mask.tolist() == [False, True, True, True]
    assert (normalize_responses(responses)[1] == mask).all()
