"""One rule per op: how a channel group's channels pass through it, and how it is cut when they go.

:func:`~onnxredund.engine.channel_groups.channel_groups` walks the graph in order and hands every node that reads
channels to the rule of its op (:func:`rule_for`): the rule's :meth:`OpRule.follow` says where the channels go
on the node's outputs (``walk.maps``), what removing them cuts (``walk.cut``: a constant's indices, a Reshape's
or Resize's count, a Split's or Slice's sizes), which node reads them as a consumer (``walk.consumer``), which
groups they tie, or why they cannot be followed (``walk.refuse``, the reason ``prune --plan`` shows). A rule
whose op produces channels (a conv) starts a group in :meth:`OpRule.start`. When channels are removed,
:func:`~onnxredund.engine.pruning.remove_channels` deletes the indices of every constant cut and then calls
:meth:`OpRule.rewrite` for what needs more (a depthwise conv's group count, a Split's sizes). An op with no
rule refuses every group that reaches it.

A custom op gets a rule with :func:`register_rule`; for one whose output channel c depends on input channel c
alone::

    class MyActivation(OpRule):
        ops = ("MyActivation",)

        def follow(self, walk, node, carried):
            walk.keep(node, carried)  # the channels of input 0 pass through, one to one

    register_rule(MyActivation(), domain="com.example")
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Protocol

import numpy as np
import onnx
import onnx_ir as ir

from onnxredund.engine.channels import ConsumerKind, Cut, Role, Segment
from onnxredund.model import ACTIVATION_OPS, ConvLayer, Model, attribute, default_opset

__all__ = ["OpRule", "Walk", "register_rule", "rule_for", "to_features"]


class Walk(Protocol):
    """What a rule sees and does while the channel groups are found (the walker of :mod:`.channel_groups`).

    Attributes:
        model: the model.
        constants: every constant tensor's value (:func:`~onnxredund.engine.channel_groups.constant_values`).
        maps: tensor -> the segments of channel groups it carries (channels on axis 1, or features).
        last: channels-last tensors (after a Transpose to (N, ..., C)) -> their channel count.
    """

    model: Model
    constants: Mapping[str, np.ndarray]
    maps: dict[str, list[Segment]]
    last: dict[str, int]

    def label(self) -> str:
        """The current node's name, for reasons."""

    def rank(self, tensor: str) -> int:
        """A tensor's rank with its batch (0 when its shape is unknown)."""

    def layer_at(self) -> ConvLayer | None:
        """The conv layer of the current node, if it is one the model lists."""

    def cut(self, kind: Cut, name: str, axis: int, segment: Segment, role: Role) -> None:
        """Removing the segment's channels cuts tensor ``name`` (see :class:`~.channels.Slicing`)."""

    def consumer(self, kind: ConsumerKind, tensor: str, segment: Segment) -> None:
        """The current node reads the segment's channels from ``tensor`` ("conv", "dense" or "transposed")."""

    def refuse(self, tensors: list[str], reason: str) -> None:
        """Every group the tensors carry cannot be pruned, for ``reason``."""

    def refuse_group(self, group: int, reason: str) -> None: ...

    def new_group(self, producer: str, channels: int) -> int:
        """A new group of ``channels`` output channels of ``producer``; its index."""

    def keep(self, node: onnx.NodeProto, carried: list[str]) -> None:
        """Output 0 carries input 0's channels as they are (refused where input 0 carries none)."""

    def tie(self, a: int, first_a: int, b: int, first_b: int) -> bool:
        """Channel ``first_a + i`` of group a is channel ``first_b + i`` of b; False where that contradicts."""

    def same_weights(self, weight: str, group: int) -> None:
        """Group ``group`` starts at a conv whose weights are constant ``weight``: where an earlier conv's hold the
        same values (a siamese network's twin branches, the weights shared through an Identity), the two groups
        are tied, so that the same channels go from both (left apart where that contradicts earlier ties)."""


class OpRule:
    """How channels pass through the ops named in ``ops`` (see the module docstring)."""

    ops: tuple[str, ...] = ()
    #: whether channels-last tensors (after a Transpose to (N, ..., C)) may reach the op
    channels_last: bool = False

    def follow(self, walk: Walk, node: onnx.NodeProto, carried: list[str]) -> None:
        """``node`` reads the channel groups of the ``carried`` inputs: say where they go, or refuse them."""
        raise NotImplementedError

    def start(self, walk: Walk, node: onnx.NodeProto) -> None:
        """``node``'s output channels start a group (producers only)."""

    def rewrite(self, edit, model: Model, node_index: int, channels: set[int] | None) -> None:
        """After the constants of node ``node_index`` are cut (``edit``: the pruning writer), what else changes;
        ``channels``: the input channel indices a Split or Slice lost."""


_RULES: dict[tuple[str, str], OpRule] = {}


def register_rule(rule: OpRule, *, domain: str = "") -> None:
    """Make ``rule`` the one for its ``ops`` in ``domain`` ("" is the default ONNX domain), replacing any."""
    for op in rule.ops:
        _RULES[(domain, op)] = rule


def rule_for(node: onnx.NodeProto) -> OpRule | None:
    """The rule of ``node``'s op, or None."""
    domain = "" if node.domain in ("", "ai.onnx") else node.domain
    return _RULES.get((domain, node.op_type))


# -- the rules ----------------------------------------------------------------------------------------


class PassThroughRule(OpRule):
    """Elementwise activations, pools and other ops whose output channel c is a function of input channel c alone."""

    ops = tuple(
        sorted(
            ACTIVATION_OPS
            | {
                "Identity",
                "Dropout",
                "Cast",
                "MaxPool",
                "AveragePool",
                "LpPool",
                "GlobalAveragePool",
                "GlobalMaxPool",
                "Neg",
                "Abs",
                "Sqrt",
                "Exp",
                "Log",
                "Floor",
                "Ceil",
                "Round",
                "Reciprocal",
                "Erf",
                "Clip",
            }
        )
    )

    def follow(self, walk: Walk, node: onnx.NodeProto, carried: list[str]) -> None:
        walk.keep(node, carried)


class ShapeOnlyRule(OpRule):
    """Ops that read only a tensor's shape: what they compute carries no channels."""

    ops = ("Shape", "Size")

    def follow(self, walk: Walk, node: onnx.NodeProto, carried: list[str]) -> None:
        return


class ConvRule(OpRule):
    """Conv: a producer (kernel rows and bias); a consumer (kernel columns); a depthwise conv passes the
    channel through, its kernel row and bias going with it, and keeps one group per channel left; a grouped
    one is refused."""

    ops = ("Conv",)

    def follow(self, walk: Walk, node: onnx.NodeProto, carried: list[str]) -> None:
        if node.input[0] not in carried:
            walk.refuse(carried, f"they are the weights of conv {walk.label()!r}")
            return
        segments = walk.maps[node.input[0]]
        wshape = None if node.input[1] not in walk.constants else walk.constants[node.input[1]].shape
        groups = int(attribute(node, "group", 1))
        if wshape is None:
            walk.refuse(carried, f"conv {walk.label()!r} has computed weights")
        elif groups == 1:
            for s in segments:
                walk.cut(Cut.tensor, node.input[1], 1, s, Role.consumer)
                walk.consumer(ConsumerKind.conv, node.input[0], s)
        elif wshape[1] == 1 and wshape[0] == groups:  # depthwise: output channel c reads input channel c alone
            for s in segments:
                walk.cut(Cut.tensor, node.input[1], 0, s, Role.depthwise)
                if len(node.input) > 2 and node.input[2]:
                    walk.cut(Cut.tensor, node.input[2], 0, s, Role.bias)
            walk.maps[node.output[0]] = list(segments)
        else:
            walk.refuse(carried, f"grouped conv {walk.label()!r} ({groups} groups) reads them")

    def start(self, walk: Walk, node: onnx.NodeProto) -> None:
        """A conv whose output channels start a new group."""
        layer = walk.layer_at()
        if layer is None:  # a conv whose weights onnxredund does not list
            return
        g = walk.new_group(layer.name, layer.out_channels)
        if node.input[1] not in walk.constants:
            walk.refuse_group(g, f"conv {layer.name!r} has computed weights")
        elif int(attribute(node, "group", 1)) != 1:
            groups = int(attribute(node, "group", 1))
            depthwise = np.shape(walk.constants[node.input[1]])[:2] == (groups, 1)
            walk.refuse_group(
                g,
                f"conv {layer.name!r} is depthwise: its channels are its input's, which no conv before it makes "
                "(the graph's input, say)"
                if depthwise
                else f"conv {layer.name!r} is grouped ({groups} groups)",
            )
        else:
            walk.same_weights(node.input[1], g)
        whole = Segment(g, 0, layer.out_channels)
        walk.cut(Cut.tensor, node.input[1], 0, whole, Role.producer)
        if len(node.input) > 2 and node.input[2]:
            walk.cut(Cut.tensor, node.input[2], 0, whole, Role.bias)
        walk.maps[node.output[0]] = [whole]

    def rewrite(self, edit, model: Model, node_index: int, channels: set[int] | None) -> None:
        node = model.proto.graph.node[node_index]
        if int(attribute(node, "group", 1)) > 1:  # depthwise: one group per channel left
            target = edit.nodes[node_index]
            target.attributes["group"] = ir.AttrInt64("group", int(edit.value(target.inputs[1].name).shape[0]))


class ConvTransposeRule(OpRule):
    """ConvTranspose, weight (C_in, C_out / groups, *k): a consumer reads channel c through its weight's row c
    (axis 0); as a producer its output channels are the weight's axis 1."""

    ops = ("ConvTranspose",)

    def follow(self, walk: Walk, node: onnx.NodeProto, carried: list[str]) -> None:
        """A transposed conv reads input channel c through its weight's row c (axis 0), whatever it writes."""
        if node.input[0] not in carried:
            walk.refuse(carried, f"they are the weights of transposed conv {walk.label()!r}")
        elif node.input[1] not in walk.constants:
            walk.refuse(carried, f"transposed conv {walk.label()!r} has computed weights")
        elif int(attribute(node, "group", 1)) != 1:
            walk.refuse(carried, f"grouped transposed conv {walk.label()!r} reads them")
        else:
            for s in walk.maps[node.input[0]]:
                walk.cut(Cut.tensor, node.input[1], 0, s, Role.consumer)
                walk.consumer(ConsumerKind.transposed, node.input[0], s)

    def start(self, walk: Walk, node: onnx.NodeProto) -> None:
        """A transposed conv (weight (C_in, C_out / groups, *k)) whose output channels start a new group."""
        label = walk.label()
        weight = walk.constants.get(node.input[1]) if node.input[1] in walk.constants else None
        if weight is None:
            g = walk.new_group(label, walk.model.shapes.get(node.output[0], (0,))[0])
            walk.refuse_group(g, f"transposed conv {label!r} has computed weights")
            return
        groups = int(attribute(node, "group", 1))
        g = walk.new_group(label, weight.shape[1] * groups)
        if groups != 1:
            walk.refuse_group(g, f"transposed conv {label!r} is grouped ({groups} groups)")
        whole = Segment(g, 0, weight.shape[1] * groups)
        walk.cut(Cut.tensor, node.input[1], 1, whole, Role.producer)
        if len(node.input) > 2 and node.input[2]:
            walk.cut(Cut.tensor, node.input[2], 0, whole, Role.bias)
        walk.maps[node.output[0]] = [whole]


class TransposeRule(OpRule):
    """Transpose that keeps axes 0 and 1 (the channels stay); one to channels-last, (0, 2, ..., 1), before a
    Keras or tf2onnx flatten; and one back to channels-first."""

    ops = ("Transpose",)
    channels_last = True

    def follow(self, walk: Walk, node: onnx.NodeProto, carried: list[str]) -> None:
        """Channels stay on axis 1 when a Transpose keeps axes 0 and 1; ``(0, 2, ..., 1)`` makes a map channels-
        last (followed only into a Flatten or Reshape to features, as Keras heads write it) and
        ``(0, r-1, 1, ..., r-2)`` makes it channels-first again."""
        rank = walk.rank(node.input[0])
        perm = attribute(node, "perm", None)
        perm = list(perm) if perm is not None else list(reversed(range(rank)))
        was_last = node.input[0] in walk.last
        to_last = rank > 2 and perm == [0, *range(2, rank), 1]
        to_first = rank > 2 and perm == [0, rank - 1, *range(1, rank - 1)]
        segments = walk.maps[node.input[0]]
        if rank == 0 or any(s.block != 1 for s in segments):
            walk.refuse(carried, f"Transpose {walk.label()!r} moves them in a way not handled")
        elif not was_last and perm[:2] == [0, 1]:
            walk.keep(node, carried)
        elif not was_last and to_last:
            walk.maps[node.output[0]] = list(segments)
            walk.last[node.output[0]] = walk.model.shapes[node.input[0]][0]
        elif was_last and to_first:
            walk.maps[node.output[0]] = list(segments)
        else:
            walk.refuse(carried, f"Transpose {walk.label()!r} moves them in a way not handled")


class SqueezeRule(OpRule):
    """Squeeze/Unsqueeze of axes after the channels (a global pool's 1 x 1 before a dense layer)."""

    ops = ("Squeeze", "Unsqueeze")

    def follow(self, walk: Walk, node: onnx.NodeProto, carried: list[str]) -> None:
        """Squeeze/Unsqueeze of axes after the channels (a global pool's 1 x 1 before a dense layer)."""
        axes = _ints(walk.constants, node, "axes", 1)
        rank = walk.rank(node.output[0] if node.op_type == "Unsqueeze" else node.input[0])
        if node.input[0] not in carried or rank == 0 or not axes or any(a % rank in (0, 1) for a in axes):
            walk.refuse(carried, f"{node.op_type} {walk.label()!r} moves the batch or channel axis")
            return
        walk.keep(node, carried)


class NormalizationRule(OpRule):
    """Per-channel normalisation: its constant parameters are cut with the channels."""

    ops = ("BatchNormalization", "InstanceNormalization")

    def follow(self, walk: Walk, node: onnx.NodeProto, carried: list[str]) -> None:
        params = _constant_parameters(walk, node, carried)
        if params is None:
            return
        for s in walk.maps[node.input[0]]:
            for t in params:
                walk.cut(Cut.tensor, t, 0, s, Role.norm)
        walk.maps[node.output[0]] = list(walk.maps[node.input[0]])


class QuantizeRule(OpRule):
    """QuantizeLinear / DequantizeLinear of a QDQ model's activations: per tensor, channel c stays channel c;
    per channel (a 1-D scale on axis 1), its scale and zero point are cut with the channels."""

    ops = ("QuantizeLinear", "DequantizeLinear")

    def follow(self, walk: Walk, node: onnx.NodeProto, carried: list[str]) -> None:
        params = _constant_parameters(walk, node, carried)
        if params is None:
            return
        scale = np.asarray(walk.constants[params[0]])
        segments = walk.maps[node.input[0]]
        if scale.size > 1:
            axis = attribute(node, "axis", 1) % max(walk.rank(node.input[0]), 1)
            if scale.ndim != 1 or axis != 1 or attribute(node, "block_size", 0) or any(s.block != 1 for s in segments):
                walk.refuse(carried, f"{node.op_type} {walk.label()!r} quantizes them per block or on another axis")
                return
            for s in segments:
                for t in params:
                    walk.cut(Cut.tensor, t, 0, s, Role.constant)
        walk.maps[node.output[0]] = list(segments)


class ElementwiseRule(OpRule):
    """Elementwise ops of several inputs: maps combined tie their groups place for place; a constant with one value
    per channel is cut with them, one broadcast over them is not."""

    ops = ("Add", "Div", "Max", "Mean", "Min", "Mul", "PRelu", "Pow", "Sub", "Sum", "Where")

    def follow(self, walk: Walk, node: onnx.NodeProto, carried: list[str]) -> None:
        inputs = [t for t in node.input if t]
        data = [t for t in inputs if t not in walk.constants]
        if node.op_type == "Where" and inputs[0] in carried:
            walk.refuse(carried, f"they are the condition of Where {walk.label()!r}")
            return
        if node.op_type == "Where":
            data = [t for t in data if t != inputs[0]]
        if any(t not in walk.maps for t in data):
            walk.refuse(carried, f"{node.op_type} {walk.label()!r} mixes them with a tensor that carries no channels")
            return
        first = walk.maps[data[0]]
        for t in data[1:]:
            other = walk.maps[t]
            if not _aligned(first, other):
                walk.refuse(carried, f"{node.op_type} {walk.label()!r} combines channels laid out differently")
                return
            for a, b in zip(first, other, strict=True):
                if not walk.tie(a.group, a.first, b.group, b.first):
                    walk.refuse(carried, f"{node.op_type} {walk.label()!r} ties channels in two ways")
                    return
        for t in inputs:
            if t in walk.constants:
                _elementwise_constant(walk, node, t, data[0], first)
        walk.maps[node.output[0]] = list(first)


class ConcatRule(OpRule):
    """Concat on the channel axis: each input's channels at their offset."""

    ops = ("Concat",)

    def follow(self, walk: Walk, node: onnx.NodeProto, carried: list[str]) -> None:
        axis, rank = int(attribute(node, "axis", 0)), walk.rank(node.output[0])
        widths = [walk.model.shapes.get(t, (None,))[0] if t in walk.model.shapes else None for t in node.input]
        if rank == 0 or axis % rank != 1 or None in widths:
            walk.refuse(carried, f"Concat {walk.label()!r} joins them along another axis (or unknown shapes)")
            return
        offset, segments = 0, []
        for t, width in zip(node.input, widths, strict=True):
            segments += [dataclasses.replace(s, offset=s.offset + offset) for s in walk.maps.get(t, [])]
            offset += width
        walk.maps[node.output[0]] = segments


class SplitRule(OpRule):
    """Split on the channel axis: each part's channels; cutting it recounts the parts' sizes (opset 13 on: an
    input, without opset 18's ``num_outputs``)."""

    ops = ("Split",)

    def follow(self, walk: Walk, node: onnx.NodeProto, carried: list[str]) -> None:
        axis, rank = int(attribute(node, "axis", 0)), walk.rank(node.input[0])
        sizes = [walk.model.shapes.get(o, (None,))[0] if o in walk.model.shapes else None for o in node.output]
        if node.input[0] not in carried or rank == 0 or axis % rank != 1 or None in sizes:
            walk.refuse(carried, f"Split {walk.label()!r} splits them along another axis (or unknown shapes)")
            return
        bounds = np.concatenate([[0], np.cumsum(sizes)]).tolist()
        windows = [(o, bounds[k], bounds[k + 1]) for k, o in enumerate(node.output)]
        _channel_window(walk, node, carried, windows, Role.split)

    def rewrite(self, edit, model: Model, node_index: int, channels: set[int] | None) -> None:
        if channels:
            _recount_split(edit, model, node_index, channels)


_TO_THE_END = 10**9  # a Slice's end at or past this takes the rest of the axis, whatever its size


class SliceRule(OpRule):
    """Slice with constant bounds, step 1: on the channel axis a window of channels, recounted when cut; on
    other axes the channels pass through."""

    ops = ("Slice",)

    def follow(self, walk: Walk, node: onnx.NodeProto, carried: list[str]) -> None:
        """Slice with constant bounds, step 1, on the channel axis only (other axes: channels pass through)."""
        starts = _ints(walk.constants, node, "starts", 1)
        ends = _ints(walk.constants, node, "ends", 2)
        axes = _ints(walk.constants, node, "axes", 3)
        steps = _ints(walk.constants, node, "steps", 4)
        rank, width = walk.rank(node.input[0]), walk.model.shapes.get(node.input[0], (0,))[0]
        if node.input[0] not in carried or starts is None or ends is None or rank == 0:
            walk.refuse(carried, f"Slice {walk.label()!r} has computed bounds")
            return
        axes = [a % rank for a in (axes or range(len(starts)))]
        if steps and any(s != 1 for s in steps):
            walk.refuse(carried, f"Slice {walk.label()!r} steps through them")
            return
        # a window from 0 to "the end" (jax2tf writes 1e9 or 2**31 - 1 for every axis) leaves the batch whole
        whole = [i for i, a in enumerate(axes) if a == 0 and starts[i] == 0 and ends[i] >= _TO_THE_END]
        axes, starts, ends = ([v for i, v in enumerate(seq) if i not in whole] for seq in (axes, starts, ends))
        if 0 in axes:
            walk.refuse(carried, f"Slice {walk.label()!r} slices the batch")
            return
        if 1 not in axes:
            walk.keep(node, carried)
            return
        k = axes.index(1)
        start, stop = (min(max(v + width if v < 0 else v, 0), width) for v in (starts[k], ends[k]))
        _channel_window(walk, node, carried, [(node.output[0], start, stop)], Role.slice)

    def rewrite(self, edit, model: Model, node_index: int, channels: set[int] | None) -> None:
        if channels:
            _recount_slice(edit, model, node_index, channels)


class FlattenRule(OpRule):
    """Flatten from axis 1: each channel becomes a block of features (interleaved after a channels-last Transpose)."""

    ops = ("Flatten",)
    channels_last = True

    def follow(self, walk: Walk, node: onnx.NodeProto, carried: list[str]) -> None:
        shape = walk.model.shapes.get(node.input[0])
        if int(attribute(node, "axis", 1)) != 1 or shape is None:
            walk.refuse(carried, f"Flatten {walk.label()!r} flattens from another axis")
            return
        to_features(walk, node, shape)


class ReshapeRule(OpRule):
    """Reshape to (N, features), a Flatten: a feature count in its shape constant shrinks with the channels, and
    a shape computed at run time (Paddle's flatten) becomes the constant ``[0, -1]``."""

    ops = ("Reshape",)
    channels_last = True

    def follow(self, walk: Walk, node: onnx.NodeProto, carried: list[str]) -> None:
        """A Reshape to (N, C * positions) is a Flatten; a feature count in its shape constant shrinks. A shape
        computed at run time (Paddle's flatten: ``Concat(Shape(x)[:1], [-1 or F])``) is replaced by the
        constant ``[0, -1]``, the same Flatten at every batch size."""
        shape, out = walk.model.shapes.get(node.input[0]), walk.model.shapes.get(node.output[0])
        target = node.input[1] if len(node.input) > 1 else ""
        if (
            node.input[0] not in carried
            or shape is None
            or out is None
            or len(out) != 1
            or (target not in walk.constants and not _flattens(node, shape, out))
        ):
            walk.refuse(carried, f"Reshape {walk.label()!r} reshapes them in a way not handled")
            return
        if target not in walk.constants:
            to_features(walk, node, shape)
            for s in walk.maps[node.output[0]]:
                walk.cut(Cut.flatten, target, 1, s, Role.reshape)
            return
        values = walk.constants[target]
        if values.ndim != 1 or len(values) != 2:
            walk.refuse(carried, f"Reshape {walk.label()!r} reshapes them in a way not handled")
            return
        to_features(walk, node, shape)
        if values[1] > 0:
            for s in walk.maps[node.output[0]]:
                walk.cut(Cut.reshape, target, 1, s, Role.reshape)


class DenseRule(OpRule):
    """Gemm/MatMul after a Flatten: the rows (columns when transposed) of each channel's block."""

    ops = ("Gemm", "MatMul")

    def follow(self, walk: Walk, node: onnx.NodeProto, carried: list[str]) -> None:
        """Gemm/MatMul after a Flatten: the rows (columns when transposed) of each channel's block."""
        weight = node.input[1]
        if node.input[0] not in carried or weight not in walk.constants or attribute(node, "transA", 0):
            walk.refuse(carried, f"{node.op_type} {walk.label()!r} reads them in a way not handled")
            return
        if len(walk.model.shapes.get(node.input[0], ())) != 1 or walk.constants[weight].ndim != 2:
            walk.refuse(carried, f"{node.op_type} {walk.label()!r} reads a map, not features")
            return
        axis = 1 if node.op_type == "Gemm" and attribute(node, "transB", 0) else 0
        for s in walk.maps[node.input[0]]:
            walk.cut(Cut.tensor, weight, axis, s, Role.dense)
            walk.consumer(ConsumerKind.dense, node.input[0], s)


class ReduceRule(OpRule):
    """Reductions over axes after the channels: they pass through."""

    ops = ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2")

    def follow(self, walk: Walk, node: onnx.NodeProto, carried: list[str]) -> None:
        axes = _ints(walk.constants, node, "axes", 1)
        rank = walk.rank(node.input[0])
        if rank == 0 or axes is None or any(a % rank in (0, 1) for a in axes):
            walk.refuse(carried, f"{node.op_type} {walk.label()!r} reduces over the channels")
            return
        walk.keep(node, carried)  # with keepdims=0 the channels stay on axis 1 too (only later axes go)


class ResizeRule(OpRule):
    """Resize/Upsample with scales of 1 on the batch and channel axes; constant ``sizes`` are recounted."""

    ops = ("Resize", "Upsample")

    def follow(self, walk: Walk, node: onnx.NodeProto, carried: list[str]) -> None:
        """Resize/Upsample that keeps the channel count: scales of 1 on the batch and channel axes; constant
        ``sizes`` (Resize's fourth input) lose one channel per channel removed."""
        rank = walk.rank(node.input[0])
        old = node.op_type == "Upsample" or (default_opset(walk.model.proto) or 11) < 11  # (X, scales)
        scales = _floats(walk.constants, node, "scales", 1 if old else 2)
        sizes = node.input[3] if node.op_type == "Resize" and len(node.input) > 3 else ""
        if node.input[0] not in carried or rank == 0:
            walk.refuse(carried, f"they are a parameter of {node.op_type} {walk.label()!r}")
        elif sizes and sizes not in walk.constants:
            walk.refuse(carried, f"{node.op_type} {walk.label()!r} has computed sizes")
        elif not sizes and scales is None:
            walk.refuse(carried, f"{node.op_type} {walk.label()!r} has computed scales")
        elif scales is not None and len(scales) and (len(scales) != rank or scales[0] != 1 or scales[1] != 1):
            walk.refuse(carried, f"{node.op_type} {walk.label()!r} scales the batch or the channels")
        else:
            walk.keep(node, carried)
            if sizes:
                for s in walk.maps[node.input[0]]:
                    walk.cut(Cut.reshape, sizes, 1, s, Role.resize)


class PadRule(OpRule):
    """Pad with constant pads that leave the batch and channel axes alone."""

    ops = ("Pad",)

    def follow(self, walk: Walk, node: onnx.NodeProto, carried: list[str]) -> None:
        pads = _ints(walk.constants, node, "pads", 1)
        rank = walk.rank(node.input[0])
        if rank == 0 or pads is None or len(pads) != 2 * rank or pads[1] or pads[1 + rank]:
            walk.refuse(carried, f"Pad {walk.label()!r} pads the channels")
            return
        walk.keep(node, carried)


# -- shared pieces --------------------------------------------------------------------------------------


def _ints(constants: Mapping[str, np.ndarray], node: onnx.NodeProto, attr: str, position: int) -> list[int] | None:
    """An int-list parameter given as an attribute (old opsets) or as a constant input (new ones)."""
    value = attribute(node, attr, None)
    if value is None and len(node.input) > position and node.input[position] in constants:
        value = constants[node.input[position]].tolist()
    return None if value is None else [int(v) for v in np.atleast_1d(value)]


def _floats(constants: Mapping[str, np.ndarray], node: onnx.NodeProto, attr: str, position: int) -> list[float] | None:
    """A float-list parameter given as an attribute (old opsets) or as a constant input (new ones); [] where
    the input is left empty."""
    value = attribute(node, attr, None)
    if value is None and len(node.input) > position:
        name = node.input[position]
        if not name:
            return []
        value = constants[name].tolist() if name in constants else None
    return None if value is None else [float(v) for v in np.atleast_1d(value)]


def _constant_parameters(walk: Walk, node: onnx.NodeProto, carried: list[str]) -> list[str] | None:
    """A per-channel op's parameters (its inputs after the data), or None where it refused the channels: one of
    them is computed, or the channels reach it as a parameter."""
    params = [t for t in node.input[1:] if t]
    if node.input[0] not in carried or any(t not in walk.constants for t in params):
        walk.refuse(carried, f"{node.op_type} {walk.label()!r} has computed parameters")
        return None
    return params


def _aligned(a: list[Segment], b: list[Segment]) -> bool:
    """Two tensors combined elementwise tie their channels place for place: their segments must cover
    the same places."""
    return [(x.offset, x.length, x.block, x.step) for x in a] == [(y.offset, y.length, y.block, y.step) for y in b]


def _elementwise_constant(walk: Walk, node, name: str, tensor: str, segments: list[Segment]) -> None:
    """A constant operand with one value per channel is cut with them; one broadcast over them is not."""
    value = np.asarray(walk.constants[name])
    rank = walk.rank(node.output[0])
    if value.size == 1:
        return
    axis = value.ndim - (rank - 1)  # the constant's axis aligned with the tensor's axis 1
    if rank == 0 or value.ndim >= rank + 1 or axis < 0:
        walk.refuse([tensor], f"constant {name!r} of {walk.label()!r} does not follow the channels")
        return
    if value.shape[axis] == 1:
        return
    if value.shape[axis] != walk.model.shapes[node.output[0]][0] or any(s.block != 1 for s in segments):
        walk.refuse([tensor], f"constant {name!r} of {walk.label()!r} does not follow the channels")
        return
    for s in segments:
        walk.cut(Cut.tensor, name, axis, s, Role.constant)


def _channel_window(walk: Walk, node, carried, windows: list[tuple[str, int, int]], role: Role) -> None:
    """Split/Slice on axis 1: each output reads channels [start, stop) of the input."""
    segments = walk.maps[node.input[0]]
    for out, start, stop in windows:
        parts = []
        for s in segments:
            lo, hi = max(start, s.offset), min(stop, s.offset + s.span)
            if lo >= hi:
                continue
            if s.step != 1 or (lo - s.offset) % s.block or (hi - s.offset) % s.block:
                walk.refuse(carried, f"{node.op_type} {walk.label()!r} cuts through a channel's features")
                return
            first = s.first + (lo - s.offset) // s.block
            parts.append(Segment(s.group, lo - start, (hi - lo) // s.block, s.block, first))
        walk.maps[out] = parts
    for s in segments:
        walk.cut(Cut.channels, node.input[0], 1, s, role)


def to_features(walk: Walk, node: onnx.NodeProto, shape: tuple[int, ...]) -> None:
    """Output 0 holds input 0's channels as features: a block of positions each (interleaved at stride C after a
    channels-last Transpose)."""
    segments = walk.maps[node.input[0]]
    if node.input[0] in walk.last:  # (N, ..., C) flattened: channel c at c, c + C, c + 2C, ...
        positions = int(np.prod(shape[:-1], dtype=np.int64))
        walk.maps[node.output[0]] = [dataclasses.replace(s, block=positions, step=shape[-1]) for s in segments]
        return
    block = int(np.prod(shape[1:], dtype=np.int64))
    walk.maps[node.output[0]] = [
        Segment(s.group, s.offset * block, s.length, s.block * block, s.first) for s in segments
    ]


def _flattens(node, shape, out) -> bool:
    """Whether a Reshape whose shape is computed gives (N, every value of a sample), with 0 meaning copy."""
    return not attribute(node, "allowzero", 0) and out[0] == int(np.prod(shape, dtype=np.int64))


def _removed_before(deleted: set[int]):
    return lambda i: sum(1 for d in deleted if d < i)


def _recount_split(edit, model: Model, node_index: int, deleted: set[int]) -> None:
    """A Split's sizes after the input channels ``deleted`` are gone."""
    proto_node, node = model.proto.graph.node[node_index], edit.nodes[node_index]
    before = _removed_before(deleted)
    sizes = [model.shapes[o][0] for o in proto_node.output]
    bounds = np.concatenate([[0], np.cumsum(sizes)]).tolist()
    new = np.array([sizes[k] - (before(bounds[k + 1]) - before(bounds[k])) for k in range(len(sizes))], np.int64)
    if default_opset(model.proto) >= 13:
        edit.set_input(node, 1, new, f"{proto_node.output[0]}_split")
        node.attributes.pop("num_outputs", None)  # opset 18: sizes as an input and num_outputs exclude each other
    else:
        node.attributes["split"] = ir.AttrInt64s("split", [int(v) for v in new])


def _recount_slice(edit, model: Model, node_index: int, deleted: set[int]) -> None:
    """A Slice's channel bounds after the input channels ``deleted`` are gone."""
    proto_node, node = model.proto.graph.node[node_index], edit.nodes[node_index]
    before = _removed_before(deleted)
    width = model.shapes[proto_node.input[0]][0]
    k, by_input = _slice_channel_entry(edit, proto_node, model)
    for attr, position in (("starts", 1), ("ends", 2)):
        values = np.array(attribute(proto_node, attr) if not by_input else edit.value(proto_node.input[position]))
        values = values.astype(np.int64)
        v = int(values[k])
        v = min(max(v + width if v < 0 else v, 0), width)
        values[k] = v - before(v)
        if by_input:
            edit.replace(node, proto_node.input[position], values)
        else:
            node.attributes[attr] = ir.AttrInt64s(attr, [int(x) for x in values])


def _slice_channel_entry(edit, node: onnx.NodeProto, model: Model) -> tuple[int, bool]:
    """Which entry of a Slice's starts/ends is the channel axis, and whether they are inputs (opset >= 10)."""
    by_input = attribute(node, "starts") is None
    rank = len(model.shapes[node.input[0]]) + 1
    if by_input:
        axes = edit.value(node.input[3]).tolist() if len(node.input) > 3 and node.input[3] else None
        count = len(edit.value(node.input[1]))
    else:
        axes, count = attribute(node, "axes"), len(attribute(node, "starts"))
    axes = [a % rank for a in (axes if axes is not None else range(count))]
    return axes.index(1), by_input


for _rule in (
    PassThroughRule(),
    ShapeOnlyRule(),
    ConvRule(),
    ConvTransposeRule(),
    TransposeRule(),
    SqueezeRule(),
    NormalizationRule(),
    QuantizeRule(),
    ElementwiseRule(),
    ConcatRule(),
    SplitRule(),
    SliceRule(),
    FlattenRule(),
    ReshapeRule(),
    DenseRule(),
    ReduceRule(),
    ResizeRule(),
    PadRule(),
):
    register_rule(_rule)
