"""Inputs that are one value for the whole batch: a parameter of the model, not a sample.

Image-processing graphs take a strength or a threshold beside the image (an unsharp mask's ``amount`` [1], an
adaptive threshold's ``C`` [1], a low-light enhancer's ``exposure`` [1]); every sample of a batch is computed
with the same value, so such an input has no batch axis to slice, stack or shuffle. The user gives its value
(``--input-value NAME=V``): :func:`give_input_values` makes that value the input's initializer (its default, an
input the graph still declares), so that the analysed model reads it as a constant and every run, local or on a
Ray worker, feeds it the same value; :func:`without_given_values` takes the defaults out again before a model is
written, so that a pruned file still asks for the value as the original did.
"""

from __future__ import annotations

import numpy as np
import onnx

from onnxredund.errors import OnnxRedundError
from onnxredund.model import copy_model, data_inputs, marked_names, without_marked

__all__ = [
    "give_input_values",
    "given_names",
    "given_values",
    "unbatched_inputs",
    "without_given_values",
]

_KEY = "onnxredund.given_inputs"  # metadata of the analysed model: the inputs given a value, comma separated


def _shaped(name: str, vi: onnx.ValueInfoProto, values: np.ndarray) -> np.ndarray:
    """``values`` in the input's type and declared shape: one value fills it; a single free axis takes what the
    values' count leaves for it."""
    elem = vi.type.tensor_type.elem_type
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem))
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in vi.type.tensor_type.shape.dim]
    fixed = int(np.prod([d for d in dims if d is not None], dtype=np.int64))
    free = [i for i, d in enumerate(dims) if d is None]
    if len(free) > 1:
        raise OnnxRedundError(f"input {name!r} has {len(free)} free axes: it cannot be given one value here")
    if free:
        if fixed == 0 or values.size % fixed:
            raise OnnxRedundError(f"input {name!r}: {values.size} values do not fill its fixed axes {dims}")
        dims[free[0]] = values.size // fixed
    shape = tuple(dims)
    count = int(np.prod(shape, dtype=np.int64))
    if values.size == 1 and count != 1:
        values = np.full(count, values[0])
    if values.size != count:
        raise OnnxRedundError(f"input {name!r} of shape {list(shape)} holds {count} values; {values.size} given")
    if dtype.kind in "iub" and not np.array_equal(values, np.round(values)):
        raise OnnxRedundError(f"input {name!r} is {dtype.name}: give it whole numbers")
    return values.reshape(shape).astype(dtype)


def give_input_values(proto: onnx.ModelProto, values: dict, path) -> onnx.ModelProto:
    """A copy of ``proto`` whose inputs named in ``values`` have that value as their initializer (see the module
    docstring); ``proto`` itself where ``values`` is empty.

    Raises:
        OnnxRedundError: a name that is not a data input of the model, or values that do not fit its shape/type.
    """
    if not values:
        return proto
    inputs = {vi.name: vi for vi in data_inputs(proto.graph)}
    unknown = [n for n in values if n not in inputs]
    if unknown:
        raise OnnxRedundError(
            f"{path} has no input {unknown[0]!r} to give a value (`input_values`); its inputs: {', '.join(inputs)}"
        )
    if len(values) == len(inputs):
        raise OnnxRedundError(f"{path}: `input_values` gives every input a value; leave the data input out of it")
    out = copy_model(proto)
    for name, given in values.items():
        if inputs[name].type.tensor_type.elem_type == onnx.TensorProto.UNDEFINED:
            raise OnnxRedundError(f"input {name!r} of {path} is not a tensor: it cannot be given a value")
        value = _shaped(name, inputs[name], np.asarray(given, np.float64).ravel())
        out.graph.initializer.append(onnx.numpy_helper.from_array(value, name))
    props = {p.key: p.value for p in out.metadata_props}
    props[_KEY] = ",".join(values)
    del out.metadata_props[:]
    onnx.helper.set_model_props(out, props)
    return out


def given_names(proto: onnx.ModelProto) -> set[str]:
    """The inputs :func:`give_input_values` gave a value in ``proto``."""
    return marked_names(proto, _KEY)


def given_values(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The inputs :func:`give_input_values` gave a value in ``proto`` -> that value."""
    names = given_names(proto)
    return {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer if t.name in names}


def without_given_values(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``proto`` without the defaults :func:`give_input_values` added (a copy, where it has any): the inputs ask
    for their values again."""
    return without_marked(proto, _KEY, "initializer")


def unbatched_inputs(sizes: dict[str, list], image: str) -> list[str]:
    """The inputs other than ``image`` whose every size is fixed and small (at most 64 values, a scalar too):
    where a model's batch cannot be freed, the likely parameters the user may give with ``--input-value``."""
    return [
        name
        for name, dims in sizes.items()
        if name != image and all(isinstance(d, int) and d > 0 for d in dims) and int(np.prod(dims or [1])) <= 64
    ]
