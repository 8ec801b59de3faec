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
import onnx_ir as ir

from onnxredund.engine.ir_edit import constant_value, to_ir, to_proto
from onnxredund.engine.runtime import Runner
from onnxredund.errors import OnnxRedundError
from onnxredund.model import ConstantTable, data_inputs

__all__ = ["check_feeds", "make_batch_dynamic", "rebatch"]

log = logging.getLogger(__name__)

_CHECK_BATCH = 2


def rebatch(proto: onnx.ModelProto, inputs: list[str], batch: int) -> onnx.ModelProto:
    """Copy of ``proto`` with a free batch dimension ``N`` on ``inputs`` and the outputs (the check is
    :func:`make_batch_dynamic`'s)."""
    model = to_ir(proto)
    graph = model.graph
    for value in [*(v for v in graph.inputs if v.name in inputs), *graph.outputs]:
        dims = list(value.shape.dims) if value.shape is not None else []
        if dims and dims[0] == batch:
            value.shape = ir.Shape(["N", *dims[1:]])
        elif dims and isinstance(dims[0], int) and value.name not in inputs:  # the batch merged into it: (N x 256, 2)
            value.shape = ir.Shape([f"N_rows_{value.name}", *dims[1:]])
    consts = ConstantTable(proto.graph)
    for i, node in enumerate(list(graph)):
        shape_input = node.inputs[1] if node.op_type == "Reshape" and len(node.inputs) > 1 else None
        if shape_input is None or shape_input.name not in consts:
            continue
        allowzero = node.attributes.get("allowzero")
        if allowzero is not None and allowzero.as_int():
            continue
        shape = np.array(consts[shape_input.name], copy=True)
        if shape.ndim == 1 and shape.size and shape[0] == batch:
            shape[0] = 0
            value = constant_value(f"{shape_input.name}__dynamic_batch_{i}", shape.astype(np.int64))
            graph.register_initializer(value)
            node.replace_input_with(1, value)
    return to_proto(model, inner_shapes=False)


def check_feeds(proto: onnx.ModelProto, sizes: dict[str, list], batch: int) -> dict[str, np.ndarray]:
    """Seeded feeds of ``batch`` samples for every data input (uniform [0, 1) floats, zero integers)."""
    rng = np.random.default_rng(0)
    feeds = {}
    for vi in data_inputs(proto.graph):
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type))
        dims = sizes[vi.name]
        shape = (batch, *dims[1:]) if dims else ()
        feeds[vi.name] = rng.random(shape).astype(dtype) if dtype.kind == "f" else np.zeros(shape, dtype)
    return feeds


def _outputs(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return Runner.create(proto, "cpu").run(feeds)


def _slice(feeds: dict[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
    return {name: value[start:stop] if value.ndim else value for name, value in feeds.items()}


def make_batch_dynamic(proto: onnx.ModelProto, sizes: dict[str, list]) -> tuple[onnx.ModelProto, bool]:
    """Return ``(model, batch_dynamic)``; see the module docstring.

    Args:
        sizes: every data input's dimensions ``[batch, *sample]`` (``[]`` for scalars).
    """
    fixed = {name: dims[0] for name, dims in sizes.items() if dims and isinstance(dims[0], int) and dims[0] > 0}
    if not fixed:
        return proto, True
    batch = max(fixed.values())
    candidate = rebatch(proto, list(fixed), batch)
    feeds = check_feeds(proto, sizes, _CHECK_BATCH * batch)
    try:
        together = _outputs(candidate, feeds)
        apart = [_outputs(proto, _slice(feeds, i, i + batch)) for i in range(0, _CHECK_BATCH * batch, batch)]
        ok = len(set(fixed.values())) == 1 and all(
            np.allclose(t, np.concatenate([a[k] for a in apart]), rtol=1e-4, atol=1e-5) for k, t in enumerate(together)
        )
    except (OnnxRedundError, ValueError) as e:
        log.debug("rebatching failed: %s", e)
        ok = False
    if ok:
        log.info("batch fixed to %d in the model: made dynamic (checked against per-sample runs)", batch)
        return candidate, True
    if batch == 1:  # a larger fixed batch is the caller's error to say
        log.warning("batch fixed to 1 and cannot be freed safely: running 1 sample at a time")
    return proto, False
