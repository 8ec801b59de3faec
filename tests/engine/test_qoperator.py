"""Quantized models in the QOperator form (``quantize_static(quant_format=QOperator)``, the int8 files of model zoos:
QLinearConv, QGemm, QLinearAdd ... on 8-bit maps, uint8 here, int8 in the real model's test): each op is written as
the QDQ form it computes, which agrees with onnxruntime's integer kernel to one quantization step; the model is then
listed, swept and pruned like a QDQ one (it was refused before: "has quantized convs only")."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import small_cnn, statically_quantized
from onnx import TensorProto, helper, numpy_helper

from onnxredund.analyses.prune import run_prune
from onnxredund.data import Dataset
from onnxredund.engine.loading import load_model_proto
from onnxredund.engine.qoperator import QOPERATOR_OPS, dequantize_operators, qoperator_ops
from onnxredund.engine.runtime import Runner
from onnxredund.errors import OnnxRedundError

RNG = np.random.default_rng(11)
MS = "com.microsoft"


def _init(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def _single_op(op: str, domain: str, opset: int, per_channel: bool, **attrs) -> tuple[onnx.ModelProto, dict]:
    """One QOperator node on uint8 inputs, its quantization parameters constants; the feeds it runs on."""
    xs, xz = np.float32(0.02), np.uint8(120)
    ys, yz = np.float32(0.05), np.uint8(100)
    feeds = {"x": RNG.integers(0, 256, size=(2, 4, 6, 6), dtype=np.uint8)}
    inits = [_init("xs", xs), _init("xz", xz), _init("ys", ys), _init("yz", yz)]
    second = {
        "QLinearAdd",
        "QLinearMul",
    }
    if op == "QLinearConv":
        w = RNG.integers(-127, 128, size=(5, 4, 3, 3), dtype=np.int8)
        ws = RNG.uniform(0.001, 0.01, 5 if per_channel else ()).astype(np.float32)
        inits += [_init("w", w), _init("ws", ws), _init("wz", np.zeros(ws.shape, np.int8))]
        inits += [_init("b", RNG.integers(-2000, 2000, 5, dtype=np.int32))]
        node = helper.make_node(op, ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], ["y"], pads=[1] * 4, **attrs)
    elif op in ("QGemm", "QLinearMatMul"):
        feeds = {"x": RNG.integers(0, 256, size=(3, 8), dtype=np.uint8)}
        trans = attrs.get("transB", 0)
        w = RNG.integers(-127, 128, size=(6, 8) if trans else (8, 6), dtype=np.int8)
        ws = RNG.uniform(0.001, 0.01, 6 if per_channel else ()).astype(np.float32)
        inits += [_init("w", w), _init("ws", ws), _init("wz", np.zeros(ws.shape, np.int8))]
        if op == "QGemm":
            inits += [_init("b", RNG.integers(-2000, 2000, 6, dtype=np.int32))]
            node = helper.make_node(
                op, ["x", "xs", "xz", "w", "ws", "wz", "b", "ys", "yz"], ["y"], domain=domain, **attrs
            )
        else:
            node = helper.make_node(op, ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"])
    elif op in second:
        feeds["x2"] = RNG.integers(0, 256, size=(2, 4, 6, 6), dtype=np.uint8)
        inits += [_init("x2s", np.float32(0.03)), _init("x2z", np.uint8(90))]
        node = helper.make_node(op, ["x", "xs", "xz", "x2", "x2s", "x2z", "ys", "yz"], ["y"], domain=domain)
    elif op == "QLinearConcat":
        feeds["x2"] = RNG.integers(0, 256, size=(2, 3, 6, 6), dtype=np.uint8)
        inits += [_init("x2s", np.float32(0.03)), _init("x2z", np.uint8(90))]
        node = helper.make_node(op, ["ys", "yz", "x", "xs", "xz", "x2", "x2s", "x2z"], ["y"], domain=domain, axis=1)
    else:
        node = helper.make_node(op, ["x", "xs", "xz", "ys", "yz"], ["y"], domain=domain, **attrs)
    inputs = [helper.make_tensor_value_info(k, TensorProto.UINT8, v.shape) for k, v in feeds.items()]
    graph = helper.make_graph(
        [node], "q", inputs, [helper.make_tensor_value_info("y", TensorProto.UINT8, None)], initializer=inits
    )
    opsets = [helper.make_opsetid("", opset), helper.make_opsetid(MS, 1)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=8)
    shape = Runner.create(model, "cpu", optimize=False).run(feeds)[0].shape  # declared, as the checker wants
    graph.output[0].CopyFrom(helper.make_tensor_value_info("y", TensorProto.UINT8, shape))
    return helper.make_model(graph, opset_imports=opsets, ir_version=8), feeds


CASES = {
    "conv per tensor": ("QLinearConv", "", 13, False, {}),
    "conv per channel": ("QLinearConv", "", 13, True, {}),
    "conv per channel, opset 11": ("QLinearConv", "", 11, True, {}),
    "matmul per column": ("QLinearMatMul", "", 13, True, {}),
    "gemm": ("QGemm", MS, 13, False, {}),
    "gemm per column, transB": ("QGemm", MS, 13, True, {"transB": 1}),
    "add": ("QLinearAdd", MS, 13, False, {}),
    "mul": ("QLinearMul", MS, 13, False, {}),
    "global average pool": ("QLinearGlobalAveragePool", MS, 13, False, {"channels_last": 0}),
    "average pool": ("QLinearAveragePool", MS, 13, False, {"kernel_shape": [2, 2], "strides": [2, 2]}),
    "sigmoid": ("QLinearSigmoid", MS, 13, False, {}),
    "leaky relu": ("QLinearLeakyRelu", MS, 13, False, {"alpha": 0.1}),
    "concat": ("QLinearConcat", MS, 13, False, {}),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_each_qoperator_op_written_in_qdq_form_agrees_with_onnxruntimes_integer_kernel_to_one_step(case):
    op, domain, opset, per_channel, attrs = CASES[case]
    proto, feeds = _single_op(op, domain, opset, per_channel, **attrs)
    rewritten = dequantize_operators(proto)
    onnx.checker.check_model(rewritten, full_check=True)
    assert qoperator_ops(proto) == [op] and qoperator_ops(rewritten) == []
    assert {n.op_type for n in rewritten.graph.node} <= {
        "DequantizeLinear",
        "QuantizeLinear",
        QOPERATOR_OPS[(domain, op)].op,
    }
    want = Runner.create(proto, "cpu", optimize=False).run(feeds)[0].astype(np.int64)
    got = Runner.create(rewritten, "cpu", optimize=False).run(feeds)[0]
    assert got.dtype == np.uint8 and got.shape == want.shape  # the same quantized tensor, under the same name
    steps = np.abs(got.astype(np.int64) - want)
    assert steps.max() <= 1 and (steps == 0).mean() >= 0.9  # the requantization's rounding, now and then
    assert np.ptp(want) > 10  # the op's output is not a constant that any rewrite would match


def test_per_channel_weights_before_opset_13_become_float_constants():
    """DequantizeLinear takes an axis from opset 13 on: before, a per-channel weight is dequantized once, here."""
    proto, _ = _single_op("QLinearConv", "", 11, True)
    rewritten = dequantize_operators(proto)
    conv = next(n for n in rewritten.graph.node if n.op_type == "Conv")
    weights = {t.name: t for t in rewritten.graph.initializer}
    assert weights[conv.input[1]].data_type == TensorProto.FLOAT
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    np.testing.assert_allclose(
        numpy_helper.to_array(weights[conv.input[1]]), inits["w"] * inits["ws"].reshape(-1, 1, 1, 1), rtol=1e-6
    )


def test_a_bias_whose_scale_is_computed_at_run_time_is_refused_in_one_line():
    """A conv's int32 bias is dequantized once, here, at its inputs' scales: a weight scale fed at run time cannot."""
    proto, _ = _single_op("QLinearConv", "", 13, True)
    proto.graph.initializer.remove(next(t for t in proto.graph.initializer if t.name == "ws"))
    proto.graph.input.append(helper.make_tensor_value_info("ws", TensorProto.FLOAT, [5]))
    with pytest.raises(OnnxRedundError, match=r"QLinearConv .* has its scales computed at run time"):
        dequantize_operators(proto)


def test_a_qoperator_model_is_listed_like_its_float_model_and_says_how_it_is_read(tmp_path, caplog):
    proto = small_cnn(c_in=3, c_mid=6, c_out=5, residual=False)[0]
    want = [(c.name, c.in_channels, c.out_channels, c.kernel) for c in load_model_proto(proto).layers]
    qop = statically_quantized(proto, tmp_path, per_channel=True, operators=True)
    assert "QLinearConv" in qoperator_ops(qop) and not any(n.op_type == "Conv" for n in qop.graph.node)
    caplog.clear()
    model = load_model_proto(qop)
    layers = [(c.in_channels, c.out_channels, c.kernel) for c in model.layers]
    assert layers == [w[1:] for w in want]  # was: "has quantized convs only (2 QLinearConv)"
    assert "QOperator" in caplog.text and "QDQ form" in caplog.text
    assert model.contrib_ops == []  # QGemm and QLinearGlobalAveragePool were read as standard ops: none left


def test_pruning_a_qoperator_model_passes_its_own_check_by_values_and_writes_standard_ops(tmp_path):
    model = load_model_proto(
        statically_quantized(small_cnn(c_mid=6, seed=3)[0], tmp_path, per_channel=True, operators=True)
    )
    conv1 = model.layers[0].name
    data = Dataset(RNG.normal(size=(64, 3, 6, 6)).astype(np.float32), None, "noise")
    result = run_prune(model, data, channels={conv1: [1, 4]}, device="cpu", latency=False, batch_size=32)
    check = result.value_check  # present: the check passed (a cut it finds inexact is refused)
    assert check is not None and check["max_relative_error"] <= check["tolerance"]
    pruned = result.proto
    onnx.checker.check_model(pruned, full_check=True)
    assert qoperator_ops(pruned) == []
    conv = next(n for n in pruned.graph.node if n.op_type == "Conv")
    dq = next(n for n in pruned.graph.node if n.output[0] == conv.input[1])
    weight = next(t for t in pruned.graph.initializer if t.name == dq.input[0])
    assert weight.data_type == TensorProto.INT8 and weight.dims[0] == 4  # int8 still, two channels fewer
    x = RNG.normal(size=(4, 3, 6, 6)).astype(np.float32)
    assert Runner.create(pruned, "cpu").run({"x": x})[0].shape == (4, 4)


def _constant_output(value: np.ndarray) -> onnx.ModelProto:
    node = helper.make_node("Constant", [], ["boxes"], value=numpy_helper.from_array(value))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])
    boxes = helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [None, 7])
    graph = helper.make_graph([node, helper.make_node("Identity", ["x"], ["y"])], "g", [x], [boxes])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_the_qoperator_comparison_takes_an_empty_or_resized_output(caplog):
    """A detector's kept boxes may be none (numpy's max of an empty array raised) or a different number in the two
    forms (their difference raised): the line says 0 for the empty one and names the resized one."""
    from onnxredund.engine.loading import _report_dequantized

    empty = _constant_output(np.zeros((0, 7), np.float32))
    _report_dequantized(empty, empty, {"x": [1, 3]}, Path("det.onnx"), ["QLinearConv"])
    assert "within 0 of the model's own" in caplog.text and "differ in size" not in caplog.text
    caplog.clear()
    _report_dequantized(empty, _constant_output(np.ones((2, 7), np.float32)), {"x": [1, 3]}, Path("d"), ["QGemm"])
    assert "'boxes' differ in size" in caplog.text
