"""Graph edits on one ONNX IR (``onnx_ir``), with protobuf only at the edges.

Why onnx-ir (``benchmarks/ir_choice.py``, ResNet-50 with external data, best of three): it loads external
weights lazily (peak memory of a pruning-shaped edit 318 MiB, against 439 MiB for onnx-graphsurgeon and
362 MiB on bare protobuf) and edits fastest (0.13 s against 0.22 s and 0.19 s); its values carry use-lists
that include the nodes of If/Loop/Scan bodies reading a tensor from the outer scope, and its passes (unused
nodes, initializers as inputs) are small typed objects. It is what the PyTorch exporter and onnxscript
stand on.

An edit is ``to_ir(proto)`` -> changes -> :func:`to_proto`: the input ``ModelProto`` is never changed.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes.common import AddInitializersToInputsPass, RemoveUnusedNodesPass

from onnxredund.model import external_folder, external_tensors, set_external_folder

__all__ = [
    "Names",
    "all_nodes",
    "captured",
    "constant_value",
    "default_opset",
    "needed",
    "remove_unused",
    "replace_node",
    "to_ir",
    "to_proto",
]


_FOLDER = "onnxredund.external_folder"


def to_ir(proto: onnx.ModelProto) -> ir.Model:
    """The IR of ``proto`` (which stays as it is: the IR reads its tensors, never writes them). Where the
    weights live in external files, the folder they are read from is kept for :func:`to_proto`."""
    model = ir.from_proto(proto)
    folders = {external_folder(t) for t in external_tensors(proto)}
    if folders:
        model.meta[_FOLDER] = folders.pop()  # one folder: model loading refuses more
    return model


def to_proto(model: ir.Model, *, inner_shapes: bool = True) -> onnx.ModelProto:
    """The ModelProto of ``model``; without ``inner_shapes`` no value_info (after channels are cut the
    recorded shapes of inner tensors are stale, and onnx's inference finds them again). Weights that stayed in
    external files are read from the folder they were read from."""
    proto = ir.to_proto(model)
    if not inner_shapes:
        del proto.graph.value_info[:]
    folder = model.meta.get(_FOLDER)
    if folder:
        for tensor in external_tensors(proto):
            set_external_folder(tensor, folder)
    return proto


def all_nodes(graph: ir.Graph) -> Iterator[ir.Node]:
    """Every node of ``graph`` and of the graphs its nodes hold (If/Loop/Scan bodies), outer ones first."""
    return ir.traversal.RecursiveGraphIterator(graph)


def captured(node: ir.Node) -> list[ir.Value]:
    """The values of ``node``'s graph that the bodies of an If/Loop/Scan node read without listing them as the
    node's inputs (captured from the outer scope), in the order first read; none for other nodes."""
    found: dict[ir.Value, None] = {}
    for attr in node.attributes.values():
        if attr.type == ir.AttributeType.GRAPH:
            bodies = [attr.as_graph()]
        elif attr.type == ir.AttributeType.GRAPHS:
            bodies = list(attr.as_graphs())
        else:
            continue
        for body in bodies:
            for inner in all_nodes(body):
                found.update((v, None) for v in inner.inputs if v is not None and v.graph is node.graph)
    return list(found)


def needed(
    graph: ir.Graph, inputs: set[str], outputs: list[str], values: dict[str, ir.Value] | None = None
) -> list[ir.Node]:
    """The nodes of ``graph`` (in its order) that compute the tensors ``outputs`` from the tensors ``inputs``,
    the producers of what their bodies capture included (``values``: the graph's values by name, if at hand)."""
    values = values if values is not None else ir.convenience.create_value_mapping(graph, include_subgraphs=False)
    stack = [values[name] for name in outputs if name not in inputs and name in values]
    seen, found = set(stack), set()
    while stack:
        node = stack.pop().producer()
        if node is None or node in found:
            continue
        found.add(node)
        for value in [*node.inputs, *captured(node)]:
            if value is not None and value.name not in inputs and value not in seen:
                seen.add(value)
                stack.append(value)
    return [node for node in graph if node in found]


def default_opset(model: ir.Model) -> int:
    """The version of the default ("" or "ai.onnx") domain the model imports."""
    return int(model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1)))


def constant_value(name: str, array: np.ndarray) -> ir.Value:
    """A value holding ``array``, typed and shaped, to register as an initializer."""
    array = np.ascontiguousarray(array)
    return ir.Value(
        name=name,
        shape=ir.Shape(array.shape),
        type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
        const_value=ir.tensor(array, name=name),
    )


class Names:
    """Fresh tensor and node names that clash with none of a graph's, its subgraphs' included."""

    def __init__(self, graph: ir.Graph) -> None:
        self.taken = {v.name for v in graph.inputs} | set(graph.initializers)
        self.nodes = set()  # node names: onnxruntime refuses two nodes of one name
        for node in all_nodes(graph):
            self.taken |= {v.name for v in (*node.inputs, *node.outputs) if v is not None}
            self.nodes.add(node.name)

    def fresh(self, base: str) -> str:
        return _unique(base, self.taken, "")

    def node(self, base: str) -> str:
        """A fresh node name."""
        return _unique(base, self.nodes, "_")


def _unique(base: str, taken: set[str], separator: str) -> str:
    name, k = base, 1
    while name in taken:
        name, k = f"{base}{separator}{k}", k + 1
    taken.add(name)
    return name


def replace_node(graph: ir.Graph, node: ir.Node, new: list[ir.Node]) -> None:
    """``new`` (its last node's output standing for ``node``'s first) in ``node``'s place, under that output's name
    (the graph's outputs, value infos and the user's names stay)."""
    out, result = node.outputs[0], new[-1].outputs[0]
    graph.insert_before(node, new)
    for i, o in enumerate(graph.outputs):  # first: the IR does not move a graph output's uses
        if o is out:
            graph.outputs[i] = result
    ir.convenience.replace_all_uses_with(out, result)
    name = out.name
    graph.remove(node, safe=True)
    result.name = name
    result.type = result.type or out.type  # a graph output keeps its declared type and shape
    result.shape = result.shape or out.shape


def remove_unused(model: ir.Model) -> None:
    """Remove the nodes and initializers nothing reads (subgraphs' reads of outer tensors count), and the
    weights an old exporter listed as graph inputs once nothing reads them; a model of IR version < 4, where
    every initializer must be a graph input, keeps them listed."""
    RemoveUnusedNodesPass()(model)
    graph = model.graph
    outputs = set(graph.outputs)
    for value in [v for v in graph.inputs if v.is_initializer() and not v.uses() and v not in outputs]:
        graph.inputs.remove(value)
        del graph.initializers[value.name]
    if model.ir_version < 4:
        AddInitializersToInputsPass()(model)
