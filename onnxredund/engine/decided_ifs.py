"""If nodes that the input's shape decides: their branch taken in place for the analysis, the If put back in a
pruned file.

Exporters write a test on a tensor's shape as an If when the shape is free in the file: pyannote's segmentation
model (PyTorch) runs its SincNet filterbank, its first and largest conv, in ``if waveforms.shape[1] == 1``, one
branch for mono audio and one that folds the channels into the batch. The convs of a branch are not the main
graph's: unseen by the analysis, they were left out without a word. Once ``input_shape`` fixes the sizes, the
condition is a constant (so is one computed from an input given with ``input_values``): :func:`take_decided_ifs`
evaluates it (one run at batch 1 and one at 2, which must agree), and puts the branch taken in place of the If,
its names kept unless they clash with the main graph's. The convs inside are then layers like any other.

The analysed model keeps, under a metadata key, each If it replaced and the outputs of the nodes that replaced it:
:func:`put_back_ifs` restores the If in a pruned model, so that the file still computes both branches as the
original did. The channel groups whose channels pass through the taken nodes are not pruned (their cut would have
to go into both branches); with them untouched, the If put back computes what the nodes did.
"""

from __future__ import annotations

import base64
import json
import logging
from typing import NamedTuple

import numpy as np
import onnx

from onnxredund.engine.runtime import Runner
from onnxredund.engine.surgery import cut
from onnxredund.errors import OnnxRedundError
from onnxredund.model import bodies, copy_model, data_dependent, data_inputs, outer_reads, shape_derived

__all__ = ["DecidedIf", "decided_ifs", "put_back_ifs", "take_decided_ifs", "taken_nodes"]

log = logging.getLogger(__name__)

_KEY = "onnxredund.decided_ifs"  # metadata of the analysed model: the Ifs replaced by their branch (JSON)


class DecidedIf(NamedTuple):
    """An If replaced by the branch its condition takes."""

    name: str
    branch: str  # "then" or "else"
    convs: int  # the convs in that branch

    def describe(self) -> str:
        convs = f", {self.convs} conv{'s' if self.convs != 1 else ''} inside" if self.convs else ""
        return f"{self.name!r} ({self.branch} branch{convs})"


def _records(proto: onnx.ModelProto) -> list[dict]:
    props = {p.key: p.value for p in proto.metadata_props}
    return json.loads(props[_KEY]) if _KEY in props else []


def decided_ifs(proto: onnx.ModelProto) -> list[DecidedIf]:
    """The Ifs :func:`take_decided_ifs` replaced in ``proto`` by their branch, in graph order."""
    return [DecidedIf(r["name"], r["branch"], r["convs"]) for r in _records(proto)]


def taken_nodes(proto: onnx.ModelProto) -> dict[str, DecidedIf]:
    """The outputs of the nodes that stand for a decided If in ``proto`` -> that If (their channels are not
    pruned)."""
    return {o: DecidedIf(r["name"], r["branch"], r["convs"]) for r in _records(proto) for o in r["outputs"]}


def _conditions(proto: onnx.ModelProto, sizes: dict[str, list]) -> dict[str, bool]:
    """The value of each main-graph If's condition that the fixed sizes and constants decide, by condition tensor
    (unnamed Ifs are not told apart by name)."""
    graph = proto.graph
    shaped = shape_derived(graph)
    dependent = data_dependent(graph)
    ifs = [n for n in graph.node if n.op_type == "If" and n.domain in ("", "ai.onnx")]
    wanted = sorted({n.input[0] for n in ifs if n.input[0] in shaped or n.input[0] not in dependent})
    if not wanted:
        return {}
    values = []
    for batch in (1, 2):  # a condition on the batch size is not decided by the sample's shape
        feeds = _zero_feeds(graph, sizes, batch)
        if feeds is None:
            return {}
        try:
            values.append(Runner.create(cut(proto, list(feeds), wanted), "cpu").run(feeds, wanted))
        except OnnxRedundError as e:
            log.debug("the Ifs' conditions were not evaluated at batch %d: %s", batch, e)
            return {}
    decided = {}
    for name, at_one, at_two in zip(wanted, *values, strict=True):
        if np.size(at_one) == 1 and np.array_equal(at_one, at_two):
            decided[name] = bool(np.asarray(at_one).ravel()[0])
    return decided


def _zero_feeds(graph: onnx.GraphProto, sizes: dict[str, list], batch: int) -> dict[str, np.ndarray] | None:
    """All-zero data inputs with ``batch`` on a free first axis (None where another axis is still free)."""
    feeds = {}
    for vi in data_inputs(graph):
        dims = list(sizes.get(vi.name) or [d.dim_value for d in vi.type.tensor_type.shape.dim])
        if dims and (not isinstance(dims[0], int) or dims[0] <= 0):
            dims[0] = batch
        if not all(isinstance(d, int) and d > 0 for d in dims):
            return None
        dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        feeds[vi.name] = np.zeros(dims, dtype)
    return feeds


def _b64(message) -> str:
    return base64.b64encode(message.SerializeToString()).decode()


def _condition(graph: onnx.GraphProto, tensor: str) -> tuple[list[str], list[str]]:
    """What computes an If's condition ``tensor`` from shapes and constants: its nodes in graph order and the
    initializers they read, each serialized (a pruned model's cleaning drops them once the If is gone; putting it
    back needs them). The data tensors whose shape it reads stay in any model."""
    producer = {o: i for i, n in enumerate(graph.node) for o in n.output if o}
    inits = {t.name: t for t in graph.initializer}
    dependent = data_dependent(graph) - shape_derived(graph)  # the values of the data, not their shapes
    needed, read, todo = set(), set(), [tensor]
    while todo:
        t = todo.pop()
        if t in producer and producer[t] not in needed and t not in dependent:
            needed.add(producer[t])
            todo += [x for x in [*graph.node[producer[t]].input, *outer_reads(graph.node[producer[t]])] if x]
        elif t in inits:
            read.add(t)
    return [_b64(graph.node[i]) for i in sorted(needed)], [_b64(inits[t]) for t in sorted(read)]


def _in_order(nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """``nodes`` in an order where each comes after what it reads (their order kept where it already is)."""
    produced = {o for n in nodes for o in n.output if o}
    ready, out, waiting = set(), [], list(nodes)
    while waiting:
        left = []
        for node in waiting:
            reads = {t for t in [*node.input, *outer_reads(node)] if t and t in produced}
            if reads <= ready:
                out.append(node)
                ready.update(o for o in node.output if o)
            else:
                left.append(node)
        if len(left) == len(waiting):  # a cycle, not ours to mend: the model's check says so
            return out + left
        waiting = left
    return out


def _all_names(graph: onnx.GraphProto) -> set[str]:
    names = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {o.name for o in graph.output}
    names |= {t for n in graph.node for t in [*n.input, *n.output] if t}
    for node in graph.node:
        for body in bodies(node):
            names |= _all_names(body)
    return names


def _renamed(node: onnx.NodeProto, names: dict[str, str]) -> onnx.NodeProto:
    out = onnx.NodeProto()
    out.CopyFrom(node)
    for field in (out.input, out.output):
        for j, t in enumerate(field):
            field[j] = names.get(t, t)
    return out


def _branch_nodes(if_node: onnx.NodeProto, branch: onnx.GraphProto, taken: set[str]):
    """The branch's nodes and initializers ready for the main graph, or None where a nested body reads a name
    that would have to be renamed. Its outputs are renamed to the If's; a name that clashes with ``taken`` (every
    name of the model) gets the If's name appended."""
    local = {t.name for t in branch.initializer} | {o for n in branch.node for o in n.output if o}
    produced = {o for n in branch.node for o in n.output if o}
    names, extra = {}, []
    for out, target in zip(branch.output, if_node.output, strict=True):
        if not target:
            continue
        if out.name in produced and out.name not in names:
            names[out.name] = target
        else:  # an outer tensor, an initializer or a repeated output: copied by an Identity
            extra.append((out.name, target))
    for name in sorted(local - set(names)):
        if name in taken:
            new, k = f"{name}__{if_node.name or 'If'}", 1
            while new in taken:
                new, k = f"{name}__{if_node.name or 'If'}_{k}", k + 1
            names[name] = new
            taken.add(new)
    if any(names.keys() & outer_reads(n) for n in branch.node):
        return None
    nodes = [_renamed(n, names) for n in branch.node]
    nodes += [
        onnx.helper.make_node("Identity", [names.get(src, src)], [dst], name=f"{if_node.name}__{dst}")
        for src, dst in extra
    ]
    initializers = []
    for t in branch.initializer:
        copy = onnx.TensorProto()
        copy.CopyFrom(t)
        copy.name = names.get(t.name, t.name)
        initializers.append(copy)
    return nodes, initializers


def take_decided_ifs(proto: onnx.ModelProto, sizes: dict[str, list]) -> onnx.ModelProto:
    """A copy of ``proto`` with each main-graph If whose condition the fixed sizes decide replaced by the branch
    taken (repeated for Ifs the branches bring); ``proto`` itself where none is. See the module docstring."""
    records = _records(proto)
    work = proto
    for _ in range(8):  # the Ifs a taken branch holds are decided in the next round
        decided = _conditions(work, sizes)
        if not decided:
            break
        work = copy_model(work) if work is proto else work
        graph, taken = work.graph, _all_names(work.graph)
        nodes, changed = [], False
        for node in graph.node:
            if node.op_type != "If" or node.input[0] not in decided:
                nodes.append(node)
                continue
            which = "then" if decided[node.input[0]] else "else"
            branch = next(a.g for a in node.attribute if a.name == f"{which}_branch")
            made = _branch_nodes(node, branch, taken)
            if made is None:
                nodes.append(node)
                continue
            inlined, initializers = made
            condition, condition_inits = _condition(graph, node.input[0])
            graph.initializer.extend(initializers)
            nodes += inlined
            records.append(
                {
                    "name": node.name or f"If->{node.output[0]}",  # unnamed: by its first output
                    "branch": which,
                    "convs": sum(n.op_type in ("Conv", "ConvTranspose") for n in branch.node),
                    "node": _b64(node),
                    "condition": condition,
                    "condition_initializers": condition_inits,
                    "outputs": [o for n in inlined for o in n.output if o],
                    "initializers": [t.name for t in initializers],
                }
            )
            changed = True
        if not changed:
            break
        copied = [onnx.NodeProto() for _ in nodes]
        for c, n in zip(copied, nodes, strict=True):
            c.CopyFrom(n)
        del graph.node[:]
        graph.node.extend(copied)
    if work is proto:
        return proto
    props = {p.key: p.value for p in work.metadata_props if p.key != _KEY}
    props[_KEY] = json.dumps(records)
    del work.metadata_props[:]
    onnx.helper.set_model_props(work, props)
    return work


def put_back_ifs(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``proto`` with each If :func:`take_decided_ifs` replaced put back where its nodes are, the nodes and the
    initializers it added gone, and no metadata key (a copy; ``proto`` where nothing was replaced). An If whose
    nodes are not all there any more (a cut went through them) stays replaced, said in a warning."""
    records = _records(proto)
    if not records:
        return proto
    work = copy_model(proto)
    graph = work.graph
    for record in reversed(records):  # an If taken from a branch of an earlier one goes back into it first
        outputs = set(record["outputs"])
        at = [i for i, n in enumerate(graph.node) if set(n.output) & outputs]
        if sum(len([o for o in graph.node[i].output if o]) for i in at) != len(outputs):
            log.warning(
                "the If %r stays replaced by its %s branch in the pruned model", record["name"], record["branch"]
            )
            continue
        original = onnx.NodeProto.FromString(base64.b64decode(record["node"]))
        nodes = [onnx.NodeProto() for _ in graph.node]
        for c, n in zip(nodes, graph.node, strict=True):
            c.CopyFrom(n)
        kept = [n for i, n in enumerate(nodes) if i not in set(at)]
        produced = {o for n in kept for o in n.output if o}
        condition = [onnx.NodeProto.FromString(base64.b64decode(b)) for b in record["condition"]]
        condition = [n for n in condition if not set(n.output) <= produced]  # a cleaning took them
        kept[at[0] : at[0]] = [*condition, original]
        del graph.node[:]
        graph.node.extend(_in_order(kept))
        present = {t.name for t in graph.initializer}
        for b in record["condition_initializers"]:
            tensor = onnx.TensorProto.FromString(base64.b64decode(b))
            if tensor.name not in present:
                graph.initializer.append(tensor)
        read = {t for n in graph.node for t in [*n.input, *outer_reads(n)] if t} | {o.name for o in graph.output}
        added = set(record["initializers"]) - read
        inits = [t for t in graph.initializer if t.name not in added]
        del graph.initializer[:]
        graph.initializer.extend(inits)
    props = {p.key: p.value for p in work.metadata_props if p.key != _KEY}
    del work.metadata_props[:]
    if props:
        onnx.helper.set_model_props(work, props)
    return work
