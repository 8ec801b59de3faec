"""Conv weights and biases an export computes in its graph from constants, folded to constants.

Some exports keep a parametrisation in the graph: a weight normalisation (``w = g * v / ||v||``: ReduceL2, Div,
Mul), a kernel reshaped or transposed at run time, a weight dequantized by hand. The kernel is a constant all the
same; :func:`fold_conv_parameters` computes it once (onnxruntime, on the subgraph that makes it) and writes it as
an initializer, so listing, impulses, shuffling and pruning see an ordinary conv. The numbers do not change; a
pruned file carries the folded kernels (its value check compares it with the folded model).

A parameter that depends on the data (a dynamic filter, or anything random) is not folded.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir

from onnxredund.engine.ir_edit import constant_value, remove_unused, to_ir, to_proto
from onnxredund.engine.runtime import Runner
from onnxredund.engine.surgery import cut
from onnxredund.model import ConstantTable, data_dependent, data_inputs
from onnxredund.model.layers import CONV_OPS

__all__ = ["computed_parameters", "fold_conv_parameters"]

_RANDOM_OPS = ("RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Bernoulli", "Multinomial")


def computed_parameters(proto: onnx.ModelProto) -> list[str]:
    """The weights and biases of the top-level convs that nodes compute from constants alone, in graph order."""
    graph = proto.graph
    constants = ConstantTable(graph)
    random = [o for n in graph.node if n.op_type in _RANDOM_OPS for o in n.output if o]
    dependent = data_dependent(graph, [i.name for i in data_inputs(graph)] + random)
    names = [
        t
        for node in graph.node
        if node.op_type in CONV_OPS and node.domain in ("", "ai.onnx")
        for t in node.input[1:3]
        if t and t not in constants and t not in dependent
    ]
    return list(dict.fromkeys(names))


def fold_conv_parameters(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """``proto`` with its convs' computed weights and biases as initializers (``proto`` itself when there are
    none: it is never changed), and the ops that computed them, each once."""
    names = computed_parameters(proto)
    if not names:
        return proto, []
    maker = cut(proto, [], names)
    values = Runner.create(maker, "cpu", optimize=False).run({}, names)
    model = to_ir(proto)
    graph = model.graph
    produced = {v.name: v for node in graph for v in node.outputs}
    for name, array in zip(names, values, strict=True):
        computed = produced[name]
        computed.name = f"{name}/computed"
        folded = constant_value(name, array)
        graph.register_initializer(folded)
        ir.convenience.replace_all_uses_with(computed, folded)
    remove_unused(model)
    return to_proto(model), list(dict.fromkeys(node.op_type for node in maker.graph.node))
