"""Loading a model for analysis: read and validate it, free its batch where that is provably safe, and
find the shapes around every conv (by inference, or by one probe run where inference cannot tell).
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from onnxredund.engine.batching import make_batch_dynamic
from onnxredund.engine.runtime import probe_shapes
from onnxredund.errors import OnnxRedundError
from onnxredund.model import (
    Model,
    check_finite_weights,
    copy_model,
    describe_layers,
    detect_layout,
    infer_shapes,
    read_model_file,
    select_input,
    set_input_shape,
    shape_table,
    validate,
)

__all__ = ["load_model", "load_model_proto"]


def load_model(path: str | os.PathLike, *, input_shape: tuple[int, ...] | None = None) -> Model:
    """Load and validate an ONNX CNN; the file itself is never written.

    Args:
        path: the .onnx file (external data is read from its folder only).
        input_shape: (C, H, W) (or (H, W, C) for NHWC inputs) for inputs with free dimensions.

    Raises:
        OnnxRedundError: the file is not a runnable single-input image CNN.
    """
    return load_model_proto(read_model_file(path), name=str(path), input_shape=input_shape)


def load_model_proto(
    proto: onnx.ModelProto, *, name: str = "<memory>", input_shape: tuple[int, ...] | None = None
) -> Model:
    """Validate and describe a model already in memory (a copy is kept; ``proto`` is not changed)."""
    path = Path(name)
    proto = validate(copy_model(proto), path)
    input_name, sizes = select_input(proto, path, input_shape)
    set_input_shape(proto, input_name, sizes)
    if not any(n.op_type == "Conv" for n in proto.graph.node):
        raise OnnxRedundError(f"{path} has no Conv node; onnxredund analyses convolutional networks")
    check_finite_weights(proto, path)
    proto, batch_dynamic = make_batch_dynamic(proto, input_name, sizes)
    if not batch_dynamic and sizes[0] != 1:
        raise OnnxRedundError(
            f"{path} fixes its batch to {sizes[0]} and cannot be freed; re-export with batch 1 or free"
        )
    shapes = shape_table(infer_shapes(proto))
    conv_tensors = [t for n in proto.graph.node if n.op_type == "Conv" for t in (n.input[0], n.output[0])]
    if any(t not in shapes for t in conv_tensors):
        shapes.update(probe_shapes(proto, input_name, tuple(sizes[1:]), conv_tensors))
    return Model(
        proto=proto,
        path=str(path),
        input_name=input_name,
        sample_shape=tuple(sizes[1:]),
        output_names=[o.name for o in proto.graph.output],
        layout=detect_layout(proto.graph, input_name),
        layers=describe_layers(proto, shapes),
        batch_dynamic=batch_dynamic,
        shapes=shapes,
    )
