"""The description of a model's conv layers: geometry, the tensors around each conv, and A_i.

A_i is the conv's output after the elementwise ops that directly follow it (bias Add,
BatchNormalization, activations), before pooling; the chain stops where a tensor has more than
one reader or an op is not channel-wise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import onnx

from onnxredund.errors import OnnxRedundError
from onnxredund.model.graph import ConstantTable, attribute, consumers_of

__all__ = ["ACTIVATION_OPS", "CONV_OPS", "ConvLayer", "describe_layers"]

#: non-linear elementwise activations; A_i is the end of a chain of these (and of
#: constant-operand Add/Mul/..., BatchNormalization) after a conv
ACTIVATION_OPS = frozenset(
    {
        "Relu",
        "LeakyRelu",
        "Clip",
        "Sigmoid",
        "Tanh",
        "HardSwish",
        "HardSigmoid",
        "Elu",
        "Selu",
        "Softplus",
        "Softsign",
        "Gelu",
        "Mish",
        "Celu",
        "ThresholdedRelu",
    }
)
_UNARY_ELEMENTWISE = ACTIVATION_OPS | {"Identity"}
_CONST_OPERAND_ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "PRelu"}


@dataclass(frozen=True)
class ConvLayer:
    """One conv layer in the conv's own (channels-first) terms.

    Attributes:
        index: position among the model's conv layers, from 0.
        name: the node's name, or ``Conv_<node index>`` when it has none or shares it.
        node_index: index of the Conv node in ``graph.node``.
        input: tensor A_{i-1} the conv reads.
        output: tensor the conv writes (pre-activation).
        activation: tensor A_i, after the elementwise ops that directly follow the conv.
        chain: op types between ``output`` and ``activation``.
        weight: name of the weight tensor; bias: name of the bias tensor or None.
        in_channels, out_channels, kernel, stride, pads, dilations, groups: conv geometry.
        input_shape, output_shape: (C, *spatial) of one sample.
        macs: multiply-accumulates of the conv for one sample.
    """

    index: int
    name: str
    op: str
    node_index: int
    input: str
    output: str
    activation: str
    chain: tuple[str, ...]
    weight: str
    bias: str | None
    in_channels: int
    out_channels: int
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    pads: tuple[int, ...]
    dilations: tuple[int, ...]
    groups: int
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    macs: int

    def to_dict(self) -> dict:
        d = asdict(self)
        d["chain"] = list(self.chain)
        for key in ("kernel", "stride", "pads", "dilations", "input_shape", "output_shape"):
            d[key] = list(d[key])
        return d


def _elementwise_chain(graph, start: str, consumers, constants, outputs: set[str]) -> tuple[str, tuple[str, ...]]:
    """Follow the single-consumer elementwise ops after a conv: the tensor A_i and the op types."""
    tensor, chain = start, []
    while tensor not in outputs:
        readers = consumers.get(tensor, [])
        if len(readers) != 1:
            break
        node = graph.node[readers[0]]
        if node.op_type in _UNARY_ELEMENTWISE:
            ok = node.input[0] == tensor and all(n in constants for n in node.input[1:] if n)
        elif node.op_type == "BatchNormalization":
            ok = node.input[0] == tensor and len(node.output) == 1
        elif node.op_type in _CONST_OPERAND_ELEMENTWISE:
            others = [n for n in node.input if n != tensor]
            ok = len(node.input) == 2 and len(others) == 1 and others[0] in constants
            ok = ok and (node.op_type in ("Add", "Mul") or node.input[0] == tensor)
        else:
            ok = False
        if not ok:
            break
        chain.append(node.op_type)
        tensor = node.output[0]
    return tensor, tuple(chain)


#: the ops `layers` lists: a transposed conv is a conv (its weight is (C_in, C_out / groups, *kernel))
CONV_OPS = ("Conv", "ConvTranspose")


def _conv_geometry(node: onnx.NodeProto, name: str, wshape: tuple[int, ...] | None, in_shape, out_shape) -> dict:
    if wshape is None or len(wshape) < 3:
        raise OnnxRedundError(f"conv {name!r}: cannot tell its weight shape")
    groups = int(attribute(node, "group", 1))
    nsp = len(wshape) - 2
    kernel = tuple(int(k) for k in wshape[2:])
    if node.op_type == "ConvTranspose":  # each input position scatters its kernel: MACs count input positions
        return {
            "in_channels": int(wshape[0]),
            "out_channels": int(wshape[1]) * groups,
            "kernel": kernel,
            "stride": tuple(attribute(node, "strides", [1] * nsp)),
            "pads": tuple(attribute(node, "pads", [0] * 2 * nsp)),
            "dilations": tuple(attribute(node, "dilations", [1] * nsp)),
            "groups": groups,
            "macs": int(np.prod(in_shape[1:], dtype=np.int64)) * int(np.prod(wshape, dtype=np.int64)),
        }
    return {
        "in_channels": int(wshape[1]) * groups,
        "out_channels": int(wshape[0]),
        "kernel": kernel,
        "stride": tuple(attribute(node, "strides", [1] * nsp)),
        "pads": tuple(attribute(node, "pads", [0] * 2 * nsp)),
        "dilations": tuple(attribute(node, "dilations", [1] * nsp)),
        "groups": groups,
        "macs": int(np.prod(out_shape, dtype=np.int64)) * int(wshape[1]) * int(np.prod(kernel)),
    }


def _layer_names(graph: onnx.GraphProto) -> dict[int, str]:
    convs = [i for i, n in enumerate(graph.node) if n.op_type in CONV_OPS and n.domain in ("", "ai.onnx")]
    counts: dict[str, int] = {}
    for i in convs:
        counts[graph.node[i].name] = counts.get(graph.node[i].name, 0) + 1
    return {
        i: graph.node[i].name
        if graph.node[i].name and counts[graph.node[i].name] == 1
        else f"{graph.node[i].op_type}_{i}"
        for i in convs
    }


def _weight_shape(constants: ConstantTable, name: str, weight: str) -> tuple[int, ...]:
    tensor = constants.tensor(weight)
    if tensor is not None:
        return tuple(int(d) for d in tensor.dims)
    if weight in constants:  # computed from constants: a quantized model's dequantized weight
        return tuple(int(d) for d in constants[weight].shape)
    raise OnnxRedundError(  # what loading could not fold (engine/fold.py): computed from the data
        f"conv {name!r} computes its weights from the input (a dynamic filter); onnxredund analyses convs whose "
        "weights are constants"
    )


def describe_layers(proto: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> list[ConvLayer]:
    """One :class:`ConvLayer` per Conv node, in graph order.

    Args:
        proto: the model.
        shapes: per-sample shape (no batch) of every tensor whose shape is known.

    Raises:
        OnnxRedundError: the shapes around a conv are unknown or contradict its weights.
    """
    graph = proto.graph
    constants = ConstantTable(graph)
    consumers = consumers_of(graph)
    outputs = {o.name for o in graph.output}
    layers = []
    for node_index, name in _layer_names(graph).items():
        node = graph.node[node_index]
        if len(node.input) < 2:
            raise OnnxRedundError(f"conv {name!r} has no weight input; the model is malformed")
        x, w = node.input[0], node.input[1]
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if x not in shapes or node.output[0] not in shapes:
            raise OnnxRedundError(f"cannot tell the shapes around conv {name!r}; pass `input_shape` or fix the model")
        activation, chain = _elementwise_chain(graph, node.output[0], consumers, constants, outputs)
        geo = _conv_geometry(node, name, _weight_shape(constants, name, w), shapes[x], shapes[node.output[0]])
        if shapes[x][0] != geo["in_channels"]:
            raise OnnxRedundError(
                f"conv {name!r} reads {shapes[x][0]} channels but its weights expect {geo['in_channels']}; "
                "the model's shapes are inconsistent"
            )
        layers.append(
            ConvLayer(
                index=len(layers),
                name=name,
                op=node.op_type,
                node_index=node_index,
                input=x,
                output=node.output[0],
                activation=activation,
                chain=chain,
                weight=w,
                bias=bias,
                input_shape=shapes[x],
                output_shape=shapes[node.output[0]],
                **geo,
            )
        )
    return layers
