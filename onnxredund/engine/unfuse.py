"""onnxruntime's fused convs and activations as the standard ops they fuse.

A model saved by onnxruntime with ``optimized_model_filepath`` (what a deployment engineer often holds) has
``com.microsoft`` ``FusedConv`` nodes: a Conv, an optional residual ``Z`` added, and an activation, in one
node; and ``QuickGelu`` nodes, x * sigmoid(alpha x), what a SiLU (YOLOv8's, EfficientNet's) becomes.
:func:`unfuse_convs` writes each FusedConv as ``Conv`` (+ ``Add``) (+ the activation) and each QuickGelu as
``Mul``, ``Sigmoid``, ``Mul``, the same numbers, so listing, shuffling, impulses and pruning all see standard
ops; onnxruntime fuses them again when it loads the result. Other ``com.microsoft`` ops stay as they are:
onnxruntime runs them natively.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir

from onnxredund.engine.ir_edit import constant_value, replace_node, to_ir, to_proto
from onnxredund.errors import OnnxRedundError

__all__ = ["CONTRIB_DOMAIN", "contrib_ops", "unfuse_convs"]

CONTRIB_DOMAIN = "com.microsoft"

#: FusedConv's activations and the attributes its activation_params stand for
_ACTIVATIONS = {
    "Relu": (),
    "Tanh": (),
    "Sigmoid": (),
    "LeakyRelu": ("alpha",),
    "HardSigmoid": ("alpha", "beta"),
}


def contrib_ops(proto: onnx.ModelProto) -> list[str]:
    """The onnxruntime contrib ops (``com.microsoft``) a model uses, each once, in graph order."""
    return list(dict.fromkeys(n.op_type for n in proto.graph.node if n.domain == CONTRIB_DOMAIN))


def _activation(graph: ir.Graph, node: ir.Node, value: ir.Value) -> list[ir.Node]:
    """The activation node(s) a FusedConv applies to ``value``."""
    attr = node.attributes.get("activation")
    kind = attr.as_string() if attr is not None else ""
    if not kind:
        return []
    params = node.attributes.get("activation_params")
    values = list(params.as_floats()) if params is not None else []
    if kind == "Clip":  # opset 11 on: min and max are inputs
        named = zip(("min", "max"), values[:2], strict=False)  # Clip's params: min, max
        bounds = [constant_value(f"{node.name}/Clip_{k}", np.float32(v)) for k, v in named]
        for bound in bounds:
            graph.register_initializer(bound)
        return [ir.node("Clip", [value, *bounds], name=f"{node.name}/Clip")]
    if kind not in _ACTIVATIONS:
        raise OnnxRedundError(f"FusedConv {node.name!r} applies {kind!r}, which onnxredund cannot write as its own op")
    attrs = dict(zip(_ACTIVATIONS[kind], values, strict=False))
    return [ir.node(kind, [value], attributes=attrs, name=f"{node.name}/{kind}")]


def unfuse_convs(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``proto`` with every top-level FusedConv written as Conv (+ Add) (+ activation) and every QuickGelu as
    Mul, Sigmoid, Mul; ``proto`` itself when it has none (it is never changed).

    Raises:
        OnnxRedundError: a FusedConv whose activation has no standard op here.
    """
    if not any(n.op_type in _UNFUSED and n.domain == CONTRIB_DOMAIN for n in proto.graph.node):
        return proto
    model = to_ir(proto)
    graph = model.graph
    for node in [n for n in graph if n.op_type == "QuickGelu" and n.domain == CONTRIB_DOMAIN]:
        replace_node(graph, node, _quick_gelu(graph, node))
    for node in [n for n in graph if n.op_type == "FusedConv" and n.domain == CONTRIB_DOMAIN]:
        x, w, *rest = node.inputs
        bias, z = [*rest, None, None][:2]
        attrs = {k: v for k, v in node.attributes.items() if k not in ("activation", "activation_params")}
        conv = ir.node("Conv", [x, w, *([bias] if bias is not None else [])], attributes=attrs, name=node.name)
        added = [ir.node("Add", [conv.outputs[0], z], name=f"{node.name}/Add")] if z is not None else []
        last = (added or [conv])[-1].outputs[0]
        activation = _activation(graph, node, last)
        replace_node(graph, node, [conv, *added, *activation])
    return to_proto(model, inner_shapes=False)


_UNFUSED = ("FusedConv", "QuickGelu")


def _quick_gelu(graph: ir.Graph, node: ir.Node) -> list[ir.Node]:
    """QuickGelu's x * sigmoid(alpha x) (alpha 1.702 by default; 1 where it stands for a SiLU) as standard ops."""
    x = node.inputs[0]
    attr = node.attributes.get("alpha")
    alpha = attr.as_float() if attr is not None else 1.702
    scaled = []
    if alpha != 1.0:  # a SiLU's x * sigmoid(x) as exporters write it, which onnxruntime fuses again
        value = constant_value(f"{node.name}/alpha", np.float32(alpha))
        graph.register_initializer(value)
        scaled = [ir.node("Mul", [x, value], name=f"{node.name}/Mul_alpha")]
    gate = ir.node("Sigmoid", [(scaled[0].outputs[0] if scaled else x)], name=f"{node.name}/Sigmoid")
    return [*scaled, gate, ir.node("Mul", [x, gate.outputs[0]], name=f"{node.name}/Mul")]
