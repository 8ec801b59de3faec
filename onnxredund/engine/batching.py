"""Make a fixed batch dynamic where that is provably safe.

Many exports fix the batch to 1, often with Reshape shape constants that bake it in. We free the
input's batch dimension, turn a leading batch size in constant Reshape shapes into 0 ("copy the
input's dimension"), drop stale intermediate shapes, and then *check* the result: a batch of two
random samples must give the same outputs as two single-sample runs of the original model. If
anything differs, the original model is kept and samples run one at a time.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import numpy_helper

from onnxredund.engine.runtime import Runner
from onnxredund.errors import OnnxRedundError
from onnxredund.model import ConstantTable, attribute, copy_model

__all__ = ["make_batch_dynamic", "rebatch"]

log = logging.getLogger(__name__)

_CHECK_BATCH = 2


def rebatch(proto: onnx.ModelProto, input_name: str, batch: int) -> onnx.ModelProto:
    """Copy of ``proto`` with a free batch dimension ``N`` (the check is :func:`make_batch_dynamic`'s)."""
    out = copy_model(proto)
    graph = out.graph
    for vi in [*(i for i in graph.input if i.name == input_name), *graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if len(dims) and dims[0].dim_value == batch:
            dims[0].Clear()
            dims[0].dim_param = "N"
    del graph.value_info[:]
    consts = ConstantTable(graph)
    for i, node in enumerate(graph.node):
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] not in consts:
            continue
        if attribute(node, "allowzero", 0):
            continue
        shape = np.array(consts[node.input[1]], copy=True)
        if shape.ndim == 1 and shape.size and shape[0] == batch:
            shape[0] = 0
            name = f"{node.input[1]}__dynamic_batch_{i}"
            graph.initializer.append(numpy_helper.from_array(shape.astype(np.int64), name))
            node.input[1] = name
    return out


def _outputs(proto: onnx.ModelProto, input_name: str, x: np.ndarray) -> list[np.ndarray]:
    return Runner.create(proto, "cpu").run({input_name: x})


def make_batch_dynamic(proto: onnx.ModelProto, input_name: str, dims: list) -> tuple[onnx.ModelProto, bool]:
    """Return ``(model, batch_dynamic)``; see the module docstring."""
    batch = dims[0]
    if not isinstance(batch, int) or batch <= 0:
        return proto, True
    candidate = rebatch(proto, input_name, batch)
    rng = np.random.default_rng(0)
    x = rng.random((_CHECK_BATCH * batch, *dims[1:]), dtype=np.float32)
    try:
        together = _outputs(candidate, input_name, x)
        apart = [_outputs(proto, input_name, x[i : i + batch]) for i in range(0, len(x), batch)]
        ok = all(
            np.allclose(t, np.concatenate([a[k] for a in apart]), rtol=1e-4, atol=1e-5) for k, t in enumerate(together)
        )
    except (OnnxRedundError, ValueError) as e:
        log.debug("rebatching failed: %s", e)
        ok = False
    if ok:
        log.info("batch fixed to %d in the model: made dynamic (checked against per-sample runs)", batch)
        return candidate, True
    log.warning("batch fixed to %d and cannot be freed safely: running %d sample(s) at a time", batch, batch)
    return proto, False
