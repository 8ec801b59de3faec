"""What a model must be before anything runs it: standard opsets onnxruntime reads (or older ones, converted
when loaded), no custom domains or
local functions, names that are text, a graph the ONNX checker accepts, and finite weights.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx

from onnxredund.errors import OnnxRedundError, first_line
from onnxredund.model.files import external_folder, external_tensors, tensor_array
from onnxredund.model.graph import bodies, default_opset

__all__ = ["MAX_IR_VERSION", "MAX_OPSET", "MIN_OPSET", "check_finite_weights", "validate"]

log = logging.getLogger(__name__)

MAX_IR_VERSION = 13  # newest IR that onnxruntime-gpu 1.31 reads
MAX_OPSET = 26  # newest default-domain opset onnxruntime-gpu 1.31 runs
MIN_OPSET = 7
#: the standard ops, and onnxruntime's own contrib ops (run natively, with no library loaded)
_ALLOWED_DOMAINS = ("", "ai.onnx", "com.microsoft")
_NCHWC_DOMAIN = "com.microsoft.nchwc"  # what onnxruntime's ORT_ENABLE_ALL writes on a CPU
_FLOATS = {onnx.TensorProto.FLOAT: "<f4", onnx.TensorProto.DOUBLE: "<f8", onnx.TensorProto.FLOAT16: "<f2"}
_CHUNK = 2**24  # values checked at a time in an external file


def _check_opsets(proto: onnx.ModelProto, path: Path) -> None:
    default = default_opset(proto)
    if default is None:
        raise OnnxRedundError(f"{path} imports no default ONNX opset; re-export it with opset {MIN_OPSET}..{MAX_OPSET}")
    if default > MAX_OPSET:  # an older one is converted (:mod:`onnxredund.engine.old_opsets`)
        raise OnnxRedundError(
            f"{path} uses opset {default}; onnxruntime runs opsets {MIN_OPSET}..{MAX_OPSET}: "
            "re-export with one of those"
        )
    for node in proto.graph.node:
        if node.domain == _NCHWC_DOMAIN:
            raise OnnxRedundError(
                f"{path} was saved by onnxruntime with its NCHWc layout ops ({_NCHWC_DOMAIN}: convs on channels "
                "blocked for the vector width of the CPU that saved it, for that machine only); save it from the "
                "original at ORT_ENABLE_EXTENDED (its FusedConvs are read as convs), or give the original"
            )
        if node.domain not in _ALLOWED_DOMAINS:
            raise OnnxRedundError(
                f"node {node.name or node.op_type!r} uses custom domain {node.domain!r}; only standard ONNX ops and "
                "onnxruntime's own (com.microsoft) are run (custom-op libraries are never loaded)"
            )
    if proto.functions:
        raise OnnxRedundError(f"{path} defines model-local functions; inline them first (onnx.inliner)")


def _names(graph: onnx.GraphProto) -> Iterator[str | bytes]:
    """Every name a graph and its nodes' bodies hold (tensors, nodes, ops, domains, attributes)."""
    yield graph.name
    yield from (v.name for v in [*graph.input, *graph.output, *graph.value_info, *graph.initializer])
    for node in graph.node:
        yield from (node.name, node.op_type, node.domain, *node.input, *node.output)
        yield from (a.name for a in node.attribute)
        for body in bodies(node):
            yield from _names(body)


def _check_text(proto: onnx.ModelProto, path: Path) -> None:
    """Names are text: protobuf hands a name that is not UTF-8 over as bytes, which no graph edit can write back."""
    bad = next((name for name in _names(proto.graph) if isinstance(name, bytes)), None)
    if bad is not None:
        raise OnnxRedundError(f"{path} is not a valid ONNX model: the name {bad!r} is not UTF-8 text")


def validate(proto: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    """Check ``proto`` in place and lower its IR version to what onnxruntime reads; returns it.

    Raises:
        OnnxRedundError: an opset out of range, a custom domain, local functions, or a checker failure.
    """
    _check_opsets(proto, path)
    _check_text(proto, path)
    proto.ir_version = min(proto.ir_version, MAX_IR_VERSION)
    # external data is checked where it lives: by path (onnx's way for big models); an in-memory
    # model with external data has no folder for the checker, and onnxruntime checks it instead
    external = bool(external_tensors(proto))
    if external and not path.is_file():
        log.debug("checker skipped: external data and no model file")
        return proto
    try:
        onnx.checker.check_model(str(path) if external else proto)
    except onnx.checker.ValidationError as e:
        raise OnnxRedundError(f"{path} is not a valid ONNX model: {first_line(e)}") from None
    except ValueError as e:  # text that is not UTF-8; an in-memory proto over 2 GB
        raise OnnxRedundError(f"{path} is not a valid ONNX model ({type(e).__name__}: {first_line(e, 120)})") from None
    return proto


def _non_finite(tensor: onnx.TensorProto) -> tuple[bool, bool]:
    """(any NaN, any Inf) in a float tensor; external data is mapped and scanned in chunks, not loaded."""
    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        return _nan_inf(tensor_array(tensor))
    info = {e.key: e.value for e in tensor.external_data}
    n = int(np.prod(tensor.dims, dtype=np.int64))
    if n == 0:
        return False, False
    values = np.memmap(
        Path(external_folder(tensor)) / info["location"],
        dtype=_FLOATS[tensor.data_type],
        mode="r",
        offset=int(info.get("offset") or 0),
        shape=(n,),
    )
    chunks = [_nan_inf(values[i : i + _CHUNK]) for i in range(0, n, _CHUNK)]
    return any(nan for nan, _ in chunks), any(inf for _, inf in chunks)


def _nan_inf(values: np.ndarray) -> tuple[bool, bool]:
    if np.isfinite(values).all():
        return False, False
    return bool(np.isnan(values).any()), bool(np.isinf(values).any())


# ops whose weights are learned numbers, where an infinity is a broken weight
_LEARNED = {"Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization", "InstanceNormalization"}


def check_finite_weights(proto: onnx.ModelProto, path: Path) -> None:
    """Refuse float initializers holding NaN, and those a conv, a matrix product or a normalisation reads
    holding Inf; an infinity elsewhere is a constant the graph means (jax2tf's -inf floor of a Max before a
    softmax, an attention mask)."""
    learned = {name for n in proto.graph.node if n.op_type in _LEARNED for name in n.input}
    for t in proto.graph.initializer:
        if t.data_type not in _FLOATS:
            continue
        nan, inf = _non_finite(t)
        if nan or (inf and t.name in learned):
            what = "NaN" if nan else "Inf"
            raise OnnxRedundError(f"{path}: weight {t.name!r} contains {what}; the model is broken")
