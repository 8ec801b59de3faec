"""Loading a model for analysis: read and validate it, fix the sizes of its inputs, free its batch where that
is provably safe, find the shapes around every conv (by inference, or by one probe run where inference
cannot tell), and decide its image input's layout from what the graph does with it.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path

import numpy as np
import onnx

from onnxredund.choices import LAYOUT_CHOICES
from onnxredund.engine.batching import (
    FREED_BATCH,
    batch_outputs,
    check_feeds,
    fix_baked_batch,
    free_fixed_states,
    inputs_samples_first,
    make_batch_dynamic,
    moved_outputs,
)
from onnxredund.engine.channel_groups import computed_constants
from onnxredund.engine.decided_ifs import decided_ifs, take_decided_ifs
from onnxredund.engine.fold import fold_conv_parameters
from onnxredund.engine.given_inputs import give_input_values, given_values, unbatched_inputs
from onnxredund.engine.old_opsets import check_upgrade, is_old, upgraded
from onnxredund.engine.post_processing import data_shaped_outputs, expose_measured
from onnxredund.engine.qoperator import dequantize_operators, qoperator_ops
from onnxredund.engine.runtime import Runner, probe_shapes
from onnxredund.engine.surgery import expose_outputs
from onnxredund.engine.unfuse import contrib_ops, unfuse_convs
from onnxredund.errors import OnnxRedundError
from onnxredund.model import (
    CONV_OPS,
    LAYOUTS,
    Model,
    ModelInput,
    bodies,
    channel_axis,
    check_finite_weights,
    classifier_outputs,
    copy_model,
    data_inputs,
    describe_layers,
    dims,
    image_layout,
    infer_shapes,
    input_sizes,
    is_class_scores,
    pick_image_input,
    read_model_file,
    set_input_shape,
    shape_derived,
    shape_table,
    validate,
)

__all__ = ["LAYOUT_CHOICES", "load_model", "load_model_proto"]

log = logging.getLogger(__name__)

# the convs of quantized models (integer inputs and weights): ONNX's own and onnxruntime's contrib ones
QUANTIZED_CONV_OPS = frozenset({"ConvInteger", "QLinearConv", "QLinearConvTranspose"})


#: ops whose output may be much larger than their inputs (LYT-Net's self-attention over 3,600 positions: 52 MB a
#: head and sample, unknown to shape inference behind its computed Reshapes; onnxruntime was killed at 24 GB)
_GROWING_OPS = frozenset({"MatMul", "Einsum", "Resize", "Upsample", "Expand", "Tile"})

InputShapes = tuple[int, ...] | dict[str | None, tuple[int, ...]] | None
InputValues = dict[str, np.ndarray] | None


def load_model(
    path: str | os.PathLike,
    *,
    input_shape: InputShapes = None,
    impulse_input: str | None = None,
    layout: str | None = None,
    classifier: str | None = None,
    input_values: InputValues = None,
) -> Model:
    """Load and validate an ONNX CNN; the file itself is never written.

    Args:
        path: the .onnx file (external data is read from its folder only).
        input_shape: sizes after the batch for inputs with free dimensions, in each input's own layout
            ((C, H, W), or (H, W, C) for NHWC): one tuple for the image input, or a dict by input name.
        impulse_input: the image input (default: the only float32 input of rank 3 to 5).
        layout: "nchw" or "nhwc" for an image input whose layout the graph does not show.
        classifier: the output holding class scores (default: found from the graph), or "none".
        input_values: inputs that are one value for the whole batch (a filter's strength, a threshold) -> their
            values (see :mod:`onnxredund.engine.given_inputs`).

    Raises:
        OnnxRedundError: the file is not a runnable CNN with an image input.
    """
    return load_model_proto(
        read_model_file(path),
        name=str(path),
        input_shape=input_shape,
        impulse_input=impulse_input,
        layout=layout,
        classifier=classifier,
        input_values=input_values,
    )


def _given_sizes(input_shape: InputShapes) -> dict[str | None, tuple[int, ...]]:
    if input_shape is None:
        return {}
    return dict(input_shape) if isinstance(input_shape, dict) else {None: tuple(input_shape)}


def _report_dequantized(
    quantized: onnx.ModelProto, rewritten: onnx.ModelProto, sizes: dict, path: Path, ops: list[str]
) -> None:
    """Say that the QOperator ops ``ops`` are analysed in their QDQ form, and how far its outputs are from the
    model's own on one seeded sample (both unoptimised): the requantization's rounding, a step now and then."""
    feeds = check_feeds(quantized, sizes)
    want = Runner.create(quantized, "cpu", optimize=False).run(feeds)
    got = Runner.create(rewritten, "cpu", optimize=False).run(feeds)
    names = [o.name for o in quantized.graph.output]
    resized = [n for n, w, g in zip(names, want, got, strict=True) if np.shape(w) != np.shape(g)]  # boxes an NMS kept
    gaps = [  # an output may be empty (no box kept): a gap of 0, not numpy's error on an empty max
        float(np.abs(np.float64(g) - np.float64(w)).max(initial=0.0))
        / max(float(np.abs(np.float64(w)).max(initial=0.0)), 1e-12)
        for n, w, g in zip(names, want, got, strict=True)
        if n not in resized
    ]
    log.warning(
        "%s has onnxruntime's integer (QOperator) ops %s: analysed, and pruned, in the QDQ form they compute "
        "(DequantizeLinear, the float op, QuantizeLinear; onnxruntime fuses it back when it loads it); on a seeded "
        "sample its outputs are within %.2g of the model's own, relative to each output's largest value (the "
        "integer ops' rounding)%s",
        path,
        ", ".join(ops),
        max(gaps, default=0.0),
        f"; {', '.join(map(repr, resized))} differ in size" if resized else "",
    )


def load_model_proto(
    proto: onnx.ModelProto,
    *,
    name: str = "<memory>",
    input_shape: InputShapes = None,
    impulse_input: str | None = None,
    layout: str | None = None,
    classifier: str | None = None,
    input_values: InputValues = None,
) -> Model:
    """Validate and describe a model already in memory (a copy is kept; ``proto`` is not changed)."""
    path = Path(name)
    proto = validate(copy_model(proto), path)
    original, proto = upgraded(proto, path) if is_old(proto) else (None, proto)
    quantized_ops, quantized_original = qoperator_ops(proto), proto
    proto = dequantize_operators(proto)
    contrib = contrib_ops(proto)  # those left to onnxruntime, and its fused convs (read as the ops they fuse)
    proto = unfuse_convs(proto)
    proto, folded = fold_conv_parameters(proto)
    proto = give_input_values(proto, input_values or {}, path)  # after folding: no conv's parameters take them
    declared = {vi.name: _copied(vi.type) for vi in [*data_inputs(proto.graph), *proto.graph.output]}
    proto = inputs_samples_first(proto)  # an RNN's state (layers, batch, hidden) is given (batch, layers, hidden)
    image = pick_image_input(proto, path, impulse_input)
    sizes = input_sizes(proto, image, _given_sizes(input_shape))
    for input_name, given in sizes.items():
        if given:
            set_input_shape(proto, input_name, given)
    proto = take_decided_ifs(proto, sizes)  # an If on the input's shape: its convs are analysed
    if original is not None:
        check_upgrade(original, proto, sizes, path)
    if quantized_ops:
        _report_dequantized(quantized_original, proto, sizes, path, quantized_ops)
    if not any(n.op_type in CONV_OPS for n in proto.graph.node):
        inside = sum(n.op_type in CONV_OPS for n in _body_nodes(proto.graph))
        if inside:
            raise OnnxRedundError(
                f"{path} has its {inside} convs inside If/Loop/Scan bodies only; onnxredund analyses the convs of "
                "the main graph (export the model without control flow)"
            )
        quantized = Counter(n.op_type for n in proto.graph.node if n.op_type in QUANTIZED_CONV_OPS)
        if quantized:
            ops = ", ".join(f"{count} {op}" for op, count in sorted(quantized.items()))
            raise OnnxRedundError(
                f"{path} has quantized convs only ({ops}); onnxredund analyses float convs: give it the float "
                "model this one was quantized from"
            )
        raise OnnxRedundError(f"{path} has no Conv node; onnxredund analyses convolutional networks")
    check_finite_weights(proto, path)
    Runner.create(proto, "cpu", optimize=False)  # onnxruntime must take the model as it is: say so now if not
    proto, sizes = free_fixed_states(proto, sizes, image)
    proto, sizes = fix_baked_batch(proto, sizes)
    proto, batch_dynamic = make_batch_dynamic(proto, sizes)
    batch = sizes[image][0]
    if not batch_dynamic and batch != 1:
        fixing = [(name, dims) for name, dims in sizes.items() if dims and isinstance(dims[0], int) and name != image]
        if isinstance(batch, str) and fixing:  # the image's batch is free: another input's first axis is not one
            name, dims = fixing[0]
            raise OnnxRedundError(
                f"{path}: input {name!r} {dims} fixes its first axis while {image!r} has a free batch, and the model "
                "does not run on batches of two with it: if it is one value for every sample (a strength, a "
                f"threshold), give it with `input_values` {name}=VALUE; if it is an RNN state with its batch on "
                "another axis, re-export the model with the state's batch first"
            )
        raise OnnxRedundError(f"{path} fixes its batch to {batch} and cannot be freed; re-export with batch 1 or free")
    parameters = [] if batch_dynamic else unbatched_inputs(sizes, image)
    if parameters:
        log.warning(
            "%s runs one sample at a time; if %s %s one value for every sample, giving %s with `input_values` "
            "NAME=VALUE may free its batch",
            path,
            ", ".join(map(repr, parameters)),
            "is" if len(parameters) == 1 else "are each",
            "it" if len(parameters) == 1 else "them",
        )
    shaped = data_shaped_outputs(proto)
    proto = expose_measured(proto, shaped)
    reduced = batch_outputs(proto, sizes) if batch_dynamic else []
    shapes = _shapes(proto, sizes, declared)
    inputs = _inputs(proto, sizes, image, shapes, layout)
    return Model(
        proto=proto,
        path=str(path),
        inputs=inputs,
        input_name=image,
        output_names=[o.name for o in proto.graph.output if o.name not in reduced and o.name not in shaped],
        batch_outputs=reduced,
        shaped_outputs=shaped,
        layers=describe_layers(proto, shapes),
        batch_dynamic=batch_dynamic,
        shapes=shapes,
        classifiers=_classifiers(proto, shapes, classifier, [*reduced, *shaped]),
        declared=declared,
        contrib_ops=contrib,
        given_inputs=given_values(proto),
        folded_ops=folded,
        decided_ifs=[d.describe() for d in decided_ifs(proto)],
        shape_constants={} if batch_dynamic else _shape_constants(proto, sizes),
    )


def _shape_constants(proto: onnx.ModelProto, sizes: dict[str, list]) -> dict[str, np.ndarray]:
    """In a model run one sample at a time (its shapes fixed), the values of the tensors computed from shapes
    alone that other nodes read (one probe run): fed per sample, a (4,) vector of scales would be
    stacked to (N, 4)."""
    shaped = shape_derived(proto.graph)
    if not shaped:
        return {}
    read = {t for n in proto.graph.node if not set(n.output) <= shaped for t in n.input}
    wanted = sorted(shaped & read)
    if not wanted:
        return {}
    values = Runner.create(expose_outputs(proto, wanted), "cpu").run(_zero_feeds(proto, sizes), wanted)
    return dict(zip(wanted, values, strict=True))


def _body_nodes(graph: onnx.GraphProto):
    """The nodes of every If/Loop/Scan body in ``graph``, nested ones included."""
    for body in (b for node in graph.node for b in bodies(node)):
        yield from body.node
        yield from _body_nodes(body)


def _copied(type_proto: onnx.TypeProto) -> onnx.TypeProto:
    out = onnx.TypeProto()
    out.CopyFrom(type_proto)
    return out


def _constants_folded(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``proto`` whose tensors computed from constants alone (a reflection Pad's pads by Slice, Transpose
    and Cast, a Resize's scales by a Concat of Constants) are initializers, the nodes that made them gone: shape
    inference, which does not evaluate them, then knows the shapes after them (for shape inference only)."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    values = computed_constants(proto)
    if values:
        kept = [n for n in out.graph.node if not all(o in values for o in n.output if o)]
        del out.graph.node[:]
        out.graph.node.extend(kept)
        out.graph.initializer.extend(onnx.numpy_helper.from_array(v, name) for name, v in values.items())
    return out


def _shapes(proto: onnx.ModelProto, sizes: dict[str, list], declared: dict) -> dict[str, tuple[int, ...]]:
    """Per-sample shapes of the model's tensors, the outputs' as computed, not as declared; a probe run finds
    those around convs, of the outputs and of Reshapes (whose shape a computed target can hide from inference)
    that inference misses. An output the file declares with a fixed first axis over 1 has no batch axis of its
    own: its sample's shape is all of it (a fixed-batch export that squeezed the batch, or merged it into that
    axis once freed: (N x 256, 2)), unless that axis is the file's fixed batch, freed."""
    free = _constants_folded(proto)
    for output in free.graph.output:  # inferred, not declared: an exporter may declare them for another input size
        output.type.tensor_type.ClearField("shape")
    shapes = shape_table(infer_shapes(free))
    needed = [t for n in proto.graph.node if n.op_type in CONV_OPS for t in (n.input[0], n.output[0])]
    needed += [n.output[0] for n in proto.graph.node if n.op_type == "Reshape"]
    needed += [o.name for o in proto.graph.output]
    # what can outgrow its inputs (attention's (positions x positions) maps, an upsampling): a run's memory is
    # counted from the largest tensor (:func:`~onnxredund.engine.runtime.rows_per_run`)
    needed += [n.output[0] for n in proto.graph.node if n.op_type in _GROWING_OPS and n.output]
    if any(t not in shapes for t in needed):
        shapes.update(probe_shapes(proto, _zero_feeds(proto, sizes), needed))
    moved = moved_outputs(proto)  # declared with their samples on a later axis, which now come first
    for output in (o for o in proto.graph.output if o.name not in moved and o.name in declared):
        full = dims(onnx.helper.make_value_info(output.name, declared[output.name]))
        batched = (dims(output) or [None])[0] == FREED_BATCH  # the file's fixed batch of 2 or more, freed
        fixed = full and isinstance(full[0], int) and full[0] > 1 and all(isinstance(d, int) and d > 0 for d in full)
        if fixed and not batched:
            shapes[output.name] = tuple(full)
    return shapes


def _zero_feeds(proto: onnx.ModelProto, sizes: dict[str, list]) -> dict[str, np.ndarray]:
    """One all-zero sample for every data input."""
    feeds = {}
    for vi in data_inputs(proto.graph):
        dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        dims = sizes[vi.name]
        feeds[vi.name] = np.zeros((1, *dims[1:]) if dims else (), dtype)
    return feeds


def _inputs(proto, sizes, image: str, shapes, layout: str | None) -> list[ModelInput]:
    inputs = []
    for vi in data_inputs(proto.graph):
        dims = sizes[vi.name]
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)).name
        kind = ""
        if vi.name == image and np.dtype(dtype).kind == "f" and len(dims) in LAYOUTS:  # not tokens, nor (N, L)
            axis = channel_axis(proto.graph, image, shapes)
            inserted = axis == -1
            if inserted:  # the convs read an axis the graph inserts: the input's size-1 axis is its channel
                axis = len(dims) - 1 if dims[-1] == 1 else 1 if dims[1] == 1 else None
            if not (inserted and axis is None and layout is None):
                kind = image_layout(len(dims), axis, layout, image, tuple(dims[1:]))
            # else no channel axis at all (DNSMOS's (N, frames, bands), unsqueezed for its convs): not an image
        inputs.append(ModelInput(vi.name, dtype, tuple(dims[1:]), batched=bool(dims), layout=kind))
    return inputs


def _classifiers(proto: onnx.ModelProto, shapes: dict, classifier: str | None, reduced: list[str]) -> list[str]:
    """The class-score outputs (``classifier``: the user's choice, or "none"), none of ``reduced`` (not measured)."""
    if classifier is None:
        return [name for name in classifier_outputs(proto, shapes) if name not in reduced]
    if classifier.lower() == "none":
        return []
    outputs = [o.name for o in proto.graph.output]
    if classifier not in outputs:
        raise OnnxRedundError(f"`classifier` {classifier!r} is not an output; outputs: {outputs}")
    if classifier in reduced:
        raise OnnxRedundError(
            f"`classifier` {classifier!r} is not measured: it holds no value per sample (a statistic over the batch) "
            "or its size depends on its values (after a NonMaxSuppression)"
        )
    if not is_class_scores(shapes.get(classifier, ())):
        raise OnnxRedundError(
            f"`classifier` {classifier!r} has shape {shapes.get(classifier)} per sample; class scores are "
            "(classes,) or (classes, 1, 1) per sample"
        )
    return [classifier]
