"""Load, validate and describe an ONNX CNN: its input and its conv layers.

``load_model(path)`` returns a :class:`Model`: the validated ``ModelProto`` (IR version lowered to
what onnxruntime reads, batch made dynamic where provably safe), the data input, and one
:class:`ConvLayer` record per Conv node in graph order.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

from onnxredund.errors import OnnxRedundError

__all__ = [
    "ACTIVATION_OPS",
    "MAX_IR_VERSION",
    "MAX_OPSET",
    "MIN_OPSET",
    "ConvLayer",
    "Model",
    "load_model",
    "load_model_proto",
    "tensor_array",
]

log = logging.getLogger(__name__)

MAX_IR_VERSION = 13  # newest IR that onnxruntime-gpu 1.31 reads
MAX_OPSET = 26  # newest default-domain opset onnxruntime-gpu 1.31 runs
MIN_OPSET = 7
_ALLOWED_DOMAINS = ("", "ai.onnx")
#: ops that keep a conv's output channel-wise; the activation A_i is the end of such a chain
#: non-linear elementwise activations; the activation A_i is the end of a chain of these (and of
#: constant-operand Add/Mul/..., BatchNormalization) after a conv
ACTIVATION_OPS = frozenset({
    "Relu", "LeakyRelu", "Clip", "Sigmoid", "Tanh", "HardSwish", "HardSigmoid", "Elu", "Selu",
    "Softplus", "Softsign", "Gelu", "Mish", "Celu", "ThresholdedRelu",
})  # fmt: skip
_UNARY_ELEMENTWISE = ACTIVATION_OPS | {"Identity"}
_CONST_OPERAND_ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "PRelu"}


@dataclass(frozen=True)
class ConvLayer:
    """One conv layer in the conv's own (NCHW) terms.

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
        input_shape, output_shape: (C, H, W) of one sample.
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


@dataclass
class Model:
    """A validated model.

    Attributes:
        proto: the model, IR version <= 13, batch dynamic when ``batch_dynamic``.
        path: the file it came from (never written).
        input_name: the data input; sample_shape: its shape without the batch.
        output_names: the graph outputs; the first is the prediction head.
        layout: "NCHW" or "NHWC" (an input read through a Transpose to NCHW).
        layers: conv layers in graph order.
        batch_dynamic: whether batches of any size can run in one call.
        shapes: sample shape (no batch) of every tensor whose shape is known.
    """

    proto: onnx.ModelProto
    path: str
    input_name: str
    sample_shape: tuple[int, ...]
    output_names: list[str]
    layout: str
    layers: list[ConvLayer]
    batch_dynamic: bool
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    _constants: ConstantTable | None = field(default=None, repr=False, compare=False)

    def layer(self, key: str | int) -> ConvLayer:
        """Look a layer up by name or index; a miss lists the valid ones."""
        if isinstance(key, str) and key.strip().lstrip("-").isdigit():
            key = int(key)
        if isinstance(key, int):
            if 0 <= key < len(self.layers):
                return self.layers[key]
        else:
            for layer in self.layers:
                if layer.name == key:
                    return layer
        valid = ", ".join(f"{l.index}={l.name}" for l in self.layers)
        raise OnnxRedundError(f"no conv layer {key!r}; valid layers: {valid}")

    def constant(self, name: str) -> np.ndarray | None:
        """The value of a constant tensor (initializer, Constant node, Identity of one), or None."""
        if self._constants is None:
            self._constants = ConstantTable(self.proto.graph)
        return self._constants.get(name)


def _fail_if_not_file(path: Path) -> None:
    if not path.exists():
        raise OnnxRedundError(f"model file {path} does not exist")
    if not path.is_file():
        raise OnnxRedundError(f"{path} is not a file; pass an .onnx model file")
    if path.stat().st_size == 0:
        raise OnnxRedundError(f"{path} is empty; pass an .onnx model file")


PROTOBUF_LIMIT = 2**31 - 1  # bytes one protobuf message (one .onnx file without external data) can hold
BASEPATH = "basepath"  # onnx's key for the folder of a tensor's external data; never saved to a file
_EXTERNAL_KEYS = {"location", "offset", "length", "checksum", BASEPATH}


def _check_external_data(proto: onnx.ModelProto, folder: Path) -> None:
    """Refuse, before anything is read, external data outside the model's folder, of unknown keys or not
    matching its tensor's size."""
    root = folder.resolve()
    for tensor in external_tensors(proto):
        info = {e.key: e.value for e in tensor.external_data}
        if not all(isinstance(v, str) for kv in info.items() for v in kv):  # protobuf hands back bad UTF-8 as bytes
            raise OnnxRedundError(f"tensor {tensor.name!r}: its external data entries are not UTF-8 text; corrupt file")
        unknown = sorted(set(info) - _EXTERNAL_KEYS)
        if unknown:
            raise OnnxRedundError(f"tensor {tensor.name!r}: unknown external data key {unknown[0]!r}; corrupt file")
        loc = info.get("location", "")
        if not loc or os.path.isabs(loc) or ".." in Path(loc).parts:
            raise OnnxRedundError(
                f"tensor {tensor.name!r} points its external data at {loc!r}, outside the model's folder; "
                "refusing to read it"
            )
        target = folder / loc
        if target.is_symlink() or not target.resolve().is_relative_to(root):
            raise OnnxRedundError(
                f"tensor {tensor.name!r}: external data {loc!r} is a link out of the model's folder; refusing it"
            )
        if not target.is_file():
            raise OnnxRedundError(
                f"tensor {tensor.name!r}: external data file {loc!r} is missing next to the model; copy it there"
            )
        _check_external_extent(tensor, info, target)


_SUB_BYTE_BITS = {  # packed types (those this onnx knows)
    getattr(onnx.TensorProto, name): bits
    for name, bits in [
        ("INT4", 4),
        ("UINT4", 4),
        ("FLOAT4E2M1", 4),
        ("INT2", 2),
        ("UINT2", 2),
        ("FLOAT6E2M3", 6),
        ("FLOAT6E3M2", 6),
    ]
    if hasattr(onnx.TensorProto, name)
}


def _tensor_bytes(tensor: onnx.TensorProto) -> int | None:
    """Bytes a tensor's data takes, or None for types whose size we do not know."""
    n = int(np.prod(tensor.dims, dtype=np.int64))
    if tensor.data_type in _SUB_BYTE_BITS:
        return (n * _SUB_BYTE_BITS[tensor.data_type] + 7) // 8
    if tensor.data_type == onnx.TensorProto.STRING:
        return None
    try:
        return n * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        return None


def _check_external_extent(tensor: onnx.TensorProto, info: dict, target: Path) -> None:
    """The bytes a tensor names must lie in its file and match its shape (checked from sizes, not read)."""
    size = target.stat().st_size
    try:
        offset = int(info.get("offset") or 0)
        length = int(info["length"]) if info.get("length") else size - offset
    except ValueError:
        raise OnnxRedundError(f"tensor {tensor.name!r}: external data offset or length is not a number") from None
    if offset < 0 or length < 0 or offset + length > size:
        raise OnnxRedundError(
            f"tensor {tensor.name!r}: external data runs past the end of {info['location']!r} ({size} bytes)"
        )
    need = _tensor_bytes(tensor)
    if need is not None and length != need:
        raise OnnxRedundError(
            f"tensor {tensor.name!r}: external data holds {length} bytes where its shape "
            f"{'x'.join(map(str, tensor.dims)) or 'scalar'} needs {need}; the data file does not match the model"
        )


def external_tensors(proto: onnx.ModelProto) -> list[onnx.TensorProto]:
    """The tensors of ``proto`` whose data lives in external files."""
    return [t for t in _all_tensors(proto.graph) if t.data_location == onnx.TensorProto.EXTERNAL]


def external_folder(tensor: onnx.TensorProto) -> str:
    """The folder a tensor's external data is read from ('' for none)."""
    return next((e.value for e in tensor.external_data if e.key == BASEPATH), "")


def _pin_external_data(proto: onnx.ModelProto, folder: Path) -> None:
    """Record the model's folder in each external tensor, replacing any folder the file names.

    The data stays on disk: weights are read from there by :func:`tensor_array` when needed and by
    onnxruntime when a session is made (see ``runtime.Runner.create``), so no model, however big,
    is ever copied into one protobuf.
    """
    root = str(folder.resolve())
    for tensor in external_tensors(proto):
        set_external_folder(tensor, root)


def set_external_folder(tensor: onnx.TensorProto, folder: str) -> None:
    """Set the folder a tensor's external data is read from; '' removes it."""
    keep = [(e.key, e.value) for e in tensor.external_data if e.key != BASEPATH]
    del tensor.external_data[:]
    for key, value in keep + ([(BASEPATH, folder)] if folder else []):
        tensor.external_data.add(key=key, value=value)


def tensor_array(tensor: onnx.TensorProto) -> np.ndarray:
    """A tensor's values as numpy, read from its external file when it has one."""
    try:
        return numpy_helper.to_array(tensor, external_folder(tensor))
    except (OSError, ValueError) as e:
        raise OnnxRedundError(f"tensor {tensor.name!r}: cannot read its data: {e}") from None


def _all_tensors(graph: onnx.GraphProto):
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            elif attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_tensors(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _all_tensors(g)


def _read_proto(path: Path) -> onnx.ModelProto:
    """The model's graph, with external data left on disk (checked to lie in the model's folder)."""
    _fail_if_not_file(path)
    size = path.stat().st_size
    if size > PROTOBUF_LIMIT:
        raise OnnxRedundError(
            f"{path} is {size / 2**30:.1f} GiB in one file, over protobuf's 2 GB limit; save its weights as "
            "external data (onnx.save_model(..., save_as_external_data=True)) and pass the .onnx file"
        )
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf raises DecodeError and others
        raise OnnxRedundError(f"{path} is not a readable ONNX model ({type(e).__name__}); check the file") from None
    if not proto.HasField("graph") or not proto.graph.node:
        raise OnnxRedundError(f"{path} has no graph (or an empty one); is it an ONNX model?")
    _check_external_data(proto, path.parent)
    _pin_external_data(proto, path.parent)
    return proto


def _check_opsets(proto: onnx.ModelProto, path: Path) -> None:
    opsets = {o.domain: o.version for o in proto.opset_import}
    default = opsets.get("", opsets.get("ai.onnx"))
    if default is None:
        raise OnnxRedundError(f"{path} imports no default ONNX opset; re-export it with opset {MIN_OPSET}..{MAX_OPSET}")
    if not MIN_OPSET <= default <= MAX_OPSET:
        raise OnnxRedundError(
            f"{path} uses opset {default}; onnxruntime runs opsets {MIN_OPSET}..{MAX_OPSET}: "
            "re-export with one of those"
        )
    for node in proto.graph.node:
        if node.domain not in _ALLOWED_DOMAINS:
            raise OnnxRedundError(
                f"node {node.name or node.op_type!r} uses custom domain {node.domain!r}; only standard ONNX ops are "
                "run (custom-op libraries are never loaded)"
            )
    if proto.functions:
        raise OnnxRedundError(f"{path} defines model-local functions; inline them first (onnx.inliner)")


def _validate(proto: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    _check_opsets(proto, path)
    proto.ir_version = min(proto.ir_version, MAX_IR_VERSION)
    # external data is checked where it lives: by path (onnx's way for big models); an in-memory
    # model with external data has no folder for the checker, and onnxruntime checks it instead
    external = bool(external_tensors(proto))
    if external and not path.is_file():
        log.debug("checker skipped: external data and no model file")
        return proto
    try:
        onnx.checker.check_model(str(path) if external else proto)
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OnnxRedundError(f"{path} is not a valid ONNX model: {first}") from None
    except ValueError as e:  # text that is not UTF-8; an in-memory proto over 2 GB
        first = str(e).strip().splitlines()[0][:120] if str(e).strip() else ""
        raise OnnxRedundError(f"{path} is not a valid ONNX model ({type(e).__name__}: {first})") from None
    return proto


class ConstantTable(Mapping):
    """The constant tensors of a graph (initializers, Constant nodes, Identity of those), by name.

    Values are decoded to numpy only when looked up, and then kept: a big model's weights are not
    all copied to find a few conv kernels.
    """

    def __init__(self, graph: onnx.GraphProto) -> None:
        self._sources: dict[str, object] = {t.name: t for t in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant" and node.output:
                self._sources[node.output[0]] = node
            elif node.op_type == "Identity" and node.input and node.input[0] in self._sources:
                self._sources[node.output[0]] = self._sources[node.input[0]]
        self._values: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._values:
            self._values[name] = _decode(self._sources[name])
        return self._values[name]

    def __iter__(self):
        return iter(self._sources)

    def __len__(self) -> int:
        return len(self._sources)

    def __contains__(self, name: object) -> bool:
        return name in self._sources


def _decode(source) -> np.ndarray:
    if isinstance(source, onnx.TensorProto):
        return tensor_array(source)
    for attr in source.attribute:
        if attr.name == "value":
            return tensor_array(attr.t)
        if attr.name in ("value_float", "value_int", "value_floats", "value_ints"):
            return np.array(onnx.helper.get_attribute_value(attr))
    raise KeyError(f"Constant node {source.name!r} holds no tensor value")


def constant_values(graph: onnx.GraphProto) -> ConstantTable:
    """The constant tensors of ``graph`` (see :class:`ConstantTable`)."""
    return ConstantTable(graph)


def data_inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are not initializers (old exporters list weights as inputs too)."""
    init = {t.name for t in graph.initializer}
    return [i for i in graph.input if i.name not in init]


def _dims(vi: onnx.ValueInfoProto) -> list[int | str] | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]


def _pick_input(proto: onnx.ModelProto, path: Path, input_shape: tuple[int, ...] | None) -> tuple[str, list]:
    inputs = data_inputs(proto.graph)
    if len(inputs) != 1:
        names = [i.name for i in inputs]
        raise OnnxRedundError(f"{path} has {len(inputs)} data inputs {names}; onnxredund analyses single-input CNNs")
    vi = inputs[0]
    if vi.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise OnnxRedundError(f"input {vi.name!r} is not float32; onnxredund analyses float image models")
    dims = _dims(vi)
    if dims is None or len(dims) != 4:
        raise OnnxRedundError(
            f"input {vi.name!r} has shape {dims}; onnxredund needs an image tensor N x C x H x W (or N x H x W x C)"
        )
    sample = dims[1:]
    if input_shape is not None:
        if len(input_shape) != 3:
            raise OnnxRedundError(f"--input-shape needs three sizes like 3x48x192, got {input_shape}")
        for want, have in zip(input_shape, sample, strict=True):
            if isinstance(have, int) and have > 0 and have != want:
                raise OnnxRedundError(f"--input-shape {input_shape} contradicts the model's fixed input {sample}")
        sample = list(input_shape)
    if any(not isinstance(d, int) or d <= 0 for d in sample):
        raise OnnxRedundError(
            f"input {vi.name!r} has free dimensions {dims}; pass --input-shape CxHxW (e.g. 3x224x224)"
        )
    return vi.name, [dims[0], *sample]


def _set_input_shape(proto: onnx.ModelProto, name: str, dims: list) -> None:
    vi = next(i for i in proto.graph.input if i.name == name)
    shape = vi.type.tensor_type.shape
    for d, v in zip(shape.dim, dims, strict=True):
        if isinstance(v, int) and v > 0:
            d.Clear()
            d.dim_value = v
        else:
            d.Clear()
            d.dim_param = "N"


def _layout(graph: onnx.GraphProto, input_name: str) -> str:
    consumers = [n for n in graph.node if input_name in n.input]
    if consumers and all(n.op_type == "Transpose" for n in consumers):
        perms = {tuple(a.ints) for n in consumers for a in n.attribute if a.name == "perm"}
        if perms == {(0, 3, 1, 2)}:
            return "NHWC"
    return "NCHW"


def _infer(proto: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return shape_inference.infer_shapes(proto, strict_mode=False, data_prop=True)
    except Exception as e:
        log.debug("shape inference failed: %s", e)
        return proto


def _shape_table(proto: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    g = proto.graph
    table = {}
    for vi in [*g.input, *g.value_info, *g.output]:
        dims = _dims(vi)
        if dims and all(isinstance(d, int) and d > 0 for d in dims[1:]):
            table[vi.name] = tuple(dims[1:])
    return table


def consumers_of(graph: onnx.GraphProto) -> dict[str, list[int]]:
    """tensor name -> indices of the nodes that read it."""
    table: dict[str, list[int]] = {}
    for i, node in enumerate(graph.node):
        for name in node.input:
            if name:
                table.setdefault(name, []).append(i)
    return table


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


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _conv_geometry(node, weight: np.ndarray | None, weight_shape, in_shape, out_shape) -> dict:
    wshape = tuple(weight.shape) if weight is not None else weight_shape
    if wshape is None or len(wshape) < 3:
        raise OnnxRedundError(f"conv {node.name or node.output[0]!r}: cannot tell its weight shape")
    groups = int(_attr(node, "group", 1))
    nsp = len(wshape) - 2
    kernel = tuple(int(k) for k in wshape[2:])
    return {
        "in_channels": int(wshape[1]) * groups,
        "out_channels": int(wshape[0]),
        "kernel": kernel,
        "stride": tuple(_attr(node, "strides", [1] * nsp)),
        "pads": tuple(_attr(node, "pads", [0] * 2 * nsp)),
        "dilations": tuple(_attr(node, "dilations", [1] * nsp)),
        "groups": groups,
        "macs": int(np.prod(out_shape, dtype=np.int64)) * int(wshape[1]) * int(np.prod(kernel)),
    }


def _layer_names(graph) -> dict[int, str]:
    convs = [i for i, n in enumerate(graph.node) if n.op_type == "Conv"]
    counts: dict[str, int] = {}
    for i in convs:
        counts[graph.node[i].name] = counts.get(graph.node[i].name, 0) + 1
    return {
        i: graph.node[i].name if graph.node[i].name and counts[graph.node[i].name] == 1 else f"Conv_{i}" for i in convs
    }


def describe_layers(proto: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> list[ConvLayer]:
    """One :class:`ConvLayer` per Conv node, in graph order."""
    graph = proto.graph
    constants = constant_values(graph)
    consumers = consumers_of(graph)
    outputs = {o.name for o in graph.output}
    layers = []
    for node_index, name in _layer_names(graph).items():
        node = graph.node[node_index]
        x, w = node.input[0], node.input[1]
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if x not in shapes or node.output[0] not in shapes:
            raise OnnxRedundError(f"cannot tell the shapes around conv {name!r}; pass --input-shape or fix the model")
        activation, chain = _elementwise_chain(graph, node.output[0], consumers, constants, outputs)
        geo = _conv_geometry(node, constants.get(w), shapes.get(w), shapes[x], shapes[node.output[0]])
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


def load_model(path: str | os.PathLike, *, input_shape: tuple[int, ...] | None = None) -> Model:
    """Load and validate an ONNX CNN; the file itself is never written.

    Args:
        path: the .onnx file (external data is read from its folder only).
        input_shape: (C, H, W) (or (H, W, C) for NHWC inputs) for inputs with free dimensions.

    Raises:
        OnnxRedundError: the file is not a runnable single-input image CNN.
    """
    path = Path(path)
    return load_model_proto(_read_proto(path), name=str(path), input_shape=input_shape)


def load_model_proto(
    proto: onnx.ModelProto, *, name: str = "<memory>", input_shape: tuple[int, ...] | None = None
) -> Model:
    """Validate and describe a model already in memory (a copy is kept; ``proto`` is not changed)."""
    path = Path(name)
    work = onnx.ModelProto()
    work.CopyFrom(proto)
    proto = _validate(work, path)
    input_name, dims = _pick_input(proto, path, input_shape)
    _set_input_shape(proto, input_name, dims)
    if not any(n.op_type == "Conv" for n in proto.graph.node):
        raise OnnxRedundError(f"{path} has no Conv node; onnxredund analyses convolutional networks")
    try:
        return _describe(proto, path, input_name, dims)
    except (KeyError, ValueError, TypeError, IndexError, AttributeError, RuntimeError) as e:
        # the checker passed, yet the model contradicts itself (seen when fuzzing): a user error, not a bug
        raise OnnxRedundError(f"{path} is malformed ({type(e).__name__}: {str(e)[:120]}); check the export") from None


_FLOATS = {onnx.TensorProto.FLOAT: "<f4", onnx.TensorProto.DOUBLE: "<f8", onnx.TensorProto.FLOAT16: "<f2"}
_CHUNK = 2**24  # values checked at a time in an external file


def _finite(tensor: onnx.TensorProto) -> bool:
    """No NaN or Inf in a float tensor; external data is mapped and scanned in chunks, not loaded."""
    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        return bool(np.isfinite(tensor_array(tensor)).all())
    info = {e.key: e.value for e in tensor.external_data}
    n = int(np.prod(tensor.dims, dtype=np.int64))
    if n == 0:
        return True
    values = np.memmap(
        Path(external_folder(tensor)) / info["location"],
        dtype=_FLOATS[tensor.data_type],
        mode="r",
        offset=int(info.get("offset") or 0),
        shape=(n,),
    )
    return all(np.isfinite(values[i : i + _CHUNK]).all() for i in range(0, n, _CHUNK))


def _check_finite_weights(proto: onnx.ModelProto, path: Path) -> None:
    for t in proto.graph.initializer:
        if t.data_type in _FLOATS and not _finite(t):
            raise OnnxRedundError(f"{path}: weight {t.name!r} contains NaN or Inf; the model is broken")


def _describe(proto: onnx.ModelProto, path: Path, input_name: str, dims: list) -> Model:
    from onnxredund.batching import make_batch_dynamic  # batching imports this module

    _check_finite_weights(proto, path)
    proto, batch_dynamic = make_batch_dynamic(proto, input_name, dims)
    if not batch_dynamic and dims[0] != 1:
        raise OnnxRedundError(
            f"{path} fixes its batch to {dims[0]} and cannot be freed; re-export with batch 1 or free"
        )
    shapes = _shape_table(_infer(proto))
    conv_tensors = [t for n in proto.graph.node if n.op_type == "Conv" for t in (n.input[0], n.output[0])]
    if any(t not in shapes for t in conv_tensors):
        from onnxredund.runtime import probe_shapes  # runtime imports this module

        shapes.update(probe_shapes(proto, input_name, tuple(dims[1:]), conv_tensors))
    return Model(
        proto=proto,
        path=str(path),
        input_name=input_name,
        sample_shape=tuple(dims[1:]),
        output_names=[o.name for o in proto.graph.output],
        layout=_layout(proto.graph, input_name),
        layers=describe_layers(proto, shapes),
        batch_dynamic=batch_dynamic,
        shapes=shapes,
    )
