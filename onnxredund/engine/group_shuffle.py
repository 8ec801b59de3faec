"""Channel shuffling of a channel group at its consumers: what the ``shuffle`` pruning criterion measures.

The paper shuffles one input channel of one conv across the samples of a mini-batch. A group's channel
may be read by several consumers (the convs after a residual stream, a dense layer after a Flatten),
so here every consumer's input gets its copy of the channel shuffled, with the same permutation: for
each consumer input T, ``T' = T + mask * (T[perm] - T)`` where ``mask`` selects the channel (its block of
features for a dense consumer), and the consumers read T'. ``perm`` and the masks are inputs of the
model, so one session serves every channel of the group.

The part of the network before the consumer inputs runs once per batch (the clean model, which also
exposes what the rest needs); only the rest, from the consumer inputs on, runs once per channel.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir

from onnxredund.engine.channel_groups import ChannelGroup
from onnxredund.engine.ir_edit import to_ir, to_proto
from onnxredund.engine.runtime import Runner
from onnxredund.engine.surgery import cut, expose_outputs
from onnxredund.model import Model, data_dependent

__all__ = ["GroupShuffle"]

PERM = "onnxredund_perm"


def _mask_name(k: int) -> str:
    return f"onnxredund_mask_{k}"


class GroupShuffle:
    """Runs the model with one channel of ``group`` shuffled at every consumer input."""

    def __init__(self, model: Model, group: ChannelGroup, device: str = "auto") -> None:
        self.model, self.group = model, group
        graph = model.proto.graph
        self.tensors = list(dict.fromkeys(c.tensor for c in group.consumers))
        # each tensor's float type, its consumers' weights' (float16 in a model converted to half precision)
        weights = {c.tensor: model.constant(graph.node[c.node].input[1]) for c in group.consumers}
        self.kinds = {t: np.float32 if w is None else w.dtype for t, w in weights.items()}
        after = data_dependent(graph, self.tensors)
        rest = [n for n in graph.node if any(t in after for t in n.input)]
        made_by_rest = {o for n in rest for o in n.output}
        data = data_dependent(graph)
        self.frontier = list(dict.fromkeys(t for n in rest for t in n.input if t in data and t not in made_by_rest))
        self.inputs = {i.name for i in model.inputs}
        self.changed = [o for o in model.output_names if o in after]
        exposed = [t for t in self.frontier if t not in self.inputs]
        self.clean = Runner.create(expose_outputs(model.proto, exposed), device, derived=True)
        self.suffix = Runner.create(self._suffix_model(), device, derived=True)

    def _suffix_model(self) -> onnx.ModelProto:
        model = to_ir(self.model.proto)
        graph = model.graph
        nodes = list(graph)
        values = ir.convenience.create_value_mapping(graph, include_subgraphs=False)
        perm = _input(PERM, ir.DataType.INT64, ["N"])
        graph.inputs.append(perm)
        for k, t in enumerate(self.tensors):
            shape = self.model.shapes[t]
            kind = ir.DataType.from_numpy(np.dtype(self.kinds[t]))
            mask = _input(_mask_name(k), kind, [1, shape[0]] + [1] * (len(shape) - 1))
            graph.inputs.append(mask)
            clean, new = values[t], f"{t}__shuffled"
            gathered = ir.node("Gather", [clean, perm], {"axis": 0}, name=f"{new}_g")
            delta = ir.node("Sub", [gathered.outputs[0], clean], name=f"{new}_d")
            masked = ir.node("Mul", [delta.outputs[0], mask], name=f"{new}_m")
            shuffled = ir.node("Add", [clean, masked.outputs[0]], name=new)
            steps = [gathered, delta, masked, shuffled]
            for step in steps:
                step.outputs[0].name = step.name
            if clean.producer() is not None:
                graph.insert_after(clean.producer(), steps)
            else:
                graph.insert_before(nodes[0], steps)
            for reader in {nodes[c.node] for c in self.group.consumers}:
                for j, value in enumerate(reader.inputs):
                    if value is clean:
                        reader.replace_input_with(j, shuffled.outputs[0])
        inputs = [*self.frontier, PERM, *(_mask_name(k) for k in range(len(self.tensors)))]
        return cut(to_proto(model), inputs, self.changed)

    def masks(self, channel: int) -> dict[str, np.ndarray]:
        """The mask inputs selecting group channel ``channel``."""
        feeds = {}
        for k, t in enumerate(self.tensors):
            shape = self.model.shapes[t]
            m = np.zeros((1, shape[0]) + (1,) * (len(shape) - 1), self.kinds[t])
            for c in self.group.consumers:
                if c.tensor == t:
                    m[0, c.indices([channel])] = 1.0
            feeds[_mask_name(k)] = m
        return feeds

    def run_clean(self, feeds: dict[str, np.ndarray]) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
        """The model's outputs on one batch, and what the shuffled runs of that batch start from."""
        names = self.model.output_names
        exposed = [t for t in self.frontier if t not in self.inputs]
        values = self.clean.run(feeds, names + exposed)
        start = dict(zip(exposed, values[len(names) :], strict=True))
        start.update({t: feeds[t] for t in self.frontier if t in self.inputs})
        return values[: len(names)], start

    def outputs(self, clean: list[np.ndarray], start: dict[str, np.ndarray], channel: int, perm: np.ndarray):
        """The model's outputs with ``channel`` shuffled by ``perm`` (outputs it cannot reach stay clean)."""
        changed = dict(zip(self.changed, self.suffix.run({**start, **self.masks(channel), PERM: perm}), strict=True))
        return [changed.get(name, value) for name, value in zip(self.model.output_names, clean, strict=True)]


def _input(name: str, dtype: ir.DataType, shape: list) -> ir.Value:
    return ir.Value(name=name, type=ir.TensorType(dtype), shape=ir.Shape(shape))
