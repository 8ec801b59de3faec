"""Models older than the first opset onnxruntime runs (PyTorch's exports of 2017-2018 at opset 6, the first model
zoos' files): onnx's version converter brings them to :data:`UPGRADE_OPSET`, and the conversion is used only where
onnxruntime computes on it what onnx's reference evaluator computes on the original (a seeded sample through both).
Everything after, the pruned file included, is at the new opset.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import onnx.reference
import onnx.version_converter
from onnx import numpy_helper

from onnxredund.engine.analysis_models import FAST_OPSET, same_values
from onnxredund.engine.batching import check_feeds
from onnxredund.engine.runtime import Runner
from onnxredund.errors import OnnxRedundError, first_line
from onnxredund.model import MAX_IR_VERSION, MAX_OPSET, MIN_OPSET, default_opset

__all__ = ["UPGRADE_OPSET", "check_upgrade", "is_old", "upgraded"]

log = logging.getLogger(__name__)

UPGRADE_OPSET = FAST_OPSET  # the fast path's opset: one conversion serves both
_IR_VERSION = 6  # the IR of opset 11 (an IR 3 file lists its initializers as inputs; later ones need not)


def is_old(proto: onnx.ModelProto) -> bool:
    """Whether the model's default opset is older than onnxruntime's first."""
    return default_opset(proto) < MIN_OPSET


def _refused(proto: onnx.ModelProto, path: Path, why: str) -> OnnxRedundError:
    return OnnxRedundError(
        f"{path} uses opset {default_opset(proto)}; onnxruntime runs opsets {MIN_OPSET}..{MAX_OPSET}, and {why}: "
        "re-export it with one of those"
    )


def upgraded(proto: onnx.ModelProto, path: Path) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """``proto`` with its legacy broadcasts made explicit (:func:`_explicit_broadcasts`, the reference a conversion
    is checked against) and onnx's conversion of that to :data:`UPGRADE_OPSET` (not checked yet:
    :func:`check_upgrade`).

    Raises:
        OnnxRedundError: onnx cannot convert it.
    """
    reference = _explicit_broadcasts(proto)
    try:
        out = onnx.version_converter.convert_version(reference, UPGRADE_OPSET)
    except Exception as e:  # onnx's converter raises RuntimeError, ValidationError, ... by op
        raise _refused(proto, path, f"onnx cannot convert it to opset {UPGRADE_OPSET} ({first_line(e)})") from None
    out.ir_version = min(max(out.ir_version, _IR_VERSION), MAX_IR_VERSION)
    return reference, out


def _explicit_broadcasts(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Up to opset 6 an elementwise op with ``broadcast=1, axis=k`` lines B's axes up with A's from axis k (Caffe2's
    bias Add on axis 1); from opset 7 on, trailing axes line up, and neither onnx's converter nor its reference
    evaluator reads ``axis``. A constant B gets the trailing size-1 axes that make the two rules agree (the same
    values), and ``axis`` goes. Shapes are inferred too: the converter reads them for the broadcasts it rewrites."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    try:
        out = onnx.shape_inference.infer_shapes(out)
    except Exception as e:  # inference raises InferenceError, ValidationError, ... by op
        log.debug("shape inference before the conversion failed: %s", first_line(e))
    graph = out.graph
    ranks = {vi.name: len(vi.type.tensor_type.shape.dim) for vi in [*graph.input, *graph.value_info, *graph.output]}
    constants = {t.name: t for t in graph.initializer}
    for node in graph.node:
        attrs = {a.name: a for a in node.attribute}
        if "axis" not in attrs or "broadcast" not in attrs or attrs["broadcast"].i != 1 or len(node.input) < 2:
            continue
        b, rank = constants.get(node.input[1]), ranks.get(node.input[0])
        if b is None or not rank:
            continue
        value = numpy_helper.to_array(b)
        axis = attrs["axis"].i % rank
        if rank - axis < value.ndim:
            continue
        name = f"{b.name}/from_axis_{axis}"
        if name not in constants:
            constants[name] = numpy_helper.from_array(
                value.reshape(value.shape + (1,) * (rank - axis - value.ndim)), name
            )
            graph.initializer.append(constants[name])
            if out.ir_version < 4:  # IR 3 lists every initializer as an input
                graph.input.append(onnx.helper.make_tensor_value_info(name, b.data_type, constants[name].dims))
        node.input[1] = name
        node.attribute.remove(attrs["axis"])
    return out


def check_upgrade(original: onnx.ModelProto, upgrade: onnx.ModelProto, sizes: dict[str, list], path: Path) -> None:
    """Refuse the conversion unless onnxruntime's outputs on it equal onnx's reference evaluator's on the original,
    for one seeded sample (``sizes``: every data input's dimensions).

    Raises:
        OnnxRedundError: either cannot run it, or an output differs.
    """
    feeds = check_feeds(original, sizes)
    try:
        want = onnx.reference.ReferenceEvaluator(original).run(None, feeds)
    except Exception as e:  # the reference evaluator raises whatever its op implementations raise
        raise _refused(
            original, path, f"onnx's reference evaluator, which checks a conversion, cannot run it ({first_line(e)})"
        ) from None
    try:
        got = Runner.create(upgrade, "cpu").run(feeds)
    except (RuntimeError, OnnxRedundError) as e:
        raise _refused(original, path, f"onnxruntime cannot run onnx's conversion of it ({first_line(e)})") from None
    for out, w, g in zip(original.graph.output, want, got, strict=True):
        if not same_values(np.asarray(w), g):
            raise _refused(original, path, f"onnx's conversion of it changes output {out.name!r}")
    log.warning(
        "%s uses opset %d, older than onnxruntime runs: analysed (and pruned) as onnx's conversion of it to opset %d, "
        "which computes what onnx's reference evaluator computes on the original",
        path,
        default_opset(original),
        UPGRADE_OPSET,
    )
