"""The :class:`Model` record and the queries that describe a model without running it: its data input and
layout, the per-sample shape of every tensor, and which output holds class scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from onnxredund.errors import OnnxRedundError
from onnxredund.model.graph import ConstantTable, data_inputs, dims
from onnxredund.model.layers import ConvLayer

__all__ = ["Model", "classifier_output", "detect_layout", "select_input", "set_input_shape", "shape_table"]


@dataclass
class Model:
    """A validated model.

    Attributes:
        proto: the model, IR version <= 13, batch dynamic when ``batch_dynamic``.
        path: the file it came from (never written).
        input_name: the data input; sample_shape: its shape without the batch.
        output_names: the graph outputs; the first is the prediction head.
        layout: "NCHW" or "NHWC" (an input read through a Transpose to NCHW).
        layers: conv layers in graph order.
        batch_dynamic: whether batches of any size can run in one call.
        shapes: sample shape (no batch) of every tensor whose shape is known.
    """

    proto: onnx.ModelProto
    path: str
    input_name: str
    sample_shape: tuple[int, ...]
    output_names: list[str]
    layout: str
    layers: list[ConvLayer]
    batch_dynamic: bool
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    _constants: ConstantTable | None = field(default=None, repr=False, compare=False)

    def layer(self, key: str | int) -> ConvLayer:
        """Look a layer up by name or index; a miss lists the valid ones."""
        if isinstance(key, str) and key.strip().lstrip("-").isdigit():
            key = int(key)
        if isinstance(key, int):
            if 0 <= key < len(self.layers):
                return self.layers[key]
        else:
            for layer in self.layers:
                if layer.name == key:
                    return layer
        valid = ", ".join(f"{l.index}={l.name}" for l in self.layers)
        raise OnnxRedundError(f"no conv layer {key!r}; valid layers: {valid}")

    def pick_layers(self, keys: list[str | int]) -> list[ConvLayer]:
        """The layers named (or indexed) by ``keys``, each once, in the order first named."""
        picked = {}
        for key in keys:
            layer = self.layer(key.strip() if isinstance(key, str) else key)
            picked.setdefault(layer.index, layer)
        return list(picked.values())

    def constant(self, name: str) -> np.ndarray | None:
        """The value of a constant tensor (initializer, Constant node, Identity of one), or None."""
        if self._constants is None:
            self._constants = ConstantTable(self.proto.graph)
        return self._constants.get(name)


def classifier_output(model: Model) -> str | None:
    """The first graph output if it is (N, classes), else None (no accuracy or agreement)."""
    name = model.output_names[0]
    shape = model.shapes.get(name)
    return name if shape is not None and len(shape) == 1 else None


def select_input(proto: onnx.ModelProto, path: Path, input_shape: tuple[int, ...] | None) -> tuple[str, list]:
    """The data input's name and its dimensions ``[batch, *sample]`` with every sample size known.

    Raises:
        OnnxRedundError: not one float image input, or free sizes without ``input_shape``.
    """
    inputs = data_inputs(proto.graph)
    if len(inputs) != 1:
        names = [i.name for i in inputs]
        raise OnnxRedundError(f"{path} has {len(inputs)} data inputs {names}; onnxredund analyses single-input CNNs")
    vi = inputs[0]
    if vi.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise OnnxRedundError(f"input {vi.name!r} is not float32; onnxredund analyses float image models")
    shape = dims(vi)
    if shape is None or len(shape) != 4:
        raise OnnxRedundError(
            f"input {vi.name!r} has shape {shape}; onnxredund needs an image tensor N x C x H x W (or N x H x W x C)"
        )
    sample = shape[1:]
    if input_shape is not None:
        if len(input_shape) != 3:
            raise OnnxRedundError(f"--input-shape needs three sizes like 3x48x192, got {input_shape}")
        for want, have in zip(input_shape, sample, strict=True):
            if isinstance(have, int) and have > 0 and have != want:
                raise OnnxRedundError(f"--input-shape {input_shape} contradicts the model's fixed input {sample}")
        sample = list(input_shape)
    if any(not isinstance(d, int) or d <= 0 for d in sample):
        raise OnnxRedundError(
            f"input {vi.name!r} has free dimensions {shape}; pass --input-shape CxHxW (e.g. 3x224x224)"
        )
    return vi.name, [shape[0], *sample]


def set_input_shape(proto: onnx.ModelProto, name: str, sizes: list) -> None:
    """Write ``sizes`` into the graph input ``name`` in place (non-positive or symbolic sizes become 'N')."""
    vi = next(i for i in proto.graph.input if i.name == name)
    for d, v in zip(vi.type.tensor_type.shape.dim, sizes, strict=True):
        d.Clear()
        if isinstance(v, int) and v > 0:
            d.dim_value = v
        else:
            d.dim_param = "N"


def detect_layout(graph: onnx.GraphProto, input_name: str) -> str:
    """The input's layout: NHWC when it is only read through Transposes to NCHW, else NCHW."""
    consumers = [n for n in graph.node if input_name in n.input]
    if consumers and all(n.op_type == "Transpose" for n in consumers):
        perms = {tuple(a.ints) for n in consumers for a in n.attribute if a.name == "perm"}
        if perms == {(0, 3, 1, 2)}:
            return "NHWC"
    return "NCHW"


def shape_table(proto: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Per-sample shape (no batch) of every tensor whose sizes past the batch are all known in ``proto``."""
    g = proto.graph
    table = {}
    for vi in [*g.input, *g.value_info, *g.output]:
        shape = dims(vi)
        if shape and all(isinstance(d, int) and d > 0 for d in shape[1:]):
            table[vi.name] = tuple(shape[1:])
    return table
