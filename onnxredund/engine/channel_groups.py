"""Channel dependency groups: for every conv's output channels, everything that must shrink with them.

Channel c of a conv's output travels through the graph; every tensor that carries it has it on axis 1,
at some offset (after a Concat), possibly as a block of positions (after a Flatten). Removing c means
slicing, at every place it reaches: the conv's kernel row and bias; BatchNormalization parameters and
per-channel constants of elementwise ops; the input channel of every consumer conv (a depthwise consumer
loses its own output channel too, which travels on); the input rows of a transposed conv's weight; the
block of rows of a Gemm/MatMul after a Flatten or a Reshape (rows at stride C after a channels-last
Transpose, as Keras heads flatten); the size of a Split part; the feature count of a Reshape constant; an
entry of a Resize's sizes. A transposed conv's output channels (its weight's axis 1) start a group too. Tensors that
are combined elementwise (a residual Add, a squeeze-excitation Mul) tie their channels: all their
producers form one group and drop the same indices. Anything not understood makes the group
unprunable, with the reason.

:func:`channel_groups` finds the groups of a model; :class:`Slicing` lists what removing channels of
a group slices; :func:`remove_channels` (in :mod:`.pruning`) applies them.
"""

from __future__ import annotations

import dataclasses
from collections import ChainMap
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxredund.engine.runtime import Runner
from onnxredund.engine.surgery import cut
from onnxredund.model import (
    ACTIVATION_OPS,
    ConstantTable,
    Model,
    attribute,
    data_dependent,
    default_opset,
    outer_reads,
)

__all__ = ["ChannelGroup", "Consumer", "Segment", "Slicing", "channel_groups", "constant_values", "node_label"]

_PASS_THROUGH = ACTIVATION_OPS | {
    "Identity", "Dropout", "Cast", "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool",
    "Neg", "Abs", "Sqrt", "Exp", "Log", "Floor", "Ceil", "Round", "Reciprocal", "Erf",
}  # fmt: skip
_BINARY = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Pow", "PRelu", "Sum", "Mean"}


@dataclass(frozen=True)
class Segment:
    """Channels of one group inside a tensor: group channels ``first .. first + length - 1``; channel c is the
    axis-1 entries ``offset + (c - first) * block + j``, ``j < block`` (``block`` is 1 in a map, the positions
    per channel in features after a Flatten; ``first`` is not 0 after a Split or Slice took part of a group).
    With ``step`` > 1 a channel's positions interleave with the others' (a channels-last map flattened, as Keras
    exports a Flatten): channel c is the entries ``offset + (c - first) + j * step``, ``j < block``."""

    group: int
    offset: int
    length: int
    block: int = 1
    first: int = 0
    step: int = 1

    @property
    def span(self) -> int:
        return self.length * self.block

    def indices(self, channels) -> np.ndarray:
        """The axis-1 entries that group channels ``channels`` are in the tensor (those outside it: none)."""
        return _indices(self.offset, self.block, self.first, self.length, channels, self.step)


@dataclass(frozen=True)
class Slicing:
    """One thing to cut when channels of a group go: the indices ``offset + c * block + j`` (``j < block``)
    of every removed group channel ``c``, at node ``node`` (its index in the graph).

    Attributes:
        kind: "tensor": delete those indices of constant ``name`` along ``axis``; "reshape": entry ``axis`` of
            the Reshape shape constant (or Resize sizes) ``name`` loses one per index; "flatten": the Reshape's
            computed shape ``name`` becomes the constant ``[0, -1]``; "channels": the Split or Slice node reads
            input channels and those indices of its input ``name`` are gone (its sizes or bounds are recounted).
        role: what it is, for the plan: "producer", "bias", "norm", "constant", "consumer", "dense",
            "depthwise", "reshape", "resize", "split", "slice".
    """

    kind: str
    node: int
    name: str
    axis: int
    offset: int
    block: int
    role: str
    first: int = 0
    length: int = 0
    step: int = 1

    def indices(self, channels) -> np.ndarray:
        """The indices removing group channels ``channels`` deletes (those outside this cut's range: none)."""
        return _indices(self.offset, self.block, self.first, self.length, channels, self.step)


def _indices(offset: int, block: int, first: int, length: int, channels, step: int = 1) -> np.ndarray:
    c = np.asarray(sorted(channels), dtype=np.int64)
    c = c[(c >= first) & (c < first + length)].reshape(-1, 1)
    pitch = block if step == 1 else 1  # contiguous blocks, or positions interleaved at ``step``
    return (offset + (c - first) * pitch + np.arange(block) * step).ravel()


@dataclass(frozen=True)
class Consumer:
    """A conv (groups = 1), transposed conv or dense layer that reads a group's channels: where they are zeroed
    for the check by values, and where compensation goes (not into a transposed conv: ``kind`` "transposed").

    ``tensor`` is its input; it reads group channels ``first .. first + length - 1``, channel c as the axis-1
    entries ``offset + (c - first) * block + j`` (``block``: 1 for a conv, positions per channel for dense).
    """

    node: int
    kind: str
    tensor: str
    offset: int
    block: int
    first: int
    length: int
    step: int = 1

    def reads(self, channel: int) -> bool:
        return self.first <= channel < self.first + self.length

    def indices(self, channels) -> np.ndarray:
        """The entries of ``tensor`` that group channels ``channels`` are (those it does not read: none)."""
        return _indices(self.offset, self.block, self.first, self.length, channels, self.step)


@dataclass
class ChannelGroup:
    """Output channels of one or more convs that must go together.

    Attributes:
        producers: the conv layers whose output channels these are.
        channels: how many.
        slicings: what removing channels cuts.
        consumers: the convs and dense layers that read the channels (where compensation goes).
        reason: why the group cannot be pruned (None when it can).
        consumer_names: the consumers' names, for people.
        tensors: every tensor that carries the group's channels -> where they sit in it (segments, in the
            group's channels): what a check of a cut by values compares, tensor by tensor.
    """

    index: int
    producers: list[str]
    channels: int
    slicings: list[Slicing] = field(default_factory=list)
    consumers: list[Consumer] = field(default_factory=list)
    reason: str | None = None
    consumer_names: list[str] = field(default_factory=list)
    tensors: dict[str, list[Segment]] = field(default_factory=dict)

    @property
    def prunable(self) -> bool:
        return self.reason is None

    def to_dict(self) -> dict:
        return {
            "index": self.index,
            "producers": list(self.producers),
            "channels": self.channels,
            "prunable": self.prunable,
            "reason": self.reason,
            "consumers": list(self.consumer_names),
            "cuts": len(self.slicings),
        }


def node_label(graph: onnx.GraphProto, index: int) -> str:
    """A node's name, or its op and first output where it has none."""
    node = graph.node[index]
    return node.name or f"{node.op_type}:{node.output[0]}"


class _Groups:
    """Union-find over provisional groups, with the cuts and reasons gathered on the way.

    Ties may be partial (a residual Add of half a group, after a Split, with another conv's output): channel
    c of provisional group g is channel ``c + shift`` of its root's, where ``shift`` adds up along the path.
    """

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.shift: list[int] = []
        self.groups: list[ChannelGroup] = []

    def new(self, producer: str, channels: int) -> int:
        self.parent.append(len(self.parent))
        self.shift.append(0)
        self.groups.append(ChannelGroup(len(self.groups), [producer], channels))
        return len(self.groups) - 1

    def find(self, g: int) -> tuple[int, int]:
        """The root of g and the shift of g's channels into the root's."""
        shift = 0
        while self.parent[g] != g:
            shift += self.shift[g]
            g = self.parent[g]
        return g, shift

    def tie(self, a: int, first_a: int, b: int, first_b: int) -> bool:
        """Channel ``first_a + i`` of a is channel ``first_b + i`` of b; False where that contradicts earlier ties."""
        (ra, sa), (rb, sb) = self.find(a), self.find(b)
        shift = first_a + sa - first_b - sb  # where rb's channels sit in ra's
        if ra == rb:
            return shift == 0
        self.parent[rb], self.shift[rb] = ra, shift
        return True

    def refuse(self, g: int, reason: str) -> None:
        root = self.groups[self.find(g)[0]]
        if root.reason is None:
            root.reason = reason


def constant_values(model: Model) -> Mapping[str, np.ndarray]:
    """Every constant tensor: initializers, Constant nodes, and the tensors nodes compute from constants
    alone that data-dependent nodes read (a bias reshaped by a Reshape node, as Paddle exports it),
    evaluated once by onnxruntime."""
    graph = model.proto.graph
    table = ConstantTable(graph)
    dependent = data_dependent(graph)
    computed = {o for n in graph.node for o in n.output if o and o not in dependent and o not in table}
    wanted = sorted({t for n in graph.node if any(o in dependent for o in n.output) for t in n.input if t in computed})
    if not wanted:
        return table
    values = Runner.create(cut(model.proto, [], wanted), "cpu", derived=True).run({}, wanted)
    return ChainMap(dict(zip(wanted, (np.asarray(v) for v in values), strict=True)), table)


def _ints(
    model: Model, constants: Mapping[str, np.ndarray], node: onnx.NodeProto, attr: str, position: int
) -> list[int] | None:
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


class _Walker:
    """Follows every conv's output channels through the graph in order (see the module docstring)."""

    def __init__(self, model: Model) -> None:
        self.model, self.graph = model, model.proto.graph
        self.constants = constant_values(model)
        self.groups = _Groups()
        self.maps: dict[str, list[Segment]] = {}
        self.outputs = {o.name for o in self.graph.output}
        self.last: dict[str, int] = {}  # channels-last tensors (after a Transpose) -> their channel count
        self.i = 0

    # -- bookkeeping --------------------------------------------------------------------------------
    def _label(self) -> str:
        return node_label(self.graph, self.i)

    def _cut(self, kind: str, name: str, axis: int, s: Segment, role: str) -> None:
        self.groups.groups[s.group].slicings.append(
            Slicing(kind, self.i, name, axis, s.offset, s.block, role, s.first, s.length, s.step)
        )

    def _consumer(self, kind: str, tensor: str, s: Segment) -> None:
        self.groups.groups[s.group].consumers.append(
            Consumer(self.i, kind, tensor, s.offset, s.block, s.first, s.length, s.step)
        )

    def _refuse_all(self, tensors: list[str], reason: str) -> None:
        for t in tensors:
            for s in self.maps[t]:
                self.groups.refuse(s.group, reason)

    def _rank(self, tensor: str) -> int:
        """The rank of a tensor with its batch (0 when its shape is unknown)."""
        shape = self.model.shapes.get(tensor)
        return 0 if shape is None else len(shape) + 1

    # -- the walk -----------------------------------------------------------------------------------
    def run(self) -> list[ChannelGroup]:
        layer_by_node = {l.node_index: l for l in self.model.layers}
        for i, node in enumerate(self.graph.node):
            self.i = i
            carried = [t for t in node.input if t in self.maps]
            captured = sorted(t for t in outer_reads(node) if t in self.maps)
            if captured:
                self._refuse_all(
                    captured,
                    f"they are read inside the body of {node.op_type} {self._label()!r}, which is not followed",
                )
            elif carried:
                self._through(node, carried)
            if node.output[0] in self.maps:
                continue  # a depthwise conv's output channels continue its input's
            if node.op_type == "ConvTranspose":
                self._start_transposed(node)
            elif i in layer_by_node:
                self._start(node, layer_by_node[i])
        for tensor, segments in self.maps.items():
            if tensor in self.outputs:
                for s in segments:
                    self.groups.refuse(s.group, f"its channels reach the graph output {tensor!r}")
        return self._merged()

    def _start(self, node: onnx.NodeProto, layer) -> None:
        """A conv whose output channels start a new group."""
        g = self.groups.new(layer.name, layer.out_channels)
        if node.input[1] not in self.constants:
            self.groups.refuse(g, f"conv {layer.name!r} has computed weights")
        elif int(attribute(node, "group", 1)) != 1:
            self.groups.refuse(g, f"conv {layer.name!r} is grouped ({attribute(node, 'group')} groups)")
        whole = Segment(g, 0, layer.out_channels)
        self._cut("tensor", node.input[1], 0, whole, "producer")
        if len(node.input) > 2 and node.input[2]:
            self._cut("tensor", node.input[2], 0, whole, "bias")
        self.maps[node.output[0]] = [whole]

    def _start_transposed(self, node: onnx.NodeProto) -> None:
        """A transposed conv (weight (C_in, C_out / groups, *k)) whose output channels start a new group."""
        label = self._label()
        weight = self.constants.get(node.input[1]) if node.input[1] in self.constants else None
        if weight is None:
            g = self.groups.new(label, self.model.shapes.get(node.output[0], (0,))[0])
            self.groups.refuse(g, f"transposed conv {label!r} has computed weights")
            return
        groups = int(attribute(node, "group", 1))
        g = self.groups.new(label, weight.shape[1] * groups)
        if groups != 1:
            self.groups.refuse(g, f"transposed conv {label!r} is grouped ({groups} groups)")
        whole = Segment(g, 0, weight.shape[1] * groups)
        self._cut("tensor", node.input[1], 1, whole, "producer")
        if len(node.input) > 2 and node.input[2]:
            self._cut("tensor", node.input[2], 0, whole, "bias")
        self.maps[node.output[0]] = [whole]

    def _through(self, node: onnx.NodeProto, carried: list[str]) -> None:
        op = node.op_type
        last = [t for t in carried if t in self.last]
        if last and op not in ("Flatten", "Reshape", "Transpose"):
            self._refuse_all(carried, f"they are channels-last after a Transpose and reach {op} {self._label()!r}")
            return
        handler = {
            "Conv": self._conv,
            "ConvTranspose": self._conv_transpose,
            "Transpose": self._transpose,
            "Squeeze": self._squeeze,
            "Unsqueeze": self._squeeze,
            "BatchNormalization": self._batchnorm,
            "InstanceNormalization": self._batchnorm,
            "Concat": self._concat,
            "Split": self._split,
            "Slice": self._slice,
            "Flatten": self._flatten,
            "Reshape": self._reshape,
            "Gemm": self._dense,
            "MatMul": self._dense,
            "ReduceMean": self._reduce,
            "ReduceSum": self._reduce,
            "ReduceMax": self._reduce,
            "ReduceMin": self._reduce,
            "ReduceL2": self._reduce,
            "Pad": self._pad,
            "Resize": self._resize,
            "Upsample": self._resize,
            "Clip": self._keep,
            "Shape": self._ignore,
            "Size": self._ignore,
        }.get(op)
        if op in _PASS_THROUGH:
            handler = self._keep
        elif op in _BINARY or op == "Where":
            handler = self._binary
        if handler is None:
            self._refuse_all(carried, f"its channels reach a {op} node ({self._label()!r}), which is not handled")
            return
        handler(node, carried)

    def _ignore(self, node, carried) -> None:
        """Ops that read only a tensor's shape; what they compute does not carry channels."""

    def _keep(self, node, carried) -> None:
        if node.input[0] not in carried:
            self._refuse_all(carried, f"they are a parameter of {node.op_type} {self._label()!r}")
            return
        self.maps[node.output[0]] = list(self.maps[node.input[0]])

    def _conv(self, node, carried) -> None:
        if node.input[0] not in carried:
            self._refuse_all(carried, f"they are the weights of conv {self._label()!r}")
            return
        segments = self.maps[node.input[0]]
        wshape = None if node.input[1] not in self.constants else self.constants[node.input[1]].shape
        groups = int(attribute(node, "group", 1))
        if wshape is None:
            self._refuse_all(carried, f"conv {self._label()!r} has computed weights")
        elif groups == 1:
            for s in segments:
                self._cut("tensor", node.input[1], 1, s, "consumer")
                self._consumer("conv", node.input[0], s)
        elif wshape[1] == 1 and wshape[0] == groups:  # depthwise: output channel c reads input channel c alone
            for s in segments:
                self._cut("tensor", node.input[1], 0, s, "depthwise")
                if len(node.input) > 2 and node.input[2]:
                    self._cut("tensor", node.input[2], 0, s, "bias")
            self.maps[node.output[0]] = list(segments)
        else:
            self._refuse_all(carried, f"grouped conv {self._label()!r} ({groups} groups) reads them")

    def _conv_transpose(self, node, carried) -> None:
        """A transposed conv reads input channel c through its weight's row c (axis 0), whatever it writes."""
        if node.input[0] not in carried:
            self._refuse_all(carried, f"they are the weights of transposed conv {self._label()!r}")
        elif node.input[1] not in self.constants:
            self._refuse_all(carried, f"transposed conv {self._label()!r} has computed weights")
        elif int(attribute(node, "group", 1)) != 1:
            self._refuse_all(carried, f"grouped transposed conv {self._label()!r} reads them")
        else:
            for s in self.maps[node.input[0]]:
                self._cut("tensor", node.input[1], 0, s, "consumer")
                self._consumer("transposed", node.input[0], s)

    def _transpose(self, node, carried) -> None:
        """Channels stay on axis 1 when a Transpose keeps axes 0 and 1; ``(0, 2, ..., 1)`` makes a map channels-
        last (followed only into a Flatten or Reshape to features, as Keras heads write it) and
        ``(0, r-1, 1, ..., r-2)`` makes it channels-first again."""
        rank = self._rank(node.input[0])
        perm = attribute(node, "perm", None)
        perm = list(perm) if perm is not None else list(reversed(range(rank)))
        was_last = node.input[0] in self.last
        to_last = rank > 2 and perm == [0, *range(2, rank), 1]
        to_first = rank > 2 and perm == [0, rank - 1, *range(1, rank - 1)]
        segments = self.maps[node.input[0]]
        if rank == 0 or any(s.block != 1 for s in segments):
            self._refuse_all(carried, f"Transpose {self._label()!r} moves them in a way not handled")
        elif not was_last and perm[:2] == [0, 1]:
            self._keep(node, carried)
        elif not was_last and to_last:
            self.maps[node.output[0]] = list(segments)
            self.last[node.output[0]] = self.model.shapes[node.input[0]][0]
        elif was_last and to_first:
            self.maps[node.output[0]] = list(segments)
        else:
            self._refuse_all(carried, f"Transpose {self._label()!r} moves them in a way not handled")

    def _squeeze(self, node, carried) -> None:
        """Squeeze/Unsqueeze of axes after the channels (a global pool's 1 x 1 before a dense layer)."""
        axes = _ints(self.model, self.constants, node, "axes", 1)
        rank = self._rank(node.output[0] if node.op_type == "Unsqueeze" else node.input[0])
        if node.input[0] not in carried or rank == 0 or not axes or any(a % rank in (0, 1) for a in axes):
            self._refuse_all(carried, f"{node.op_type} {self._label()!r} moves the batch or channel axis")
            return
        self._keep(node, carried)

    def _batchnorm(self, node, carried) -> None:
        params = [t for t in node.input[1:] if t]
        if node.input[0] not in carried or any(t not in self.constants for t in params):
            self._refuse_all(carried, f"{node.op_type} {self._label()!r} has computed parameters")
            return
        for s in self.maps[node.input[0]]:
            for t in params:
                self._cut("tensor", t, 0, s, "norm")
        self.maps[node.output[0]] = list(self.maps[node.input[0]])

    def _binary(self, node, carried) -> None:
        inputs = [t for t in node.input if t]
        data = [t for t in inputs if t not in self.constants]
        if node.op_type == "Where" and inputs[0] in carried:
            self._refuse_all(carried, f"they are the condition of Where {self._label()!r}")
            return
        if node.op_type == "Where":
            data = [t for t in data if t != inputs[0]]
        if any(t not in self.maps for t in data):
            self._refuse_all(
                carried, f"{node.op_type} {self._label()!r} mixes them with a tensor that carries no channels"
            )
            return
        first = self.maps[data[0]]
        for t in data[1:]:
            other = self.maps[t]
            if not self._aligned(first, other):
                self._refuse_all(carried, f"{node.op_type} {self._label()!r} combines channels laid out differently")
                return
            for a, b in zip(first, other, strict=True):
                if not self.groups.tie(a.group, a.first, b.group, b.first):
                    self._refuse_all(carried, f"{node.op_type} {self._label()!r} ties channels in two ways")
                    return
        for t in inputs:
            if t in self.constants:
                self._elementwise_constant(node, t, data[0], first)
        self.maps[node.output[0]] = list(first)

    @staticmethod
    def _aligned(a: list[Segment], b: list[Segment]) -> bool:
        """Two tensors combined elementwise tie their channels place for place: their segments must cover
        the same places."""
        return [(x.offset, x.length, x.block, x.step) for x in a] == [(y.offset, y.length, y.block, y.step) for y in b]

    def _elementwise_constant(self, node, name: str, tensor: str, segments: list[Segment]) -> None:
        """A constant operand with one value per channel is cut with them; one broadcast over them is not."""
        value = np.asarray(self.constants[name])
        rank = self._rank(node.output[0])
        if value.size == 1:
            return
        axis = value.ndim - (rank - 1)  # the constant's axis aligned with the tensor's axis 1
        if rank == 0 or value.ndim >= rank + 1 or axis < 0:
            self._refuse_all([tensor], f"constant {name!r} of {self._label()!r} does not follow the channels")
            return
        if value.shape[axis] == 1:
            return
        if value.shape[axis] != self.model.shapes[node.output[0]][0] or any(s.block != 1 for s in segments):
            self._refuse_all([tensor], f"constant {name!r} of {self._label()!r} does not follow the channels")
            return
        for s in segments:
            self._cut("tensor", name, axis, s, "constant")

    def _concat(self, node, carried) -> None:
        axis, rank = int(attribute(node, "axis", 0)), self._rank(node.output[0])
        widths = [self.model.shapes.get(t, (None,))[0] if t in self.model.shapes else None for t in node.input]
        if rank == 0 or axis % rank != 1 or None in widths:
            self._refuse_all(carried, f"Concat {self._label()!r} joins them along another axis (or unknown shapes)")
            return
        offset, segments = 0, []
        for t, width in zip(node.input, widths, strict=True):
            segments += [dataclasses.replace(s, offset=s.offset + offset) for s in self.maps.get(t, [])]
            offset += width
        self.maps[node.output[0]] = segments

    def _channel_window(self, node, carried, windows: list[tuple[str, int, int]], role: str) -> None:
        """Split/Slice on axis 1: each output reads channels [start, stop) of the input."""
        segments = self.maps[node.input[0]]
        for out, start, stop in windows:
            parts = []
            for s in segments:
                lo, hi = max(start, s.offset), min(stop, s.offset + s.span)
                if lo >= hi:
                    continue
                if s.step != 1 or (lo - s.offset) % s.block or (hi - s.offset) % s.block:
                    self._refuse_all(carried, f"{node.op_type} {self._label()!r} cuts through a channel's features")
                    return
                first = s.first + (lo - s.offset) // s.block
                parts.append(Segment(s.group, lo - start, (hi - lo) // s.block, s.block, first))
            self.maps[out] = parts
        for s in segments:
            self._cut("channels", node.input[0], 1, s, role)

    def _split(self, node, carried) -> None:
        axis, rank = int(attribute(node, "axis", 0)), self._rank(node.input[0])
        sizes = [self.model.shapes.get(o, (None,))[0] if o in self.model.shapes else None for o in node.output]
        if node.input[0] not in carried or rank == 0 or axis % rank != 1 or None in sizes:
            self._refuse_all(carried, f"Split {self._label()!r} splits them along another axis (or unknown shapes)")
            return
        bounds = np.concatenate([[0], np.cumsum(sizes)]).tolist()
        windows = [(o, bounds[k], bounds[k + 1]) for k, o in enumerate(node.output)]
        self._channel_window(node, carried, windows, "split")

    def _slice(self, node, carried) -> None:
        """Slice with constant bounds, step 1, on the channel axis only (other axes: channels pass through)."""
        starts = _ints(self.model, self.constants, node, "starts", 1)
        ends = _ints(self.model, self.constants, node, "ends", 2)
        axes = _ints(self.model, self.constants, node, "axes", 3)
        steps = _ints(self.model, self.constants, node, "steps", 4)
        rank, width = self._rank(node.input[0]), self.model.shapes.get(node.input[0], (0,))[0]
        if node.input[0] not in carried or starts is None or ends is None or rank == 0:
            self._refuse_all(carried, f"Slice {self._label()!r} has computed bounds")
            return
        axes = [a % rank for a in (axes or range(len(starts)))]
        if steps and any(s != 1 for s in steps):
            self._refuse_all(carried, f"Slice {self._label()!r} steps through them")
            return
        if 0 in axes:
            self._refuse_all(carried, f"Slice {self._label()!r} slices the batch")
            return
        if 1 not in axes:
            self._keep(node, carried)
            return
        k = axes.index(1)
        start, stop = (min(max(v + width if v < 0 else v, 0), width) for v in (starts[k], ends[k]))
        self._channel_window(node, carried, [(node.output[0], start, stop)], "slice")

    def _flatten(self, node, carried) -> None:
        shape = self.model.shapes.get(node.input[0])
        if int(attribute(node, "axis", 1)) != 1 or shape is None:
            self._refuse_all(carried, f"Flatten {self._label()!r} flattens from another axis")
            return
        self._to_features(node, shape)

    def _to_features(self, node, shape) -> None:
        segments = self.maps[node.input[0]]
        if node.input[0] in self.last:  # (N, ..., C) flattened: channel c at c, c + C, c + 2C, ...
            positions = int(np.prod(shape[:-1], dtype=np.int64))
            self.maps[node.output[0]] = [dataclasses.replace(s, block=positions, step=shape[-1]) for s in segments]
            return
        block = int(np.prod(shape[1:], dtype=np.int64))
        self.maps[node.output[0]] = [
            Segment(s.group, s.offset * block, s.length, s.block * block, s.first) for s in segments
        ]

    def _reshape(self, node, carried) -> None:
        """A Reshape to (N, C * positions) is a Flatten; a feature count in its shape constant shrinks. A shape
        computed at run time (Paddle's flatten: ``Concat(Shape(x)[:1], [-1 or F])``) is replaced by the
        constant ``[0, -1]``, the same Flatten at every batch size."""
        shape, out = self.model.shapes.get(node.input[0]), self.model.shapes.get(node.output[0])
        target = node.input[1] if len(node.input) > 1 else ""
        if (
            node.input[0] not in carried
            or shape is None
            or out is None
            or len(out) != 1
            or (target not in self.constants and not self._flattens(node, shape, out))
        ):
            self._refuse_all(carried, f"Reshape {self._label()!r} reshapes them in a way not handled")
            return
        if target not in self.constants:
            self._to_features(node, shape)
            for s in self.maps[node.output[0]]:
                self._cut("flatten", target, 1, s, "reshape")
            return
        values = self.constants[target]
        if values.ndim != 1 or len(values) != 2:
            self._refuse_all(carried, f"Reshape {self._label()!r} reshapes them in a way not handled")
            return
        self._to_features(node, shape)
        if values[1] > 0:
            for s in self.maps[node.output[0]]:
                self._cut("reshape", target, 1, s, "reshape")

    @staticmethod
    def _flattens(node, shape, out) -> bool:
        """Whether a Reshape whose shape is computed gives (N, every value of a sample), with 0 meaning copy."""
        return not attribute(node, "allowzero", 0) and out[0] == int(np.prod(shape, dtype=np.int64))

    def _dense(self, node, carried) -> None:
        """Gemm/MatMul after a Flatten: the rows (columns when transposed) of each channel's block."""
        weight = node.input[1]
        if node.input[0] not in carried or weight not in self.constants or attribute(node, "transA", 0):
            self._refuse_all(carried, f"{node.op_type} {self._label()!r} reads them in a way not handled")
            return
        if len(self.model.shapes.get(node.input[0], ())) != 1 or self.constants[weight].ndim != 2:
            self._refuse_all(carried, f"{node.op_type} {self._label()!r} reads a map, not features")
            return
        axis = 1 if node.op_type == "Gemm" and attribute(node, "transB", 0) else 0
        for s in self.maps[node.input[0]]:
            self._cut("tensor", weight, axis, s, "dense")
            self._consumer("dense", node.input[0], s)

    def _reduce(self, node, carried) -> None:
        axes = _ints(self.model, self.constants, node, "axes", 1)
        rank = self._rank(node.input[0])
        if rank == 0 or axes is None or any(a % rank in (0, 1) for a in axes):
            self._refuse_all(carried, f"{node.op_type} {self._label()!r} reduces over the channels")
            return
        self._keep(node, carried)  # with keepdims=0 the channels stay on axis 1 too (only later axes go)

    def _resize(self, node, carried) -> None:
        """Resize/Upsample that keeps the channel count: scales of 1 on the batch and channel axes; constant
        ``sizes`` (Resize's fourth input) lose one channel per channel removed."""
        rank = self._rank(node.input[0])
        old = node.op_type == "Upsample" or (default_opset(self.model.proto) or 11) < 11  # (X, scales)
        scales = _floats(self.constants, node, "scales", 1 if old else 2)
        sizes = node.input[3] if node.op_type == "Resize" and len(node.input) > 3 else ""
        if node.input[0] not in carried or rank == 0:
            self._refuse_all(carried, f"they are a parameter of {node.op_type} {self._label()!r}")
        elif sizes and sizes not in self.constants:
            self._refuse_all(carried, f"{node.op_type} {self._label()!r} has computed sizes")
        elif not sizes and scales is None:
            self._refuse_all(carried, f"{node.op_type} {self._label()!r} has computed scales")
        elif scales is not None and len(scales) and (len(scales) != rank or scales[0] != 1 or scales[1] != 1):
            self._refuse_all(carried, f"{node.op_type} {self._label()!r} scales the batch or the channels")
        else:
            self._keep(node, carried)
            if sizes:
                for s in self.maps[node.input[0]]:
                    self._cut("reshape", sizes, 1, s, "resize")

    def _pad(self, node, carried) -> None:
        pads = _ints(self.model, self.constants, node, "pads", 1)
        rank = self._rank(node.input[0])
        if rank == 0 or pads is None or len(pads) != 2 * rank or pads[1] or pads[1 + rank]:
            self._refuse_all(carried, f"Pad {self._label()!r} pads the channels")
            return
        self._keep(node, carried)

    # -- the groups ---------------------------------------------------------------------------------
    def _merged(self) -> list[ChannelGroup]:
        """One group per union of provisional groups: producers, cuts and consumers together, every member's
        channels shifted to where they sit in the union (which spans all of them, from 0)."""
        members: dict[int, list[tuple[ChannelGroup, int]]] = {}
        for g in self.groups.groups:
            root, shift = self.groups.find(g.index)
            members.setdefault(root, []).append((g, shift))
        merged_groups, placed = [], {}
        for root, parts in members.items():
            low = min(shift for _, shift in parts)
            high = max(shift + g.channels for g, shift in parts)
            merged = ChannelGroup(len(merged_groups), [], high - low, reason=self.groups.groups[root].reason)
            for g, shift in parts:
                moved = shift - low
                placed[g.index] = (merged.index, moved)
                merged.producers += [p for p in g.producers if p not in merged.producers]
                merged.slicings += [dataclasses.replace(s, first=s.first + moved) for s in g.slicings]
                merged.consumers += [dataclasses.replace(c, first=c.first + moved) for c in g.consumers]
                merged.reason = merged.reason or g.reason
            merged_groups.append(merged)
        for tensor, segments in self.maps.items():
            for s in segments:
                index, moved = placed[s.group]
                moved_segment = dataclasses.replace(s, group=index, first=s.first + moved)
                merged_groups[index].tensors.setdefault(tensor, []).append(moved_segment)
        for g in merged_groups:
            g.consumer_names = list(dict.fromkeys(node_label(self.graph, c.node) for c in g.consumers))
        return merged_groups


def channel_groups(model: Model) -> list[ChannelGroup]:
    """The channel dependency groups of ``model`` (see the module docstring), in the order of their first conv."""
    return _Walker(model).run()
