"""Structured pruning written into the ONNX file: channels removed, not zeroed.

:func:`remove_channels` takes channel groups (:mod:`.channel_groups`) and, per group, the channels to
remove; it cuts every tensor the groups name, recounts Split sizes, Slice bounds, Reshape feature counts
and depthwise group counts, and returns a new model that onnx's full checker and onnxruntime accept (the
input model is never changed). :class:`PruneCost` counts conv MACs and parameters after any removal,
exactly, without building the model. :func:`compensate` computes new
consumer weights so that what the removed channels carried is not simply lost (see its docstring).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from onnxredund.atomic import atomic_write
from onnxredund.engine.channel_groups import ChannelGroup, Consumer, Slicing, constant_values
from onnxredund.engine.runtime import Runner
from onnxredund.errors import OnnxRedundError
from onnxredund.model import (
    PROTOBUF_LIMIT,
    Model,
    attribute,
    copy_model,
    external_tensors,
    tensor_array,
)

__all__ = [
    "COMPENSATIONS",
    "ConsumerUpdate",
    "PruneCost",
    "compensate",
    "consumer_columns",
    "consumer_weights",
    "describe_removal",
    "remove_channels",
    "save_pruned",
]

#: how the removed channels' contribution is made up for (None: it is not)
COMPENSATIONS = ("mean", "merge", "lstsq")

Removal = dict[int, list[int]]  # group index -> group channels to remove


@dataclass
class ConsumerUpdate:
    """New parameters of a consumer, before any channel is cut: ``weight`` in the consumer's own layout
    (conv: (O, C, *k); dense: the weight initializer's own orientation), ``bias`` (O,) in the effective units
    (Gemm's beta applied)."""

    weight: np.ndarray
    bias: np.ndarray


def _check_removal(groups: list[ChannelGroup], removed: Removal) -> None:
    for g, channels in removed.items():
        group = groups[g]
        if not group.prunable:
            raise OnnxRedundError(f"channels of {', '.join(group.producers)} cannot be removed: {group.reason}")
        bad = [c for c in channels if not 0 <= c < group.channels]
        if bad:
            raise OnnxRedundError(f"{group.producers[0]} has channels 0..{group.channels - 1}; no channel {bad[0]}")
        if len(set(channels)) >= group.channels:
            raise OnnxRedundError(f"removing every channel of {group.producers[0]} would disconnect the network")


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
    """Gives nodes new constant inputs: every changed value becomes a fresh initializer the node reads (a
    constant another node shares stays as it is for that node); constants nothing reads any more go."""

    def __init__(self, graph: onnx.GraphProto, constants: Mapping[str, np.ndarray]) -> None:
        self.graph = graph
        self.constants = constants
        self.names = {t for n in graph.node for t in [*n.input, *n.output]} | {i.name for i in graph.initializer}
        self.written: dict[str, np.ndarray] = {}

    def value(self, name: str) -> np.ndarray:
        return np.array(self.written[name] if name in self.written else self.constants[name], copy=True)

    def fresh(self, base: str) -> str:
        name, k = f"{base}__pruned", 1
        while name in self.names:
            name, k = f"{base}__pruned{k}", k + 1
        self.names.add(name)
        return name

    def set_input(self, node_index: int, position: int, value: np.ndarray, base: str) -> str:
        node = self.graph.node[node_index]
        name = self.fresh(base)
        self.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        self.written[name] = value
        while len(node.input) <= position:
            node.input.append("")
        node.input[position] = name
        return name

    def replace(self, node_index: int, old: str, value: np.ndarray) -> None:
        """Node ``node_index`` reads ``value`` where it read ``old``: in place where ``old`` is an initializer
        only this node reads, else as a fresh initializer."""
        node = self.graph.node[node_index]
        readers = sum(list(n.input).count(old) for n in self.graph.node) + sum(o.name == old for o in self.graph.output)
        init = next((t for t in self.graph.initializer if t.name == old), None)
        if init is not None and readers == 1 and old not in self.written:
            init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(value), old))
            self.written[old] = value
            return
        self.set_input(node_index, list(node.input).index(old), value, old)

    def drop_unused(self) -> None:
        """Remove the nodes nothing reads any more (those that computed a constant now replaced), then the
        initializers nothing reads."""
        while True:
            read = {t for n in self.graph.node for t in n.input} | {o.name for o in self.graph.output}
            dead = [i for i, n in enumerate(self.graph.node) if not any(o in read for o in n.output if o)]
            for i in reversed(dead):
                del self.graph.node[i]
            if not dead:
                break
        read = {t for n in self.graph.node for t in n.input} | {o.name for o in self.graph.output}
        keep = [t for t in self.graph.initializer if t.name in read]
        if len(keep) != len(self.graph.initializer):
            del self.graph.initializer[:]
            self.graph.initializer.extend(keep)
            inputs = [i for i in self.graph.input if i.name in read]
            del self.graph.input[:]
            self.graph.input.extend(inputs)


def _dense_orientation(node: onnx.NodeProto) -> tuple[int, float, float]:
    """(feature axis of the weight, alpha, beta) of a dense consumer."""
    if node.op_type == "Gemm":
        return (
            (1 if attribute(node, "transB", 0) else 0),
            float(attribute(node, "alpha", 1.0)),
            float(attribute(node, "beta", 1.0)),
        )
    return 0, 1.0, 1.0


def consumer_weights(model: Model, consumer: Consumer) -> tuple[np.ndarray, np.ndarray]:
    """A consumer's effective weight as (O, F) rows (conv: F = C x kernel taps, channel-major; dense: F
    features) and its effective bias (O,) (zeros where it has none)."""
    node = model.proto.graph.node[consumer.node]
    weight = np.asarray(model.constant(node.input[1]), np.float64)
    bias_name = node.input[2] if len(node.input) > 2 else ""
    if consumer.kind == "conv":
        rows = weight.reshape(weight.shape[0], -1)
        bias = np.asarray(model.constant(bias_name), np.float64) if bias_name else np.zeros(weight.shape[0])
        return rows, np.broadcast_to(bias, (rows.shape[0],)).copy()
    axis, alpha, beta = _dense_orientation(node)
    rows = alpha * (weight.T if axis == 0 else weight)
    bias = np.zeros(rows.shape[0])
    if node.op_type == "Gemm" and bias_name:
        bias = beta * np.broadcast_to(np.asarray(model.constant(bias_name), np.float64).reshape(-1), rows.shape[:1])
    return rows, bias.copy()


def _write_consumer(writer: _Writer, model: Model, node_index: int, update: ConsumerUpdate, cut: dict | None) -> None:
    """Give a consumer its compensated weight and bias (cut by ``cut`` for the weight: axis -> indices)."""
    node = writer.graph.node[node_index]
    original = model.constant(node.input[1])
    if node.op_type == "Conv":
        weight = update.weight.reshape(original.shape)
    else:
        axis, alpha, beta = _dense_orientation(node)
        weight = (update.weight.T if axis == 0 else update.weight) / alpha
    weight = weight.astype(original.dtype)
    for axis, idx in (cut or {}).items():
        weight = np.delete(weight, sorted(idx), axis=axis)
    writer.replace(node_index, node.input[1], weight)
    bias = update.bias.astype(original.dtype)
    if node.op_type == "MatMul":
        out = node.output[0]
        inner = writer.fresh(f"{out}_matmul")
        node.output[0] = inner
        bias_name = writer.fresh(f"{out}_bias")
        writer.graph.initializer.append(numpy_helper.from_array(bias, bias_name))
        writer.graph.node.insert(node_index + 1, onnx.helper.make_node("Add", [inner, bias_name], [out]))
        return
    beta = _dense_orientation(node)[2] if node.op_type == "Gemm" else 1.0
    writer.set_input(node_index, 2, (bias / beta).astype(original.dtype), f"{node.input[1]}_bias")


def _recount_channels(writer: _Writer, model: Model, node_index: int, deleted: set[int]) -> None:
    """A Split's sizes or a Slice's channel bounds after the input channels ``deleted`` are gone."""
    node = writer.graph.node[node_index]
    before = lambda i: sum(1 for d in deleted if d < i)  # noqa: E731
    opset = next((o.version for o in model.proto.opset_import if o.domain in ("", "ai.onnx")), 1)
    if node.op_type == "Split":
        sizes = [model.shapes[o][0] for o in node.output]
        bounds = np.concatenate([[0], np.cumsum(sizes)]).tolist()
        new = np.array([sizes[k] - (before(bounds[k + 1]) - before(bounds[k])) for k in range(len(sizes))], np.int64)
        if opset >= 13:
            writer.set_input(node_index, 1, new, f"{node.output[0]}_split")
        else:
            _set_ints(node, "split", new)
        return
    width = model.shapes[node.input[0]][0]
    k, by_input = _slice_channel_entry(writer, node, model)
    for attr, position in (("starts", 1), ("ends", 2)):
        values = np.array(attribute(node, attr) if not by_input else writer.value(node.input[position]), np.int64)
        v = int(values[k])
        v = min(max(v + width if v < 0 else v, 0), width)
        values[k] = v - before(v)
        if by_input:
            writer.replace(node_index, node.input[position], values)
        else:
            _set_ints(node, attr, values)


def _slice_channel_entry(writer: _Writer, node: onnx.NodeProto, model: Model) -> tuple[int, bool]:
    """Which entry of a Slice's starts/ends is the channel axis, and whether they are inputs (opset >= 10)."""
    by_input = attribute(node, "starts") is None
    rank = len(model.shapes[node.input[0]]) + 1
    if by_input:
        axes = writer.value(node.input[3]).tolist() if len(node.input) > 3 and node.input[3] else None
        count = len(writer.value(node.input[1]))
    else:
        axes, count = attribute(node, "axes"), len(attribute(node, "starts"))
    axes = [a % rank for a in (axes if axes is not None else range(count))]
    return axes.index(1), by_input


def _set_ints(node: onnx.NodeProto, name: str, values) -> None:
    for a in node.attribute:
        if a.name == name:
            node.attribute.remove(a)
            break
    node.attribute.append(onnx.helper.make_attribute(name, [int(v) for v in values]))


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
        OnnxRedundError: a group that cannot be pruned, a channel out of range, or every channel of a group.
        RuntimeError: the pruned model fails onnx's full check or onnxruntime refuses it (onnxredund's bug).
    """
    _check_removal(groups, removed)
    proto = copy_model(model.proto)
    graph = proto.graph
    writer = _Writer(graph, constant_values(model))
    cuts = _cuts(groups, removed)
    updates = dict(updates or {})
    # nodes are inserted after MatMul consumers: work from the last node back so indices stay valid
    order = sorted({key[1] for key in cuts} | set(updates), reverse=True)
    by_node: dict[int, list] = defaultdict(list)
    for key, axes in cuts.items():
        by_node[key[1]].append((key, axes))
    for node_index in order:
        node = graph.node[node_index]
        own = {node.input[1], node.input[2] if len(node.input) > 2 else ""} if node_index in updates else set()
        own_cuts = {}  # the weight's and bias's cuts of a consumer that gets new parameters: applied to those
        for (kind, _, name), axes in by_node.get(node_index, []):
            if kind == "tensor" and name in own:
                own_cuts[name] = axes
            elif kind == "tensor":
                value = writer.value(name)
                for axis, idx in axes.items():
                    value = np.delete(value, sorted(idx), axis=axis)
                writer.replace(node_index, name, value)
            elif kind == "reshape":
                value = writer.value(name)
                for axis, idx in axes.items():
                    value[axis] -= len(idx)
                writer.replace(node_index, name, value)
            elif kind == "flatten":  # the nodes that computed the shape go with drop_unused
                writer.replace(node_index, name, np.array([0, -1], np.int64))
            else:
                _recount_channels(writer, model, node_index, axes[1])
        if node.op_type == "Conv" and int(attribute(node, "group", 1)) > 1:  # depthwise: one group per channel
            node.attribute.remove(next(a for a in node.attribute if a.name == "group"))
            node.attribute.append(onnx.helper.make_attribute("group", int(writer.value(node.input[1]).shape[0])))
        if node_index in updates:
            update = updates[node_index]
            bias_cut = own_cuts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            if bias_cut is None and node.op_type == "Conv" and 0 in own_cuts.get(node.input[1], {}):
                bias_cut = {0: own_cuts[node.input[1]][0]}  # a bias the update adds, for the output channels kept
            if bias_cut:  # the consumer also produces removed channels
                update = ConsumerUpdate(update.weight, np.delete(update.bias, sorted(bias_cut[0])))
            _write_consumer(writer, model, node_index, update, own_cuts.get(node.input[1]))
    writer.drop_unused()
    del graph.value_info[:]  # inner shapes changed
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise RuntimeError(f"the pruned model fails onnx's check (a bug of onnxredund's): {e}") from e
    runner = Runner.create(proto, "cpu", derived=True, optimize=False)
    try:
        runner.run({i.name: np.zeros(_one_sample(i), i.dtype) for i in model.inputs})
    except OnnxRedundError as e:
        raise RuntimeError(f"the pruned model does not run (a bug of onnxredund's): {e}") from e
    return proto


def _one_sample(inp) -> tuple[int, ...]:
    return (1, *inp.sample_shape) if inp.batched else tuple(inp.sample_shape)


def save_pruned(proto: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Write a pruned model as one self-contained file (weights the original kept in external files are read
    into it), atomically; over protobuf's 2 GB limit the weights go to ``<name>.data`` beside it."""
    path = Path(path)
    work = copy_model(proto)
    for tensor in external_tensors(work):
        tensor.CopyFrom(numpy_helper.from_array(tensor_array(tensor), tensor.name))
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
    def of(cls, model: Model, groups: list[ChannelGroup]) -> PruneCost:
        graph = model.proto.graph
        constants = constant_values(model)
        conv_positions = {}
        for layer in model.layers:
            weight = graph.node[layer.node_index].input[1]
            if weight in constants:
                conv_positions[weight] = int(np.prod(layer.output_shape[1:], dtype=np.int64))
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

    def tally(self) -> _Tally:
        """A running count, channel by channel (for a greedy removal)."""
        return _Tally(self, [list(shape) for shape in self.shapes])

    def macs(self, removed: Removal) -> int:
        """Conv MACs per sample after ``removed``."""
        return self._after(removed).macs()

    def params(self, removed: Removal) -> int:
        """Parameters (values of float constants) after ``removed``."""
        return self._after(removed).params()

    def _after(self, removed: Removal) -> _Tally:
        tally = self.tally()
        for g, channels in removed.items():
            for c in channels:
                tally.remove(g, c)
        return tally


@dataclass
class _Tally:
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
    if method not in COMPENSATIONS:
        raise OnnxRedundError(f"no compensation {method!r}; choose one of {', '.join(COMPENSATIONS)}")
    consumers: dict[int, list[tuple[Consumer, list[int], ChannelGroup]]] = defaultdict(list)
    for g, channels in removed.items():
        for c in groups[g].consumers:
            read = [r for r in sorted(channels) if c.reads(r)]
            if read:
                consumers[c.node].append((c, read, groups[g]))
    updates = {}
    for node_index, items in consumers.items():
        rows, bias = consumer_weights(model, items[0][0])
        if method == "lstsq":
            columns = np.concatenate([consumer_columns(model, c, ch) for c, ch, _ in items])
            rows, bias = stats.refit(items[0][0], rows, bias, columns, **({} if ridge is None else {"ridge": ridge}))
        else:
            for consumer, channels, group in items:
                gone = set(removed[group.index])
                kept = [c for c in range(group.channels) if c not in gone and consumer.reads(c)]
                for r in channels:
                    cols = consumer_columns(model, consumer, [r])
                    if method == "mean":
                        bias = bias + rows[:, cols] @ stats.mean(consumer, r, len(cols))
                        continue
                    t, alpha, beta = stats.best_fit(consumer, r, kept, len(cols))
                    rows[:, consumer_columns(model, consumer, [t])] += alpha * rows[:, cols]
                    bias = bias + rows[:, cols] @ beta
        updates[node_index] = ConsumerUpdate(rows, bias)
    return updates


def consumer_columns(model: Model, consumer: Consumer, channels) -> np.ndarray:
    """The columns of a consumer's (O, F) rows (:func:`consumer_weights`) that read group channels ``channels``."""
    entries = consumer.indices(channels)
    if consumer.kind == "dense":
        return entries
    taps = int(np.prod(model.constant(model.proto.graph.node[consumer.node].input[1]).shape[2:], dtype=np.int64))
    return (entries.reshape(-1, 1) * taps + np.arange(taps)).ravel()


def describe_removal(model: Model, groups: list[ChannelGroup], removed: Removal) -> list[dict]:
    """Per group with removals: producers, channels before and after, and the channels removed."""
    return [
        {"group": g, "producers": list(groups[g].producers), "channels": groups[g].channels,
         "kept": groups[g].channels - len(ch), "removed": sorted(int(c) for c in ch)}
        for g, ch in sorted(removed.items()) if ch
    ]  # fmt: skip
