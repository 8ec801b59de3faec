"""Metrics alone: closed-form answers and edge cases."""

from __future__ import annotations

import numpy as np
import pytest

from onnxredund.metrics import cosine_per_channel
from onnxredund.ncc import ncc_matrix

RNG = np.random.default_rng(0)


def test_cosine_known_values_and_edge_cases():
    a = np.zeros((1, 4, 2, 2))
    b = np.zeros((1, 4, 2, 2))
    a[0, 0], b[0, 0] = 1.0, 2.0  # parallel -> 1
    a[0, 1, 0, 0], b[0, 1, 0, 1] = 1.0, 1.0  # orthogonal -> 0
    a[0, 2] = 1.0  # one zero -> 0 ; channel 3 both zero -> 1
    np.testing.assert_allclose(cosine_per_channel(a, b), [[1.0, 0.0, 0.0, 1.0]])
    np.testing.assert_allclose(cosine_per_channel(a[:, :1], -a[:, :1]), [[-1.0]])


def test_cosine_is_bounded_and_float64():
    a = RNG.normal(size=(5, 3, 4, 4)).astype(np.float32)
    c = cosine_per_channel(a, a * 3.0)
    assert c.dtype == np.float64 and np.all(np.abs(c) <= 1.0)
    np.testing.assert_allclose(c, 1.0, atol=1e-7)


def resp(k):
    """A 5x5 kernel centred in a 15x15 frame, as one response (1, 1, 15, 15)."""
    frame = np.zeros((15, 15))
    frame[5:10, 5:10] = k
    return frame[None, None]


K = RNG.normal(size=(5, 5))
K -= K.mean()  # zero-mean: zero padding around it does not change its normalization


def test_duplicate_kernels_give_one():
    r = np.concatenate([resp(K), resp(K), resp(RNG.normal(size=(5, 5)))])
    ncc = ncc_matrix(r, r)
    assert ncc[0, 1] == pytest.approx(1.0) and ncc[2, 0] < 0.95
    np.testing.assert_allclose(np.diag(ncc), 1.0)


def test_shifted_copy_is_one_with_lags_and_less_at_zero_lag():
    a = resp(K)
    b = np.roll(a, (2, -1), axis=(2, 3))
    assert ncc_matrix(a, b)[0, 0] == pytest.approx(1.0)
    assert ncc_matrix(a, b, lags=False)[0, 0] < 0.5


def test_negated_kernel_is_minus_one_at_zero_lag():
    assert ncc_matrix(resp(K), -resp(K), lags=False)[0, 0] == pytest.approx(-1.0)


def test_constant_responses():
    dead = np.zeros((2, 1, 15, 15))
    ncc = ncc_matrix(np.concatenate([dead, resp(K)]), np.concatenate([dead, resp(K)]))
    assert ncc[0, 1] == 1.0 and ncc[0, 2] == 0.0 and ncc[2, 2] == pytest.approx(1.0)


def test_different_frames_are_compared_centred():
    small = resp(K)[:, :, 3:12, 3:12]  # same kernel in a 9x9 frame
    assert ncc_matrix(resp(K), small, lags=False)[0, 0] == pytest.approx(1.0, abs=1e-9)


def test_relative_l2_per_sample_is_the_norm_ratio_with_zero_references_spelled_out():
    from onnxredund.metrics import relative_l2_per_sample

    ref = np.array([[3.0, 4.0], [0.0, 0.0], [0.0, 0.0]])
    new = np.array([[3.0, 4.5], [0.0, 0.0], [0.0, 1e-9]])
    np.testing.assert_allclose(relative_l2_per_sample(ref, new), [0.1, 0.0, np.inf])  # |(0, .5)| / |(3, 4)|
