"""The analysis models a shuffle sweep runs.

For a target conv with input X = A_{i-1}, pre-activation Z = conv(X) and activation A_i = f(Z):

- the **clean model** is the original with X, Z, A_i, the side tensors and the measured outputs
  exposed; it runs once per batch;
- the **direct model** is the network after the conv's input, where only the target conv reads
  the injected (perturbed) X; it returns A_i and the measured outputs; one run per perturbed channel;
- the **fast model** takes the clean tensors, the channels ``ks`` (K,) and the permutation indices,
  and returns ``cos_sum`` (K, C_out) and the effects at the measured outputs for every (channel, sample),
  measured on the device as the host measures the direct path's (cosine, squared error, maximum, error bins,
  top-1/top-5 hits, KL divergence). It uses
  the conv's linearity: perturbing channel k only adds ``conv(delta_k, W[:, k])`` to Z; with the
  deltas unfolded into patches (im2col, one Gather), one batched MatMul does every k of the run at
  once. The elementwise chain f and the rest of the network then run on a batch of K*B (channel j,
  sample b at row j*B + b). 1-D, 2-D and 3-D convs alike: positions are flattened. A transposed conv is linear
  too: each output position gathers, per kernel tap, the one input position (if any) the tap carries there.

The measured outputs are the graph outputs that depend on A_i; the rest cannot change.

Pseudocode of the fast model::

    D[j, b]   = shuffle(X[:, ks[j]])[b] - X[b, ks[j]]            # (K, B, P), P = positions of X
    Zp[j, b]  = Z[b] + Wcols[ks[j]] @ im2col(D[j, b])             # (K, B, C_out, P'), one MatMul
    Ap        = f(Zp)                                             # the elementwise chain, on K*B rows
    cos_sum   = sum_b cosine(Ap[j, b, c], A[b, c])                # (K, C_out), float64
    outputs   = suffix(Ap, side tensors tiled K times)            # (K*B, ...) each
    effects   = per (j, b): cosine, |error|^2, max |error|, ... of outputs against the clean ones   # (K, B)
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx.version_converter
import onnx_ir as ir
from onnx import TensorProto, helper

from onnxredund.engine.batching import check_feeds, moved_inputs
from onnxredund.engine.ir_edit import captured, constant_value, needed, to_ir, to_proto
from onnxredund.engine.ir_edit import default_opset as ir_default_opset
from onnxredund.engine.runtime import Runner
from onnxredund.engine.surgery import cut_ir, expose_outputs, inject_input_ir, side_inputs, value_info
from onnxredund.errors import OnnxRedundError, first_line
from onnxredund.metrics import ERROR_BINS, ERROR_EDGES
from onnxredund.model import (
    ConvLayer,
    Model,
    attribute,
    consumers_of,
    data_dependent,
    default_opset,
    dims,
    downstream,
    outer_reads,
    output_kind,
    shape_derived,
    value_infos,
)

__all__ = [
    "FAST_OPSET",
    "PERTURBED",
    "build_clean_model",
    "build_direct_model",
    "build_fast_model",
    "fast_path_blocker",
    "fast_source",
    "im2col_index",
    "measured_outputs",
    "output_role",
    "same_values",
    "transposed_index",
    "weight_columns",
]

log = logging.getLogger(__name__)

PERTURBED = "onnxredund_perturbed_input"
FAST_OPSET = 11  # Pad and Clip take their pads and bounds as inputs, GatherElements exists, from 11 on


def measured_outputs(model: Model, layer: ConvLayer) -> list[str]:
    """The graph outputs that depend on the layer's activation A_i, in graph order."""
    graph = model.proto.graph
    after = {o for i in downstream(graph, layer.activation) for o in graph.node[i].output}
    return [o for o in model.output_names if o in after or o == layer.activation]


def build_clean_model(model: Model, layer: ConvLayer, outputs: list[str]) -> tuple[onnx.ModelProto, list[str]]:
    """The original model exposing what both paths need (and ``outputs``); returns it and its output names."""
    names = [*outputs, layer.input, layer.output, layer.activation]
    proto = model.analysis_proto
    names += side_inputs(proto, layer.activation)
    names += side_inputs(proto, layer.input)
    names = list(dict.fromkeys(names))
    return expose_outputs(proto, names), names


def build_direct_model(model: Model, layer: ConvLayer, outputs: list[str]) -> tuple[onnx.ModelProto, list[str]]:
    """(perturbed X, clean X, side tensors) -> (A_i, *outputs); returns it and its input names."""
    source = model.analysis_proto
    injected = to_ir(source)
    inject_input_ir(injected, source, layer, PERTURBED)
    side = [t for t in side_inputs(source, layer.input) if t != layer.input]
    inputs = [PERTURBED, layer.input, *side]
    wanted = list(dict.fromkeys([layer.activation, *outputs]))
    # Another consumer may not read the clean X at all: cut only keeps the inputs it needs.
    proto = cut_ir(injected, source, inputs, wanted)
    used = {t for n in proto.graph.node for t in [*n.input, *outer_reads(n)]}  # an If body's reads count
    keep = [i for i in proto.graph.input if i.name in used or i.name in wanted]
    del proto.graph.input[:]
    proto.graph.input.extend(keep)
    return proto, [i.name for i in keep]


def weight_columns(weight: np.ndarray, groups: int, *, transposed: bool = False) -> np.ndarray:
    """Per input channel k, the kernels it feeds: shape (C_in, C_out, *kernel), zero outside k's group (a
    ``transposed`` conv's weight is (C_in, C_out / groups, *kernel): row k already holds them)."""
    if transposed:
        c_in, cout_g = weight.shape[:2]
        cols = np.zeros((c_in, cout_g * groups, *weight.shape[2:]), weight.dtype)
        for k in range(c_in):
            g = k // (c_in // groups)
            cols[k, g * cout_g : (g + 1) * cout_g] = weight[k]
        return cols
    c_out, cin_g = weight.shape[:2]
    c_in = cin_g * groups
    cout_g = c_out // groups
    cols = np.zeros((c_in, c_out, *weight.shape[2:]), weight.dtype)
    for k in range(c_in):
        g = k // cin_g
        cols[k, g * cout_g : (g + 1) * cout_g] = weight[g * cout_g : (g + 1) * cout_g, k % cin_g]
    return cols


def fast_path_blocker(model: Model, layer: ConvLayer) -> str | None:
    """Why the fast path cannot run this layer, or None when it can."""
    if not model.batch_dynamic:
        return "the model's batch is fixed"
    weight = model.constant(layer.weight)
    if weight is None:
        return "the conv's weights are computed, not constant"
    if weight.dtype != np.float32:  # the fast model's linear maps are float32
        return f"the conv computes in {weight.dtype} (the fast path is float32)"
    source = fast_source(model)
    if isinstance(source, str):
        return source
    proto = model.analysis_proto
    side = side_inputs(proto, layer.activation)
    if source is not proto:  # the clean model, cut from the original, feeds the converted graph's nodes by name
        made = {o for node in source.graph.node for o in node.output}
        if side_inputs(source, layer.activation) != side or not {layer.output, layer.activation} <= made:
            older = f"the model's opset {default_opset(proto)} is older than {FAST_OPSET}"
            return f"{older} and onnx's conversion renames this layer's tensors"
    moved = moved_inputs(proto)  # a state given samples first: what the graph computes of it has them later
    later = sorted(data_dependent(proto.graph, list(moved.values())) & set(side)) if moved else []
    if later:  # the fast model's build reads the same inferred shapes
        infos = model.derived("fast_value_infos", lambda: value_infos(source))
        batch = (dims(infos[model.input_name]) or ["?"])[0]
        later = [t for t in later if not _samples_first(infos.get(t), batch)]
    if later:
        return f"{later[0]!r}, read past the layer, holds its samples on a later axis (an input's state)"
    graph = source.graph  # the fast model's nodes come from there
    shaped = sorted(_fast_shape_derived(model) & set(side))
    if shaped:  # the fast model makes them again for its K x B rows, from the sizes of the tensors they measure
        _, reads = _shape_reads(model, shaped)
        unknown = [n.input[0] for n in (graph.node[i] for i in reads) if not _static(model, n.input[0])]
        if unknown:
            return (
                f"{shaped[0]!r}, computed from tensors' shapes, is read past the layer, and the sizes of "
                f"{unknown[0]!r} per sample are not known"
            )
    return None


def _samples_first(info: onnx.ValueInfoProto | None, batch) -> bool:
    """Whether shape inference puts the free batch ``batch`` on the tensor's first axis and on no other."""
    shape = dims(info) if info is not None else None
    return bool(shape) and isinstance(batch, str) and shape[0] == batch and batch not in shape[1:]


def _static(model: Model, tensor: str) -> bool:
    """Whether ``tensor`` has its samples on its first axis and sizes known per sample."""
    shape = model.shapes.get(tensor)
    batched = all(i.batched for i in model.inputs if i.name == tensor)
    return batched and shape is not None and all(isinstance(d, int) and d >= 0 for d in shape)


def _fast_shape_derived(model: Model) -> set[str]:
    """:func:`~onnxredund.model.shape_derived` of the graph the fast models copy (:func:`fast_source`), once."""
    return model.derived("fast_shape_derived", lambda: shape_derived(fast_source(model).graph))


def _shape_reads(model: Model, tensors: list[str]) -> tuple[list[int], list[int]]:
    """For the shape-derived ``tensors`` of the fast source's graph: the nodes that compute them from the Shape
    and Size reads of data tensors, and those reads (node indices, in graph order)."""
    graph = fast_source(model).graph
    shaped = _fast_shape_derived(model)
    made_by = {o: i for i, n in enumerate(graph.node) for o in n.output}
    inside: set[int] = set()
    reads: set[int] = set()
    stack = list(tensors)
    while stack:
        i = made_by.get(stack.pop())
        if i is None or i in inside or i in reads:
            continue
        node = graph.node[i]
        if node.op_type in ("Shape", "Size") and node.input[0] not in shaped:
            reads.add(i)
            continue
        inside.add(i)
        stack += [t for t in node.input if t in shaped]
    return sorted(inside), sorted(reads)


def _for_k_rows(b: _GraphBuilder, model: Model, graph, nodes: list, shaped: list[str], rows: ir.Value) -> dict:
    """The side tensors ``shaped``, computed from tensors' shapes (jax2tf's Reshape targets from the input's batch,
    say), made again for the fast model's K x B rows (the first size of ``rows``): each Shape (or Size) of a data
    tensor is (K*B, its sample's sizes), and the nodes from there are copied."""
    inside, reads = _shape_reads(model, shaped)
    kb = b.op("Slice", [b.op("Shape", [rows]), b.const("first", np.array([0])), b.const("second", np.array([1]))])
    rename: dict = {}
    for node in (graph.node[i] for i in reads):
        sample = np.array(model.shapes[node.input[0]], np.int64)
        if node.op_type == "Size":
            size = b.op("Mul", [kb, b.const(b.fresh("size"), np.array([sample.prod()], np.int64))])
            rename[node.output[0]] = b.op("Reshape", [size, b.const("scalar", np.zeros(0, np.int64))])
            continue
        full = b.op("Concat", [kb, b.const(b.fresh("sizes"), sample)], axis=0)
        start, end = int(attribute(node, "start", 0)), attribute(node, "end", None)
        if start or end is not None:  # Shape's start and end (opset 15)
            stop = np.iinfo(np.int64).max if end is None else int(end)
            full = b.op("Slice", [full, b.const(b.fresh("start"), [start]), b.const(b.fresh("end"), [stop])])
        rename[node.output[0]] = full
    b.copy([nodes[i] for i in inside], rename, "shape/")
    return {t: rename[t] for t in shaped}


def fast_source(model: Model) -> onnx.ModelProto | str:
    """The graph the fast model copies its nodes from: the analysis model from opset :data:`FAST_OPSET` on; for an
    older one (PyTorch's default export opset was 9 for years), onnx's conversion of it to :data:`FAST_OPSET`,
    used only where it computes the same outputs (two seeded samples through both; :func:`fast_path_blocker`
    checks that it keeps the names of the tensors a layer's fast model reads); else why not (a str)."""
    return model.derived("fast_source", lambda: _at_fast_opset(model))


def _at_fast_opset(model: Model) -> onnx.ModelProto | str:
    proto = model.analysis_proto
    opset = default_opset(proto)
    if opset >= FAST_OPSET:
        return proto
    older = f"the model's opset {opset} is older than {FAST_OPSET}"
    source = onnx.ModelProto()
    source.CopyFrom(proto)
    # IR 3 takes only graph inputs for initializers; the analysis model's own constants are not listed there
    source.ir_version = max(source.ir_version, 4)
    try:
        upgraded = onnx.version_converter.convert_version(source, FAST_OPSET)
    except Exception as e:  # onnx's converter raises RuntimeError, ValidationError, ... by op
        return f"{older} and onnx cannot convert it ({first_line(e)})"
    feeds = check_feeds(proto, {i.name: [2, *i.sample_shape] if i.batched else [] for i in model.inputs}, 2)
    try:
        want = Runner.create(proto, "cpu", derived=True).run(feeds, model.output_names)
        got = Runner.create(upgraded, "cpu", derived=True).run(feeds, model.output_names)
    except (RuntimeError, OnnxRedundError) as e:
        return f"{older} and onnxruntime cannot run onnx's conversion of it ({first_line(e)})"
    for name, w, g in zip(model.output_names, want, got, strict=True):
        if not same_values(w, g):
            return f"{older} and onnx's conversion of it changes output {name!r}"
    log.info("%s: the fast path runs on onnx's conversion of the graph to opset %d (same outputs)", older, FAST_OPSET)
    return upgraded


def same_values(want: np.ndarray, got: np.ndarray) -> bool:
    """Whether a rewrite's output ``got`` equals ``want`` up to float32 rounding (relative to the output's scale)."""
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    return want.shape == got.shape and np.allclose(want, got, rtol=1e-4, atol=1e-5 * scale)


class _GraphBuilder:
    """Builds a model on the IR, from its named inputs: nodes and initializers under unique names, and copies of
    the source model's nodes (:meth:`copy`)."""

    def __init__(self, source: ir.Model, inputs: list[onnx.ValueInfoProto]) -> None:
        self.source = source
        self.opset = ir_default_opset(source)
        self.inputs = {vi.name: ir.serde.deserialize_value_info_proto(vi, None) for vi in inputs}
        self.nodes: list[ir.Node] = []
        self.constant_nodes: list[ir.Node] = []  # copies of the source's nodes that compute from constants alone
        self.initializers: dict[str, ir.Value] = {}
        self.copied: dict[str, ir.Value] = {}  # the source's tensors those nodes compute
        self._n = 0
        self._consts: dict[str, np.ndarray] = {}
        self._index = {node: i for i, node in enumerate(source.graph)}
        self._values = ir.convenience.create_value_mapping(source.graph, include_subgraphs=False)

    def value(self, x: str | ir.Value) -> ir.Value:
        """A value of the model being built: itself, or the input of that name."""
        return x if isinstance(x, ir.Value) else self.inputs[x]

    def const(self, name: str, value) -> ir.Value:
        """An initializer ``ox/name``; asking again for a name with the same value gives the same one."""
        value = np.asarray(value)
        known = self._consts.get(name)
        if known is not None:
            if known.dtype != value.dtype or not np.array_equal(known, value, equal_nan=known.dtype.kind == "f"):
                raise ValueError(f"constant {name!r} asked for with two values")
            return self.initializers[f"ox/{name}"]
        self._consts[name] = value
        self.initializers[f"ox/{name}"] = constant_value(f"ox/{name}", value)
        return self.initializers[f"ox/{name}"]

    def op(self, op_type: str, inputs: list[str | ir.Value], **attrs) -> ir.Value:
        return self.ops(op_type, inputs, 1, **attrs)[0]

    def ops(self, op_type: str, inputs: list[str | ir.Value], count: int, **attrs) -> list[ir.Value]:
        """A node with ``count`` outputs; returns them."""
        self._n += 1
        out = f"ox/{op_type.lower()}_{self._n}"
        attributes = ir.convenience.convert_attributes(attrs)
        node = ir.Node("", op_type, [self.value(x) for x in inputs], attributes, num_outputs=count, name=out)
        for i, value in enumerate(node.outputs):
            value.name = out if i == 0 else f"{out}_{i}"
        self.nodes.append(node)
        return list(node.outputs)

    def fresh(self, name: str) -> str:
        """A name no other constant of this builder has."""
        self._n += 1
        return f"{name}_{self._n}"

    def unsqueeze(self, x: str | ir.Value, axes: list[int]) -> ir.Value:
        """Unsqueeze; its axes are an input from opset 13 on, an attribute before."""
        if self.opset >= 13:
            return self.op("Unsqueeze", [x, self.const(f"axes_{self._n}", np.array(axes, np.int64))])
        return self.op("Unsqueeze", [x], axes=axes)

    def reduce(self, op_type: str, x: str | ir.Value, axes: list[int], keepdims: int = 0) -> ir.Value:
        """A Reduce* op; axes are an input from opset 13 (ReduceSum) or 18 (the others)."""
        if self.opset >= (13 if op_type == "ReduceSum" else 18):
            axes_input = self.const(self.fresh("axes"), np.array(axes, np.int64))
            return self.op(op_type, [x, axes_input], keepdims=keepdims)
        return self.op(op_type, [x], axes=axes, keepdims=keepdims)

    def copy(self, nodes: list[ir.Node], rename: dict[str, ir.Value], prefix: str) -> None:
        """Copy the source's ``nodes`` (in graph order), If/Loop/Scan bodies included: they read ``rename``'s value
        for each tensor it names (in their bodies too), else the input of that name or the source's constant; their
        outputs take ``prefix`` before their names and go into ``rename``."""
        self._copy(nodes, rename, prefix, self.nodes)

    def _copy(self, nodes: list[ir.Node], rename: dict[str, ir.Value], prefix: str, into: list[ir.Node]) -> None:
        produced = {v for node in nodes for v in node.outputs}
        reads = (v for node in nodes for v in [*node.inputs, *captured(node)])
        boundary = list(dict.fromkeys(v for v in reads if v is not None and v not in produced))
        known = {*rename, *self.inputs, *self.copied}
        computed = [v.name for v in boundary if v.name not in known and not v.is_initializer()]
        if computed:  # tensors computed from constants alone: their producers, copied as they are, all at once
            nodes_before = needed(self.source.graph, {*self.inputs, *self.copied}, computed, self._values)
            self._copy(nodes_before, self.copied, "", self.constant_nodes)
        targets = [rename[v.name] if v.name in rename else self._outer(v) for v in boundary]
        clone = ir.GraphView(boundary, list(produced), nodes=nodes).clone()
        for placeholder, target in zip(list(clone.inputs), targets, strict=True):
            placeholder.replace_all_uses_with(target)
        copies = list(clone)
        clone.inputs.clear()
        clone.outputs.clear()
        clone.remove(copies)
        for copy, node in zip(copies, nodes, strict=True):
            if prefix:
                copy.name = prefix + (node.name or f"node{self._index[node]}")
            for value, original in zip(copy.outputs, node.outputs, strict=True):
                if original.name:
                    value.name = prefix + original.name
                    rename.setdefault(original.name, value)
        into.extend(copies)

    def _outer(self, value: ir.Value) -> ir.Value:
        """What stands for the source's tensor ``value`` here: the input of its name, the same constant, or the
        copy of what computes it from constants alone (a bias reshaped by a Reshape node, say)."""
        name = value.name
        if name in self.inputs:
            return self.inputs[name]
        if name not in self.copied:  # an initializer: the same tensor
            self.copied[name] = ir.Value(name=name, type=value.type, shape=value.shape, const_value=value.const_value)
            self.initializers[name] = self.copied[name]
        return self.copied[name]

    def model(self, outputs: dict[str, tuple[ir.Value, ir.TensorType, list]], name: str) -> onnx.ModelProto:
        """The built model, its outputs ``{name: (value, type, shape)}`` (each through an Identity of that name)."""
        values = []
        for dst, (src, kind, shape) in outputs.items():
            node = ir.Node("", "Identity", [src], name=f"ox/out_{dst}")
            node.outputs[0].name, node.outputs[0].type, node.outputs[0].shape = dst, kind, ir.Shape(shape)
            self.nodes.append(node)
            values.append(node.outputs[0])
        graph = ir.Graph(
            list(self.inputs.values()),
            values,
            nodes=[*self.constant_nodes, *self.nodes],
            initializers=list(self.initializers.values()),
            opset_imports=dict(self.source.opset_imports),
            name=name,
        )
        model = ir.Model(graph, ir_version=self.source.ir_version, producer_name="onnxredund")
        model.meta.update(self.source.meta)  # where external weights are read from
        return to_proto(model, inner_shapes=False)


def _k_shape(b: _GraphBuilder, *tail: int) -> str:
    """The shape (K, *tail), K the run's channels (the length of ``ks``: a run may take fewer than the most)."""
    if not tail:
        return b.op("Shape", ["ks"])
    return b.op("Concat", [b.op("Shape", ["ks"]), b.const(b.fresh("tail"), np.array(tail, np.int64))], axis=0)


def _tile(b: _GraphBuilder, tensor: str) -> str:
    """(B, ...) -> (K*B, ...), row j*B + b = row b."""
    shape = b.op("Shape", [tensor])
    expanded = b.op("Expand", [b.unsqueeze(tensor, [0]), b.op("Concat", [_k_shape(b), shape], axis=0)])
    tail = b.op("Slice", [shape, b.const(f"t1_{tensor}", [1]), b.const(f"tend_{tensor}", [np.iinfo(np.int64).max])])
    return b.op("Reshape", [expanded, b.op("Concat", [b.const(f"m1_{tensor}", [-1]), tail], axis=0)])


def _begin_pads(layer: ConvLayer, conv: onnx.NodeProto) -> list[int]:
    """Padding before the first position, per spatial axis (explicit pads, or what auto_pad implies)."""
    auto_pad = attribute(conv, "auto_pad", "NOTSET")
    nd = len(layer.kernel)
    if auto_pad == "VALID":
        return [0] * nd
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        return list(layer.pads[:nd])
    begins = []
    for o, s, k, d, n in zip(
        layer.output_shape[1:], layer.stride, layer.kernel, layer.dilations, layer.input_shape[1:], strict=True
    ):
        total = max(0, (o - 1) * s + (k - 1) * d + 1 - n)
        begins.append(total // 2 if auto_pad == "SAME_UPPER" else total - total // 2)
    return begins


def im2col_index(layer: ConvLayer, conv: onnx.NodeProto) -> np.ndarray:
    """For each kernel tap t and output position p, the flat input position it reads: shape (T, P').

    1-D, 2-D and 3-D alike; padding reads index P (the number of input positions), a zero appended to
    each flattened input channel.
    """
    spatial, out = layer.input_shape[1:], layer.output_shape[1:]
    begins = _begin_pads(layer, conv)
    outs = np.indices(out).reshape(len(out), 1, -1)  # (nd, 1, P')
    taps = np.indices(layer.kernel).reshape(len(out), -1, 1)  # (nd, T, 1)
    stride = np.array(layer.stride).reshape(-1, 1, 1)
    dil = np.array(layer.dilations).reshape(-1, 1, 1)
    pos = outs * stride - np.array(begins).reshape(-1, 1, 1) + taps * dil  # (nd, T, P')
    inside = np.all((pos >= 0) & (pos < np.array(spatial).reshape(-1, 1, 1)), axis=0)
    flat = np.ravel_multi_index(tuple(np.where(inside, pos, 0)), spatial)
    return np.where(inside, flat, int(np.prod(spatial))).astype(np.int64)


def transposed_index(layer: ConvLayer, conv: onnx.NodeProto) -> np.ndarray:
    """For a ConvTranspose, for each kernel tap t and output position o, the flat input position i whose value
    tap t carries to o (o = i x stride - pad + t x dilation): shape (T, P'); index P (the number of input
    positions, a zero appended to each flattened input channel) where no input position does."""
    spatial, out = layer.input_shape[1:], layer.output_shape[1:]
    nd = len(out)
    outs = np.indices(out).reshape(nd, 1, -1)  # (nd, 1, P')
    taps = np.indices(layer.kernel).reshape(nd, -1, 1)  # (nd, T, 1)
    stride = np.array(layer.stride).reshape(-1, 1, 1)
    scaled = outs + np.array(_transposed_begin_pads(layer, conv)).reshape(-1, 1, 1)
    scaled = scaled - taps * np.array(layer.dilations).reshape(-1, 1, 1)  # i x stride, where there is an i
    pos = scaled // stride
    inside = np.all((scaled % stride == 0) & (pos >= 0) & (pos < np.array(spatial).reshape(-1, 1, 1)), axis=0)
    flat = np.ravel_multi_index(tuple(np.where(inside, pos, 0)), spatial)
    return np.where(inside, flat, int(np.prod(spatial))).astype(np.int64)


def _transposed_begin_pads(layer: ConvLayer, conv: onnx.NodeProto) -> list[int]:
    """A ConvTranspose's padding before the first output position, per spatial axis: its pads, or, where its
    output shape is given or auto_pad set, the spec's split of the total padding its output shape implies."""
    nd = len(layer.kernel)
    auto_pad = attribute(conv, "auto_pad", "NOTSET")
    if auto_pad == "NOTSET" and attribute(conv, "output_shape") is None:
        return list(layer.pads[:nd])
    extra = attribute(conv, "output_padding") or [0] * nd
    begins = []
    for n, o, s, k, d, e in zip(
        layer.input_shape[1:], layer.output_shape[1:], layer.stride, layer.kernel, layer.dilations, extra, strict=True
    ):
        total = s * (n - 1) + e + (k - 1) * d + 1 - o
        begins.append(total // 2 if auto_pad == "SAME_UPPER" else total - total // 2)
    return begins


def _cosine(b: _GraphBuilder, dot: str, nn_p: str, nn_c: str) -> str:
    """Cosine from float64 dot products and squared norms, with eq. 1's edge cases (both zero: 1, one zero: 0)."""
    zero, one = b.const("cos_zero", np.array(0.0)), b.const("cos_one", np.array(1.0))
    denom = b.op("Sqrt", [b.op("Mul", [nn_p, nn_c])])
    zp, zc = b.op("Equal", [nn_p, zero]), b.op("Equal", [nn_c, zero])
    safe = b.op("Where", [b.op("Equal", [denom, zero]), one, denom])
    cos = b.op("Min", [b.op("Max", [b.op("Div", [dot, safe]), b.const("cos_lo", np.array(-1.0))]), one])
    cos = b.op("Where", [b.op("Or", [zp, zc]), zero, cos])
    return b.op("Where", [b.op("And", [zp, zc]), one, cos])


def _cosine_sum(b: _GraphBuilder, ap: str, a: str, c_out: int, pixels: int) -> str:
    """sum over b of cosine(ap[j, b, c], a[b, c]) in float64: (K, C_out)."""
    pa = b.op("Reshape", [ap, _k_shape(b, -1, c_out, pixels)])
    ca = b.op("Reshape", [a, b.const("cos_shape_c", np.array([1, -1, c_out, pixels], np.int64))])
    dot = b.op("Cast", [b.reduce("ReduceSum", b.op("Mul", [pa, ca]), [3])], to=TensorProto.DOUBLE)
    nn_p = b.op("Cast", [b.reduce("ReduceSumSquare", pa, [3])], to=TensorProto.DOUBLE)
    nn_c = b.op("Cast", [b.reduce("ReduceSumSquare", ca, [3])], to=TensorProto.DOUBLE)
    return b.reduce("ReduceSum", _cosine(b, dot, nn_p, nn_c), [1])


def _error_bins(b: _GraphBuilder, err: str) -> str:
    """The bin of ERROR_EDGES of each absolute error (float64), as :func:`onnxredund.metrics.error_bins`: a
    logarithm guesses it, one comparison with the edges on each side makes it exact. int32, the shape of err."""
    edges = b.const("error_edges", ERROR_EDGES)
    last = float(ERROR_BINS - 1)
    huge = b.const("huge", np.array(1e300))  # infinities and NaN count in the last bin, as a huge error does
    err = b.op("Min", [b.op("Where", [b.op("Equal", [err, err]), err, huge]), huge])
    guess = b.op(
        "Add",
        [
            b.op("Mul", [b.op("Log", [err]), b.const("per_e", np.array(20 / np.log(10)))]),
            b.const("bin_offset", np.array(241.0)),
        ],
    )
    guess = b.op(
        "Floor",
        [b.op("Min", [b.op("Max", [guess, b.const("bin0", np.array(0.0))]), b.const("bin_last", np.array(last))])],
    )
    index = b.op("Cast", [guess], to=TensorProto.INT32)
    one = b.const("one_i32", np.array(1, np.int32))
    below = b.op("Cast", [b.op("Less", [err, b.op("Gather", [edges, index], axis=0)])], to=TensorProto.INT32)
    upper = b.op("Gather", [edges, b.op("Add", [index, one])], axis=0)
    above = b.op("Cast", [b.op("Not", [b.op("Less", [err, upper])])], to=TensorProto.INT32)
    return b.op("Add", [b.op("Sub", [index, below]), above])


def _output_effects(b: _GraphBuilder, y: str, ref: str, size: int, role: tuple) -> dict[str, str]:
    """Per (channel j, sample b), what perturbing does to one output, as
    :func:`~onnxredund.analyses.effects.per_sample_effects` computes it on the host: y (K*B, ...) perturbed, ref
    (B, ...) clean, ``size`` elements per sample, ``role`` (classifier kind or None, whether it is the
    prediction). Tensors (K, B); ``bins`` (K, B * size)."""
    kind, prediction = role
    y3 = b.op("Reshape", [y, _k_shape(b, -1, size)])
    r3 = b.op("Reshape", [ref, b.const(b.fresh("1bs"), np.array([1, -1, size], np.int64))])
    yd, rd = b.op("Cast", [y3], to=TensorProto.DOUBLE), b.op("Cast", [r3], to=TensorProto.DOUBLE)
    diff = b.op("Sub", [yd, rd])
    err = b.op("Abs", [diff])
    dot = b.reduce("ReduceSum", b.op("Mul", [yd, rd]), [2])
    rows = {
        "cos": _cosine(b, dot, b.reduce("ReduceSumSquare", yd, [2]), b.reduce("ReduceSumSquare", rd, [2])),
        "err_sq": b.reduce("ReduceSumSquare", diff, [2]),
        "max": b.reduce("ReduceMax", err, [2]),
        "bins": b.op("Reshape", [_error_bins(b, err), _k_shape(b, -1)]),
    }
    if kind is None:
        return rows
    top = b.op("ArgMax", [y3], axis=2, keepdims=0)  # (K, B), the first of ties as numpy
    rows["top1"] = b.op("Equal", [top, b.op("ArgMax", [r3], axis=2, keepdims=0)])
    five = b.const(b.fresh("five"), np.array([min(5, size)], np.int64))
    best = b.ops("TopK", [y3, five], 2, axis=2, largest=1, sorted=1)[1]  # ties: the lower index first, as numpy
    hits = b.op("Cast", [b.op("Equal", [best, b.op("ArgMax", [r3], axis=2, keepdims=1)])], to=TensorProto.INT64)
    rows["top5"] = b.reduce("ReduceSum", hits, [2])
    lp, lq = _log_probabilities(b, rd, kind), _log_probabilities(b, yd, kind)
    kl = b.reduce("ReduceSum", b.op("Mul", [b.op("Exp", [lp]), b.op("Sub", [lp, lq])]), [2])
    rows["kl"] = b.op("Max", [kl, b.const("kl_zero", np.array(0.0))])
    if prediction:
        rows["argmax"] = top
    return rows


def _log_probabilities(b: _GraphBuilder, x: str, kind: str) -> str:
    """Log-probabilities over the last axis, float64, as :func:`onnxredund.metrics.log_softmax`."""
    if kind == "probabilities":
        return b.op("Log", [b.op("Max", [x, b.const("p_floor", np.array(1e-30))])])
    if kind == "log_probabilities":
        return x
    shifted = b.op("Sub", [x, b.reduce("ReduceMax", x, [2], keepdims=1)])
    return b.op("Sub", [shifted, b.op("Log", [b.reduce("ReduceSum", b.op("Exp", [shifted]), [2], keepdims=1)])])


def build_fast_model(
    model: Model, layer: ConvLayer, mode: str, outputs: list[str]
) -> tuple[onnx.ModelProto, list[str]]:
    """The fast model for runs of any number K of channels (the length of ``ks``; how many a run takes is the
    caller's choice, by memory); returns it and its input names.

    Inputs: X (B, C_in, *spatial), Z and A (B, C_out, *spatial'), the side tensors, ``ks`` (K,) int64,
    ``perm_index`` ((K*B,) int32 rows for channel mode, (K*B, P) for pixel mode; row j*B + b is
    sample b of channel ks[j]), and the clean value of each measured output o. Outputs: ``cos_sum`` (K, C_out)
    float64 and, for each o, its per-sample effects ``effect/WHAT/o`` (K, B) (``bins``: (K, B x elements)), so
    that only (K, B) numbers per output leave the device.
    """
    blocker = fast_path_blocker(model, layer)
    if blocker:
        raise OnnxRedundError(f"fast path unavailable for {layer.name!r}: {blocker}; use `exact_path`")
    proto = fast_source(model)
    graph = proto.graph
    side = side_inputs(proto, layer.activation)
    shaped = sorted(_fast_shape_derived(model) & set(side))  # made here for K x B rows, not fed
    side = [t for t in side if t not in shaped]
    inputs = list(dict.fromkeys([layer.input, layer.output, layer.activation, *side, *outputs, "ks", "perm_index"]))
    source = model.derived("fast_ir", lambda: to_ir(proto))  # read, never edited: one for every build
    nodes = list(source.graph)
    b = _GraphBuilder(
        source, _input_infos(proto, inputs, mode, model.derived("fast_value_infos", lambda: value_infos(proto)))
    )
    zp = _perturbed_preactivation(b, model, layer, mode)
    rename = {layer.output: zp}
    b.copy([nodes[i] for i in _chain_nodes(graph, layer)], rename, "chain/")
    ap = rename.get(layer.activation, zp)
    out_positions = int(np.prod(layer.output_shape[1:]))
    cos_sum = _cosine_sum(b, ap, layer.activation, layer.out_channels, out_positions)
    results = {"cos_sum": (cos_sum, ir.TensorType(ir.DataType.DOUBLE), ["K", None])}
    suffix = {layer.activation: ap} | {t: _tile(b, t) for t in side}
    if shaped:
        suffix |= _for_k_rows(b, model, graph, nodes, shaped, ap)
    b.copy([nodes[i] for i in sorted(downstream(graph, layer.activation))], suffix, "suffix/")
    for name in outputs:
        size = int(np.prod(model.shapes[name]))
        for what, tensor in _output_effects(b, suffix[name], name, size, output_role(model, name)).items():
            results[f"effect/{what}/{name}"] = (tensor, ir.TensorType(_EFFECT_TYPES[what]), ["K", None])
    return b.model(results, "onnxredund_fast_sweep"), inputs


def _input_infos(proto: onnx.ModelProto, inputs: list[str], mode: str, infos: dict) -> list[onnx.ValueInfoProto]:
    """The fast model's inputs: ``ks`` and ``perm_index``, and the original's tensors as ``infos`` (its inferred
    value infos) type them; a graph output's sizes are left free (an exporter may have declared them for another
    input size: PP-OCRv2's recogniser declares 25 time steps, 80 at width 320, which onnxruntime refuses in an
    input)."""
    outputs = {o.name for o in proto.graph.output}
    out = []
    for name in inputs:
        if name == "ks":
            out.append(helper.make_tensor_value_info("ks", TensorProto.INT64, ["K"]))
        elif name == "perm_index":
            shape = ["KB"] if mode == "channel" else ["KB", "P"]
            out.append(helper.make_tensor_value_info("perm_index", TensorProto.INT32, shape))
        else:
            vi = value_info(proto, name, infos)
            if name in outputs:
                for d in vi.type.tensor_type.shape.dim:
                    d.Clear()
            out.append(vi)
    return out


_EFFECT_TYPES = {
    "cos": ir.DataType.DOUBLE,
    "err_sq": ir.DataType.DOUBLE,
    "max": ir.DataType.DOUBLE,
    "kl": ir.DataType.DOUBLE,
    "bins": ir.DataType.INT32,
    "top1": ir.DataType.BOOL,
    "top5": ir.DataType.INT64,
    "argmax": ir.DataType.INT64,
}


def output_role(model: Model, name: str) -> tuple[str | None, bool]:
    """How the effects of output ``name`` are measured, here and on the host alike: (its classifier kind or
    None, whether it is the prediction, the first classifier)."""
    if name not in model.classifiers:
        return None, False
    return output_kind(model.proto, name), name == model.classifiers[0]


def _perturbed_preactivation(b: _GraphBuilder, model: Model, layer: ConvLayer, mode: str) -> str:
    """Z + conv(delta_k, W[:, k]) for the K channels of a run, as (K*B, C_out, *spatial')."""
    x, z, ks, perm = layer.input, layer.output, "ks", "perm_index"
    positions = int(np.prod(layer.input_shape[1:]))
    out_spatial = list(layer.output_shape[1:])
    out_positions = int(np.prod(out_spatial))
    rank = len(layer.input_shape) + 1
    c_out = layer.out_channels
    xk = b.op("Transpose", [b.op("Gather", [x, ks], axis=1)], perm=[1, 0, *range(2, rank)])  # (K, B, *spatial)
    flat = b.op("Reshape", [xk, b.const("rows", np.array([-1, positions], np.int64))])  # (K*B, P), row j*B + b
    if mode == "channel":
        shuffled = b.op("Gather", [flat, perm], axis=0)
    else:
        shuffled = b.op("GatherElements", [flat, perm], axis=1)
    delta = b.op("Sub", [shuffled, flat])
    # conv(delta_k, W[:, k]) for every k at once, as im2col (a Gather) and one batched MatMul
    delta = b.op("Pad", [delta, b.const("pad_zero", np.array([0, 0, 0, 1], np.int64))])  # (K*B, P + 1)
    conv = model.proto.graph.node[layer.node_index]
    taps = int(np.prod(layer.kernel))
    transposed = layer.op == "ConvTranspose"
    index = transposed_index(layer, conv) if transposed else im2col_index(layer, conv)
    patches = b.op("Gather", [delta, b.const("im2col", index)], axis=1)  # (K*B, T, P')
    patches = b.op("Reshape", [patches, _k_shape(b, -1, taps, out_positions)])
    weight = model.constant(layer.weight).astype(np.float32)
    cols = weight_columns(weight, layer.groups, transposed=transposed).reshape(layer.in_channels, c_out, taps)
    kernels = b.unsqueeze(b.op("Gather", [b.const("weight_columns", cols), ks], axis=0), [1])  # (K, 1, C_out, T)
    dz = b.op("MatMul", [kernels, patches])  # (K, B, C_out, P')
    z1 = b.op("Reshape", [z, b.const("z4", np.array([1, -1, c_out, out_positions], np.int64))])
    rows = b.const("rows_out", np.array([-1, c_out, *out_spatial], np.int64))
    return b.op("Reshape", [b.op("Add", [dz, z1]), rows])


def _chain_nodes(graph: onnx.GraphProto, layer: ConvLayer) -> list[int]:
    consumers = consumers_of(graph)
    tensor, nodes = layer.output, []
    while tensor != layer.activation:
        idx = consumers[tensor][0]
        nodes.append(idx)
        tensor = graph.node[idx].output[0]
    return nodes
