"""Where a channel group's channels sit in a tensor, what cutting them touches, and the groups themselves: the
plain data that :mod:`.channel_groups` finds, :mod:`.op_rules` speaks in and :mod:`.pruning` applies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import numpy as np
import onnx

__all__ = ["ChannelGroup", "Consumer", "ConsumerKind", "Cut", "Role", "Segment", "Slicing", "node_label"]


class _Named(str, Enum):
    """An enum whose members are their names as strings (equal to them, hashed alike, printed as them)."""

    def __str__(self) -> str:
        return self.value


class Cut(_Named):
    """What removing channels does to a tensor (see :class:`Slicing`)."""

    tensor = "tensor"
    reshape = "reshape"
    flatten = "flatten"
    channels = "channels"


class Role(_Named):
    """What a cut tensor is, for the plan and the criteria."""

    producer = "producer"
    bias = "bias"
    norm = "norm"
    constant = "constant"
    consumer = "consumer"
    dense = "dense"
    depthwise = "depthwise"
    reshape = "reshape"
    resize = "resize"
    split = "split"
    slice = "slice"


class ConsumerKind(_Named):
    """How a consumer reads a group's channels: a conv's input maps, a dense layer's features, or a transposed
    conv's input maps (compensation goes into the first two)."""

    conv = "conv"
    dense = "dense"
    transposed = "transposed"


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

    kind: Cut
    node: int
    name: str
    axis: int
    offset: int
    block: int
    role: Role
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
    kind: ConsumerKind
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


@dataclass(frozen=True)
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
    """A node's name, or, where it has none, its op and index in the graph (``Conv_3``: the name `layers` gives
    an unnamed conv)."""
    node = graph.node[index]
    return node.name or f"{node.op_type}_{index}"
