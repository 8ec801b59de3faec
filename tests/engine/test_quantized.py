"""Quantized models in QDQ form (what onnxruntime's ``quantize_static`` writes by default: float Convs reading
DequantizeLinear of int8 weights, activations through QuantizeLinear/DequantizeLinear pairs): their convs are
listed with the dequantized weights' shapes, swept on the fast path as on the direct one, and pruned with the
weights kept quantized, equal by values to the original with the channels' int8 weights at their zero point."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import small_cnn, statically_quantized
from onnx import TensorProto, helper, numpy_helper

from onnxredund.analyses.shuffle import run_shuffle
from onnxredund.data import Dataset
from onnxredund.engine.channel_groups import channel_groups
from onnxredund.engine.loading import load_model_proto
from onnxredund.engine.pruning import remove_channels
from onnxredund.engine.runtime import Runner
from onnxredund.model import ConstantTable

RNG = np.random.default_rng(7)


def _dq_model(x: np.ndarray, scale: np.ndarray, zero: np.ndarray, **attributes) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(x, "q"), numpy_helper.from_array(scale, "s"), numpy_helper.from_array(zero, "z")]
    node = helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], **attributes)
    graph = helper.make_graph(
        [node], "dq", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


@pytest.mark.parametrize(
    ("scale_shape", "attributes"),
    [((), {}), ((4,), {"axis": 0}), ((3,), {"axis": 1}), ((4, 2, 3, 3), {"axis": 1, "block_size": 2})],
    ids=["per-tensor", "per-axis-0", "per-axis-1", "blocked"],
)
def test_a_dequantized_constant_equals_what_onnxruntime_computes(scale_shape, attributes):
    x = RNG.integers(-128, 128, size=(4, 3, 3, 3), dtype=np.int8)
    scale = RNG.uniform(0.001, 0.1, size=scale_shape).astype(np.float32)
    zero = RNG.integers(-5, 5, size=scale_shape, dtype=np.int8)
    proto = _dq_model(x, scale, zero, **attributes)
    want = Runner.create(proto, "cpu").run({})[0]
    got = ConstantTable(proto.graph)["y"]
    assert got.dtype == np.float32 and got.shape == x.shape
    np.testing.assert_array_equal(got, want)


def _q_model(x: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, **attributes) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(x, "f"), numpy_helper.from_array(scale, "s")]
    inits += [] if zero is None else [numpy_helper.from_array(zero, "z")]
    node = helper.make_node("QuantizeLinear", ["f", "s"] + ([] if zero is None else ["z"]), ["y"], **attributes)
    kind = TensorProto.UINT8 if zero is None else helper.np_dtype_to_tensor_dtype(zero.dtype)
    graph = helper.make_graph([node], "q", [], [helper.make_tensor_value_info("y", kind, None)], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


@pytest.mark.parametrize(
    ("zero", "attributes"),
    [(None, {}), (np.int8(3), {}), (np.array([0, 5, -7, 1], np.int8), {"axis": 0})],
    ids=["uint8-no-zero-point", "int8-per-tensor", "int8-per-axis"],
)
def test_a_quantized_constant_equals_what_onnxruntime_computes(zero, attributes):
    """A weight a model quantizes itself (float initializer -> QuantizeLinear -> DequantizeLinear: onnxruntime's
    quantizer writes that for weights listed as graph inputs) folds to the same integers, ties and saturation
    included."""
    x = np.concatenate([RNG.normal(scale=4, size=32), [0.25, 0.75, -0.25, 1e4, -1e4, 0.0, 2.5, -2.5]])
    x = np.resize(x, (4, 10)).astype(np.float32)
    scale = np.float32(0.5) if zero is None or np.ndim(zero) == 0 else np.array([0.5, 0.1, 2.0, 0.03], np.float32)
    proto = _q_model(x, np.asarray(scale), None if zero is None else np.asarray(zero), **attributes)
    want = Runner.create(proto, "cpu").run({})[0]
    got = ConstantTable(proto.graph)["y"]
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


def test_weights_a_model_quantizes_itself_are_constants_of_the_right_shape(tmp_path):
    """Float weights quantized in the graph (initializer -> QuantizeLinear -> DequantizeLinear: what onnxruntime's
    quantizer wrote for PaddleOCR's classifier, whose weights Paddle lists as graph inputs) are constants: that
    model was refused, a depthwise conv's weights taken as (1, 3, 3) from the per-sample shapes."""
    qdq = statically_quantized(small_cnn(c_in=3, c_mid=6, c_out=5)[0], tmp_path, per_channel=False)
    inits = {t.name: t for t in qdq.graph.initializer}
    q, scale = (numpy_helper.to_array(inits[n]) for n in ("w2_quantized", "w2_scale"))
    float_weight = numpy_helper.from_array(q.astype(np.float32) * scale, "w2_float")
    qdq.graph.initializer.remove(inits["w2_quantized"])
    qdq.graph.initializer.append(float_weight)
    quantize = helper.make_node("QuantizeLinear", ["w2_float", "w2_scale", "w2_zero_point"], ["w2_quantized"])
    qdq.graph.node.insert(0, quantize)
    model = load_model_proto(qdq)
    assert [(c.in_channels, c.out_channels, c.kernel) for c in model.layers] == [(3, 6, (3, 3)), (6, 5, (3, 3))]
    np.testing.assert_array_equal(ConstantTable(qdq.graph)["w2_quantized"], q)
    groups = channel_groups(model)
    pruned = remove_channels(model, groups, {next(g for g in groups if "conv1" in g.producers).index: [2]})
    made_by = {o: n for n in pruned.graph.node for o in n.output}
    conv2 = next(n for n in pruned.graph.node if n.name == "conv2")
    dq = made_by[conv2.input[1]]
    quantizer = made_by[dq.input[0]]  # still quantized in the graph, from the float weight cut to 5 input channels
    assert (dq.op_type, quantizer.op_type) == ("DequantizeLinear", "QuantizeLinear")
    assert [list(t.dims) for t in pruned.graph.initializer if t.name == quantizer.input[0]] == [[5, 5, 3, 3]]
    zeroed = onnx.ModelProto()
    zeroed.CopyFrom(qdq)
    w = q.astype(np.float32) * scale
    w[:, 2] = 0.0  # quantized to the zero point 0: conv2 does not read channel 2
    next(t for t in zeroed.graph.initializer if t.name == "w2_float").CopyFrom(numpy_helper.from_array(w, "w2_float"))
    x = RNG.normal(size=(4, 3, 6, 6)).astype(np.float32)
    want = Runner.create(zeroed, "cpu", optimize=False).run({"x": x})[0]
    got = Runner.create(pruned, "cpu", optimize=False).run({"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("per_channel", [False, True], ids=["per-tensor", "per-channel"])
def test_a_qdq_models_convs_are_listed_as_the_float_models(tmp_path, per_channel, caplog):
    proto = small_cnn(c_in=3, c_mid=6, c_out=5)[0]
    want = [(c.name, c.in_channels, c.out_channels, c.kernel) for c in load_model_proto(proto).layers]
    qdq = statically_quantized(proto, tmp_path, per_channel=per_channel)
    caplog.clear()
    model = load_model_proto(qdq)
    assert [(c.name, c.in_channels, c.out_channels, c.kernel) for c in model.layers] == want  # was: "expect 3"
    assert model.inputs[0].layout == "NCHW" and "cannot tell" not in caplog.text  # seen through the Q/DQ pair


def test_a_qdq_sweeps_fast_path_equals_its_direct_path(tmp_path):
    model = load_model_proto(statically_quantized(small_cnn(c_mid=6)[0], tmp_path, per_channel=True))
    x = RNG.normal(size=(40, 3, 6, 6)).astype(np.float32)
    data = Dataset(x, RNG.integers(0, 4, 40), "noise")
    fast = run_shuffle(model, "conv2", data, batch_size=20, device="cpu")
    direct = run_shuffle(model, "conv2", data, batch_size=20, device="cpu", exact_path=True)
    assert fast.route == "fast" and direct.route == "direct"
    np.testing.assert_allclose(fast.cosine, direct.cosine, atol=1e-6)
    np.testing.assert_array_equal(fast.accuracy, direct.accuracy)


def _at_zero_point(proto: onnx.ModelProto, weight: str, channels: list[int]) -> onnx.ModelProto:
    """The QDQ model with input channels ``channels`` of the conv reading ``weight`` (the DequantizeLinear
    output) at their zero point: they dequantize to exactly 0, so the conv does not read them."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    dq = next(n for n in out.graph.node if n.output[0] == weight)
    inits = {t.name: t for t in out.graph.initializer}
    q = numpy_helper.to_array(inits[dq.input[0]]).copy()
    zero = numpy_helper.to_array(inits[dq.input[2]])
    q[:, channels] = zero.reshape(-1, *([1] * (q.ndim - 1)))[:, [0] * len(channels)] if zero.size > 1 else zero
    inits[dq.input[0]].CopyFrom(numpy_helper.from_array(q, dq.input[0]))
    return out


@pytest.mark.parametrize("per_channel", [False, True], ids=["per-tensor", "per-channel"])
def test_pruning_a_qdq_model_keeps_the_weights_quantized_and_equals_them_at_their_zero_point(tmp_path, per_channel):
    proto = statically_quantized(small_cnn(c_mid=6, seed=3)[0], tmp_path, per_channel=per_channel)
    model = load_model_proto(proto)
    groups = channel_groups(model)
    group = next(g for g in groups if "conv1" in g.producers)
    assert group.prunable, group.reason
    pruned = remove_channels(model, groups, {group.index: [1, 4]})
    onnx.checker.check_model(pruned, full_check=True)
    floats = [t.name for t in pruned.graph.initializer if t.data_type == TensorProto.FLOAT and len(t.dims) == 4]
    assert floats == []  # no conv weight became float: each is int8 behind a DequantizeLinear
    weights = {t.name: list(t.dims) for t in pruned.graph.initializer if t.data_type == TensorProto.INT8}
    assert sorted(d for d in weights.values() if len(d) == 4) == [[4, 3, 3, 3], [5, 4, 3, 3]]
    if per_channel:  # conv1's per-channel scales lost the two rows with their channels
        scales = [
            list(t.dims) for t in pruned.graph.initializer if t.name.startswith(("w1_scale", "b1_quantized_scale"))
        ]
        assert scales == [[4], [4]]
    conv2_weight = next(n for n in proto.graph.node if n.name == "conv2").input[1]
    x = RNG.normal(size=(16, 3, 6, 6)).astype(np.float32)
    # unoptimised, as the prune command's own value check runs: fused into QLinearConv, x86's u8s8 kernels
    # saturate pairs of products in int16, and which products pair up depends on the input channels there are
    want = Runner.create(_at_zero_point(proto, conv2_weight, [1, 4]), "cpu", optimize=False).run({"x": x})[0]
    got = Runner.create(pruned, "cpu", optimize=False).run({"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert not np.allclose(got, Runner.create(proto, "cpu").run({"x": x})[0], atol=1e-3)  # the channels mattered


def test_compensating_a_qdq_consumer_says_its_new_weights_are_float(tmp_path):
    from onnxredund.analyses.prune import run_prune

    model = load_model_proto(statically_quantized(small_cnn(c_mid=6, seed=3)[0], tmp_path, per_channel=True))
    data = Dataset(RNG.normal(size=(64, 3, 6, 6)).astype(np.float32), None, "noise")
    options = {"channels": {"conv1": [1, 4]}, "device": "cpu", "latency": False, "batch_size": 32}
    plain = run_prune(model, data, **options)
    mean = run_prune(model, data, compensation="mean", **options)
    assert not any("no longer quantized" in n for n in plain.notes)
    assert [n for n in mean.notes if "no longer quantized" in n] == [
        "conv2: compensated weights are float, no longer quantized (the file grows); quantize the pruned model "
        "again, or prune without compensation to keep them int8"
    ]


def test_the_impulse_analysis_of_a_model_that_quantizes_its_activations_says_so(tmp_path):
    from onnxredund.analyses.impulse import QUANTIZED_NOTE, run_impulse

    proto = small_cnn(c_mid=6)[0]
    assert QUANTIZED_NOTE not in run_impulse(load_model_proto(proto), device="cpu").notes
    qdq = load_model_proto(statically_quantized(proto, tmp_path, per_channel=True))
    assert QUANTIZED_NOTE in run_impulse(qdq, device="cpu").notes
