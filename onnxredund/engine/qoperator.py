"""onnxruntime's QOperator int8 ops as the QDQ form they compute.

``quantize_static(..., quant_format=QuantFormat.QOperator)`` (and the int8 files of model zoos) writes each quantized
op as one integer node: ``QLinearConv`` reads an 8-bit map (uint8 or int8), its scale and zero point, int8 weights
with theirs, and writes an 8-bit map at the output's scale and zero point. The same computation in the QDQ form is a
float op between ``DequantizeLinear`` of each quantized input and ``QuantizeLinear`` of its output: what
``quant_format=QDQ`` writes, and what onnxredund analyses and prunes (weights stay int8 behind their
DequantizeLinear). :func:`dequantize_operators` writes every top-level QOperator node of :data:`QOPERATOR_OPS` so,
the tensors between them staying quantized (MaxPool, Reshape and the like keep running on the 8-bit values);
onnxruntime fuses the result back into the integer ops when it loads it. The two forms agree up to the rounding of an
integer accumulator's requantization: at most one quantization step of an output, now and then.

An int32 bias (a conv's ``B``, QGemm's ``C``: scale the product of its inputs' scales, zero point 0) becomes a float
constant, and so does a per-channel weight before opset 13 (no DequantizeLinear axis yet): where their scales are
computed at run time the model is refused, and so is a pool laid out channels-last.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir

from onnxredund.engine.ir_edit import Names, constant_value, default_opset, replace_node, to_ir, to_proto
from onnxredund.errors import OnnxRedundError

__all__ = ["QOPERATOR_OPS", "dequantize_operators", "qoperator_ops"]

_CONTRIB = "com.microsoft"


@dataclass(frozen=True)
class _Form:
    """Where a QOperator node's tensors sit among its inputs.

    Attributes:
        op: the float op it computes.
        quantized: the index of each quantized input; its scale and zero point follow it (at +1, +2).
        output: the index of the output's scale (its zero point at +1), or None where it is written in float.
        bias: the index of an int32 bias whose scale is the first two quantized inputs' scales' product.
        weight_axis: per quantized input, the axis of per-channel scales (None: per tensor only).
        variadic: the quantized inputs repeat from the first index to the end (QLinearConcat).
    """

    op: str
    quantized: tuple[int, ...]
    output: int | None
    bias: int | None = None
    weight_axis: tuple = ()
    variadic: bool = False


#: (domain, op) -> its form; "" is the standard domain
QOPERATOR_OPS: dict[tuple[str, str], _Form] = {
    ("", "QLinearConv"): _Form("Conv", (0, 3), 6, bias=8, weight_axis=(None, 0)),
    ("", "QLinearMatMul"): _Form("MatMul", (0, 3), 6, weight_axis=(None, -1)),
    (_CONTRIB, "QGemm"): _Form("Gemm", (0, 3), 7, bias=6, weight_axis=(None, "gemm")),
    (_CONTRIB, "QLinearAdd"): _Form("Add", (0, 3), 6),
    (_CONTRIB, "QLinearMul"): _Form("Mul", (0, 3), 6),
    (_CONTRIB, "QLinearGlobalAveragePool"): _Form("GlobalAveragePool", (0,), 3),
    (_CONTRIB, "QLinearAveragePool"): _Form("AveragePool", (0,), 3),
    (_CONTRIB, "QLinearSigmoid"): _Form("Sigmoid", (0,), 3),
    (_CONTRIB, "QLinearLeakyRelu"): _Form("LeakyRelu", (0,), 3),
    (_CONTRIB, "QLinearConcat"): _Form("Concat", (2,), 0, variadic=True),
}


def qoperator_ops(proto: onnx.ModelProto) -> list[str]:
    """The QOperator ops :func:`dequantize_operators` rewrites that a model's main graph uses, each once."""
    ops = ((n.domain if n.domain != "ai.onnx" else "", n.op_type) for n in proto.graph.node)
    return list(dict.fromkeys(op for d, op in ops if (d, op) in QOPERATOR_OPS))


def dequantize_operators(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``proto`` with every top-level QOperator node (:data:`QOPERATOR_OPS`) written in the QDQ form; ``proto``
    itself when it has none (it is never changed).

    Raises:
        OnnxRedundError: a node whose scales or bias are computed at run time, or a channels-last pool.
    """
    if not qoperator_ops(proto):
        return proto
    model = to_ir(proto)
    graph, names, opset = model.graph, Names(model.graph), default_opset(model) or 11
    for node in list(graph):
        form = QOPERATOR_OPS.get((node.domain if node.domain != "ai.onnx" else "", node.op_type))
        if form is not None:
            _rewrite(graph, node, form, names, opset)
    return to_proto(model, inner_shapes=False)


def _constant(value: ir.Value | None, node: ir.Node, what: str) -> np.ndarray:
    if value is None or value.const_value is None:
        raise OnnxRedundError(
            f"{node.op_type} {node.name!r} has its {what} computed at run time; onnxredund reads QOperator models "
            "whose quantization parameters are constants (give it the float model it was quantized from)"
        )
    return value.const_value.numpy()


def _rewrite(graph: ir.Graph, node: ir.Node, form: _Form, names: Names, opset: int) -> None:
    inputs = list(node.inputs)
    attrs = {k: v for k, v in node.attributes.items() if k != "channels_last"}
    if node.attributes.get("channels_last") is not None and node.attributes["channels_last"].as_int():
        raise OnnxRedundError(f"{node.op_type} {node.name!r} is laid out channels-last; onnxredund cannot rewrite it")
    added: list[ir.Node] = []
    positions = range(form.quantized[0], len(inputs), 3) if form.variadic else form.quantized
    floats = []
    for k, at in enumerate(positions):
        scale, zero = inputs[at + 1], inputs[at + 2] if at + 2 < len(inputs) else None
        axis = _axis(node, at, form.weight_axis[k] if k < len(form.weight_axis) else None)
        if axis is not None and opset < 13:  # no per-channel DequantizeLinear before opset 13: a float constant
            floats.append(_initializer(graph, names.fresh(f"{inputs[at].name}_float"), _dequantized(node, at, axis)))
            continue
        dq = ir.node(
            "DequantizeLinear",
            [inputs[at], scale, *([zero] if zero is not None else [])],
            attributes={} if axis is None else {"axis": axis},
            name=names.node(f"{node.name}/DequantizeLinear_{k}"),
        )
        added.append(dq)
        floats.append(dq.outputs[0])
    bias = inputs[form.bias] if form.bias is not None and form.bias < len(inputs) else None
    if bias is not None:
        alpha = node.attributes.get("alpha")
        if alpha is not None and alpha.as_float() != 1.0:
            raise OnnxRedundError(f"{node.op_type} {node.name!r} scales its bias by alpha: not rewritten")
        first, second = (_constant(inputs[p + 1], node, "scales").astype(np.float64) for p in form.quantized[:2])
        value = (_constant(bias, node, "bias") * first * second).astype(np.float32)
        floats.append(_initializer(graph, names.fresh(f"{node.name or node.op_type}_bias_float"), value))
    float_op = ir.node(form.op, floats, attributes=attrs, name=names.node(f"{node.name}/{form.op}"))
    added.append(float_op)
    if form.output is not None and form.output < len(inputs) and inputs[form.output] is not None:
        scale = inputs[form.output]
        zero = inputs[form.output + 1] if form.output + 1 < len(inputs) else None
        added.append(
            ir.node(
                "QuantizeLinear",
                [float_op.outputs[0], scale, *([zero] if zero is not None else [])],
                name=names.node(f"{node.name}/QuantizeLinear"),
            )
        )
    replace_node(graph, node, added)


def _axis(node: ir.Node, at: int, axis) -> int | None:
    """The axis of input ``at``'s per-channel scales (its form's ``weight_axis``), None where they are per tensor."""
    scale = node.inputs[at + 1]
    if axis is None or scale is None or scale.const_value is None or scale.const_value.numpy().size <= 1:
        return None  # per tensor (a scale computed at run time is one: only weights have them per channel)
    inputs = list(node.inputs)
    if axis == "gemm":  # QGemm's B is (K, N), or (N, K) with transB: the scales go with N
        trans = node.attributes.get("transB")
        return 0 if trans is not None and trans.as_int() else 1
    if axis == -1:  # MatMul's B (..., K, N): the scales go with N
        return _constant(inputs[at], node, "weights").ndim - 1
    return axis


def _dequantized(node: ir.Node, at: int, axis: int) -> np.ndarray:
    """Constant input ``at`` with per-channel scales along ``axis``, in float32: (w - zero point) x scale."""
    inputs = list(node.inputs)
    weight = _constant(inputs[at], node, "weights").astype(np.float64)
    shape = [1] * weight.ndim
    shape[axis] = -1
    scale = _constant(inputs[at + 1], node, "scales").astype(np.float64).reshape(shape)
    zero = inputs[at + 2] if at + 2 < len(inputs) else None
    offset = 0.0 if zero is None else _constant(zero, node, "zero points").astype(np.float64).reshape(shape)
    return ((weight - offset) * scale).astype(np.float32)


def _initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    value = constant_value(name, array)
    graph.register_initializer(value)
    return value
