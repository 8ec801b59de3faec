"""Graph queries and the one helper for each piece of ONNX plumbing.

Everything here reads a graph and returns plain values: attributes (:func:`attribute`), copies
(:func:`copy_model`), shape inference (:func:`infer_shapes`, :func:`value_infos`), constant values
(:class:`ConstantTable`), who reads and writes which tensor, and which tensors depend on data.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Mapping

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

from onnxredund.model.files import tensor_array

__all__ = [
    "ConstantTable",
    "attribute",
    "bodies",
    "consumers_of",
    "copy_model",
    "data_dependent",
    "data_inputs",
    "default_opset",
    "dequantize",
    "dims",
    "downstream",
    "fold_tensors",
    "infer_shapes",
    "marked_names",
    "outer_reads",
    "producers_of",
    "quantize",
    "quantize_op",
    "shape_derived",
    "value_infos",
    "value_key",
    "without_marked",
]

log = logging.getLogger(__name__)

_INFERENCE_ERRORS = (shape_inference.InferenceError, onnx.checker.ValidationError, RuntimeError)


def attribute(node: onnx.NodeProto, name: str, default=None):
    """The value of a node's attribute (strings decoded to ``str``), or ``default`` when absent."""
    for a in node.attribute:
        if a.name == name:
            value = onnx.helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default


def copy_model(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A deep copy (external weights stay references to their files)."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    return out


def value_key(array: np.ndarray) -> tuple:
    """A key equal for arrays of equal type, shape and values (a digest: weights are not kept twice to compare)."""
    array = np.ascontiguousarray(array)
    return array.dtype.str, array.shape, hashlib.sha256(array.tobytes()).digest()


def marked_names(proto: onnx.ModelProto, key: str) -> set[str]:
    """The names the analysis recorded under metadata ``key`` (comma separated): what it added to the model."""
    props = {p.key: p.value for p in proto.metadata_props}
    return set(props[key].split(",")) if key in props else set()


def without_marked(proto: onnx.ModelProto, key: str, field: str) -> onnx.ModelProto:
    """``proto`` without the entries of ``graph.<field>`` (outputs, initializers) named under metadata ``key``, nor
    the key (a copy, where it has any): what the analysis added, taken out before a model is written."""
    names = marked_names(proto, key)
    if not names:
        return proto
    props = {p.key: p.value for p in proto.metadata_props if p.key != key}
    work = copy_model(proto)
    entries = getattr(work.graph, field)
    kept = [e for e in entries if e.name not in names]
    del entries[:]
    entries.extend(kept)
    del work.metadata_props[:]
    if props:
        onnx.helper.set_model_props(work, props)
    return work


def infer_shapes(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``proto`` with inferred shapes (data propagation on); the model as it is when inference fails.

    A failure is not an error: shapes that stay unknown are found by a run where needed.
    """
    try:
        return shape_inference.infer_shapes(proto, strict_mode=False, data_prop=True)
    except _INFERENCE_ERRORS as e:
        log.debug("shape inference failed (%s): shapes left to a probe run", str(e).splitlines()[0] if str(e) else e)
        return proto


def value_infos(proto: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    """Every tensor's inferred ValueInfo, by name (one shape inference for many lookups)."""
    g = infer_shapes(proto).graph
    return {vi.name: vi for vi in [*g.input, *g.value_info, *g.output]}


def dims(vi: onnx.ValueInfoProto) -> list[int | str] | None:
    """A tensor's dimensions: ints where known, the symbolic name (or '?') where not; None without a shape."""
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]


def default_opset(proto: onnx.ModelProto) -> int | None:
    """The version of the default ONNX domain the model imports."""
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)


class ConstantTable(Mapping):
    """The constant tensors of a graph (initializers, Constant nodes, Identity of those, and what a
    QuantizeLinear or DequantizeLinear makes of constants: a quantized model's QDQ weights; what a ConstantOfShape
    of a constant shape makes: old exports' weights), by name.

    Values are decoded to numpy only when looked up, and then kept: a big model's weights are not
    all copied to find a few conv kernels.
    """

    def __init__(self, graph: onnx.GraphProto) -> None:
        self._sources: dict[str, onnx.TensorProto | onnx.NodeProto] = {t.name: t for t in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant" and node.output:
                self._sources[node.output[0]] = node
            elif node.op_type == "Identity" and node.input and node.input[0] in self._sources:
                self._sources[node.output[0]] = self._sources[node.input[0]]
            elif node.op_type in _FOLDED_OPS and node.domain in ("", "ai.onnx") and node.output:
                if all(t in self._sources for t in node.input if t):
                    self._sources[node.output[0]] = node
        self._values: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._values:
            source = self._sources[name]
            if isinstance(source, onnx.NodeProto) and source.op_type == "ConstantOfShape":
                self._values[name] = _constant_of_shape(source, self[source.input[0]])
            elif isinstance(source, onnx.NodeProto) and source.op_type in _QUANTIZE_OPS:
                self._values[name] = quantize_op(
                    source.op_type,
                    [self[t] if t else None for t in source.input],
                    axis=attribute(source, "axis", 1),
                    block_size=attribute(source, "block_size", 0),
                    output_dtype=attribute(source, "output_dtype", 0),
                )
            else:
                self._values[name] = _decode(source)
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._sources)

    def __len__(self) -> int:
        return len(self._sources)

    def __contains__(self, name: object) -> bool:
        return name in self._sources

    def tensor(self, name: str) -> onnx.TensorProto | None:
        """The TensorProto behind a constant (None for scalar/list Constant attributes)."""
        source = self._sources.get(name)
        if isinstance(source, onnx.TensorProto):
            return source
        if source is not None and source.op_type == "Constant":
            return attribute(source, "value")
        return None


_QUANTIZE_OPS = ("QuantizeLinear", "DequantizeLinear")
#: ops whose output is a constant when their inputs are (old exports make their weights with ConstantOfShape)
_FOLDED_OPS = ("ConstantOfShape", *_QUANTIZE_OPS)


def _constant_of_shape(node: onnx.NodeProto, shape: np.ndarray) -> np.ndarray:
    """What a ConstantOfShape makes: its one value (default a float32 0) filling ``shape``."""
    value = attribute(node, "value")
    fill = tensor_array(value).reshape(-1)[:1] if value is not None else np.zeros(1, np.float32)
    return np.full(tuple(int(d) for d in np.asarray(shape).reshape(-1)), fill[0], dtype=fill.dtype)


def _spread(x: np.ndarray, scale: np.ndarray, zero: np.ndarray, axis: int, block_size: int):
    """The scale and zero point broadcast against ``x``: per tensor, per ``axis`` (1-D) or per block along it."""
    if scale.size == 1:
        return scale, zero
    axis %= x.ndim
    if block_size:
        take = range(x.shape[axis])
        return tuple(np.repeat(v, block_size, axis=axis).take(take, axis=axis) for v in (scale, zero))
    shape = [1] * x.ndim
    shape[axis] = x.shape[axis]
    return scale.reshape(shape), zero.reshape(shape)


def dequantize(
    x: np.ndarray, scale: np.ndarray, zero: np.ndarray | None = None, *, axis: int = 1, block_size: int = 0
) -> np.ndarray:
    """What DequantizeLinear computes: (x - zero) * scale, per tensor, per ``axis`` (a 1-D scale) or per block of
    ``block_size`` along it, as onnxruntime does (the difference in int32, then a float product in the scale's
    type)."""
    zero = np.zeros_like(scale, dtype=x.dtype) if zero is None else zero
    scale, zero = _spread(x, scale, zero, axis, block_size)
    diff = x.astype(np.int32) - zero.astype(np.int32)
    return diff.astype(scale.dtype) * scale


def quantize(
    x: np.ndarray,
    scale: np.ndarray,
    zero: np.ndarray | None = None,
    *,
    axis: int = 1,
    block_size: int = 0,
    dtype=np.uint8,
) -> np.ndarray:
    """What QuantizeLinear computes: x / scale rounded half to even, plus the zero point, saturated to the zero
    point's integer type (``dtype`` without one), per tensor, per ``axis`` or per block, as onnxruntime does."""
    kind = np.dtype(dtype if zero is None else zero.dtype)
    zero = np.zeros_like(scale, dtype=kind) if zero is None else zero
    scale, zero = _spread(x, scale, zero, axis, block_size)
    info = np.iinfo(kind)
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.rint(x.astype(np.float32) / scale.astype(np.float32)) + zero.astype(np.float32)
    return np.clip(y, info.min, info.max).astype(kind)


def quantize_op(op_type: str, inputs: list, *, axis: int = 1, block_size: int = 0, output_dtype: int = 0) -> np.ndarray:
    """What a QuantizeLinear or DequantizeLinear node computes from its inputs' values (x, scale[, zero point])
    and its attributes (``output_dtype``: a TensorProto type, 0 for the zero point's or uint8)."""
    if op_type == "DequantizeLinear":
        return dequantize(*inputs, axis=axis, block_size=block_size)
    kind = onnx.helper.tensor_dtype_to_np_dtype(output_dtype) if output_dtype else np.uint8
    return quantize(*inputs, axis=axis, block_size=block_size, dtype=kind)


def _decode(source: onnx.TensorProto | onnx.NodeProto) -> np.ndarray:
    if isinstance(source, onnx.TensorProto):
        return tensor_array(source)
    for attr in source.attribute:
        if attr.name == "value":
            return tensor_array(attr.t)
        if attr.name in ("value_float", "value_int", "value_floats", "value_ints"):
            return np.array(onnx.helper.get_attribute_value(attr))
    raise KeyError(f"Constant node {source.name!r} holds no tensor value")


def data_inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are not initializers (old exporters list weights as inputs too)."""
    init = {t.name for t in graph.initializer}
    return [i for i in graph.input if i.name not in init]


def consumers_of(graph: onnx.GraphProto) -> dict[str, list[int]]:
    """tensor name -> indices of the nodes that read it (an If/Loop/Scan node reads what its bodies read from the
    outer scope)."""
    table: dict[str, list[int]] = {}
    for i, node in enumerate(graph.node):
        for name in dict.fromkeys([*node.input, *sorted(outer_reads(node))]):
            if name:
                table.setdefault(name, []).append(i)
    return table


def producers_of(graph: onnx.GraphProto) -> dict[str, int]:
    """tensor name -> index of the node that writes it."""
    return {o: i for i, n in enumerate(graph.node) for o in n.output if o}


def downstream(graph: onnx.GraphProto, start: str) -> set[int]:
    """Indices of the nodes that depend on tensor ``start``."""
    consumers = consumers_of(graph)
    found: set[int] = set()
    stack = [start]
    while stack:
        for idx in consumers.get(stack.pop(), []):
            if idx not in found:
                found.add(idx)
                stack.extend(o for o in graph.node[idx].output if o)
    return found


def data_dependent(graph: onnx.GraphProto, sources: list[str] | None = None) -> set[str]:
    """Tensors whose value depends on ``sources`` (default: every data input), not only on constants."""
    dependent = set(sources) if sources is not None else {i.name for i in data_inputs(graph)}
    for node in graph.node:  # graph.node is topologically sorted (checker verified)
        if any(t in dependent for t in node.input) or not dependent.isdisjoint(outer_reads(node)):
            dependent.update(o for o in node.output if o)
    return dependent


def shape_derived(graph: onnx.GraphProto) -> set[str]:
    """Tensors that depend on the data inputs only through their shapes (a Shape or Size of a data tensor, and
    what is computed from it alone: an Upsample's scales from two feature maps' sizes, say)."""
    dependent = {i.name for i in data_inputs(graph)}
    shaped: set[str] = set()
    for node in graph.node:
        reads = [t for t in node.input if t]
        if node.op_type in ("Shape", "Size") and reads and (reads[0] in dependent or reads[0] in shaped):
            shaped.update(o for o in node.output if o)
        elif any(t in dependent for t in reads):
            dependent.update(o for o in node.output if o)
        elif any(t in shaped for t in reads):
            shaped.update(o for o in node.output if o)
    return shaped


def fold_tensors(proto: onnx.ModelProto, values: dict[str, np.ndarray]) -> onnx.ModelProto:
    """Copy of ``proto`` where the tensors ``values`` names are constants (initializers) of those values. Their
    producers stay, in place, writing a renamed tensor no node reads, so that node indices keep their meaning;
    a cut leaves them out."""
    if not values:
        return proto
    out = copy_model(proto)
    for node in out.graph.node:
        for j, t in enumerate(node.output):
            if t in values:
                node.output[j] = f"{t}__folded"
    out.graph.initializer.extend(numpy_helper.from_array(np.asarray(v), name) for name, v in values.items())
    return out


#: the standard ops that hold subgraphs (attributes of type GRAPH or GRAPHS)
_WITH_BODIES = frozenset({"If", "Loop", "Scan", "SequenceMap"})


def bodies(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The subgraphs an If/Loop/Scan node holds (its branches, its body); none for other nodes."""
    if node.domain in ("", "ai.onnx") and node.op_type not in _WITH_BODIES:
        return []  # most nodes, found without looking at their attributes
    return [g for a in node.attribute for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs))]


def outer_reads(node: onnx.NodeProto) -> set[str]:
    """The tensors of the enclosing graphs that the bodies of an If/Loop/Scan node read without listing them as
    the node's inputs (captured from the outer scope); empty for a node without subgraphs."""
    found: set[str] = set()
    for body in bodies(node):
        local = {i.name for i in body.input} | {t.name for t in body.initializer}
        local |= {o for n in body.node for o in n.output}
        reads = {t for n in body.node for t in n.input if t} | {o.name for o in body.output}
        reads |= {t for n in body.node for t in outer_reads(n)}
        found |= reads - local
    return found
