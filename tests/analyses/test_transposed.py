"""Transposed convs (decoders of segmentation, enhancement and edge nets) are conv layers like any other:
listed, shuffled at their input, given impulse responses (their kernel stamped), with answers known in advance."""

from __future__ import annotations

import numpy as np
import pytest
from builders import make_model
from onnx import helper

from onnxredund.analyses.impulse import run_impulse
from onnxredund.analyses.shuffle import run_shuffle
from onnxredund.data import Dataset
from onnxredund.engine import load_model_proto

RNG = np.random.default_rng(5)


def decoder(dead_channel: int | None = None):
    """x (N, 2, 6, 6) -> Conv 2->4 stride 2 -> Relu -> ConvTranspose 4->3 stride 2 -> Relu -> Conv 3->2 -> y."""
    wt = RNG.normal(size=(4, 3, 2, 2))  # ConvTranspose: (C_in, C_out / groups, kH, kW)
    if dead_channel is not None:
        wt[dead_channel] = 0.0
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["z1"], name="down", strides=[2, 2]),
        helper.make_node("Relu", ["z1"], ["a1"]),
        helper.make_node("ConvTranspose", ["a1", "wt", "bt"], ["z2"], name="up", strides=[2, 2]),
        helper.make_node("Relu", ["z2"], ["a2"]),
        helper.make_node("Conv", ["a2", "w3"], ["y"], name="head"),
    ]
    inits = {
        "w1": RNG.normal(size=(4, 2, 2, 2)),
        "wt": wt,
        "bt": RNG.normal(size=3) * 0.1,
        "w3": RNG.normal(size=(2, 3, 1, 1)),
    }
    return load_model_proto(make_model(nodes, [("x", ["N", 2, 6, 6])], [("y", ["N", 2, 6, 6])], inits)), wt


def test_a_transposed_conv_is_listed_with_its_channels_and_the_macs_of_its_input_positions():
    model, wt = decoder()
    up = model.layer("up")
    assert [layer.name for layer in model.layers] == ["down", "up", "head"] and up.op == "ConvTranspose"
    assert (up.in_channels, up.out_channels, up.kernel, up.stride) == (4, 3, (2, 2), (2, 2))
    assert up.input_shape == (4, 3, 3) and up.output_shape == (3, 6, 6)
    assert up.macs == 3 * 3 * wt.size  # each of 3 x 3 input positions scatters 4 x 3 x 2 x 2 products


def test_shuffling_a_transposed_convs_input_channel_it_ignores_changes_nothing():
    model, _ = decoder(dead_channel=2)
    data = Dataset(RNG.random((24, 2, 6, 6), dtype=np.float32), None, "toy")
    result = run_shuffle(model, "up", data, batch_size=8, device="cpu")
    assert result.route == "fast"
    mean = result.mean_cosine()
    np.testing.assert_allclose(mean[2], 1.0, atol=1e-12)  # channel 2's weights are zero
    assert (np.delete(mean, 2) < 1.0).all() and result.outputs["y"].cosine[2] == 1.0


def test_the_impulse_response_of_a_transposed_conv_is_its_kernel_stamped():
    model, wt = decoder()
    # the transposed conv fed straight: impulses at its input (channel m at one position) stamp wt[m, c]
    layer = run_impulse(model, device="cpu", at="a1").layers[0]
    assert layer.name == "up"
    np.testing.assert_allclose(layer.responses, np.swapaxes(wt, 0, 1), atol=1e-6)  # (C_out, M, kH, kW)


GEOMETRIES = {
    "stride 2, pads, output_padding": dict(strides=[2, 2], pads=[1, 0, 0, 1], output_padding=[1, 0]),
    "dilated, grouped": dict(dilations=[2, 1], group=2, pads=[0, 1, 1, 0]),
    "stride 3, kernel larger than it": dict(strides=[3, 2], kernel=(4, 3)),
    "auto_pad SAME_UPPER": dict(strides=[2, 2], auto_pad="SAME_UPPER"),
    "auto_pad SAME_LOWER": dict(strides=[2, 2], auto_pad="SAME_LOWER"),
    "output_shape given": dict(strides=[2, 2], output_shape=[8, 9]),
}


def transposed(kernel=(3, 3), group=1, **attrs):
    """x (N, 4, 4, 5) -> ConvTranspose 4 -> 6 (``attrs``) -> Relu -> mean over positions -> Gemm -> logits."""
    rng = np.random.default_rng(11)
    nodes = [
        helper.make_node("ConvTranspose", ["x", "wt", "bt"], ["z"], name="up", group=group, **attrs),
        helper.make_node("Relu", ["z"], ["a"]),
        helper.make_node("ReduceMean", ["a"], ["m"], axes=[2, 3], keepdims=0),
        helper.make_node("Gemm", ["m", "fc"], ["logits"]),
    ]
    inits = {
        "wt": rng.normal(size=(4, 6 // group, *kernel)),
        "bt": rng.normal(size=6) * 0.1,
        "fc": rng.normal(size=(6, 3)),
    }
    return load_model_proto(make_model(nodes, [("x", ["N", 4, 4, 5])], [("logits", ["N", 3])], inits))


@pytest.mark.parametrize("mode", ["channel", "pixel"])
@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_a_transposed_convs_fast_path_equals_its_direct_path(geometry, mode):
    model = transposed(**GEOMETRIES[geometry])
    data = Dataset(RNG.normal(size=(20, 4, 4, 5)).astype(np.float32), RNG.integers(0, 3, 20), "toy")
    fast = run_shuffle(model, "up", data, mode=mode, batch_size=10, device="cpu", seed=3)
    direct = run_shuffle(model, "up", data, mode=mode, batch_size=10, device="cpu", seed=3, exact_path=True)
    assert (fast.route, direct.route) == ("fast", "direct")
    assert (direct.cosine < 1 - 1e-3).any()  # the shuffles change the output: the comparison says something
    np.testing.assert_allclose(fast.cosine, direct.cosine, atol=1e-5)
    np.testing.assert_allclose(fast.outputs["logits"].cosine, direct.outputs["logits"].cosine, atol=1e-6)
    np.testing.assert_array_equal(fast.accuracy, direct.accuracy)
