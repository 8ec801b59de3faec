"""Impulse responses and NCC on models with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_model
from onnx import helper
from scipy.signal import convolve2d

from onnxredund.analyses.cascade import cascade_check
from onnxredund.analyses.impulse import best_matches, impulse_inputs, run_impulse
from onnxredund.engine import load_model_proto

RNG = np.random.default_rng(0)


def conv_model(w, size=9, bias=None, relu=False):
    inputs = ["x", "w"] + (["b"] if bias is not None else [])
    nodes = [helper.make_node("Conv", inputs, ["z"], name="c", pads=[w.shape[2] // 2] * 4)]
    out = "z"
    if relu:
        nodes.append(helper.make_node("Relu", ["z"], ["y"]))
        out = "y"
    inits = {"w": w} | ({"b": bias} if bias is not None else {})
    return load_model_proto(
        make_model(nodes, [("x", ["N", w.shape[1], size, size])], [(out, ["N", w.shape[0], size, size])], inits)
    )


def test_identity_kernel_gives_a_spike():
    w = np.zeros((1, 1, 3, 3))
    w[0, 0, 1, 1] = 1.0
    layer = run_impulse(conv_model(w), device="cpu").layers[0]
    assert layer.support == (4, 4, 1, 1)  # a single pixel at the centre of the 9 x 9 map
    np.testing.assert_array_equal(layer.responses, [[[[1.0]]]])


def test_response_is_the_flipped_kernel_and_bias_cancels():
    w = RNG.normal(size=(2, 1, 3, 3))
    res = run_impulse(conv_model(w, bias=np.array([5.0, -3.0])), device="cpu")
    assert res.layers[0].support == (3, 3, 3, 3)
    for c in range(2):  # ONNX Conv is a correlation: the impulse response is the kernel rotated by 180 degrees
        np.testing.assert_allclose(res.layers[0].responses[c, 0], w[c, 0, ::-1, ::-1], atol=1e-6)


def test_duplicated_kernels_are_found_redundant():
    k = RNG.normal(size=(1, 3, 3))
    w = np.stack([k, RNG.normal(size=(1, 3, 3)), k, -k])
    res = run_impulse(conv_model(w), device="cpu", threshold=0.9)
    layer = res.layers[0]
    assert layer.ncc[0, 2] == pytest.approx(1.0)
    assert layer.best_match[0] == 2 and layer.best_match[2] == 0
    assert layer.redundant_count == 2 and layer.redundant_fraction == 0.5
    zero_lag = run_impulse(conv_model(w), device="cpu", lags=False).layers[0]
    assert zero_lag.ncc[0, 3] == pytest.approx(-1.0)


def _relu_between_two_convs(first: np.ndarray, second: np.ndarray, maxpool: bool = False):
    """x -> conv1 (bias 0.5) -> Relu [-> MaxPool 1x1] -> conv2 (bias -2): single channels, 'same' padding."""
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["z1"], name="c1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["z1"], ["a1"], name="relu"),
    ]
    feed = "a1"
    if maxpool:
        nodes.append(helper.make_node("MaxPool", ["a1"], ["p1"], name="pool", kernel_shape=[1, 1]))
        feed = "p1"
    nodes.append(helper.make_node("Conv", [feed, "w2", "b2"], ["z2"], name="c2", pads=[1, 1, 1, 1]))
    inits = {"w1": first, "b1": [0.5], "w2": second, "b2": [-2.0]}
    return load_model_proto(make_model(nodes, [("x", ["N", 1, 9, 9])], [("z2", ["N", 1, 9, 9])], inits))


def test_network_mode_sees_relu_linear_mode_bypasses_it():
    # conv1 is a negative spike: its response to the impulse is -1 at the centre, which the Relu turns into 0 on
    # top of the bias 0.5 (Relu(0.5 - 1) = 0 against Relu(0.5) = 0.5 for the zero input), so the network's
    # conv2 response is -0.5 times conv2's flipped kernel; in linear mode the Relu is bypassed and the biases
    # are zeroed, so conv2's response is -1 times its flipped kernel
    spike = np.zeros((1, 1, 3, 3))
    spike[0, 0, 1, 1] = -1.0
    w2 = RNG.normal(size=(1, 1, 3, 3))
    model = _relu_between_two_convs(spike, w2)
    net = run_impulse(model, device="cpu", mode="network").layers[1].responses[0, 0]
    lin = run_impulse(model, device="cpu", mode="linear").layers[1].responses[0, 0]
    np.testing.assert_allclose(net, -0.5 * w2[0, 0, ::-1, ::-1], atol=1e-6)
    np.testing.assert_allclose(lin, -1.0 * w2[0, 0, ::-1, ::-1], atol=1e-6)


def test_linear_mode_notes_maxpool_and_zeroes_biases():
    w1, w2 = RNG.normal(size=(1, 1, 3, 3)), RNG.normal(size=(1, 1, 3, 3))
    plain = run_impulse(_relu_between_two_convs(w1, w2), mode="linear", device="cpu")
    assert plain.notes == []  # conv, relu, conv: exactly linear once the relu is bypassed
    pooled = run_impulse(_relu_between_two_convs(w1, w2, maxpool=True), mode="linear", device="cpu")
    assert pooled.notes == ["MaxPool stays non-linear: linear responses after it are approximations"]
    # biases zeroed: conv1's linear response is its flipped kernel exactly, with no 0.5 added
    np.testing.assert_allclose(plain.layers[0].responses[0, 0], w1[0, 0, ::-1, ::-1], atol=1e-6)
    # the cascade's effective kernel: conv2's response is the full convolution of both kernels
    expected = convolve2d(w1[0, 0, ::-1, ::-1], w2[0, 0, ::-1, ::-1])
    np.testing.assert_allclose(plain.layers[1].responses[0, 0], expected, atol=1e-5)


def test_across_layers_finds_a_cascade_that_repeats_an_earlier_response():
    # conv2 = identity on channel 0 of conv1 (a spike): its response equals conv1 channel 0's
    w1 = RNG.normal(size=(2, 1, 3, 3))
    w2 = np.zeros((1, 2, 3, 3))
    w2[0, 0, 1, 1] = 1.0
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["z1"], name="c1", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["z1", "w2"], ["z2"], name="c2", pads=[1, 1, 1, 1]),
    ]
    m = load_model_proto(make_model(nodes, [("x", ["N", 1, 9, 9])], [("z2", ["N", 1, 9, 9])], {"w1": w1, "w2": w2}))
    res = run_impulse(m, device="cpu")
    second = res.layers[1]
    assert second.across["c1"].shape == (1, 2)
    assert second.across_best_layer == ["c1"] and second.across_best_channel[0] == 0
    assert second.across_best_value[0] == pytest.approx(1.0)


def test_paper_figure_7_cascade_commutes():
    check = cascade_check()
    assert check["ncc"] == pytest.approx(1.0, abs=1e-9)
    assert check["max_abs_diff"] < 1e-6


def test_impulse_inputs_and_positions():
    batch, pos = impulse_inputs((2, 5, 7), "NCHW", None)
    assert pos == (2, 3) and batch.shape == (3, 2, 5, 7)
    assert batch[0].sum() == 0 and batch[1, 0, 2, 3] == 1 and batch[2, 1, 2, 3] == 1 and batch.sum() == 2
    nhwc, _ = impulse_inputs((5, 7, 2), "NHWC", (0, 0))
    assert nhwc.shape == (3, 5, 7, 2) and nhwc[2, 0, 0, 1] == 1


def test_best_matches_excludes_self():
    idx, val, count = best_matches(np.array([[1.0, 0.95, 0.1], [0.95, 1.0, 0.2], [0.1, 0.2, 1.0]]), 0.9)
    assert list(idx) == [1, 0, 1] and count == 2 and val[2] == 0.2
