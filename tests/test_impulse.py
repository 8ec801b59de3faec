"""Impulse responses and NCC on models with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_model, small_cnn
from onnx import helper

from onnxredund.impulse import best_matches, cascade_check, impulse_inputs, run_impulse
from onnxredund.model import load_model_proto

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


def test_network_mode_sees_relu_linear_mode_bypasses_it():
    w = -np.ones((1, 1, 3, 3))
    net = run_impulse(conv_model(w, relu=True), device="cpu", mode="network")
    lin = run_impulse(conv_model(w, relu=True), device="cpu", mode="linear")
    # responses are read at the conv output, so both see the negative kernel
    assert net.layers[0].responses.min() == -1.0 and lin.layers[0].responses.min() == -1.0


def test_linear_mode_notes_maxpool_and_zeroes_biases():
    m = load_model_proto(small_cnn()[0])
    lin = run_impulse(m, mode="linear", device="cpu")
    assert lin.notes == []  # only conv/relu/conv before the last conv: exactly linear
    net = run_impulse(m, mode="network", device="cpu")
    np.testing.assert_allclose(net.layers[0].responses, lin.layers[0].responses, atol=1e-6)  # layer 1: bias cancels


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
