"""Impulse responses and NCC on models with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from builders import make_model
from onnx import helper
from scipy.signal import convolve2d

from onnxredund.analyses import impulse as impulse_module
from onnxredund.analyses.cascade import cascade_check
from onnxredund.analyses.impulse import impulse_inputs, run_impulse
from onnxredund.engine import load_model_proto
from onnxredund.errors import OnnxRedundError

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
    assert second.across_best_layer == ["c1"] and second.across_best_channel[0] == 0
    assert second.across_best_value[0] == pytest.approx(1.0)
    assert res.layers[0].across_best_layer == ["", ""] and np.isnan(res.layers[0].across_best_value).all()


def test_paper_figure_7_cascade_commutes():
    check = cascade_check()
    assert check["ncc"] == pytest.approx(1.0, abs=1e-9)
    assert check["max_abs_diff"] < 1e-6


def _plain(shape, layout="NCHW"):
    """A one-conv model whose input has ``shape`` after the batch."""
    c = shape[-1] if layout.endswith("C") else shape[0]
    w = np.ones((1, c, *([1] * (len(shape) - 1))), np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["z"], name="c")]
    if layout.endswith("C"):
        nodes.insert(0, helper.make_node("Transpose", ["x"], ["xt"], perm=[0, len(shape), *range(1, len(shape))]))
        nodes[1].input[0] = "xt"
    out = ["N", 1, *(shape[:-1] if layout.endswith("C") else shape[1:])]
    return load_model_proto(make_model(nodes, [("x", ["N", *shape])], [("z", out)], {"w": w}))


def test_impulse_inputs_and_positions():
    feeds, pos = impulse_inputs(_plain((2, 5, 7)), None, [(0, 0)])
    batch = feeds["x"]
    assert pos == (2, 3) and batch.shape == (3, 2, 5, 7)
    assert batch[0].sum() == 0 and batch[1, 0, 2, 3] == 1 and batch[2, 1, 2, 3] == 1 and batch.sum() == 2
    nhwc, _ = impulse_inputs(_plain((5, 7, 2), "NHWC"), (0, 0), [(0, 0)])
    assert nhwc["x"].shape == (3, 5, 7, 2) and nhwc["x"][2, 0, 0, 1] == 1
    # phase offsets: one impulse per (offset, channel), offsets outer; the base moves in so all fit
    shifted, base = impulse_inputs(_plain((1, 6, 6)), (5, 5), [(0, 0), (0, 1), (1, 0), (1, 1)])
    assert base == (4, 4) and shifted["x"].shape == (5, 1, 6, 6)
    assert [tuple(np.argwhere(shifted["x"][i, 0])[0]) for i in range(1, 5)] == [(4, 4), (4, 5), (5, 4), (5, 5)]
    with pytest.raises(OnnxRedundError, match="`position` needs 2 coordinates"):
        impulse_inputs(_plain((1, 6, 6)), (1, 2, 3), [(0, 0)])


def test_a_strided_first_conv_shows_its_whole_kernel_through_interleaved_phases():
    # 3x3 stride-2 convs: one impulse shows a single tap of each kernel (all look alike); the 2 x 2 phases show
    # every tap, so each channel's response is its full flipped kernel and distinct kernels are told apart
    w = RNG.normal(size=(4, 1, 3, 3))
    nodes = [helper.make_node("Conv", ["x", "w"], ["z"], name="c", pads=[1, 1, 1, 1], strides=[2, 2])]
    m = load_model_proto(make_model(nodes, [("x", ["N", 1, 12, 12])], [("z", ["N", 4, 6, 6])], {"w": w}))
    layer = run_impulse(m, device="cpu").layers[0]
    assert layer.phases == (2, 2) and layer.responses.shape == (4, 1, 3, 3)
    for c in range(4):
        np.testing.assert_allclose(layer.responses[c, 0], w[c, 0, ::-1, ::-1], atol=1e-6)
    assert layer.compared.all() and layer.redundant_count == 0


def test_responses_too_small_or_constant_are_left_out_and_counted():
    # conv (3 channels) -> GlobalAveragePool -> 1x1 conv (squeeze-excitation style): the 1x1 conv's response is
    # one value per input channel, too few to compare; conv channel 2 has zero weights: no response at all
    w = RNG.normal(size=(3, 1, 3, 3))
    w[2] = 0.0
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["z"], name="c", pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["z"], ["g"]),
        helper.make_node("Conv", ["g", "w2"], ["y"], name="se"),
    ]
    inits = {"w": w, "w2": RNG.normal(size=(5, 3, 1, 1))}
    m = load_model_proto(make_model(nodes, [("x", ["N", 1, 9, 9])], [("y", ["N", 5, 1, 1])], inits))
    conv, se = run_impulse(m, device="cpu").layers
    assert conv.excluded == {"support": 0, "constant": 1} and conv.compared.tolist() == [True, True, False]
    assert conv.best_match[2] == -1 and np.isnan(conv.best_value[2])
    assert se.excluded == {"support": 5, "constant": 0} and se.compared_count == 0
    assert se.redundant_fraction is None and (se.best_match == -1).all()


def test_one_dimensional_convs_find_a_duplicate_and_a_negated_copy():
    k = RNG.normal(size=(1, 5))
    w = np.stack([k, RNG.normal(size=(1, 5)), 2.0 * k, -k])
    nodes = [helper.make_node("Conv", ["x", "w"], ["z"], name="c1d", pads=[2, 2])]
    m = load_model_proto(make_model(nodes, [("x", ["N", 1, 32])], [("z", ["N", 4, 32])], {"w": w}))
    assert m.layout == "NCL"
    layer = run_impulse(m, device="cpu").layers[0]
    assert layer.responses.shape == (4, 1, 5)
    np.testing.assert_allclose(layer.responses[0, 0], k[0, ::-1], atol=1e-6)
    assert layer.best_match[0] == 2 and layer.best_value[0] == pytest.approx(1.0)
    zero_lag = run_impulse(m, device="cpu", lags=False).layers[0]
    assert zero_lag.ncc[0, 3] == pytest.approx(-1.0)


def test_three_dimensional_convs_give_the_flipped_kernel():
    w = RNG.normal(size=(2, 1, 3, 3, 3))
    nodes = [helper.make_node("Conv", ["x", "w"], ["z"], name="c3d", pads=[1] * 6)]
    m = load_model_proto(make_model(nodes, [("x", ["N", 1, 7, 7, 7])], [("z", ["N", 2, 7, 7, 7])], {"w": w}))
    layer = run_impulse(m, device="cpu").layers[0]
    np.testing.assert_allclose(layer.responses[:, 0], w[:, 0, ::-1, ::-1, ::-1], atol=1e-6)


def test_a_second_input_is_held_at_zero_and_convs_it_feeds_alone_are_refused():
    # x -> conv c1; meta (N, 4) is added after c1; a conv fed by meta alone cannot see the impulse
    w = RNG.normal(size=(2, 1, 3, 3))
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["z"], name="c1", pads=[1, 1, 1, 1]),
        helper.make_node("ReduceMean", ["z"], ["zm"], axes=[2, 3], keepdims=0),
        helper.make_node("Gemm", ["meta", "fc"], ["mf"]),
        helper.make_node("Add", ["zm", "mf"], ["y"]),
    ]
    inits = {"w": w, "fc": RNG.normal(size=(4, 2))}
    m = load_model_proto(make_model(nodes, [("x", ["N", 1, 7, 7]), ("meta", ["N", 4])], [("y", ["N", 2])], inits))
    assert m.input_name == "x" and [i.name for i in m.inputs] == ["x", "meta"]
    layer = run_impulse(m, device="cpu").layers[0]
    np.testing.assert_allclose(layer.responses[:, 0], w[:, 0, ::-1, ::-1], atol=1e-6)


def _reshaped_signal_net(seed: int, stride: int = 1, tf2onnx: bool = False):
    """Raw audio [N, 120, 1] -> Transpose -> Unsqueeze [N, 1, 1, 120] -> 1 x 16 conv (stride 1 x ``stride``) ->
    Relu -> 1 x 5 conv -> mean -> y; returns the model and the first conv's weights. ``tf2onnx``: the signal
    reaches the conv as tf2onnx writes a conv1d (Spotify's basic-pitch): Unsqueeze to [N, 1, 120, 1] (TensorFlow's
    ExpandDims), then a Reshape to [N, 1, 1, 120] (NHWC -> NCHW of one channel, two size-1 axes)."""
    rng = np.random.default_rng(seed)
    if tf2onnx:
        head = [
            helper.make_node("Unsqueeze", ["x", "axis1"], ["e"]),
            helper.make_node("Reshape", ["e", "nchw"], ["u"]),
        ]
    else:
        head = [
            helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1]),  # raw audio [N, L, 1] -> [N, 1, L]
            helper.make_node("Unsqueeze", ["t", "axis"], ["u"]),  # -> [N, 1, 1, L]: 1 x K kernels
        ]
    nodes = [
        *head,
        helper.make_node("Conv", ["u", "w"], ["z"], name="c1", strides=[1, stride]),
        helper.make_node("Relu", ["z"], ["a"]),
        helper.make_node("Conv", ["a", "w2"], ["z2"], name="c2"),
        helper.make_node("GlobalAveragePool", ["z2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["y"]),
    ]
    w = rng.normal(size=(8, 1, 1, 16))
    inits = {"w": w, "w2": rng.normal(size=(6, 8, 1, 5)), "axis": np.array([2])}
    inits |= {"axis1": np.array([1]), "nchw": np.array([-1, 1, 1, 120])}
    return load_model_proto(make_model(nodes, [("x", ["N", 120, 1])], [("y", ["N", 6])], inits)), w


@pytest.mark.parametrize("tf2onnx", [False, True], ids=["transpose", "expanddims-reshape"])
def test_a_1d_signal_reshaped_into_2d_convs_is_read_channels_last_and_its_impulse_gives_the_kernels(tf2onnx):
    # the graph shows it, with no --layout (with the Reshape it was taken for 120 channels of length 1, and the
    # impulse batch for 120 x 120 x 1: basic-pitch's 43,844 samples asked for 28.6 GiB)
    m, w = _reshaped_signal_net(3, tf2onnx=tf2onnx)
    assert m.image_input.layout == "NLC" and m.image_input.channels == 1
    layer = run_impulse(m, device="cpu").layers[0]  # crashed: zip() argument 2 is longer than argument 1
    np.testing.assert_allclose(layer.responses[:, 0], w[:, 0, :, ::-1], atol=1e-6)


def test_impulses_that_would_take_more_than_half_the_memory_are_refused_with_the_layout_to_check(monkeypatch):
    # the signal taken for 120 channels of length 1 (a wrong --layout): 4 phases x 120 impulses of 120 x 1
    m, _ = _reshaped_signal_net(3, stride=4)
    wrong = load_model_proto(m.proto, layout="nchw")
    assert wrong.image_input.channels == 120
    monkeypatch.setattr(impulse_module, "machine_memory", lambda: 400_000)  # the batch: 481 x 120 x 4 bytes
    with pytest.raises(
        OnnxRedundError, match=r"480 impulses \(120 channels x 4 phases\), each a whole sample of 120 x 1; "
    ):
        run_impulse(wrong, device="cpu")
    assert run_impulse(m, device="cpu").layers[0].phases == (1, 4)  # its own layout: 4 impulses of 1 x 120


def test_responses_that_would_keep_more_than_half_the_memory_stop_the_analysis_in_one_line(monkeypatch):
    """LYT-Net's attention makes every response as big as its map: taken channels first (240 channels of 320 x 3)
    the kept responses grew past 24 GB and the kernel killed the process. They are counted as they are kept."""
    from onnxredund.analyses import impulse

    net = _strided_net(32)
    kept = sum(layer.responses.nbytes for layer in run_impulse(net, device="cpu").layers)
    monkeypatch.setattr(impulse, "_kept_limit", lambda: kept // 2)
    with pytest.raises(OnnxRedundError, match=r"would take more than .* GiB, half this machine's memory"):
        run_impulse(net, device="cpu")
    monkeypatch.setattr(impulse, "_kept_limit", lambda: 4 * kept)
    assert len(run_impulse(net, device="cpu").layers) == 3


def test_a_strided_1d_signal_reshaped_into_2d_convs_shows_its_whole_kernels_through_phases():
    # 1 x 16 kernels at stride 1 x 4: one impulse shows every 4th tap of each kernel; the 4 phases along the
    # signal show them all (the inserted axis of size 1 takes none)
    m, w = _reshaped_signal_net(5, stride=4)
    result = run_impulse(m, device="cpu")
    first = result.layers[0]
    assert first.phases == (1, 4) and first.responses.shape == (8, 1, 1, 16)  # was (1, 1): 4 of the 16 taps
    np.testing.assert_allclose(first.responses[:, 0], w[:, 0, :, ::-1], atol=1e-6)
    assert first.redundant_count == 0 and result.layers[1].phases == (1, 1)


def test_a_model_that_normalises_its_input_by_min_and_max_gets_its_impulses_at_the_first_conv():
    rng = np.random.default_rng(4)
    nodes = [
        helper.make_node("ReduceMin", ["x"], ["lo"], axes=[1, 2, 3], keepdims=1),  # per sample
        helper.make_node("Sub", ["x", "lo"], ["shifted"]),
        helper.make_node("ReduceMax", ["shifted"], ["hi"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Div", ["shifted", "hi"], ["scaled"]),  # 0 / 0 on an all-zero input
        helper.make_node("Conv", ["scaled", "w"], ["z"], name="c1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["z"], ["a"]),
        helper.make_node("Conv", ["a", "w2"], ["y"], name="c2"),
    ]
    w = rng.normal(size=(4, 2, 3, 3))
    inits = {"w": w, "w2": rng.normal(size=(3, 4, 1, 1))}
    m = load_model_proto(make_model(nodes, [("x", ["N", 2, 7, 7])], [("y", ["N", 3, 7, 7])], inits))
    result = run_impulse(m, device="cpu")  # was "the model overflows on a unit impulse"
    assert result.notes[0].startswith("impulses put at 'scaled', the first conv's input")
    np.testing.assert_allclose(result.layers[0].responses, w[:, :, ::-1, ::-1], atol=1e-6)
    named = run_impulse(m, device="cpu", at="scaled")  # the same, asked for
    np.testing.assert_allclose(named.layers[0].responses, result.layers[0].responses)
    later = run_impulse(m, device="cpu", at="a")  # c2's input: c2 alone, its 1 x 1 kernels
    assert [layer.name for layer in later.layers] == ["c2"]
    np.testing.assert_allclose(later.layers[0].responses[:, :, 0, 0], inits["w2"][:, :, 0, 0], atol=1e-6)
    with pytest.raises(OnnxRedundError, match="`at` 'nowhere': no tensor"):
        run_impulse(m, device="cpu", at="nowhere")
    with pytest.raises(OnnxRedundError, match=r"output on an all-zero 'x' is not finite.*`at` TENSOR"):
        run_impulse(m, device="cpu", at="x")  # asked for the input itself: said, not moved


def _strided_net(size: int):
    """x (2, size, size) -> 3x3 stride-2 conv -> Relu -> 3x3 conv -> Relu -> 3x3 stride-2 conv, biases on."""
    rng = np.random.default_rng(5)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["z1"], name="c1", pads=[1] * 4, strides=[2, 2]),
        helper.make_node("Relu", ["z1"], ["a1"]),
        helper.make_node("Conv", ["a1", "w2", "b2"], ["z2"], name="c2", pads=[1] * 4),
        helper.make_node("Relu", ["z2"], ["a2"]),
        helper.make_node("Conv", ["a2", "w3"], ["z3"], name="c3", pads=[1] * 4, strides=[2, 2]),
    ]
    inits = {
        "w1": rng.normal(size=(4, 2, 3, 3)),
        "b1": rng.normal(size=4) * 0.1,
        "w2": rng.normal(size=(5, 4, 3, 3)),
        "b2": rng.normal(size=5) * 0.1,
        "w3": rng.normal(size=(3, 5, 3, 3)),
    }
    out = ("z3", ["N", 3, size // 4, size // 4])
    return load_model_proto(make_model(nodes, [("x", ["N", 2, size, size])], [out], inits))


def test_impulse_responses_do_not_depend_on_how_many_impulses_a_run_holds_or_on_the_input_size(monkeypatch):
    """The network's outputs for the impulses are held a run at a time within a memory budget (one impulse a run
    here) and kept only where they are non-zero: the same responses, supports and NCC as in one run, and as on a
    canvas four times as large (the responses' support, not the input's area)."""
    from onnxredund.analyses import impulse

    kept: list[int] = []
    add = impulse._Blocks.add

    def spy(self, layer, row, delta):
        add(self, layer, row, delta)
        kept.append(self.rows[layer.index][row][1].size)

    monkeypatch.setattr(impulse._Blocks, "add", spy)
    small = run_impulse(_strided_net(32), device="cpu")
    held_small, kept[:] = sum(kept), []
    monkeypatch.setenv("ONNXREDUND_IMPULSE_MEMORY", "1")
    one_a_run = run_impulse(_strided_net(32), device="cpu")
    large = run_impulse(_strided_net(128), device="cpu")
    assert sum(kept) == 2 * held_small  # the same boxes at 32 x 32 (one a run) and at 128 x 128
    assert [layer.phases for layer in small.layers] == [(2, 2), (1, 1), (2, 2)]
    for a, b, c in zip(small.layers, one_a_run.layers, large.layers, strict=True):
        assert a.support == b.support and a.support[2:] == c.support[2:]
        np.testing.assert_array_equal(a.responses, b.responses)
        np.testing.assert_allclose(a.responses, c.responses, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a.ncc, c.ncc, atol=1e-5)
    # the first conv's response is its flipped kernel, as a linear layer's must be
    np.testing.assert_allclose(
        small.layers[0].responses[:, 0], _strided_net(32).constant("w1")[:, 0, ::-1, ::-1], atol=1e-6
    )
