"""Pure graph edits, ``ModelProto -> ModelProto``; every function copies its input.

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
from onnx import helper, numpy_helper

from onnxredund.errors import OnnxRedundError
from onnxredund.model import (
    ACTIVATION_OPS,
    CONV_OPS,
    ConstantTable,
    ConvLayer,
    attribute,
    copy_model,
    data_dependent,
    data_inputs,
    downstream,
    producers_of,
    value_infos,
)

__all__ = [
    "cut",
    "cut_layer",
    "cut_prefix",
    "cut_suffix",
    "expose_outputs",
    "inject_input",
    "linearize",
    "needed_nodes",
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
    return helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)


def expose_outputs(proto: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """Copy of ``proto`` whose graph also outputs the tensors ``names`` (after the existing ones)."""
    produced = {o for n in proto.graph.node for o in n.output} | {i.name for i in proto.graph.input}
    missing = [n for n in names if n not in produced]
    if missing:
        raise OnnxRedundError(f"no tensors {missing} in the model; tensors come from node outputs or graph inputs")
    out = copy_model(proto)
    have = {o.name for o in out.graph.output}
    known = value_infos(proto)
    for name in names:
        if name not in have:
            out.graph.output.append(value_info(proto, name, known))
            have.add(name)
    return out


def needed_nodes(graph: onnx.GraphProto, inputs: set[str], outputs: list[str]) -> list[int]:
    """Indices (in graph order) of the nodes needed to compute ``outputs`` given ``inputs``."""
    producer = producers_of(graph)
    needed: set[int] = set()
    stack = [o for o in outputs if o not in inputs]
    seen = set(stack)
    while stack:
        tensor = stack.pop()
        if tensor not in producer:
            continue
        idx = producer[tensor]
        if idx in needed:
            continue
        needed.add(idx)
        for t in graph.node[idx].input:
            if t and t not in inputs and t not in seen:
                seen.add(t)
                stack.append(t)
    return sorted(needed)


def cut(proto: onnx.ModelProto, inputs: list[str], outputs: list[str]) -> onnx.ModelProto:
    """The subgraph computing ``outputs`` from the tensors ``inputs`` (and the model's constants).

    Raises:
        OnnxRedundError: the outputs also depend on a graph input not listed in ``inputs``.
    """
    graph = proto.graph
    known = value_infos(proto)
    nodes = needed_nodes(graph, set(inputs), outputs)
    used = {t for i in nodes for t in graph.node[i].input if t} | set(outputs)
    produced = {o for i in nodes for o in graph.node[i].output} | set(inputs)
    graph_inputs = {i.name for i in data_inputs(graph)}
    leaked = sorted((used - produced) & graph_inputs)
    if leaked:
        raise OnnxRedundError(f"the cut also needs the graph inputs {leaked}; add them to the cut's inputs")
    init = [t for t in graph.initializer if t.name in used]
    new_graph = helper.make_graph(
        [graph.node[i] for i in nodes],
        f"{graph.name or 'graph'}_cut",
        [value_info(proto, n, known) for n in inputs],
        [value_info(proto, n, known) for n in outputs],
        initializer=init,
    )
    out = helper.make_model(new_graph, opset_imports=list(proto.opset_import), ir_version=proto.ir_version)
    out.producer_name = "onnxredund"
    return out


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
    read = [t for idx in sorted(after) for t in graph.node[idx].input]
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

    Every other consumer of A_{i-1} (residual branches, other convs) keeps the clean tensor.
    """
    out = copy_model(proto)
    existing = {t for n in out.graph.node for t in [*n.input, *n.output]} | {i.name for i in out.graph.input}
    if name in existing:
        raise OnnxRedundError(f"tensor name {name!r} is already used in the model; pick another")
    node = out.graph.node[layer.node_index]
    if node.op_type not in CONV_OPS or node.input[0] != layer.input:
        raise OnnxRedundError(f"layer {layer.name!r} does not match this model; describe the model again")
    node.input[0] = name
    vi = value_info(proto, layer.input)
    vi.name = name
    out.graph.input.append(vi)
    return out


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
    out = copy_model(proto)
    graph = out.graph
    values = ConstantTable(graph)
    data = {i.name for i in data_inputs(graph)}
    nonlinear: set[str] = set()
    new_inits = []
    for i, node in enumerate(graph.node):
        if not any(t in data for t in node.input):
            continue
        data.update(node.output)
        if node.op_type in CONV_OPS and len(node.input) > 2 and node.input[2]:
            del node.input[2]
        elif node.op_type in _BYPASS or (
            node.op_type in ("Add", "Sub")
            and len(node.input) == 2
            and any(t in values for t in node.input)
            and not all(t in values for t in node.input)
        ):
            keep = next(t for t in node.input if t in data)
            _make_identity(node, keep)
        elif node.op_type == "BatchNormalization":
            scale, var = values.get(node.input[1]), values.get(node.input[4])
            if scale is None or var is None:
                nonlinear.add("BatchNormalization (non-constant)")
                continue
            eps = attribute(node, "epsilon", 1e-5)
            gain = (scale / np.sqrt(var + eps)).astype(np.float32).reshape(-1, 1, 1)
            name = f"onnxredund_bn_gain_{i}"
            new_inits.append(numpy_helper.from_array(gain, name))
            x = node.input[0]
            node.ClearField("attribute")
            del node.input[:]
            node.input.extend([x, name])
            node.op_type = "Mul"
            del node.output[1:]
        elif node.op_type not in _LINEAR:
            nonlinear.add(node.op_type)
    graph.initializer.extend(new_inits)
    notes = [f"{op} stays non-linear: linear responses after it are approximations" for op in sorted(nonlinear)]
    return out, notes


def _make_identity(node: onnx.NodeProto, keep: str) -> None:
    node.op_type = "Identity"
    node.ClearField("attribute")
    node.domain = ""
    del node.input[:]
    node.input.append(keep)
    del node.output[1:]
