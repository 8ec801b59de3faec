"""Outputs whose shape depends on the values: the boxes a NonMaxSuppression keeps, the indices of a NonZero, the
steps of a decoder's Loop that stops when every sample has emitted its end token (SLANet's table structure).

Two runs of such an output cannot be compared element by element (a perturbation that adds a box shifts every
row after it), and where the data holds nothing to keep (noise into a detector) every run gives an empty tensor,
which any comparison calls unchanged. Such outputs are left out of every measurement, and the float tensors
that the first of those ops read (a detector's boxes and scores before its NMS) are measured in their place:
:func:`expose_measured` makes them outputs of the analysed model, and :func:`without_measured` takes them out
again before a model is written. Both are named by ``layers``.
"""

from __future__ import annotations

import onnx

from onnxredund.engine.surgery import expose_outputs
from onnxredund.model import copy_model, data_inputs, infer_shapes, outer_reads, shape_derived, without_marked

__all__ = ["DATA_SHAPED_OPS", "data_shaped_outputs", "expose_measured", "without_measured"]

#: ops whose output's size depends on their input's values (TopK's on a computed k is not among them)
DATA_SHAPED_OPS = frozenset({"NonMaxSuppression", "NonZero", "Compress", "Unique", "Loop"})
_FLOATS = frozenset(
    {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
)
_KEY = "onnxredund.measured_in_place"  # metadata of the analysed model: the tensors exposed, comma separated
_DEPTH = 4  # producers walked up from a non-float input (a mask's Greater) to the floats it compares


def data_shaped_outputs(proto: onnx.ModelProto) -> dict[str, list[str]]:
    """The graph outputs computed through an op of :data:`DATA_SHAPED_OPS` whose size shape inference cannot tell
    (past a batch the inputs share) -> the float tensors, computed from the data, that the first such ops read
    (walking up from an integer or boolean input to the floats it is computed from); an empty list where there
    are none."""
    graph = proto.graph
    if not any(n.op_type in DATA_SHAPED_OPS for n in graph.node):
        return {}
    producer = {o: n for n in graph.node for o in n.output if o}
    free = copy_model(proto)
    for output in free.graph.output:  # inferred, not declared: an exporter may name a box count like the batch
        output.type.tensor_type.ClearField("shape")
    typed = infer_shapes(free).graph
    elem = {vi.name: vi.type.tensor_type.elem_type for vi in [*typed.input, *typed.value_info, *typed.output]}
    inputs = data_inputs(graph)
    batch = {d.dim_param for vi in inputs for d in vi.type.tensor_type.shape.dim[:1] if d.dim_param}

    def sized_by_values(name: str) -> bool:  # a size past the batch unknown to inference (a NonMaxSuppression's)
        vi = next((o for o in typed.output if o.name == name), None)
        if vi is None or not vi.type.tensor_type.HasField("shape"):
            return True
        known = [
            d.HasField("dim_value") or (i == 0 and d.dim_param in batch)
            for i, d in enumerate(vi.type.tensor_type.shape.dim)
        ]
        return not all(known)

    from_data = {vi.name for vi in inputs}
    for node in graph.node:
        if any(t in from_data for t in node.input):
            from_data.update(o for o in node.output if o)

    def ancestors(tensor: str) -> list[onnx.NodeProto]:
        seen, stack, nodes = set(), [tensor], []
        while stack:
            t = stack.pop()
            node = producer.get(t)
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            nodes.append(node)
            stack.extend(node.input)
        return nodes

    shaped_only = shape_derived(graph)  # a zero state of the data's shape (ConstantOfShape) is not measured

    def floats(tensor: str, depth: int) -> list[str]:
        if tensor not in from_data or tensor in shaped_only:
            return []
        if elem.get(tensor) in _FLOATS:
            return [tensor]
        node = producer.get(tensor)
        if node is None or depth == 0:
            return []
        return [f for t in node.input for f in floats(t, depth - 1)]

    found = {}
    for out in graph.output:
        shaped = [n for n in ancestors(out.name) if n.op_type in DATA_SHAPED_OPS]
        if not shaped or not sized_by_values(out.name):  # a NonZero's indices scattered back into a whole map
            continue
        # the first such ops: none upstream of their inputs
        first = [n for n in shaped if not any(a.op_type in DATA_SHAPED_OPS for t in n.input for a in ancestors(t))]
        read = [t for n in first for t in _measured_reads(n)]
        found[out.name] = list(dict.fromkeys(f for t in read for f in floats(t, _DEPTH)))
    return found


def _measured_reads(node: onnx.NodeProto) -> list[str]:
    """What a data-shaped op reads that is measured in its place: a Loop's carried values and what its body reads
    from the graph (the encoder's features), not its step count or condition (a scalar for the whole batch)."""
    if node.op_type == "Loop":
        return [*node.input[2:], *sorted(outer_reads(node))]
    return list(node.input)


def expose_measured(proto: onnx.ModelProto, shaped: dict[str, list[str]]) -> onnx.ModelProto:
    """``proto`` with the tensors measured in place of ``shaped``'s outputs as graph outputs too, recorded in its
    metadata for :func:`without_measured` (``proto`` itself where there are none)."""
    have = {o.name for o in proto.graph.output}
    names = [t for t in dict.fromkeys(t for ts in shaped.values() for t in ts) if t not in have]
    if not names:
        return proto
    exposed = expose_outputs(proto, names)
    onnx.helper.set_model_props(exposed, {**{p.key: p.value for p in exposed.metadata_props}, _KEY: ",".join(names)})
    return exposed


def without_measured(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``proto`` without the outputs :func:`expose_measured` added (a copy, where it has any)."""
    return without_marked(proto, _KEY, "output")
