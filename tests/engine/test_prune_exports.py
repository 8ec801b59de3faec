"""Pruning through the patterns exporters write, each found to end in a traceback or a wrong file before: a
conv read inside an If body, a Resize with constant sizes, an opset-18 Split with num_outputs, weights also
listed as graph inputs (old PyTorch exports), a CNTK-style IR-3 model whose dense weight is reshaped in the
graph. Each prunes a channel and compares with the original where that channel is zeroed at its consumers
(:func:`zeroed_at_consumers`), or asserts the refusal and its reason. The check by values itself is shown to
catch a cut that does not match and to name the node where the two first differ."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from builders import make_model
from onnx import TensorProto, helper, numpy_helper
from prunable import group_of, inputs, prune_and_compare, run, zoo

from onnxredund.analyses.prune import Target, most_removed, select_channels
from onnxredund.data import Dataset
from onnxredund.engine.calibration import collect_statistics
from onnxredund.engine.channel_groups import channel_groups
from onnxredund.engine.loading import load_model_proto
from onnxredund.engine.pruning import (
    PruneCost,
    check_by_values,
    compensate,
    remove_channels,
    unrounded,
    zeroed_at_consumers,
)
from onnxredund.errors import OnnxRedundError

RNG = np.random.default_rng(0)


def _w(*shape) -> np.ndarray:
    return RNG.normal(size=shape).astype(np.float32)


def test_a_conv_read_inside_an_if_body_is_refused_with_the_reason_not_deleted():
    then = helper.make_graph(
        [helper.make_node("Relu", ["a"], ["t"])],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)],
    )
    other = helper.make_graph(
        [helper.make_node("Neg", ["a"], ["e"])],
        "else",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)],
    )
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["a"]),
        helper.make_node("ReduceMean", ["x"], ["m"], keepdims=0),
        helper.make_node("Greater", ["m", "zero"], ["cond"]),
        helper.make_node("If", ["cond"], ["z"], name="branch", then_branch=then, else_branch=other),
    ]
    proto = make_model(nodes, [("x", [1, 2, 6, 6])], [("z", [1, 4, 6, 6])], {"w1": _w(4, 2, 3, 3), "zero": 0.0})
    m = load_model_proto(proto)
    groups = channel_groups(m)
    g = group_of(groups, "conv1")
    assert not g.prunable and "inside the body of If 'branch'" in g.reason
    with pytest.raises(OnnxRedundError, match="body of If"):
        remove_channels(m, groups, {g.index: [0]})


@pytest.mark.parametrize("opset", [13, 18])
def test_a_resize_with_constant_sizes_between_two_convs_loses_the_channels_removed(opset):
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["a"]),
        helper.make_node("Resize", ["a", "", "", "sizes"], ["up"], mode="nearest"),
        helper.make_node("Conv", ["up", "w2"], ["y"], name="conv2"),
    ]
    inits = {"w1": _w(4, 2, 3, 3), "b1": _w(4), "sizes": np.array([1, 4, 12, 12]), "w2": _w(3, 4, 1, 1)}
    proto = make_model(nodes, [("x", [1, 2, 6, 6])], [("y", [1, 3, 12, 12])], inits, opset=opset)
    prune_and_compare(proto, "conv1", [1, 2], inputs(1))


def test_a_resize_that_scales_the_channels_is_refused():
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"),
        helper.make_node("Resize", ["c1", "", "scales"], ["up"], mode="nearest"),
        helper.make_node("Conv", ["up", "w2"], ["y"], name="conv2"),
    ]
    inits = {"w1": _w(4, 2, 1, 1), "scales": np.array([1, 2, 1, 1], np.float32), "w2": _w(3, 8, 1, 1)}
    m = load_model_proto(make_model(nodes, [("x", ["N", 2, 6, 6])], [("y", ["N", 3, 6, 6])], inits))
    assert "scales the batch or the channels" in group_of(channel_groups(m), "conv1").reason


def test_an_opset_18_split_with_num_outputs_is_recounted_without_it():
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Split", ["c1"], ["s1", "s2"], axis=1, num_outputs=2),
        helper.make_node("Conv", ["s1", "wa"], ["ya"], name="convA"),
        helper.make_node("Conv", ["s2", "wb"], ["yb"], name="convB"),
        helper.make_node("Add", ["ya", "yb"], ["y"]),
    ]
    inits = {"w1": _w(6, 2, 3, 3), "wa": _w(3, 3, 1, 1), "wb": _w(3, 3, 1, 1)}
    proto = make_model(nodes, [("x", ["N", 2, 6, 6])], [("y", ["N", 3, 6, 6])], inits, opset=18)
    prune_and_compare(proto, "conv1", [0, 4], inputs(4))


def _with_weights_as_inputs(proto: onnx.ModelProto, ir: int) -> onnx.ModelProto:
    """Every initializer also listed as a graph input, as PyTorch 1.2 and CNTK wrote models."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    for t in out.graph.initializer:
        out.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    out.ir_version = ir
    return out


def test_weights_also_listed_as_graph_inputs_keep_declared_shapes_equal_to_their_values():
    proto = _with_weights_as_inputs(zoo(), ir=4)
    prune_and_compare(proto, "convB", [1], inputs(8))
    m = load_model_proto(proto)
    groups = channel_groups(m)
    pruned = remove_channels(m, groups, {group_of(groups, "convA").index: [2]})
    declared = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in pruned.graph.input}
    for t in pruned.graph.initializer:
        assert t.name not in declared or declared[t.name] == list(t.dims), t.name
    assert {i.name for i in pruned.graph.input} - {t.name for t in pruned.graph.initializer} == {"x"}


def _cntk_style() -> onnx.ModelProto:
    """IR 3, opset 8, batch fixed to 1: conv bias as a separate Add, a Reshape to (1, F) with a constant shape,
    and the dense weight reshaped from a 4-D initializer in the graph, every initializer a graph input."""
    size = 4
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="Convolution28", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c", "cb"], ["cc"]),
        helper.make_node("Relu", ["cc"], ["a"]),
        helper.make_node("Reshape", ["a", "flat"], ["f"]),
        helper.make_node("Reshape", ["fc4", "fcshape"], ["fc"]),
        helper.make_node("MatMul", ["f", "fc"], ["y"], name="Times212"),
    ]
    inits = {
        "w": _w(3, 2, 3, 3),
        "cb": _w(3, 1, 1),
        "flat": np.array([1, 3 * size * size]),
        "fc4": _w(3, size, size, 5) * 0.1,
        "fcshape": np.array([3 * size * size, 5]),
    }
    graph = helper.make_graph(
        nodes,
        "cntk",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 8)], ir_version=3)
    return _with_weights_as_inputs(proto, ir=3)


@pytest.mark.parametrize("method", [None, "mean", "lstsq"])
def test_a_cntk_ir3_model_prunes_with_every_initializer_an_input_and_a_reshaped_dense_weight(method):
    proto = _cntk_style()
    onnx.checker.check_model(proto, full_check=True)
    m = load_model_proto(proto)
    groups = channel_groups(m)
    g = group_of(groups, "Convolution28")
    assert g.prunable, g.reason
    removal = {g.index: [0, 1]}
    x = np.random.default_rng(3).normal(size=(24, 2, 4, 4)).astype(np.float32)
    updates = None
    if method:
        stats = collect_statistics(m, g.consumers, Dataset(x, None, "x"), gram=method == "lstsq", device="cpu")
        updates = compensate(m, groups, removal, method, stats)
    pruned = remove_channels(m, groups, removal, updates=updates)
    onnx.checker.check_model(pruned, full_check=True)  # IR 3: every initializer is a graph input
    assert {t.name for t in pruned.graph.initializer} <= {i.name for i in pruned.graph.input}
    want = run(zeroed_at_consumers(m, groups, removal, updates=updates), x[:1])
    np.testing.assert_allclose(run(pruned, x[:1]), want, rtol=1e-4, atol=1e-5)


def test_the_check_by_values_catches_a_cut_that_does_not_match_and_names_the_first_node_that_differs():
    m = load_model_proto(zoo())
    groups = channel_groups(m)
    g = group_of(groups, "convB")
    wrong = remove_channels(m, groups, {g.index: [1]})
    x = inputs(4)
    assert check_by_values(m, groups, {g.index: [1]}, wrong, {"x": x})[0] < 1e-4
    with pytest.raises(OnnxRedundError, match="removing channels of convB is not exact through Conv 'convB'"):
        check_by_values(m, groups, {g.index: [0]}, wrong, {"x": x})


def _rounding_at_half(gain: float, per_channel: bool = False):
    """x -> conv c1 (2 -> 2, 1 x 1) -> QuantizeLinear (scale 1, zero point -128: the Relu a quantizer drops) ->
    DequantizeLinear -> conv c2 (identity) -> y, c1's weight times ``gain``; with x all ones c1 gives 2.5 exactly,
    which rounds (half to even) to 2, and 2.5 x (1 + 1e-6) to 3. ``per_channel``: the activation quantized per
    channel (left rounded)."""
    scale = np.ones(2, np.float32) if per_channel else np.float32(1.0)
    zero = np.full(2, -128, np.int8) if per_channel else np.int8(-128)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="c1"),
        helper.make_node("QuantizeLinear", ["a", "s", "z"], ["q"], axis=1),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"], axis=1),
        helper.make_node("Conv", ["d", "w2"], ["y"], name="c2"),
    ]
    w1 = np.array([[[[1.25]], [[1.25]]], [[[0.5]], [[0.5]]]], np.float32) * np.float32(gain)
    inits = {"w1": w1, "w2": np.eye(2, dtype=np.float32).reshape(2, 2, 1, 1), "s": scale, "z": zero}
    return make_model(nodes, [("x", ["N", 2, 3, 3])], [("y", ["N", 2, 3, 3])], inits)


def test_quantized_activations_are_checked_without_their_rounding_which_turns_last_bits_into_steps():
    m = load_model_proto(_rounding_at_half(1.0))
    groups = channel_groups(m)
    same_but_last_bits = _rounding_at_half(1.0 + 1e-6)  # c1's channel 0 gives 2.5000025: rounds to 3, not 2
    x = np.ones((1, 2, 3, 3), np.float32)
    assert run(m.proto, x)[0, 0, 0, 0] == 2 and run(same_but_last_bits, x)[0, 0, 0, 0] == 3
    error, unrounded, amplified = check_by_values(m, groups, {}, same_but_last_bits, {"x": x})  # raised before: 0.33
    assert error < 2e-6 and unrounded == 1 and amplified is None
    # a per-channel pair keeps its rounding (and the whole step shows)
    m = load_model_proto(_rounding_at_half(1.0, per_channel=True))
    with pytest.raises(OnnxRedundError, match="not exact"):
        check_by_values(m, channel_groups(m), {}, _rounding_at_half(1.0 + 1e-6, per_channel=True), {"x": x})


def _sqrt_at_zero(gain: float):
    """x -> conv c1 (2 -> 2, 1 x 1, weights 1.25 and 0.5, times ``gain``) -> a - 2.5 -> Relu -> Sqrt -> y: with x
    all ones channel 0 is 2.5 - 2.5 = 0, and with weights one float32 step up 2.4e-7 (1e-4 of the check's floor),
    whose square root, 4.9e-4, is half of it."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="c1"),
        helper.make_node("Sub", ["a", "t"], ["d"]),
        helper.make_node("Relu", ["d"], ["r"]),
        helper.make_node("Sqrt", ["r"], ["y"], name="root"),
    ]
    w1 = np.array([[[[1.25]], [[1.25]]], [[[0.5]], [[0.5]]]], np.float32) * np.float32(gain)
    inits = {"w1": w1, "t": np.array(2.5, np.float32)}
    return make_model(nodes, [("x", ["N", 2, 3, 3])], [("y", ["N", 2, 3, 3])], inits)


def test_a_square_root_that_reads_no_removed_channel_may_amplify_last_bits_past_the_tolerance():
    m = load_model_proto(_sqrt_at_zero(1.0))
    groups = channel_groups(m)
    x = np.ones((1, 2, 3, 3), np.float32)
    last_bits = _sqrt_at_zero(1.0 + 1e-7)  # c1's channel 0 gives 2.5000002: 2.4e-7 after the Sub, 4.9e-4 after the root
    assert run(last_bits, x)[0, 0, 0, 0] == pytest.approx(4.9e-4, rel=0.01)
    error, _, amplified = check_by_values(m, groups, {}, last_bits, {"x": x})  # raised before: 0.49
    assert error == pytest.approx(0.49, rel=0.01) and amplified == "Sqrt 'root'"
    # a difference that starts before it is not the root's doing: c1 itself differs by 1 %
    with pytest.raises(OnnxRedundError, match="not exact through Conv 'c1'"):
        check_by_values(m, groups, {}, _sqrt_at_zero(1.01), {"x": x})


def _peak_at(gain: float):
    """x -> conv c1 (2 -> 2, 1 x 1, as :func:`_sqrt_at_zero`) -> Equal to 2.5 -> Cast to float -> y: M-LSD's peaks
    (a heatmap equal to its MaxPool); with x all ones channel 0 is exactly 2.5, one float32 step off with ``gain``
    1 + 1e-7."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="c1"),
        helper.make_node("Equal", ["a", "t"], ["e"], name="peak"),
        helper.make_node("Cast", ["e"], ["y"], to=TensorProto.FLOAT),
    ]
    w1 = np.array([[[[1.25]], [[1.25]]], [[[0.5]], [[0.5]]]], np.float32) * np.float32(gain)
    inits = {"w1": w1, "t": np.array(2.5, np.float32)}
    return make_model(nodes, [("x", ["N", 2, 3, 3])], [("y", ["N", 2, 3, 3])], inits)


def test_a_comparison_that_reads_no_removed_channel_may_decide_on_last_bits_past_the_tolerance():
    m = load_model_proto(_peak_at(1.0))
    groups = channel_groups(m)
    x = np.ones((1, 2, 3, 3), np.float32)
    last_bits = _peak_at(1.0 + 1e-7)  # c1's channel 0 gives 2.5000002: no longer equal, 1 -> 0
    assert run(_peak_at(1.0), x)[0, 0, 0, 0] == 1.0 and run(last_bits, x)[0, 0, 0, 0] == 0.0
    error, _, amplified = check_by_values(m, groups, {}, last_bits, {"x": x})  # raised before: through the Cast
    assert error == 1.0 and amplified == "Equal 'peak'"
    with pytest.raises(OnnxRedundError, match="not exact through Conv 'c1'"):  # c1 itself differs by 1 %
        check_by_values(m, groups, {}, _peak_at(1.01), {"x": x})


def test_unrounded_replaces_an_activations_quantize_pair_by_its_saturation_and_leaves_weights_quantized():
    x = np.linspace(-300, 300, 18, dtype=np.float32).reshape(1, 2, 3, 3)
    proto = _rounding_at_half(1.0)
    plain, count = unrounded(proto)
    assert count == 1 and [n.op_type for n in plain.graph.node] == ["Conv", "QuantizeLinear", "Clip", "Conv"]
    a = run(_without(proto, ["QuantizeLinear", "DequantizeLinear"], "a", "d"), x)  # c1 then c2, no quantization
    np.testing.assert_array_equal(run(plain, x), np.clip(a, 0.0, 255.0))  # (-128 - -128) x 1 to (127 - -128) x 1
    assert [n.op_type for n in proto.graph.node].count("DequantizeLinear") == 1  # the input is not changed
    weights = helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["w1"])  # a weight's pair: kept
    quantized = make_model(
        [weights, helper.make_node("Conv", ["x", "w1"], ["y"])],
        [("x", ["N", 2, 3, 3])],
        [("y", ["N", 2, 3, 3])],
        {"wq": np.ones((2, 2, 1, 1), np.int8), "s": np.float32(0.5), "z": np.int8(0)},
    )
    assert unrounded(quantized) == (quantized, 0)


def _shuffled_in_int8(resize_mode: str = "nearest", dequantize_scale: float = 0.5) -> onnx.ModelProto:
    """x -> QuantizeLinear (0.5, 100) -> a channel shuffle on the uint8 map (Reshape, Transpose, Reshape), a
    Resize -> DequantizeLinear -> y: the int8 channel shuffle between ShuffleNet's quantized convs."""
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
        helper.make_node("Reshape", ["q", "split_shape"], ["r1"]),
        helper.make_node("Transpose", ["r1"], ["t"], perm=[0, 2, 1, 3, 4]),
        helper.make_node("Reshape", ["t", "whole_shape"], ["r2"]),
        helper.make_node("Resize", ["r2", "", "scales"], ["up"], mode=resize_mode),
        helper.make_node("DequantizeLinear", ["up", "s2", "z"], ["y"]),
    ]
    inits = {
        "s": np.float32(0.5),
        "s2": np.float32(dequantize_scale),
        "z": np.uint8(100),
        "split_shape": np.array([1, 2, 2, 3, 3], np.int64),
        "whole_shape": np.array([1, 4, 3, 3], np.int64),
        "scales": np.array([1, 1, 2, 2], np.float32),
    }
    return make_model(nodes, [("x", [1, 4, 3, 3])], [("y", [1, 4, 6, 6])], inits)


def test_unrounded_follows_an_int8_channel_shuffle_between_the_quantize_pair():
    """NanoDet quantized by onnxruntime shuffles its channels on int8 between a QuantizeLinear and the next conv's
    DequantizeLinear: the pair was not seen, so its rounding stayed in the check by values, and a 20 % prune that
    was exact was refused (3.85 % at an output). The moves now run on the clipped floats."""
    x = np.linspace(-60, 60, 36, dtype=np.float32).reshape(1, 4, 3, 3) + np.float32(0.13)  # not on the 0.5 grid
    proto = _shuffled_in_int8()
    plain, count = unrounded(proto)
    assert count == 1
    shuffled = x.reshape(1, 2, 2, 3, 3).transpose(0, 2, 1, 3, 4).reshape(1, 4, 3, 3)
    want = np.clip(shuffled, -50.0, 77.5).repeat(2, axis=2).repeat(2, axis=3)  # (0 - 100) / 2, (255 - 100) / 2
    np.testing.assert_allclose(run(plain, x), want, rtol=0, atol=1e-6)
    assert not np.allclose(run(proto, x), want, atol=1e-3)  # the rounding is in the model itself
    # not the same values on the floats: an interpolating Resize, a DequantizeLinear at another scale
    assert unrounded(_shuffled_in_int8(resize_mode="linear"))[1] == 0
    assert unrounded(_shuffled_in_int8(dequantize_scale=0.25))[1] == 0


def test_unrounded_keeps_a_float16_activation_in_float16():
    # x (float16) -> QuantizeLinear (scale 0.25 in float16, zero point 10 uint8) -> DequantizeLinear -> y
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(np.array(0.25, np.float16), "s"),
        numpy_helper.from_array(np.array(10, np.uint8), "z"),
    ]
    graph = helper.make_graph(
        nodes,
        "fp16",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [4])],
        inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)
    plain, count = unrounded(proto)
    x = np.array([-9.0, 0.3, 7.1, 99.0], np.float16)
    y = ort.InferenceSession(plain.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert count == 1 and y.dtype == np.float16
    np.testing.assert_array_equal(y, np.clip(x, np.float16(-2.5), np.float16(61.25)))  # (0 - 10) / 4, (255 - 10) / 4


def _without(proto, ops: list[str], before: str, after: str):
    """``proto`` without its nodes of ``ops``, tensor ``after`` read as ``before``."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    kept = [n for n in out.graph.node if n.op_type not in ops]
    for n in kept:
        n.input[:] = [before if t == after else t for t in n.input]
    del out.graph.node[:]
    out.graph.node.extend(kept)
    return out


def _split_half_read_alone():
    """conv1 (4) -> Split into halves; convA reads the second half alone; Concat(first half, convA) -> conv2: the
    C2f pattern of YOLOv8. Removing both channels of the second half would leave convA zero input channels."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Split", ["c1", "parts"], ["s1", "s2"], axis=1),
        helper.make_node("Conv", ["s2", "wa"], ["a"], name="convA", pads=[1, 1, 1, 1]),
        helper.make_node("Concat", ["s1", "a"], ["cat"], axis=1),
        helper.make_node("Conv", ["cat", "w2"], ["y"], name="conv2"),
    ]
    inits = {"w1": _w(4, 2, 3, 3), "parts": np.array([2, 2]), "wa": _w(3, 2, 3, 3), "w2": _w(3, 5, 1, 1)}
    return make_model(nodes, [("x", ["N", 2, 6, 6])], [("y", ["N", 3, 6, 6])], inits)


def test_a_removal_that_leaves_a_consumer_nothing_to_read_is_refused_and_no_selection_makes_one():
    m = load_model_proto(_split_half_read_alone())
    groups = channel_groups(m)
    g = group_of(groups, "conv1")
    with pytest.raises(OnnxRedundError, match="leaves a consumer nothing of the group to read"):
        remove_channels(m, groups, {g.index: [2, 3]})
    scores = {g.index: np.array([4.0, 3.0, 1.0, 2.0])}  # the second half ranks lowest
    cost = PruneCost.measure(m, groups)
    most = most_removed(groups, scores, cost, "macs", 1)
    removal = select_channels(groups, scores, cost, Target("macs", most), "layer", "l1", 1)
    # the best channel of each consumer's reading stays: 3 of the half convA reads alone, 0 of what conv2 reads
    assert removal == {g.index: [1, 2]}
    prune_and_compare(_split_half_read_alone(), "conv1", [1, 2], inputs(4))


def _siamese() -> onnx.ModelProto:
    """ref, alt (N, 2, 6, 6) -> the same conv (3 x 3, 4 channels; PyTorch shares the weight with the second
    branch through an Identity) -> Relu -> Concat -> conv head (8 -> 3) -> y: a variant caller's twin branches."""
    rng = np.random.default_rng(7)
    nodes = [
        helper.make_node("Identity", ["w"], ["w_alt"]),
        helper.make_node("Identity", ["b"], ["b_alt"]),
        helper.make_node("Conv", ["ref", "w", "b"], ["r"], name="ref_conv", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["alt", "w_alt", "b_alt"], ["a"], name="alt_conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["r"], ["rr"]),
        helper.make_node("Relu", ["a"], ["ar"]),
        helper.make_node("Concat", ["rr", "ar"], ["d"], axis=1),
        helper.make_node("Conv", ["d", "h"], ["y"], name="head"),
    ]
    inits = {"w": rng.normal(size=(4, 2, 3, 3)), "b": rng.normal(size=4), "h": rng.normal(size=(3, 8, 1, 1))}
    shape = ["N", 2, 6, 6]
    return make_model(nodes, [("ref", shape), ("alt", shape)], [("y", ["N", 3, 6, 6])], inits)


def test_the_twin_branches_of_a_siamese_network_lose_the_same_channels_and_keep_sharing_their_weights():
    m = load_model_proto(_siamese(), impulse_input="ref")
    groups = channel_groups(m)
    twins = group_of(groups, "ref_conv")
    assert sorted(twins.producers) == ["alt_conv", "ref_conv"]  # two groups before: a Concat ties nothing
    pruned = remove_channels(m, groups, {twins.index: [1, 2]})
    convs = [n for n in pruned.graph.node if n.op_type == "Conv"][:2]
    assert convs[0].input[1] == convs[1].input[1] and convs[0].input[2] == convs[1].input[2]  # one weight, as before
    assert [list(t.dims) for t in pruned.graph.initializer if t.name == convs[0].input[1]] == [[2, 2, 3, 3]]
    rng = np.random.default_rng(2)
    feeds = {"ref": rng.random((2, 2, 6, 6), dtype=np.float32), "alt": rng.random((2, 2, 6, 6), dtype=np.float32)}
    assert check_by_values(m, groups, {twins.index: [1, 2]}, pruned, feeds)[0] < 1e-5
    # two weights of zeros (untrained layers) are equal by chance, not shared: no tie
    zeros = _siamese()
    del zeros.graph.node[0]  # the Identity: the alt branch reads an initializer of its own
    zero = np.zeros((4, 2, 3, 3), np.float32)
    zeros.graph.initializer[0].CopyFrom(numpy_helper.from_array(zero, "w"))
    zeros.graph.initializer.append(numpy_helper.from_array(zero, "w_alt"))
    assert group_of(channel_groups(load_model_proto(zeros, impulse_input="ref")), "ref_conv").producers == ["ref_conv"]


def test_a_model_that_fails_onnxs_full_check_itself_is_pruned_to_the_plain_check():
    """SLANet (paddle2onnx): its Loop body declares shapes that strict shape inference contradicts, so every pruned
    file "failed onnx's check" although the original fails it the same way; the pruned one passes what it passes."""
    w1 = np.random.default_rng(0).normal(size=(4, 2, 3, 3)).astype(np.float32)
    w2 = np.random.default_rng(1).normal(size=(3, 4, 3, 3)).astype(np.float32)
    body = helper.make_graph(
        [helper.make_node("Identity", ["c"], ["c2"]), helper.make_node("Identity", ["y"], ["s"])],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
        ],
        [
            helper.make_tensor_value_info("c2", TensorProto.BOOL, []),
            helper.make_tensor_value_info("s", TensorProto.FLOAT, ["N", 5, 6, 6]),  # 3 channels, in truth
        ],
    )
    once = [helper.make_tensor("t", TensorProto.BOOL, [], [1]), helper.make_tensor("n", TensorProto.INT64, [], [1])]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["z1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["z1"], ["a1"]),
        helper.make_node("Conv", ["a1", "w2"], ["z2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["z2"], ["y"]),
        helper.make_node("Constant", [], ["t"], value=once[0]),
        helper.make_node("Constant", [], ["n"], value=once[1]),
        helper.make_node("Loop", ["n", "t"], ["ys"], body=body),
    ]
    proto = make_model(nodes, [("x", ["N", 2, 6, 6])], [("ys", [1, "N", 3, 6, 6])], {"w1": w1, "w2": w2})
    with pytest.raises(onnx.shape_inference.InferenceError):
        onnx.checker.check_model(proto, full_check=True)
    model = load_model_proto(proto, input_shape=(2, 6, 6))
    groups = channel_groups(model)
    removal = {group_of(groups, "conv1").index: [1]}
    pruned = remove_channels(model, groups, removal)
    onnx.checker.check_model(pruned)
    x = np.random.default_rng(2).normal(size=(2, 2, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(
        run(pruned, x), run(zeroed_at_consumers(model, groups, removal), x), rtol=1e-5, atol=1e-6
    )
