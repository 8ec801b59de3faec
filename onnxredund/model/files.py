"""Reading ONNX files safely: the graph, and external data checked before anything of it is read.

External data must lie in the model's folder (no ``../``, absolute paths or links out of it), use
only the keys ONNX defines, and match its tensor's size; all of that is checked from file sizes.
The data then stays on disk: each external tensor records the model's folder (onnx's ``basepath``
key), weights are read from there when needed (:func:`tensor_array`) and by onnxruntime when a
session is made, so no model, however big, is copied into one protobuf.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.external_data_helper import ExternalDataInfo, uses_external_data

from onnxredund.errors import OnnxRedundError

__all__ = [
    "BASEPATH",
    "PROTOBUF_LIMIT",
    "all_tensors",
    "external_folder",
    "external_tensors",
    "file_sha256",
    "read_model_file",
    "set_external_folder",
    "tensor_array",
]

PROTOBUF_LIMIT = 2**31 - 1  # bytes one protobuf message (one .onnx file without external data) can hold
BASEPATH = "basepath"  # onnx's key for the folder of a tensor's external data; never saved to a file
_EXTERNAL_KEYS = {"location", "offset", "length", "checksum", BASEPATH}
_HASH_BLOCK = 1 << 20


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, read in blocks (never whole into memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_HASH_BLOCK), b""):
            h.update(block)
    return h.hexdigest()


def all_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor a graph holds: initializers, sparse initializers' values, TENSOR(S) and SPARSE_TENSOR(S)
    attributes, and those of subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
    for node in graph.node:
        for attr in node.attribute:
            yield from _attribute_tensors(attr)


def _attribute_tensors(attr: onnx.AttributeProto) -> Iterator[onnx.TensorProto]:
    if attr.HasField("t"):
        yield attr.t
    yield from attr.tensors
    if attr.HasField("sparse_tensor"):
        yield attr.sparse_tensor.values
    for sparse in attr.sparse_tensors:
        yield sparse.values
    if attr.HasField("g"):
        yield from all_tensors(attr.g)
    for g in attr.graphs:
        yield from all_tensors(g)


def external_tensors(proto: onnx.ModelProto) -> list[onnx.TensorProto]:
    """The tensors of ``proto`` whose data lives in external files."""
    return [t for t in all_tensors(proto.graph) if uses_external_data(t)]


def external_folder(tensor: onnx.TensorProto) -> str:
    """The folder a tensor's external data is read from ('' for none)."""
    return next((e.value for e in tensor.external_data if e.key == BASEPATH), "")


def set_external_folder(tensor: onnx.TensorProto, folder: str) -> None:
    """Set the folder a tensor's external data is read from; '' removes it."""
    keep = [(e.key, e.value) for e in tensor.external_data if e.key != BASEPATH]
    del tensor.external_data[:]
    for key, value in keep + ([(BASEPATH, folder)] if folder else []):
        tensor.external_data.add(key=key, value=value)


def tensor_array(tensor: onnx.TensorProto) -> np.ndarray:
    """A tensor's values as numpy, read from its external file when it has one."""
    try:
        return numpy_helper.to_array(tensor, external_folder(tensor))
    except (OSError, ValueError) as e:
        raise OnnxRedundError(f"tensor {tensor.name!r}: cannot read its data: {e}") from None


def _external_info(tensor: onnx.TensorProto) -> ExternalDataInfo:
    """The tensor's external-data entries, parsed by onnx once they are known to be well formed."""
    keys = [e.key for e in tensor.external_data]
    values = [e.value for e in tensor.external_data]
    if not all(isinstance(v, str) for v in keys + values):  # protobuf hands back bad UTF-8 as bytes
        raise OnnxRedundError(f"tensor {tensor.name!r}: its external data entries are not UTF-8 text; corrupt file")
    unknown = sorted(set(keys) - _EXTERNAL_KEYS)
    if unknown:
        raise OnnxRedundError(f"tensor {tensor.name!r}: unknown external data key {unknown[0]!r}; corrupt file")
    try:
        return ExternalDataInfo(tensor)
    except ValueError:
        raise OnnxRedundError(f"tensor {tensor.name!r}: external data offset or length is not a number >= 0") from None


def _check_external_data(proto: onnx.ModelProto, folder: Path) -> None:
    """Refuse, before anything is read, external data outside the model's folder, of unknown keys or not
    matching its tensor's size."""
    root = folder.resolve()
    for tensor in external_tensors(proto):
        info = _external_info(tensor)
        loc = info.location
        if not loc or os.path.isabs(loc) or ".." in Path(loc).parts:
            raise OnnxRedundError(
                f"tensor {tensor.name!r} points its external data at {loc!r}, outside the model's folder; "
                "refusing to read it"
            )
        target = folder / loc
        if target.is_symlink() or not target.resolve().is_relative_to(root):
            raise OnnxRedundError(
                f"tensor {tensor.name!r}: external data {loc!r} is a link out of the model's folder; refusing it"
            )
        if not target.is_file():
            raise OnnxRedundError(
                f"tensor {tensor.name!r}: external data file {loc!r} is missing next to the model; copy it there"
            )
        _check_external_extent(tensor, info, target)


_SUB_BYTE_BITS = {  # packed types (those this onnx knows)
    getattr(onnx.TensorProto, name): bits
    for name, bits in [
        ("INT4", 4),
        ("UINT4", 4),
        ("FLOAT4E2M1", 4),
        ("INT2", 2),
        ("UINT2", 2),
        ("FLOAT6E2M3", 6),
        ("FLOAT6E3M2", 6),
    ]
    if hasattr(onnx.TensorProto, name)
}


def _tensor_bytes(tensor: onnx.TensorProto) -> int | None:
    """Bytes a tensor's data takes, or None for types whose size we do not know."""
    n = int(np.prod(tensor.dims, dtype=np.int64))
    if tensor.data_type in _SUB_BYTE_BITS:
        return (n * _SUB_BYTE_BITS[tensor.data_type] + 7) // 8
    if tensor.data_type == onnx.TensorProto.STRING:
        return None
    try:
        return n * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except KeyError:  # a data type this onnx does not know
        return None


def _check_external_extent(tensor: onnx.TensorProto, info: ExternalDataInfo, target: Path) -> None:
    """The bytes a tensor names must lie in its file and match its shape (checked from sizes, not read)."""
    size = target.stat().st_size
    offset = info.offset or 0
    length = info.length if info.length else size - offset
    if offset + length > size:
        raise OnnxRedundError(
            f"tensor {tensor.name!r}: external data runs past the end of {info.location!r} ({size} bytes)"
        )
    need = _tensor_bytes(tensor)
    if need is not None and length != need:
        raise OnnxRedundError(
            f"tensor {tensor.name!r}: external data holds {length} bytes where its shape "
            f"{'x'.join(map(str, tensor.dims)) or 'scalar'} needs {need}; the data file does not match the model"
        )


def _fail_if_not_file(path: Path) -> None:
    if not path.exists():
        raise OnnxRedundError(f"model file {path} does not exist")
    if not path.is_file():
        raise OnnxRedundError(f"{path} is not a file; pass an .onnx model file")
    if path.stat().st_size == 0:
        raise OnnxRedundError(f"{path} is empty; pass an .onnx model file")


def read_model_file(path: str | os.PathLike) -> onnx.ModelProto:
    """The model's graph, with external data left on disk (checked to lie in the model's folder) and pinned
    to that folder."""
    path = Path(path)
    _fail_if_not_file(path)
    size = path.stat().st_size
    if size > PROTOBUF_LIMIT:
        raise OnnxRedundError(
            f"{path} is {size / 2**30:.1f} GiB in one file, over protobuf's 2 GB limit; save its weights as "
            "external data (onnx.save_model(..., save_as_external_data=True)) and pass the .onnx file"
        )
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and its relatives have no common public base
        raise OnnxRedundError(f"{path} is not a readable ONNX model ({type(e).__name__}); check the file") from None
    if not proto.HasField("graph") or not proto.graph.node:
        raise OnnxRedundError(f"{path} has no graph (or an empty one); is it an ONNX model?")
    _check_external_data(proto, path.parent)
    root = str(path.parent.resolve())
    for tensor in external_tensors(proto):
        set_external_folder(tensor, root)
    return proto
