"""Pure graph edits, ``ModelProto -> ModelProto``, made on the IR of :mod:`onnxredund.engine.ir_edit`: the input is
never changed, and the nodes of If/Loop/Scan bodies count where they read a tensor of the graph around them.

- :func:`expose_outputs`: make intermediate tensors graph outputs.
- :func:`cut`: the subgraph that computes some tensors from others.
- :func:`cut_prefix`, :func:`cut_layer`, :func:`cut_suffix`: the three cuts around a conv layer.
- :func:`inject_input`: a new graph input that only the target conv reads.
- :func:`side_inputs`: tensors computed before a layer that the rest of the network still reads.
- :func:`linearize`: biases zeroed and activations bypassed (impulse responses of the cascade's kernels).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir

from onnxredund.engine.ir_edit import Names, captured, constant_value, needed, to_ir, to_proto
from onnxredund.errors import OnnxRedundError
from onnxredund.model import (
    ACTIVATION_OPS,
    CONV_OPS,
    ConstantTable,
    ConvLayer,
    data_dependent,
    data_inputs,
    downstream,
    outer_reads,
    value_infos,
)

__all__ = [
    "cut",
    "cut_ir",
    "cut_layer",
    "cut_prefix",
    "cut_suffix",
    "expose_outputs",
    "inject_input",
    "inject_input_ir",
    "linearize",
    "side_inputs",
    "value_info",
]


def value_info(proto: onnx.ModelProto, name: str, known: dict | None = None) -> onnx.ValueInfoProto:
    """A ValueInfo for tensor ``name``, with the batch dimension left free."""
    known = known if known is not None else value_infos(proto)
    if name in known and known[name].type.tensor_type.elem_type:
        vi = onnx.ValueInfoProto()
        vi.CopyFrom(known[name])
        return vi
    return onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)


def _set_types(model: ir.Model, proto: onnx.ModelProto, names: list[str]) -> dict[str, ir.Value]:
    """The values ``names`` of ``model`` (the IR of ``proto``), each given the type and shape :func:`value_info`
    finds for it (shape inference's where the file records none)."""
    values = ir.convenience.create_value_mapping(model.graph, include_subgraphs=False)
    missing = [name for name in names if name not in values]
    if missing:
        raise OnnxRedundError(f"no tensors {missing} in the model; tensors come from node outputs or graph inputs")
    known = value_infos(proto)
    for name in dict.fromkeys(names):
        if name in known or values[name].type is None:  # a value the edit made is typed already
            ir.serde.deserialize_value_info_proto(value_info(proto, name, known), values[name])
    return values


def expose_outputs(proto: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """Copy of ``proto`` whose graph also outputs the tensors ``names`` (after the existing ones)."""
    produced = {o for n in proto.graph.node for o in n.output} | {i.name for i in proto.graph.input}
    missing = [n for n in names if n not in produced]
    if missing:
        raise OnnxRedundError(f"no tensors {missing} in the model; tensors come from node outputs or graph inputs")
    model = to_ir(proto)
    have = {v.name for v in model.graph.outputs}
    new = [name for name in dict.fromkeys(names) if name not in have]
    values = _set_types(model, proto, new)
    model.graph.outputs.extend(values[name] for name in new)
    return to_proto(model)


def cut(proto: onnx.ModelProto, inputs: list[str], outputs: list[str]) -> onnx.ModelProto:
    """The subgraph computing ``outputs`` from the tensors ``inputs`` (and the model's constants), If/Loop/Scan
    bodies' reads from the outer scope included; the model's local functions go with it.

    Raises:
        OnnxRedundError: the outputs also depend on a graph input not listed in ``inputs``.
    """
    return cut_ir(to_ir(proto), proto, inputs, outputs)


def cut_ir(model: ir.Model, proto: onnx.ModelProto, inputs: list[str], outputs: list[str]) -> onnx.ModelProto:
    """:func:`cut` of ``model``, the IR of ``proto`` or of an edit of it (``proto``'s inferred shapes type the
    cut's inputs and outputs; what the edit added keeps its own)."""
    graph = model.graph
    values = _set_types(model, proto, [*inputs, *outputs])
    nodes = needed(graph, set(inputs), outputs, values)
    read = {v for node in nodes for v in [*node.inputs, *captured(node)] if v is not None}
    read |= {values[name] for name in outputs}
    leaked = sorted(v.name for v in read if v.is_graph_input() and not v.is_initializer() and v.name not in inputs)
    if leaked:
        raise OnnxRedundError(f"the cut also needs the graph inputs {leaked}; add them to the cut's inputs")
    initializers = [v for name, v in graph.initializers.items() if v in read and name not in inputs]
    view = ir.GraphView(
        [values[name] for name in inputs],
        [values[name] for name in outputs],
        nodes=nodes,
        initializers=initializers,
        opset_imports=dict(graph.opset_imports),
        name=f"{graph.name or 'graph'}_cut",
    )
    out = ir.Model(
        view.clone(), ir_version=model.ir_version, producer_name="onnxredund", functions=model.functions.values()
    )
    out.meta.update(model.meta)  # where external weights are read from
    return to_proto(out, inner_shapes=False)


def side_inputs(proto: onnx.ModelProto, start: str, *, outputs: bool = False) -> list[str]:
    """Data tensors that the nodes downstream of tensor ``start`` read but do not compute.

    With ``start`` = A_{i-1} they are, beside it, everything the rest of the network needs:
    residual shortcuts from earlier blocks, or the model input read again by a late node. With
    ``outputs``, graph outputs that do not depend on ``start`` are included too.
    """
    graph = proto.graph
    after = downstream(graph, start)
    dependent = data_dependent(graph)
    produced_after = {o for i in after for o in graph.node[i].output}
    read = [t for idx in sorted(after) for t in [*graph.node[idx].input, *sorted(outer_reads(graph.node[idx]))]]
    if outputs:
        read += [o.name for o in graph.output]
    return list(dict.fromkeys(t for t in read if t and t != start and t in dependent and t not in produced_after))


def cut_prefix(proto: onnx.ModelProto, layer: ConvLayer) -> onnx.ModelProto:
    """Model input -> A_{i-1} and the side tensors the suffix needs."""
    inputs = [i.name for i in data_inputs(proto.graph)]
    return cut(proto, inputs, [layer.input, *side_inputs(proto, layer.input, outputs=True)])


def cut_layer(proto: onnx.ModelProto, layer: ConvLayer) -> onnx.ModelProto:
    """A_{i-1} -> A_i: the conv and the elementwise ops that follow it."""
    return cut(proto, [layer.input], [layer.activation])


def cut_suffix(proto: onnx.ModelProto, layer: ConvLayer) -> onnx.ModelProto:
    """A_{i-1} (and side tensors) -> the model outputs."""
    outputs = [o.name for o in proto.graph.output]
    return cut(proto, [layer.input, *side_inputs(proto, layer.input, outputs=True)], outputs)


def inject_input(proto: onnx.ModelProto, layer: ConvLayer, name: str = "perturbed_input") -> onnx.ModelProto:
    """Copy of ``proto`` with a new graph input ``name`` that only the target conv reads.

    Every other consumer of A_{i-1} (residual branches, other convs, If/Loop/Scan bodies) keeps the clean tensor.
    """
    model = to_ir(proto)
    inject_input_ir(model, proto, layer, name)
    return to_proto(model)


def inject_input_ir(model: ir.Model, proto: onnx.ModelProto, layer: ConvLayer, name: str) -> None:
    """:func:`inject_input` on ``model``, the IR of ``proto``, in place."""
    if name in Names(model.graph).taken:
        raise OnnxRedundError(f"tensor name {name!r} is already used in the model; pick another")
    node = model.graph.node(layer.node_index)
    if node.op_type not in CONV_OPS or node.inputs[0] is None or node.inputs[0].name != layer.input:
        raise OnnxRedundError(f"layer {layer.name!r} does not match this model; describe the model again")
    vi = value_info(proto, layer.input)
    vi.name = name
    value = ir.serde.deserialize_value_info_proto(vi, None)
    node.replace_input_with(0, value)
    model.graph.inputs.append(value)


_BYPASS = ACTIVATION_OPS | {"PRelu"}
_LINEAR = frozenset(
    {
        "Conv",
        "Identity",
        "AveragePool",
        "GlobalAveragePool",
        "Pad",
        "Reshape",
        "Flatten",
        "Transpose",
        "Concat",
        "Split",
        "Slice",
        "Squeeze",
        "Unsqueeze",
        "Add",
        "Sub",
        "Mul",
        "Div",
        "BatchNormalization",
        "Resize",
        "Upsample",
        "ConvTranspose",
        "Gather",
        "Shape",
        "Cast",
        "Constant",
        "Sum",
    }
)


def linearize(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """Copy with biases zeroed and activations bypassed; returns it and notes on what stays non-linear."""
    model = to_ir(proto)
    graph = model.graph
    values = ConstantTable(proto.graph)
    names = Names(graph)
    data = {v for v in graph.inputs if not v.is_initializer()}
    nonlinear: set[str] = set()
    for i, node in enumerate(list(graph)):
        if not any(v in data for v in node.inputs):
            continue
        data.update(node.outputs)
        reads = [v.name if v is not None else "" for v in node.inputs]
        if node.op_type in CONV_OPS and len(reads) > 2 and reads[2]:
            node.resize_inputs(2)
        elif node.op_type in _BYPASS or (
            node.op_type in ("Add", "Sub")
            and len(reads) == 2
            and any(t in values for t in reads)
            and not all(t in values for t in reads)
        ):
            _rewrite(node, "Identity", [next(v for v in node.inputs if v in data)])
        elif node.op_type == "BatchNormalization":
            scale, var = values.get(reads[1]), values.get(reads[4])
            if scale is None or var is None:
                nonlinear.add("BatchNormalization (non-constant)")
                continue
            epsilon = node.attributes.get("epsilon")
            eps = epsilon.as_float() if epsilon is not None else 1e-5
            gain = (scale / np.sqrt(var + eps)).astype(np.float32).reshape(-1, 1, 1)
            value = constant_value(names.fresh(f"onnxredund_bn_gain_{i}"), gain)
            graph.register_initializer(value)
            _rewrite(node, "Mul", [node.inputs[0], value])
        elif node.op_type not in _LINEAR:
            nonlinear.add(node.op_type)
    notes = [f"{op} stays non-linear: linear responses after it are approximations" for op in sorted(nonlinear)]
    return to_proto(model), notes


def _rewrite(node: ir.Node, op_type: str, inputs: list[ir.Value]) -> None:
    """Make ``node`` a standard ``op_type`` of ``inputs`` with no attributes and its first output only."""
    node.op_type, node.domain = op_type, ""
    node.attributes.clear()
    for j, value in enumerate(inputs):
        node.replace_input_with(j, value)
    node.resize_inputs(len(inputs))
    node.resize_outputs(1)
