"""Structured pruning written into the ONNX file: channels removed, not zeroed.

:func:`remove_channels` takes channel groups (:mod:`.channel_groups`) and, per group, the channels to
remove; on the model's IR (:mod:`.ir_edit`) it cuts every tensor the groups name, recounts Split sizes,
Slice bounds, Reshape feature counts, Resize sizes and depthwise group counts, and returns a new model that
onnx's full checker and onnxruntime accept (the input model is never changed), or refuses in one line.
:func:`check_by_values` compares a pruned model with :func:`zeroed_at_consumers`, the original with the
removed channels zeroed where read, built without the cuts. :class:`PruneCost` counts conv MACs and
parameters after any removal, exactly, without building the model. :func:`compensate` (from calibration
statistics) and :func:`compensate_sequential` (layer by layer, from the data) compute new consumer weights
so that what the removed channels carried is not simply lost.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnx import numpy_helper

from onnxredund.atomic import atomic_write
from onnxredund.choices import BATCH_SIZE, COMPENSATIONS
from onnxredund.engine.batching import moved_inputs, moved_outputs, samples_back
from onnxredund.engine.calibration import REFIT_RIDGE, cross_grams, solve_refit
from onnxredund.engine.channel_groups import (
    ChannelGroup,
    Consumer,
    ConsumerKind,
    Cut,
    Slicing,
    constant_values,
    node_label,
)
from onnxredund.engine.decided_ifs import put_back_ifs
from onnxredund.engine.given_inputs import without_given_values
from onnxredund.engine.ir_edit import (
    Names,
    constant_value,
    remove_unused,
    to_ir,
    to_proto,
)
from onnxredund.engine.op_rules import rule_for
from onnxredund.engine.post_processing import without_measured
from onnxredund.engine.runtime import Runner
from onnxredund.engine.surgery import expose_outputs
from onnxredund.errors import OnnxRedundError, first_line
from onnxredund.model import (
    PROTOBUF_LIMIT,
    ConstantTable,
    Model,
    attribute,
    copy_model,
    external_tensors,
    quantize_op,
    tensor_array,
    value_key,
)

__all__ = [
    "COMPENSATED_KINDS",
    "COMPENSATIONS",
    "ConsumerUpdate",
    "PruneCost",
    "check_by_values",
    "check_removal",
    "compensate",
    "compensate_sequential",
    "consumer_columns",
    "consumer_weights",
    "describe_removal",
    "keep_interface",
    "read_by_consumer",
    "remove_channels",
    "save_pruned",
    "zeroed_at_consumers",
]

#: the consumers compensation goes into (a transposed conv reads the removed channels zeroed)
COMPENSATED_KINDS = (ConsumerKind.conv, ConsumerKind.dense)

Removal = dict[int, list[int]]  # group index -> group channels to remove


@dataclass
class ConsumerUpdate:
    """New parameters of a consumer, before any channel is cut: ``weight`` in the consumer's own layout
    (conv: (O, C, *k); dense: the weight initializer's own orientation), ``bias`` (O,) in the effective units
    (Gemm's beta applied)."""

    weight: np.ndarray
    bias: np.ndarray


def check_removal(groups: list[ChannelGroup], removed: Removal) -> None:
    """The one validation of a removal, wherever it comes from (a criterion, ``--channels``).

    Raises:
        OnnxRedundError: a group that cannot be pruned, a channel it does not have, every channel of a group,
            or every channel some consumer reads.
    """
    for g, channels in removed.items():
        group = groups[g]
        if not group.prunable:
            raise OnnxRedundError(f"channels of {', '.join(group.producers)} cannot be removed: {group.reason}")
        bad = [c for c in channels if not 0 <= c < group.channels]
        if bad:
            raise OnnxRedundError(f"{group.producers[0]} has channels 0..{group.channels - 1}; no channel {bad[0]}")
        if len(set(channels)) >= group.channels:
            raise OnnxRedundError(f"removing every channel of {group.producers[0]} would disconnect the network")
        for read in read_by_consumer(group).values():
            if read and read <= set(channels):
                raise OnnxRedundError(
                    f"removing channels {min(read)}-{max(read)} of {group.producers[0]} leaves a consumer nothing of "
                    "the group to read (it reads a part of a Split, say): keep at least one of those channels"
                )


def read_by_consumer(group: ChannelGroup) -> dict[int, set[int]]:
    """Per consumer node of ``group``, the group channels it reads."""
    read: dict[int, set[int]] = defaultdict(set)
    for c in group.consumers:
        read[c.node].update(range(c.first, c.first + c.length))
    return read


def _cuts(groups: list[ChannelGroup], removed: Removal) -> dict[tuple[str, int, str], dict[int, set[int]]]:
    """(kind, node, name) -> axis -> indices to delete."""
    cuts: dict[tuple[str, int, str], dict[int, set[int]]] = defaultdict(lambda: defaultdict(set))
    for g, channels in removed.items():
        if not channels:
            continue
        for s in groups[g].slicings:
            cuts[(s.kind, s.node, s.name)][s.axis].update(s.indices(channels).tolist())
    return cuts


class _Writer:
    """Gives nodes new constant inputs on the model's IR: every changed value becomes a fresh initializer the
    node reads (a constant another node shares stays as it is for that node); what nothing reads any more goes
    (:func:`~onnxredund.engine.ir_edit.remove_unused`, which sees reads inside If/Loop/Scan bodies)."""

    def __init__(self, model: ir.Model, constants: Mapping[str, np.ndarray]) -> None:
        self.model, self.graph = model, model.graph
        self.nodes = list(model.graph)  # in the order of the ModelProto's nodes, as channel groups count them
        self.constants = constants
        self.names = Names(model.graph)
        self.written: dict[str, np.ndarray] = {}
        self.same: dict[tuple, ir.Value] = {}

    def value(self, name: str) -> np.ndarray:
        return np.array(self.written[name] if name in self.written else self.constants[name], copy=True)

    def fresh(self, base: str) -> str:
        return self.names.fresh(f"{base}__pruned")

    def initializer(self, value: np.ndarray, base: str) -> ir.Value:
        """A new initializer of ``value``; one written before with the same values where there is one (the twin
        branches of a siamese network, cut alike, share their weights again)."""
        key = value_key(value)
        if key in self.same:
            return self.same[key]
        name = self.fresh(base)
        init = constant_value(name, value)
        self.graph.register_initializer(init)
        self.written[name] = value
        self.same[key] = init
        return init

    def set_input(self, node: ir.Node, position: int, value: np.ndarray, base: str) -> str:
        init = self.initializer(value, base)
        if len(node.inputs) <= position:
            node.resize_inputs(position + 1)
        node.replace_input_with(position, init)
        return init.name

    def cut_quantized(self, node: ir.Node, name: str, axes: dict[int, set[int]]) -> bool:
        """Where ``node`` reads ``name`` from a DequantizeLinear of initializers (a QDQ model's weight or bias),
        or of a QuantizeLinear of them (a float weight the model quantizes itself), cut the initializer (and a
        per-axis scale and zero point on a cut axis) and give ``node`` that chain of its own: the weights stay
        quantized. False where ``name`` is not such a tensor, already rewritten, or quantized per block (then
        the float values are cut instead)."""
        position = next(k for k, v in enumerate(node.inputs) if v is not None and v.name == name)
        chain = _quantize_chain(node.inputs[position].producer(), self.constants)
        if name in self.written or chain is None:
            return False
        value, base = chain[0].inputs[0], np.asarray(self.constants[chain[0].inputs[0].name])
        for cut_axis, idx in axes.items():
            base = np.delete(base, sorted(idx), axis=cut_axis)
        value, array = self.initializer(base, value.name), base
        for step in chain:
            params = [v for v in step.inputs[1:] if v is not None]
            arrays = [np.asarray(self.constants[v.name]) for v in params]
            axis = step.attributes.get_int("axis", 1) % base.ndim
            if axis in axes and arrays[0].size > 1:  # per axis, on a cut axis: its scales go with the channels
                arrays = [np.delete(p, sorted(axes[axis]), axis=0) for p in arrays]
                params = [self.initializer(p, v.name) for p, v in zip(arrays, params, strict=True)]
            new = ir.Node("", step.op_type, [value, *params], attributes=list(step.attributes.values()), num_outputs=1)
            to = step.attributes.get_int("output_dtype", 0)
            array = quantize_op(step.op_type, [array, *arrays], axis=axis, output_dtype=to)
            new.outputs[0].name = self.fresh(step.outputs[0].name)
            new.outputs[0].type = ir.TensorType(ir.DataType.from_numpy(array.dtype))
            new.outputs[0].shape = ir.Shape(array.shape)
            self.graph.insert_before(node, new)
            value = new.outputs[0]
        node.replace_input_with(position, value)
        self.written[value.name] = array
        return True

    def replace(self, node: ir.Node, old: str, value: np.ndarray) -> None:
        """``node`` reads ``value`` where it read ``old``: in place where ``old`` is an initializer only this
        node reads (also when an old exporter lists it as a graph input: its declared shape follows), else as a
        fresh initializer."""
        position = next(k for k, v in enumerate(node.inputs) if v is not None and v.name == old)
        current = node.inputs[position]
        only_here = current.is_initializer() and len(current.uses()) == 1 and not current.is_graph_output()
        if only_here and old not in self.written:
            current.const_value = ir.tensor(np.ascontiguousarray(value), name=old)
            current.shape = ir.Shape(value.shape)
            self.written[old] = value
            return
        self.set_input(node, position, value, old)


def _quantize_chain(dq: ir.Node | None, constants: Mapping[str, np.ndarray]) -> list[ir.Node] | None:
    """The nodes that make a constant weight from a constant (an initializer, a Constant node): [DequantizeLinear]
    of an int8 tensor, or [QuantizeLinear, DequantizeLinear] of a float one, with constant scales and zero
    points; None otherwise (per-block quantization included)."""

    def standard(node, op: str) -> bool:
        return node is not None and node.op_type == op and node.domain in ("", "ai.onnx")

    if not standard(dq, "DequantizeLinear"):
        return None
    q = dq.inputs[0].producer()
    chain = [q, dq] if standard(q, "QuantizeLinear") else [dq]
    for step in chain:
        if "block_size" in step.attributes or any(v.name not in constants for v in step.inputs[1:] if v is not None):
            return None
    return chain if chain[0].inputs[0].name in constants else None


def _dense_orientation(node: onnx.NodeProto) -> tuple[int, float, float]:
    """(feature axis of the weight, alpha, beta) of a dense consumer."""
    if node.op_type == "Gemm":
        return (
            (1 if attribute(node, "transB", 0) else 0),
            float(attribute(node, "alpha", 1.0)),
            float(attribute(node, "beta", 1.0)),
        )
    return 0, 1.0, 1.0


def consumer_weights(
    model: Model, consumer: Consumer, constants: Mapping[str, np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A consumer's effective weight as (O, F) rows (conv: F = C x kernel taps, channel-major; dense: F
    features) and its effective bias (O,) (zeros where it has none). ``constants``: :func:`constant_values`
    of the model (computed where not given): a weight may be computed from constants (CNTK reshapes its dense
    weights in the graph)."""
    constants = constant_values(model) if constants is None else constants
    node = model.proto.graph.node[consumer.node]
    weight = np.asarray(constants[node.input[1]], np.float64)
    bias_name = node.input[2] if len(node.input) > 2 else ""
    if consumer.kind == ConsumerKind.conv:
        rows = weight.reshape(weight.shape[0], -1)
        bias = np.asarray(constants[bias_name], np.float64) if bias_name else np.zeros(weight.shape[0])
        return rows, np.broadcast_to(bias, (rows.shape[0],)).copy()
    axis, alpha, beta = _dense_orientation(node)
    rows = alpha * (weight.T if axis == 0 else weight)
    bias = np.zeros(rows.shape[0])
    if node.op_type == "Gemm" and bias_name:
        bias = beta * np.broadcast_to(np.asarray(constants[bias_name], np.float64).reshape(-1), rows.shape[:1])
    return rows, bias.copy()


def _write_consumer(writer: _Writer, model: Model, node_index: int, update: ConsumerUpdate, cut: dict | None) -> None:
    """Give a consumer its compensated weight and bias (cut by ``cut`` for the weight: axis -> indices)."""
    proto_node, node = model.proto.graph.node[node_index], writer.nodes[node_index]
    original = writer.constants[proto_node.input[1]]
    if proto_node.op_type == "Conv":
        weight = update.weight.reshape(original.shape)
    else:
        axis, alpha, beta = _dense_orientation(proto_node)
        weight = (update.weight.T if axis == 0 else update.weight) / alpha
    weight = weight.astype(original.dtype)
    for axis, idx in (cut or {}).items():
        weight = np.delete(weight, sorted(idx), axis=axis)
    writer.replace(node, proto_node.input[1], weight)
    bias = update.bias.astype(original.dtype)
    if proto_node.op_type == "MatMul":
        _add_bias_after(writer, node, bias)
        return
    beta = _dense_orientation(proto_node)[2] if proto_node.op_type == "Gemm" else 1.0
    writer.set_input(node, 2, (bias / beta).astype(original.dtype), f"{proto_node.input[1]}_bias")


def _add_bias_after(writer: _Writer, node: ir.Node, bias: np.ndarray) -> None:
    """A MatMul has no bias input: an Add after it takes the bias, and its output keeps the MatMul's name (a
    graph output stays one), read wherever the MatMul's was, in subgraphs too."""
    out = node.outputs[0]
    name, readers = out.name, list(out.uses())
    out.name = writer.fresh(f"{name}_matmul")
    add = ir.Node("", "Add", [out, writer.initializer(bias, f"{name}_bias")], num_outputs=1)
    add.outputs[0].name, add.outputs[0].type, add.outputs[0].shape = name, out.type, out.shape
    for reader, position in readers:
        reader.replace_input_with(position, add.outputs[0])
    outputs = writer.graph.outputs
    for k, value in enumerate(outputs):
        if value is out:
            outputs[k] = add.outputs[0]
    writer.graph.insert_after(node, add)


def remove_channels(
    model: Model,
    groups: list[ChannelGroup],
    removed: Removal,
    *,
    updates: dict[int, ConsumerUpdate] | None = None,
) -> onnx.ModelProto:
    """A new model without the channels ``removed`` (group index -> group channels).

    Args:
        updates: new parameters for consumer nodes (by node index), from :func:`compensate`.

    Raises:
        OnnxRedundError: a group that cannot be pruned, a channel out of range, or every channel of a group; a
            pruned model that fails onnx's full check or that onnxruntime refuses (a pattern not handled).
    """
    check_removal(groups, removed)
    edited = to_ir(model.proto)
    writer = _Writer(edited, constant_values(model))
    cuts = _cuts(groups, removed)
    updates = dict(updates or {})
    by_node: dict[int, list] = defaultdict(list)
    for key, axes in cuts.items():
        by_node[key[1]].append((key, axes))
    for node_index in sorted({key[1] for key in cuts} | set(updates)):
        proto_node, node = model.proto.graph.node[node_index], writer.nodes[node_index]
        inputs = list(proto_node.input)
        own = {inputs[1], inputs[2] if len(inputs) > 2 else ""} if node_index in updates else set()
        own_cuts = {}  # the weight's and bias's cuts of a consumer that gets new parameters: applied to those
        lost = None  # the input channels a Split or Slice lost
        for (kind, _, name), axes in by_node.get(node_index, []):
            if kind == Cut.tensor and name in own:
                own_cuts[name] = axes
            elif kind == Cut.tensor and writer.cut_quantized(node, name, axes):
                continue
            elif kind == Cut.tensor:
                value = writer.value(name)
                for axis, idx in axes.items():
                    value = np.delete(value, sorted(idx), axis=axis)
                writer.replace(node, name, value)
            elif kind == Cut.reshape:
                value = writer.value(name)
                for axis, idx in axes.items():
                    value[axis] -= len(idx)
                writer.replace(node, name, value)
            elif kind == Cut.flatten:  # the nodes that computed the shape go with remove_unused
                writer.replace(node, name, np.array([0, -1], np.int64))
            else:
                lost = axes[1]
        rule = rule_for(proto_node)
        if rule is not None:
            rule.rewrite(writer, model, node_index, lost)  # what more the op's rule changes (sizes, group counts)
        if node_index in updates:
            update = updates[node_index]
            bias_cut = own_cuts.get(inputs[2]) if len(inputs) > 2 and inputs[2] else None
            if bias_cut is None and proto_node.op_type == "Conv" and 0 in own_cuts.get(inputs[1], {}):
                bias_cut = {0: own_cuts[inputs[1]][0]}  # a bias the update adds, for the output channels kept
            if bias_cut:  # the consumer also produces removed channels
                update = ConsumerUpdate(update.weight, np.delete(update.bias, sorted(bias_cut[0])))
            _write_consumer(writer, model, node_index, update, own_cuts.get(inputs[1]))
    remove_unused(edited)
    proto = put_back_ifs(to_proto(edited, inner_shapes=False))  # the Ifs the input's sizes decided, both branches
    keep_interface(proto, model)
    _check_valid(proto, model, groups, removed)
    return proto


def keep_interface(proto: onnx.ModelProto, model: Model) -> None:
    """Declare the graph inputs and outputs of ``proto`` as the model's file did (free sizes and their names
    included), not at the sizes the analysis fixed; a batch that loading freed stays free. An input or output whose
    samples loading moved first is declared so until it is written (:func:`save_pruned` restores it)."""
    moved = moved_outputs(proto) | set(moved_inputs(proto))
    for vi in [*proto.graph.input, *proto.graph.output]:
        declared = model.declared.get(vi.name)
        if declared is None or not declared.HasField("tensor_type") or vi.name in moved:
            continue
        working = onnx.TypeProto()
        working.CopyFrom(vi.type)
        vi.type.CopyFrom(declared)
        dims, now = vi.type.tensor_type.shape.dim, working.tensor_type.shape.dim
        if dims and now and now[0].HasField("dim_param") and dims[0].HasField("dim_value"):
            dims[0].CopyFrom(now[0])


def _check_valid(proto: onnx.ModelProto, model: Model, groups: list[ChannelGroup], removed: Removal) -> None:
    """onnx's full check and one run by onnxruntime, or a refusal that names the groups (nothing is written). Where
    the model itself fails the full check (paddle2onnx's Loop bodies declare shapes that strict inference
    contradicts), the pruned one is held to the plain check, what the original passes."""
    producers = ", ".join(p for g, ch in removed.items() if ch for p in groups[g].producers)
    refusal = (
        f"removing channels of {producers} gives a model that {{}} (a pattern onnxredund does not handle yet): "
        "nothing was written. Remove channels of other groups, or report this model"
    )
    checked = inline_external(proto)  # as it will be saved; onnx's checker reads external files from the cwd
    try:
        if checked.ByteSize() <= PROTOBUF_LIMIT:  # over it, onnxruntime's run and the check by values remain
            try:
                onnx.checker.check_model(checked, full_check=True)
            except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError):
                if _passes_full_check(model):  # only then the original's own check is run: a fault of the cut
                    raise
                onnx.checker.check_model(checked)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise OnnxRedundError(refusal.format(f"fails onnx's check ({first_line(e)})")) from e
    runner = Runner.create(proto, "cpu", derived=True, optimize=False)
    try:
        runner.run({i.name: np.zeros(_one_sample(i), i.dtype) for i in model.inputs})
    except OnnxRedundError as e:
        raise OnnxRedundError(refusal.format(f"onnxruntime cannot run ({e})")) from e


def _passes_full_check(model: Model) -> bool:
    """Whether the analysed model passes onnx's full check (shape inference in strict mode) before any cut."""
    try:
        onnx.checker.check_model(inline_external(model.proto), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError):
        return False
    return True


def _one_sample(inp) -> tuple[int, ...]:
    return (1, *inp.sample_shape) if inp.batched else tuple(inp.sample_shape)


def inline_external(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``proto`` with the weights it reads from external files inside it."""
    work = copy_model(proto)
    for tensor in external_tensors(work):
        tensor.CopyFrom(numpy_helper.from_array(tensor_array(tensor), tensor.name))
    return work


def save_pruned(proto: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Write a pruned model as one self-contained file (weights the original kept in external files are read
    into it), atomically; over protobuf's 2 GB limit the weights go to ``<name>.data`` beside it."""
    path = Path(path)
    # the outputs as the graph computes them, not samples first, and none of those measured in place of others
    work = without_given_values(without_measured(samples_back(inline_external(proto))))
    if work.ByteSize() > PROTOBUF_LIMIT:
        data = path.with_name(path.name + ".data")
        onnx.save_model(work, str(path), save_as_external_data=True, location=data.name, all_tensors_to_one_file=True)
        return path
    atomic_write(path, work.SerializeToString())
    return path


@dataclass
class PruneCost:
    """Conv MACs and parameters of the model for any removal, exact, without building the model: each
    tensor's size is the product of its axes, and each removed channel shortens the axes its group cuts.
    """

    macs_total: int
    params_total: int
    shapes: list[tuple[int, ...]] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)  # per tensor: output positions of its conv, 0 for others
    cuts: dict[int, list[tuple[int, int, Slicing]]] = field(default_factory=dict)  # group -> (tensor, axis, cut)

    @classmethod
    def measure(cls, model: Model, groups: list[ChannelGroup]) -> PruneCost:
        graph = model.proto.graph
        constants = constant_values(model)
        conv_positions = {}
        for layer in model.layers:
            weight = graph.node[layer.node_index].input[1]
            if weight in constants:  # a transposed conv's MACs count its input positions (layers.CONV_OPS)
                shape = layer.output_shape if layer.op == "Conv" else layer.input_shape
                conv_positions[weight] = int(np.prod(shape[1:], dtype=np.int64))
        names = [t for t in dict.fromkeys(t for n in graph.node for t in n.input) if t in constants]
        names = [t for t in names if constants[t].dtype.kind == "f"]
        index = {t: i for i, t in enumerate(names)}
        cost = cls(0, 0, [tuple(constants[t].shape) for t in names], [conv_positions.get(t, 0) for t in names])
        for g in groups:
            seen = set()
            for s in g.slicings:
                key = (s.name, s.axis, s.offset, s.first)
                if s.kind == "tensor" and s.name in index and key not in seen:
                    seen.add(key)
                    cost.cuts.setdefault(g.index, []).append((index[s.name], s.axis, s))
        tally = cost.tally()
        cost.macs_total, cost.params_total = tally.macs(), tally.params()
        return cost

    def tally(self) -> _ShapesLeft:
        """A running count, channel by channel (for a greedy removal)."""
        return _ShapesLeft(self, [list(shape) for shape in self.shapes])

    def macs(self, removed: Removal) -> int:
        """Conv MACs per sample after ``removed``."""
        return self._after(removed).macs()

    def params(self, removed: Removal) -> int:
        """Parameters (values of float constants) after ``removed``."""
        return self._after(removed).params()

    def _after(self, removed: Removal) -> _ShapesLeft:
        tally = self.tally()
        for g, channels in removed.items():
            for c in channels:
                tally.remove(g, c)
        return tally


@dataclass
class _ShapesLeft:
    cost: PruneCost
    dims: list[list[int]]

    def remove(self, group: int, channel: int) -> None:
        for t, axis, s in self.cost.cuts.get(group, []):
            if s.first <= channel < s.first + s.length:
                self.dims[t][axis] -= s.block

    def macs(self) -> int:
        return sum(
            int(np.prod(d, dtype=np.int64)) * p for d, p in zip(self.dims, self.cost.positions, strict=True) if p
        )

    def params(self) -> int:
        return sum(int(np.prod(d, dtype=np.int64)) for d in self.dims)


def compensate(
    model: Model,
    groups: list[ChannelGroup],
    removed: Removal,
    method: str,
    stats,
    *,
    ridge: float | None = None,
) -> dict[int, ConsumerUpdate]:
    """New consumer parameters that make up for the removed channels, from calibration statistics.

    ``mean``: the removed channel's mean activation (per position for a dense consumer) goes into the bias:
    the consumer sees its mean instead of nothing. ``merge``: a removed channel r is replaced by
    ``alpha * t + beta`` of the kept channel t of its group whose activation fits it best (least squares
    over the calibration data): the consumer's weights for r, times alpha, are added onto t's, and beta's
    contribution goes into the bias. ``lstsq``: each consumer's weights on what is kept (and its bias)
    are refitted so that its output on the calibration data changes least (He et al., ICCV 2017).

    Args:
        stats: a :class:`onnxredund.engine.calibration.CalibrationStats` for the consumers' inputs.
        ridge: the refit's pull towards the original weights (default
            :data:`onnxredund.engine.calibration.REFIT_RIDGE`).
    """
    if method not in COMPENSATIONS or method == "sequential":
        raise OnnxRedundError(f"no compensation {method!r} from statistics; choose mean, merge or lstsq")
    updates = {}
    constants = constant_values(model)
    for node_index, items in _consumers_reading(groups, removed).items():
        rows, bias = consumer_weights(model, items[0][0], constants)
        if method == "lstsq":
            columns = np.concatenate([consumer_columns(model, c, ch, constants) for c, ch, _ in items])
            rows, bias = stats.refit(items[0][0], rows, bias, columns, **({} if ridge is None else {"ridge": ridge}))
        else:
            for consumer, channels, group in items:
                gone = set(removed[group.index])
                kept = [c for c in range(group.channels) if c not in gone and consumer.reads(c)]
                for r in channels:
                    cols = consumer_columns(model, consumer, [r], constants)
                    if method == "mean":
                        bias = bias + rows[:, cols] @ stats.mean(consumer, r, len(cols))
                        continue
                    t, alpha, beta = stats.best_fit(consumer, r, kept, len(cols))
                    rows[:, consumer_columns(model, consumer, [t], constants)] += alpha * rows[:, cols]
                    bias = bias + rows[:, cols] @ beta
        updates[node_index] = ConsumerUpdate(rows, bias)
    return updates


def _consumers_reading(
    groups: list[ChannelGroup], removed: Removal
) -> dict[int, list[tuple[Consumer, list[int], ChannelGroup]]]:
    """Per consumer node compensation goes into (not a transposed conv: its taps overlap by stride, no
    per-channel fold exists): each (consumer, the removed channels it reads, their group)."""
    consumers: dict[int, list[tuple[Consumer, list[int], ChannelGroup]]] = defaultdict(list)
    for g, channels in removed.items():
        for c in groups[g].consumers:
            read = [r for r in sorted(channels) if c.reads(r)]
            if read and c.kind in COMPENSATED_KINDS:
                consumers[c.node].append((c, read, groups[g]))
    return consumers


def compensate_sequential(
    model: Model,
    groups: list[ChannelGroup],
    removed: Removal,
    data,
    *,
    ridge: float | None = None,
    batch_size: int = BATCH_SIZE,
    device: str = "auto",
    seed: int = 0,
) -> tuple[dict[int, ConsumerUpdate], list[str]]:
    """Least-squares refits layer by layer, each on the inputs the pruned network gives it (He et al., ICCV 2017;
    ThiNet): in graph order, consumer k's weights on what is kept are fitted so that, fed what the network pruned
    and refitted up to k computes, it reproduces what the original consumer computed from the original's inputs.
    Errors of earlier layers are corrected instead of compounded. One pass over ``data`` per consumer, with the
    original and the network so far side by side (:func:`zeroed_at_consumers` with the refits made).

    Returns the consumers' new parameters and notes (a consumer with too many inputs keeps its weights).
    """
    ridge = REFIT_RIDGE if ridge is None else ridge
    constants = constant_values(model)
    updates: dict[int, ConsumerUpdate] = {}
    notes = []
    for node_index, items in sorted(_consumers_reading(groups, removed).items()):
        rows, bias = consumer_weights(model, items[0][0], constants)
        columns = np.concatenate([consumer_columns(model, c, ch, constants) for c, ch, _ in items])
        current = zeroed_at_consumers(model, groups, removed, updates=updates, constants=constants)
        grams = cross_grams(
            model, model.proto, current, items[0][0], data, batch_size=batch_size, device=device, seed=seed
        )
        if grams is None:
            notes.append(f"{node_label(model.proto.graph, node_index)}: too many inputs for a refit; left as it is")
            continue
        updates[node_index] = ConsumerUpdate(*solve_refit(*grams, rows, bias, columns, ridge))
    return updates, notes


def consumer_columns(
    model: Model, consumer: Consumer, channels, constants: Mapping[str, np.ndarray] | None = None
) -> np.ndarray:
    """The columns of a consumer's (O, F) rows (:func:`consumer_weights`) that read group channels ``channels``."""
    entries = consumer.indices(channels)
    if consumer.kind == ConsumerKind.dense:
        return entries
    constants = constant_values(model) if constants is None else constants
    taps = int(np.prod(constants[model.proto.graph.node[consumer.node].input[1]].shape[2:], dtype=np.int64))
    return (entries.reshape(-1, 1) * taps + np.arange(taps)).ravel()


def describe_removal(model: Model, groups: list[ChannelGroup], removed: Removal) -> list[dict]:
    """Per group with removals: producers, channels before and after, and the channels removed."""
    return [
        {
            "group": g,
            "producers": list(groups[g].producers),
            "channels": groups[g].channels,
            "kept": groups[g].channels - len(ch),
            "removed": sorted(int(c) for c in ch),
        }
        for g, ch in sorted(removed.items())
        if ch
    ]


# -- every cut checked by values -------------------------------------------------------------------------

#: the largest difference a check by values lets pass, relative to the largest value of the output (or to
#: CHECK_FLOOR where all its values are smaller: a saturated sigmoid's 6e-8 against 0 is float32's noise)
CHECK_TOLERANCE = 1e-3
CHECK_FLOOR = 1e-3
#: ops whose output may differ by more than their inputs do (an unbounded derivative: a square root, a log or a
#: reciprocal near 0): after one that reads no removed channel, inputs that agree to the last bits may not
AMPLIFYING_OPS = frozenset({"Sqrt", "Pow", "Log", "Reciprocal", "Div"})
#: ops that decide on their inputs' values (a comparison, a peak's position, a rounding): inputs that agree to the
#: last bits may still fall on either side (M-LSD keeps a heatmap's peaks where it equals its MaxPool, of which
#: sigmoid's saturated 1.0s make ties); their outputs, booleans and indices too, are compared exactly
DECIDING_OPS = frozenset(
    {"Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "ArgMax", "ArgMin", "TopK", "Round", "Floor", "Ceil"}
    | {"Sign"}
)


def zeroed_at_consumers(
    model: Model,
    groups: list[ChannelGroup],
    removed: Removal,
    *,
    updates: dict[int, ConsumerUpdate] | None = None,
    constants: Mapping[str, np.ndarray] | None = None,
) -> onnx.ModelProto:
    """What a pruned model must equal: the original, with the ``removed`` channels multiplied by zero where each
    consumer reads them (a ``Mul`` by a constant mask before the consumer, nowhere else) and, with ``updates``,
    the consumers' compensated weights and biases. It shares no code with the cuts: a channel that a node
    mixes into others (a Softmax over channels, a recount that was missed) makes the two differ.
    ``constants``: :func:`constant_values` of the model, where the caller has them."""
    edited = to_ir(model.proto)
    writer = _Writer(edited, constant_values(model) if constants is None else constants)
    zeroed: dict[tuple[int, str], set[int]] = defaultdict(set)
    for g, channels in removed.items():
        for c in groups[g].consumers:
            zeroed[(c.node, c.tensor)].update(c.indices(channels).tolist())
    for (node_index, tensor), entries in sorted(zeroed.items()):
        if not entries:
            continue
        node, shape = writer.nodes[node_index], model.shapes[tensor]
        position = next(k for k, v in enumerate(node.inputs) if v is not None and v.name == tensor)
        weight = writer.constants.get(model.proto.graph.node[node_index].input[1])
        kind = np.float32 if weight is None else weight.dtype  # the consumer's float type (float16 in some models)
        mask = np.ones((1, shape[0]) + (1,) * (len(shape) - 1), kind)
        mask[0, sorted(entries)] = 0.0
        mul = ir.Node("", "Mul", [node.inputs[position], writer.initializer(mask, f"{tensor}_mask")], num_outputs=1)
        mul.outputs[0].name = writer.fresh(f"{tensor}_zeroed")
        writer.graph.insert_before(node, mul)
        node.replace_input_with(position, mul.outputs[0])
    for node_index, update in sorted((updates or {}).items()):
        _write_consumer(writer, model, node_index, update, None)
    return to_proto(edited, inner_shapes=False)


def unrounded(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """``proto`` with each quantized activation's rounding left out: a DequantizeLinear of a QuantizeLinear of a
    computed tensor, per tensor, becomes a Clip of that tensor to the range the pair can give (its saturation
    kept: a quantizer that dropped a Relu lets the zero point's bound stand for it), and where ops that only move
    the quantized values stand between the two (a channel shuffle on int8, a nearest Resize: :data:`_MOVES`), the
    Clip is followed by copies of them on the floats. Returns the new model and the pairs replaced.

    What a cut must equal exactly is the float network: on both sides of a check by values, the rounding turns
    float32's last-bit differences (a sum over fewer channels) into whole quantization steps, which then
    propagate (ResNet-50 quantized to int8: 4.6 % at the output for an exact cut)."""
    graph = proto.graph
    constants = ConstantTable(graph)
    made_by = {o: n for n in graph.node for o in n.output}
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 13)
    nodes, replaced, extra = [], 0, []
    for node in graph.node:
        quantize, moves = (
            _quantized_chain(node, made_by, constants) if node.op_type == "DequantizeLinear" else (None, [])
        )
        bounds = _saturation(quantize, constants) if quantize is not None else None
        if bounds is None or quantize.input[0] in constants:
            nodes.append(node)
            continue
        # the clip, then the moves between the pair (a channel shuffle's Reshape, Transpose, Reshape on int8) on floats
        clipped = [f"{node.output[0]}__unrounded"] if moves else list(node.output)
        if opset < 11:
            clip = onnx.helper.make_node("Clip", [quantize.input[0]], clipped, min=bounds[0], max=bounds[1])
        else:  # the bounds in the scale's type: the float type of the tensor quantized
            kind = np.asarray(constants[quantize.input[1]]).dtype
            names = [f"{node.output[0]}__unrounded_{side}" for side in ("min", "max")]
            extra += [numpy_helper.from_array(np.array(v, kind), n) for v, n in zip(bounds, names, strict=True)]
            clip = onnx.helper.make_node("Clip", [quantize.input[0], *names], clipped)
        nodes.append(clip)
        last = clipped[0]
        for k, (move, index) in enumerate(moves):
            copy = onnx.NodeProto()
            copy.CopyFrom(move)
            copy.name = f"{move.name or move.op_type}_{k}__unrounded_{node.output[0]}"
            copy.input[0] = last
            outputs = [f"{o}__unrounded_{node.output[0]}" for o in move.output]
            if k == len(moves) - 1:
                outputs[index] = node.output[0]
            del copy.output[:]
            copy.output.extend(outputs)
            nodes.append(copy)
            last = outputs[index]
        replaced += 1
    if not replaced:
        return proto, 0
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    out.graph.initializer.extend(extra)
    return out, replaced


#: ops that only move, copy or pick a quantized tensor's values (or, MaxPool, compare them): the same on the floats
_MOVES = frozenset(
    {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Slice", "Split", "MaxPool", "Resize"}
    | {"DepthToSpace", "SpaceToDepth"}
)


def _quantized_chain(dequantize: onnx.NodeProto, made_by: dict, constants: ConstantTable) -> tuple:
    """The QuantizeLinear whose values ``dequantize`` reads, and the :data:`_MOVES` between them (the QuantizeLinear
    side first, each with the index of the output taken); (None, []) where the path holds another op, a Resize
    that interpolates, or the DequantizeLinear's scale and zero point are not the QuantizeLinear's."""
    moves, tensor = [], dequantize.input[0]
    while tensor in made_by and made_by[tensor].op_type in _MOVES:
        move = made_by[tensor]
        if move.op_type == "Resize" and attribute(move, "mode", "nearest") != "nearest":
            return None, []
        moves.append((move, list(move.output).index(tensor)))
        tensor = move.input[0]
    quantize = made_by.get(tensor)
    if quantize is None or quantize.op_type != "QuantizeLinear":
        return None, []
    if moves and not _same_parameters(quantize, dequantize, constants):
        return None, []
    return quantize, moves[::-1]


def _same_parameters(a: onnx.NodeProto, b: onnx.NodeProto, constants: ConstantTable) -> bool:
    """Whether two Quantize/DequantizeLinear nodes have the same constant scale and zero point (or both none)."""
    for i in (1, 2):
        x, y = (n.input[i] if len(n.input) > i else "" for n in (a, b))
        if not (x or y):
            continue
        if not (x in constants and y in constants):
            return False
        if not np.array_equal(np.asarray(constants[x]), np.asarray(constants[y])):
            return False
    return True


def _saturation(quantize: onnx.NodeProto, constants: ConstantTable) -> tuple[float, float] | None:
    """The float range a per-tensor QuantizeLinear then DequantizeLinear gives (what the pair makes of -inf and
    +inf: (qmin - zp) x s to (qmax - zp) x s); None where it is not one (per axis, per block, a float 8 or 4 bit
    type, or not a QuantizeLinear)."""
    if quantize.op_type != "QuantizeLinear" or not all(t in constants for t in quantize.input[1:] if t):
        return None
    scale = np.asarray(constants[quantize.input[1]])
    zero = np.asarray(constants[quantize.input[2]]) if len(quantize.input) > 2 and quantize.input[2] else None
    to = attribute(quantize, "output_dtype", 0)
    kind = zero.dtype if zero is not None else onnx.helper.tensor_dtype_to_np_dtype(to) if to else np.dtype(np.uint8)
    if scale.size != 1 or (zero is not None and zero.size != 1) or not np.issubdtype(kind, np.integer):
        return None
    edges = np.array([-np.inf, np.inf], np.float32)
    quantized = quantize_op("QuantizeLinear", [edges, scale, zero], output_dtype=to)
    low, high = quantize_op("DequantizeLinear", [quantized, scale, zero])
    return float(low), float(high)


def check_by_values(
    model: Model,
    groups: list[ChannelGroup],
    removed: Removal,
    pruned: onnx.ModelProto,
    feeds: dict[str, np.ndarray],
    *,
    updates: dict[int, ConsumerUpdate] | None = None,
) -> tuple[float, int, str | None]:
    """Compare ``pruned`` with :func:`zeroed_at_consumers` on ``feeds`` (a few samples), both :func:`unrounded`;
    the largest difference of any output, relative to that output's largest value (or to :data:`CHECK_FLOOR`),
    the quantized activations whose rounding was left out, and, where the outputs differ by more than
    :data:`CHECK_TOLERANCE` only past an op of :data:`AMPLIFYING_OPS` that reads no removed channel (the first
    node whose output differs; every tensor before it agrees), that op ("Sqrt 'name'"; else None): a
    detector's sqrt(objectness x class) on data where both are float32's noise about 0 turns 1e-7 into 3e-4.

    Raises:
        OnnxRedundError: they differ by more than :data:`CHECK_TOLERANCE`, naming the first node whose output
            differs (on the channels kept) and the group whose channels reach it: nothing is to be written.
    """
    reference, unrounded_pairs = unrounded(zeroed_at_consumers(model, groups, removed, updates=updates))
    pruned = unrounded(pruned)[0]
    names = model.output_names
    want, got = _run_on(reference, feeds, names, model), _run_on(pruned, feeds, names, model)
    errors = [_relative_error(w, g) for w, g in zip(want, got, strict=True)]
    worst = int(np.argmax(errors))
    if errors[worst] <= CHECK_TOLERANCE:
        return float(errors[worst]), unrounded_pairs, None
    node, group = _first_divergence(model, groups, removed, reference, pruned, feeds)
    where = f"{node.op_type} {node.name or node.output[0]!r}" if node is not None else "an op"
    if node is not None and node.op_type in AMPLIFYING_OPS | DECIDING_OPS and not _reads_removed(node, groups, removed):
        return float(errors[worst]), unrounded_pairs, where
    producers = ", ".join(groups[group].producers) if group is not None else "the groups removed"
    raise OnnxRedundError(
        f"removing channels of {producers} is not exact through {where}: the pruned model differs from the "
        f"original with those channels zeroed where they are read (relative error {errors[worst]:.3g} at output "
        f"{names[worst]!r}); nothing was written. Remove channels of other groups, or report this model"
    )


def _reads_removed(node: onnx.NodeProto, groups: list[ChannelGroup], removed: Removal) -> bool:
    """Whether ``node`` reads or writes a tensor that carries removed channels, or a constant the removal cuts."""
    cut = {t for g in removed for t in groups[g].tensors} | {s.name for g in removed for s in groups[g].slicings}
    return any(t in cut for t in (*node.input, *node.output))


def _relative_error(want: np.ndarray, got: np.ndarray) -> float:
    if want.shape != got.shape:
        return float("inf")
    want, got = np.asarray(want, np.float64), np.asarray(got, np.float64)
    scale = float(np.abs(want).max(initial=0.0))
    return float(np.abs(want - got).max(initial=0.0)) / max(scale, CHECK_FLOOR)


def _run_on(proto: onnx.ModelProto, feeds: dict, names: list[str], model: Model) -> list[np.ndarray]:
    runner = Runner.create(proto, "cpu", derived=True, optimize=False)
    return runner.runs(model)(feeds, names)


def _first_divergence(
    model: Model, groups: list[ChannelGroup], removed: Removal, reference, pruned, feeds
) -> tuple[onnx.NodeProto | None, int | None]:
    """The first node (in graph order) whose float output differs between ``reference`` and ``pruned`` on the
    channels the pruned model keeps (or, for a node of :data:`DECIDING_OPS`, whose output differs at all), and the
    removed group whose channels it reads or writes."""
    graph = model.proto.graph
    have = {o for n in pruned.graph.node for o in n.output}
    order = [(i, o) for i, n in enumerate(graph.node) for o in n.output if o and o in have]
    names = list(dict.fromkeys(o for _, o in order))
    want = dict(zip(names, _run_on(expose_outputs(reference, names), feeds, names, model), strict=True))
    got = dict(zip(names, _run_on(expose_outputs(pruned, names), feeds, names, model), strict=True))
    for i, tensor in order:
        if not np.issubdtype(np.asarray(want[tensor]).dtype, np.floating):
            node = graph.node[i]  # a decision's booleans or indices; a Shape's sizes differ where channels went
            if node.op_type in DECIDING_OPS and not np.array_equal(want[tensor], got[tensor]):
                return node, None
            continue
        segments = [(s, ch) for g, ch in removed.items() for s in groups[g].tensors.get(tensor, [])]
        gone = sorted({int(k) for s, ch in segments for k in s.indices(ch)})
        kept = np.delete(want[tensor], gone, axis=1) if gone else want[tensor]
        if _relative_error(kept, got[tensor]) > CHECK_TOLERANCE:
            node = graph.node[i]
            carried = [g for g in removed if any(t in groups[g].tensors for t in (*node.input, *node.output))]
            return node, (carried[0] if carried else None)
    return None, None
