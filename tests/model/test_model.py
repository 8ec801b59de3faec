"""The Model record's lookups and the input queries: which input is the image, its sizes and its layout,
read from what the graph does with it."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from builders import make_model, small_cnn
from onnx import helper, numpy_helper

from onnxredund.engine import load_model_proto
from onnxredund.engine.runtime import Runner
from onnxredund.errors import OnnxRedundError
from onnxredund.model import (
    channel_axis,
    classifier_output,
    image_layout,
    input_sizes,
    later_batch_axes,
    pick_image_input,
)

W1 = np.random.default_rng(0).normal(size=(24, 1, 3, 3)).astype(np.float32)


def test_pick_layers_by_name_or_index_each_once_in_the_order_named():
    m = load_model_proto(small_cnn()[0])
    assert [layer.name for layer in m.pick_layers(["conv2", " 0", "1"])] == ["conv2", "conv1"]
    with pytest.raises(OnnxRedundError, match="valid layers: 0=conv1, 1=conv2"):
        m.pick_layers(["conv3"])


def test_classifier_output_is_a_softmax_output_or_the_first_n_by_classes():
    m = load_model_proto(small_cnn()[0])
    assert classifier_output(m) == "logits"
    nodes = [helper.make_node("Conv", ["x", "w"], ["z"], name="c")]
    w = small_cnn()[1]["w1"]
    conv = load_model_proto(make_model(nodes, [("x", ["N", 3, 6, 6])], [("z", ["N", 4, 4, 4])], {"w": w}))
    assert classifier_output(conv) is None
    # a face detector: box regression (N, 4) first, face probability (N, 2) from a Softmax second
    proto, _ = small_cnn(classes=4)
    proto.graph.node.append(helper.make_node("Softmax", ["logits"], ["prob"], axis=1))
    proto.graph.output.append(helper.make_tensor_value_info("prob", 1, ["N", 4]))
    two = load_model_proto(proto)
    assert two.classifiers == ["prob"]
    assert load_model_proto(proto, classifier="logits").classifiers == ["logits"]
    assert load_model_proto(proto, classifier="none").classifiers == []
    with pytest.raises(OnnxRedundError, match="`classifier` 'nope' is not an output"):
        load_model_proto(proto, classifier="nope")


def test_a_softmax_written_out_as_an_exp_over_its_sum_is_the_classifier_output():
    # jax2tf writes a softmax so (Google's Magika: its 214 file types were measured as output drift, not agreement)
    proto, _ = small_cnn(classes=4)
    proto.graph.node.extend(
        [
            helper.make_node("ReduceMax", ["logits"], ["top"], axes=[1], keepdims=1),
            helper.make_node("Sub", ["logits", "top"], ["shifted"]),
            helper.make_node("Exp", ["shifted"], ["e"]),
            helper.make_node("ReduceSum", ["e", "axis"], ["total"], keepdims=0),
            helper.make_node("Reshape", ["total", "column"], ["total2"]),
            helper.make_node("Expand", ["total2", "wide"], ["total3"]),
            helper.make_node("Div", ["e", "total3"], ["prob"]),
        ]
    )
    for name, value in (("axis", [1]), ("column", [-1, 1]), ("wide", [1, 4])):
        proto.graph.initializer.append(numpy_helper.from_array(np.array(value, np.int64), name))
    proto.graph.output.append(helper.make_tensor_value_info("prob", 1, ["N", 4]))
    model = load_model_proto(proto)
    assert model.classifiers == ["prob"]  # not the logits listed first
    x = np.random.default_rng(0).random((3, 3, 6, 6), dtype=np.float32)
    logits, prob = Runner.create(model.proto, "cpu").run({"x": x})
    np.testing.assert_allclose(prob, np.exp(logits) / np.exp(logits).sum(1, keepdims=True), rtol=1e-5)


def _pooled(head: str):
    """x (N, 4, 5, 5) -> conv c (4 -> 4, 3 x 3, padded) -> then, by ``head``: "residual": + x, Relu, pooled and
    flattened (a ResNet trunk's embedding, EfficientWord-Net's 2,048 features); "squeezenet": Relu, pooled and
    flattened (the 1 x 1 conv's channels are the classes); "dense": the residual features, then MatMul + bias."""
    w = np.random.default_rng(1).normal(size=(4, 4, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["z"], name="c", pads=[1, 1, 1, 1])]
    if head == "squeezenet":
        nodes.append(helper.make_node("Relu", ["z"], ["r"]))
    else:
        nodes += [helper.make_node("Add", ["z", "x"], ["s"]), helper.make_node("Relu", ["s"], ["r"])]
    nodes += [helper.make_node("GlobalAveragePool", ["r"], ["g"]), helper.make_node("Flatten", ["g"], ["f"])]
    inits = {"w": w}
    if head == "dense":
        nodes += [helper.make_node("MatMul", ["f", "fc"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])]
        inits |= {"fc": np.ones((4, 3), np.float32), "b": np.zeros(3, np.float32)}
    out = "y" if head == "dense" else "f"
    return load_model_proto(
        make_model(nodes, [("x", ["N", 4, 5, 5])], [(out, ["N", 3 if head == "dense" else 4])], inits)
    )


def test_pooled_features_are_not_class_scores_and_a_learned_map_to_them_is():
    assert _pooled("residual").classifiers == []  # was taken for 4 classes: "agreement 0.00 %" after a prune
    assert _pooled("squeezenet").classifiers == ["f"]
    assert _pooled("dense").classifiers == ["y"]


def test_per_position_scores_of_a_detector_head_are_not_class_scores():
    # YuNet's face scores: a 1-channel conv's 8 x 8 map, transposed and reshaped to (N, 64, 1), then a Sigmoid,
    # was taken for 64 classes (agreement: the arg-max over positions)
    w = np.random.default_rng(2).normal(size=(1, 3, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["z"], name="c", pads=[1, 1, 1, 1]),
        helper.make_node("Transpose", ["z"], ["t"], perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["t", "shape"], ["r"]),
        helper.make_node("Sigmoid", ["r"], ["cls_8"]),
    ]
    inits = {"w": w, "shape": np.array([-1, 64, 1], np.int64)}
    model = load_model_proto(make_model(nodes, [("x", ["N", 3, 8, 8])], [("cls_8", ["N", 64, 1])], inits))
    assert model.shapes["cls_8"] == (64, 1) and model.classifiers == []
    # the same form where the 64 are the conv's channels (a 1 x 1 head over a pooled map) is a classifier
    wide = np.random.default_rng(2).normal(size=(64, 3, 1, 1)).astype(np.float32)
    head = [
        helper.make_node("GlobalAveragePool", ["x"], ["g"]),
        helper.make_node("Conv", ["g", "w"], ["z"], name="c"),
        helper.make_node("Reshape", ["z", "shape"], ["cls_8"]),
    ]
    inits = {"w": wide, "shape": np.array([-1, 64, 1], np.int64)}
    model = load_model_proto(make_model(head, [("x", ["N", 3, 8, 8])], [("cls_8", ["N", 64, 1])], inits))
    assert model.classifiers == ["cls_8"]


def test_input_sizes_take_given_sizes_for_free_dimensions_and_refuse_contradictions():
    nodes = [helper.make_node("Conv", ["x", "w"], ["z"], name="c")]
    w = small_cnn()[1]["w1"]
    proto = make_model(nodes, [("x", ["N", 3, "H", "W"])], [("z", ["N", 4, "h", "w"])], {"w": w})
    assert input_sizes(proto, "x", {None: (3, 9, 11)}) == {"x": ["N", 3, 9, 11]}
    with pytest.raises(OnnxRedundError, match="contradicts the model's fixed input"):
        input_sizes(proto, "x", {None: (1, 9, 11)})
    with pytest.raises(OnnxRedundError, match="pass `input_shape` 3x64x64"):
        input_sizes(proto, "x", {})


def test_a_free_signal_length_is_suggested_from_the_first_convs_kernel():
    # Silero VAD frames its audio for a 256-tap STFT conv: the suggested 64 samples failed in onnxruntime's Pad
    w = np.random.default_rng(0).normal(size=(4, 1, 256)).astype(np.float32)
    nodes = [
        helper.make_node("Unsqueeze", ["x", "one"], ["x1"]),
        helper.make_node("Conv", ["x1", "w"], ["z"], name="stft", strides=[128]),
    ]
    proto = make_model(nodes, [("x", ["N", "L"])], [("z", ["N", 4, "T"])], {"w": w, "one": np.array([1])})
    with pytest.raises(
        OnnxRedundError,
        match=r"pass `input_shape` 512 \(its sizes after the batch; the first conv's kernel spans 256\)",
    ):
        input_sizes(proto, "x", {})
    assert input_sizes(proto, "x", {None: (512,)}) == {"x": ["N", 512]}


def test_input_sizes_in_the_other_channel_order_are_moved_when_only_that_order_fits(caplog):
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["t", "w"], ["z"], name="c"),
    ]
    w = small_cnn()[1]["w1"]
    proto = make_model(nodes, [("x", ["N", "H", "W", 3])], [("z", ["N", 4, "h", "w"])], {"w": w})
    assert input_sizes(proto, "x", {None: (9, 11, 3)}) == {"x": ["N", 9, 11, 3]}
    with caplog.at_level(logging.WARNING):
        assert input_sizes(proto, "x", {None: (3, 9, 11)}) == {"x": ["N", 9, 11, 3]}  # CxHxW for an NHWC input
    assert "taken as channels first" in caplog.text and "gets 9x11x3" in caplog.text
    nchw = make_model([nodes[1]], [("t", ["N", 3, "H", "W"])], [("z", ["N", 4, "h", "w"])], {"w": w})
    assert input_sizes(nchw, "t", {None: (9, 11, 3)}) == {"t": ["N", 3, 9, 11]}  # HxWxC for an NCHW input
    with pytest.raises(OnnxRedundError, match="contradicts"):
        input_sizes(proto, "x", {None: (9, 4, 11)})  # neither order fits


def test_free_dimensions_of_another_input_than_the_image_are_asked_for_by_name():
    nodes = [helper.make_node("Conv", ["x", "w"], ["z"], name="c"), helper.make_node("Mul", ["z", "gain"], ["y"])]
    w = small_cnn()[1]["w1"]
    proto = make_model(nodes, [("x", ["N", 3, 6, 6]), ("gain", ["N", "T"])], [("y", ["N", 4, 4, 4])], {"w": w})
    with pytest.raises(OnnxRedundError, match=r"input 'gain' .* pass `input_shape` gain=64 "):
        input_sizes(proto, "x", {None: (3, 6, 6)})
    assert input_sizes(proto, "x", {"gain": (1,)})["gain"] == ["N", 1]


def test_the_image_input_is_the_only_float_input_of_image_rank_or_the_one_named():
    nodes = [helper.make_node("Add", ["x", "x2"], ["s"]), helper.make_node("Conv", ["s", "w"], ["z"])]
    w = small_cnn()[1]["w1"]
    proto = make_model(nodes, [("x", ["N", 3, 6, 6]), ("x2", ["N", 3, 6, 6])], [("z", ["N", 4, 4, 4])], {"w": w})
    with pytest.raises(OnnxRedundError, match="2 image inputs"):
        pick_image_input(proto, "m.onnx")
    assert pick_image_input(proto, "m.onnx", "x2") == "x2"


def tf_one_channel(reshape: bool) -> object:
    """TensorFlow's NHWC input of one channel, N x 8 x 6 x 1, reaching the conv through a Reshape to
    N x 1 x 8 x 6 (what tf2onnx writes for one channel) or a Transpose."""
    if reshape:
        first = helper.make_node("Reshape", ["x", "shape"], ["xt"])
    else:
        first = helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2])
    nodes = [first, helper.make_node("Conv", ["xt", "w"], ["z"], name="c")]
    inits = {"w": W1} | ({"shape": [-1, 1, 8, 6]} if reshape else {})
    return make_model(nodes, [("x", ["N", 8, 6, 1])], [("z", ["N", 24, 6, 4])], inits)


@pytest.mark.parametrize("reshape", [True, False])
def test_a_one_channel_nhwc_input_is_read_as_nhwc_from_the_graph(reshape):
    m = load_model_proto(tf_one_channel(reshape))
    assert m.layout == "NHWC" and m.sample_shape == (8, 6, 1)
    assert m.image_input.channels == 1 and m.image_input.spatial_shape == (8, 6)
    assert m.layers[0].input_shape == (1, 8, 6)


def test_an_nhwc_input_min_max_normalised_over_its_flattened_sample_is_read_as_nhwc(caplog):
    # EfficientWord-Net's ResNet-50 normalises so: Reshape to [N, H*W*C], ReduceMin/ReduceMax, Sub, Div, Reshape back
    nodes = [
        helper.make_node("Reshape", ["x", "flat"], ["f"]),
        helper.make_node("ReduceMin", ["f"], ["lo"], axes=[1], keepdims=1),
        helper.make_node("ReduceMax", ["f"], ["hi"], axes=[1], keepdims=1),
        helper.make_node("Sub", ["f", "lo"], ["shifted"]),
        helper.make_node("Sub", ["hi", "lo"], ["span"]),
        helper.make_node("Div", ["shifted", "span"], ["scaled"]),
        helper.make_node("Reshape", ["scaled", "back"], ["xb"]),
        helper.make_node("Transpose", ["xb"], ["xt"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["xt", "w"], ["z"], name="c"),
    ]
    w = np.ones((4, 2, 3, 3), np.float32)
    inits = {"w": w, "flat": [-1, 60], "back": [-1, 6, 5, 2]}
    proto = make_model(nodes, [("x", ["N", 6, 5, 2])], [("z", ["N", 4, 4, 3])], inits)
    with caplog.at_level(logging.WARNING, logger="onnxredund"):
        m = load_model_proto(proto)
    assert m.layout == "NHWC" and m.image_input.channels == 2  # was taken for NCHW: 6 channels of 5 x 2
    assert "cannot tell" not in caplog.text


def test_a_layout_the_graph_does_not_show_is_assumed_nchw_with_a_warning_and_taken_from_layout(caplog):
    # N x 2 x 8 x 4 reshaped to N x 4 x 4 x 4: the graph cannot tell which input axis holds the channels
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["xr"]), helper.make_node("Conv", ["xr", "w"], ["z"])]
    w = np.ones((2, 4, 3, 3), np.float32)
    proto = make_model(nodes, [("x", ["N", 2, 8, 4])], [("z", ["N", 2, 2, 2])], {"w": w, "shape": [-1, 4, 4, 4]})
    with caplog.at_level(logging.WARNING, logger="onnxredund"):
        assert load_model_proto(proto).layout == "NCHW"
    assert "cannot tell from the graph" in caplog.text and "pass `layout` nhwc" in caplog.text
    assert load_model_proto(proto, layout="nhwc").layout == "NHWC"
    # the same through a second Reshape that moves a size-1 axis: still cannot tell (no crash on the lost axes)
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["xr"]),
        helper.make_node("Reshape", ["xr", "shape1"], ["x1"]),
        helper.make_node("Reshape", ["x1", "shape"], ["x2"]),
        helper.make_node("Conv", ["x2", "w"], ["z"]),
    ]
    inits = {"w": w, "shape": [-1, 4, 4, 4], "shape1": [-1, 4, 4, 4, 1]}
    proto = make_model(nodes, [("x", ["N", 2, 8, 4])], [("z", ["N", 2, 2, 2])], inits)
    assert load_model_proto(proto).layout == "NCHW"


def test_channel_axis_follows_transposes_and_axis_keeping_ops():
    nodes = [
        helper.make_node("Mul", ["x", "scale"], ["xs"]),
        helper.make_node("Transpose", ["xs"], ["xt"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["xt", "w"], ["z"]),
    ]
    graph = helper.make_graph(nodes, "g", [], [])
    assert channel_axis(graph, "x", {"x": (8, 6, 3), "xs": (8, 6, 3), "xt": (3, 8, 6)}) == 3
    assert image_layout(4, 3, None, "x") == "NHWC" and image_layout(3, 1, None, "x") == "NCL"
    assert image_layout(5, 4, None, "x") == "NDHWC" and image_layout(4, 3, "nchw", "x") == "NCHW"


def test_channel_axis_is_told_by_a_mean_over_the_channels_that_keeps_its_axes_xfeats_grayscale():
    """XFeat reads its RGB input through ReduceMean(axes=1, keepdims) and an instance norm: the averaged axis is the
    channels; in NHWC the same through a Transpose; a whole-sample statistic that reaches no conv says nothing."""
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["gray"], axes=[1], keepdims=1),
        helper.make_node("InstanceNormalization", ["gray", "s", "b"], ["n"]),
        helper.make_node("Conv", ["n", "w"], ["z"]),
    ]
    graph = helper.make_graph(nodes, "g", [], [])
    assert channel_axis(graph, "x", {"x": (3, 8, 6), "gray": (1, 8, 6), "n": (1, 8, 6)}) == 1
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["gray"], axes=[3], keepdims=1),
        helper.make_node("Transpose", ["gray"], ["t"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["t", "w"], ["z"]),
        helper.make_node("ReduceMax", ["x"], ["top"]),  # a statistic, read by an op the walk does not follow
        helper.make_node("Equal", ["top", "zero"], ["flat"]),
    ]
    graph = helper.make_graph(nodes, "g", [], [])
    assert channel_axis(graph, "x", {"x": (8, 6, 3), "gray": (8, 6, 1), "t": (1, 8, 6), "top": (1, 1, 1)}) == 3
    # keepdims=0 drops the axis: nothing to follow, so nothing found
    nodes[0] = helper.make_node("ReduceMean", ["x"], ["gray"], axes=[3], keepdims=0)
    graph = helper.make_graph(nodes, "g", [], [])
    assert channel_axis(graph, "x", {"x": (8, 6, 3), "gray": (8, 6), "t": (1, 8, 6), "top": (1, 1, 1)}) is None


def test_channel_axis_follows_tensorflows_tensordot_over_the_channels_lyt_nets_rgb_to_yuv():
    """LYT-Net turns RGB into YUV by Tensordot: (N, H, W, 3) reshaped to (N x H x W, 3), a MatMul by a 3 x 3 matrix,
    and reshaped back; the channels are the kept last axis all along."""
    nodes = [
        helper.make_node("Reshape", ["x", "rows"], ["r"]),
        helper.make_node("MatMul", ["r", "yuv"], ["m"]),
        helper.make_node("Reshape", ["m", "back"], ["b"]),
        helper.make_node("Transpose", ["b"], ["t"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["t", "w"], ["z"]),
    ]
    inits = {"rows": [-1, 3], "yuv": np.eye(3, dtype=np.float32), "back": [-1, 8, 6, 3], "w": np.ones((2, 3, 1, 1))}
    graph = make_model(nodes, [("x", ["N", 8, 6, 3])], [("z", ["N", 2, 8, 6])], inits).graph
    shapes = {"x": (8, 6, 3), "r": (3,), "m": (3,), "b": (8, 6, 3), "t": (3, 8, 6)}
    assert channel_axis(graph, "x", shapes) == 3  # lost at the first Reshape before
    # a MatMul by a computed matrix is not a channel mix the walk knows: nothing found
    del graph.initializer[1]
    assert channel_axis(graph, "x", shapes) is None


def test_a_layout_the_graph_does_not_show_is_taken_from_sizes_that_show_it(caplog):
    with caplog.at_level(logging.WARNING, logger="onnxredund"):
        assert image_layout(4, None, None, "x", (240, 320, 3)) == "NHWC"  # was NCHW: 240 channels of 320 x 3
    assert "sizes 240x320x3 say last" in caplog.text and "pass `layout` nchw" in caplog.text
    assert image_layout(4, None, None, "x", (3, 240, 320)) == "NCHW"
    assert image_layout(4, None, None, "x", (8, 8, 4)) == "NCHW"  # neither end says: the default, said
    assert image_layout(4, None, "nchw", "x", (240, 320, 3)) == "NCHW"  # the user's word first


def test_the_batch_on_a_later_axis_is_found_paddles_question_marks_on_every_free_axis_not_taken_for_it():
    def graph(*inputs):
        return helper.make_graph([], "g", [helper.make_tensor_value_info(n, 1, s) for n, s in inputs], [])

    assert later_batch_axes(graph(("x", ["?", 3, "?", "?"]), ("scale", [1, "?"]))) == {}  # '?' is any free size
    assert later_batch_axes(graph(("x", ["N", 3, "H", "W"]), ("mask", ["N", "H", "W"]))) == {}
    assert later_batch_axes(graph(("input", ["batch", "sequence"]), ("state", [2, "batch", 128]))) == {"state": 1}
