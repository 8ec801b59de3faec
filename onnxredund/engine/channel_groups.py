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

:func:`channel_groups` finds the groups of a model, walking the graph in order and asking the rule of each
op (:mod:`.op_rules`) how the channels pass; :class:`Slicing` lists what removing channels of a group slices;
:func:`remove_channels` (in :mod:`.pruning`) applies them.
"""

from __future__ import annotations

import dataclasses
from collections import ChainMap
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxredund.engine.channels import ChannelGroup, Consumer, ConsumerKind, Cut, Role, Segment, Slicing, node_label
from onnxredund.engine.decided_ifs import taken_nodes
from onnxredund.engine.given_inputs import given_names
from onnxredund.engine.op_rules import rule_for
from onnxredund.engine.runtime import Runner
from onnxredund.engine.surgery import cut
from onnxredund.model import ConstantTable, ConvLayer, Model, data_dependent, outer_reads, value_key

__all__ = [
    "ChannelGroup",
    "Consumer",
    "ConsumerKind",
    "Cut",
    "Role",
    "Segment",
    "Slicing",
    "channel_groups",
    "computed_constants",
    "constant_values",
    "node_label",
]


@dataclass
class _Provisional:
    """A group while the walk goes on: one producer's channels, what they cut, who reads them, why not."""

    index: int
    producer: str
    channels: int
    slicings: list[Slicing] = field(default_factory=list)
    consumers: list[Consumer] = field(default_factory=list)
    reason: str | None = None


class _Groups:
    """Union-find over provisional groups, with the cuts and reasons gathered on the way.

    Ties may be partial (a residual Add of half a group, after a Split, with another conv's output): channel
    c of provisional group g is channel ``c + shift`` of its root's, where ``shift`` adds up along the path.
    """

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.shift: list[int] = []
        self.groups: list[_Provisional] = []

    def new(self, producer: str, channels: int) -> int:
        self.parent.append(len(self.parent))
        self.shift.append(0)
        self.groups.append(_Provisional(len(self.groups), producer, channels))
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
    table = ConstantTable(model.proto.graph)
    computed = computed_constants(model.proto, table)
    return ChainMap(computed, table) if computed else table


def computed_constants(proto: onnx.ModelProto, table: ConstantTable | None = None) -> dict[str, np.ndarray]:
    """The tensors nodes compute from constants alone that data-dependent nodes read, evaluated by onnxruntime
    (``table``: the graph's :class:`ConstantTable`, where the caller has it)."""
    graph = proto.graph
    table = ConstantTable(graph) if table is None else table
    dependent = data_dependent(graph)
    computed = {o for n in graph.node for o in n.output if o and o not in dependent and o not in table}
    wanted = sorted({t for n in graph.node if any(o in dependent for o in n.output) for t in n.input if t in computed})
    if not wanted:
        return {}
    values = Runner.create(cut(proto, [], wanted), "cpu", derived=True).run({}, wanted)
    return dict(zip(wanted, (np.asarray(v) for v in values), strict=True))


class _Walker:
    """Follows every conv's output channels through the graph in order, asking each op's rule (the
    :class:`~onnxredund.engine.op_rules.Walk` its rules see)."""

    def __init__(self, model: Model) -> None:
        self.model, self.graph = model, model.proto.graph
        self.constants = constant_values(model)
        self.given = given_names(model.proto)  # the model's inputs given one value (--input-value)
        self.taken = taken_nodes(model.proto)  # the nodes that stand for an If the input's sizes decide
        self.weights: dict[tuple, int] = {}  # a conv's weights' values -> the group of the first conv with them
        self.groups = _Groups()
        self.maps: dict[str, list[Segment]] = {}
        self.outputs = {o.name for o in self.graph.output}
        self.last: dict[str, int] = {}  # channels-last tensors (after a Transpose) -> their channel count
        self.layers = {layer.node_index: layer for layer in model.layers}
        self.i = 0

    # -- what rules see and do ----------------------------------------------------------------------
    def label(self) -> str:
        return node_label(self.graph, self.i)

    def rank(self, tensor: str) -> int:
        shape = self.model.shapes.get(tensor)
        return 0 if shape is None else len(shape) + 1

    def layer_at(self) -> ConvLayer | None:
        return self.layers.get(self.i)

    def cut(self, kind: Cut, name: str, axis: int, s: Segment, role: Role) -> None:
        if name in self.given:  # the pruned file would ask for a shorter value than the original
            self.groups.refuse(s.group, f"they index the model's input {name!r} (given with `input_values`)")
        self.groups.groups[s.group].slicings.append(
            Slicing(kind, self.i, name, axis, s.offset, s.block, role, s.first, s.length, s.step)
        )

    def consumer(self, kind: ConsumerKind, tensor: str, s: Segment) -> None:
        self.groups.groups[s.group].consumers.append(
            Consumer(self.i, kind, tensor, s.offset, s.block, s.first, s.length, s.step)
        )

    def refuse(self, tensors: list[str], reason: str) -> None:
        for t in tensors:
            for s in self.maps[t]:
                self.groups.refuse(s.group, reason)

    def refuse_group(self, group: int, reason: str) -> None:
        self.groups.refuse(group, reason)

    def new_group(self, producer: str, channels: int) -> int:
        return self.groups.new(producer, channels)

    def keep(self, node: onnx.NodeProto, carried: list[str]) -> None:
        if node.input[0] not in carried:
            self.refuse(carried, f"they are a parameter of {node.op_type} {self.label()!r}")
            return
        self.maps[node.output[0]] = list(self.maps[node.input[0]])

    def tie(self, a: int, first_a: int, b: int, first_b: int) -> bool:
        return self.groups.tie(a, first_a, b, first_b)

    def same_weights(self, weight: str, group: int) -> None:
        value = np.ascontiguousarray(self.constants[weight])
        if value.size > 1 and (value == value.flat[0]).all():  # all zeros or ones (an untrained layer): not shared
            return
        first = self.weights.setdefault(value_key(value), group)
        if first != group:
            self.groups.tie(first, 0, group, 0)

    # -- the walk -----------------------------------------------------------------------------------
    def run(self) -> list[ChannelGroup]:
        for i, node in enumerate(self.graph.node):
            self.i = i
            carried = [t for t in node.input if t in self.maps]
            captured = sorted(t for t in outer_reads(node) if t in self.maps)
            rule = rule_for(node)
            if captured:
                where = f"{node.op_type} {self.label()!r}"
                self.refuse(captured, f"they are read inside the body of {where}, which is not followed")
            elif carried and rule is None:
                where = f"a {node.op_type} node ({self.label()!r})"
                self.refuse(carried, f"its channels reach {where}, which is not handled")
            elif carried and not rule.channels_last and any(t in self.last for t in carried):
                where = f"{node.op_type} {self.label()!r}"
                self.refuse(carried, f"they are channels-last after a Transpose and reach {where}")
            elif carried:
                rule.follow(self, node, carried)
            if rule is not None and node.output and node.output[0] not in self.maps:
                rule.start(self, node)  # a depthwise conv's output channels continue its input's: no new group
            decided = next((self.taken[o] for o in node.output if o in self.taken), None)
            if decided is not None:  # a pruned file puts the If back: a cut would have to go into both branches
                touched = [t for t in [*node.input, *node.output] if t in self.maps]
                self.refuse(touched, f"they pass through If {decided.name!r}, taken as its {decided.branch} branch")
        for tensor, segments in self.maps.items():
            if tensor in self.outputs:
                for s in segments:
                    self.groups.refuse(s.group, f"its channels reach the graph output {tensor!r}")
        return self._merged()

    # -- the groups ---------------------------------------------------------------------------------
    def _merged(self) -> list[ChannelGroup]:
        """One group per union of provisional groups: producers, cuts and consumers together, every member's
        channels shifted to where they sit in the union (which spans all of them, from 0)."""
        members: dict[int, list[tuple[_Provisional, int]]] = {}
        for g in self.groups.groups:
            root, shift = self.groups.find(g.index)
            members.setdefault(root, []).append((g, shift))
        placed = {}  # provisional group -> (its union's index, the shift of its channels in it)
        for index, parts in enumerate(members.values()):
            low = min(shift for _, shift in parts)
            placed.update({g.index: (index, shift - low) for g, shift in parts})
        tensors: list[dict[str, list[Segment]]] = [{} for _ in members]
        for tensor, segments in self.maps.items():
            for s in segments:
                index, moved = placed[s.group]
                tensors[index].setdefault(tensor, []).append(dataclasses.replace(s, group=index, first=s.first + moved))
        merged = []
        for index, (root, parts) in enumerate(members.items()):
            moved = {g.index: placed[g.index][1] for g, _ in parts}
            consumers = [dataclasses.replace(c, first=c.first + moved[g.index]) for g, _ in parts for c in g.consumers]
            reasons = [self.groups.groups[root].reason] + [g.reason for g, _ in parts]
            merged.append(
                ChannelGroup(
                    index=index,
                    producers=list(dict.fromkeys(g.producer for g, _ in parts)),
                    channels=max(moved[g.index] + g.channels for g, _ in parts),
                    slicings=[
                        dataclasses.replace(s, first=s.first + moved[g.index]) for g, _ in parts for s in g.slicings
                    ],
                    consumers=consumers,
                    reason=next((r for r in reasons if r is not None), None),
                    consumer_names=list(dict.fromkeys(node_label(self.graph, c.node) for c in consumers)),
                    tensors=tensors[index],
                )
            )
        return merged


def channel_groups(model: Model) -> list[ChannelGroup]:
    """The channel dependency groups of ``model`` (see the module docstring), in the order of their first conv."""
    return _Walker(model).run()
