"""Make a fixed batch dynamic where that is provably safe, and put every output's samples first.

Many exports fix the batch to 1, often with Reshape shape constants that bake it in. We free the
input's batch dimension, turn a leading batch size in constant Reshape shapes into 0 ("copy the
input's dimension"), drop stale intermediate shapes, and then *check* the result: a batch of two
random samples must give the same outputs as two single-sample runs of the original model, joined
along each output's sample axis. If anything differs, the original model is kept and samples run one
at a time.

An output may hold its samples on a later axis: a recogniser's time-major (T, N, classes), what a CTC
loss takes. Found by that check where the batch was fixed, and from the declared shapes (the inputs'
batch name on a later axis) where it is free, such an output gets a Transpose that puts its samples
first (:func:`samples_first`; the output keeps its name), so that every analysis reads samples on the
first axis. An input declared with the batch on a later axis (an RNN's state, (layers, batch, hidden)) is
declared samples first and transposed back for the graph (:func:`inputs_samples_first`): the data gives it
(N, layers, hidden). :func:`samples_back` takes all those Transposes out again before a model is written.

An output of a free-batch model may hold no samples at all: a statistic over the whole batch (a batch mean,
the same shape at every batch size). :func:`batch_outputs` finds them (by shape, from runs at two batch sizes);
there is no value per sample to measure there, and the analyses leave them out.
"""

from __future__ import annotations

import logging
import re

import numpy as np
import onnx
import onnx_ir as ir

from onnxredund.engine.ir_edit import Names, constant_value, to_ir, to_proto
from onnxredund.engine.runtime import Runner
from onnxredund.errors import OnnxRedundError
from onnxredund.model import ConstantTable, copy_model, data_dependent, data_inputs, dims, later_batch_axes

__all__ = [
    "FREED_BATCH",
    "batch_outputs",
    "check_feeds",
    "fix_baked_batch",
    "free_fixed_states",
    "inputs_samples_first",
    "make_batch_dynamic",
    "moved_inputs",
    "moved_outputs",
    "rebatch",
    "samples_back",
    "samples_first",
]

log = logging.getLogger(__name__)

_CHECK_BATCH = 2
FREED_BATCH = "N"  # the name of a batch axis loading freed
_SAMPLES_FIRST = "onnxredund/samples_first/"  # the name of the Transpose that puts an output's samples first
_DECLARED = re.compile(r"samples on axis (\d+); declared ([0-9a-f]*)$")


def rebatch(proto: onnx.ModelProto, inputs: list[str], batch: int) -> onnx.ModelProto:
    """Copy of ``proto`` with a free batch dimension :data:`FREED_BATCH` on ``inputs`` and the outputs (the check is
    :func:`make_batch_dynamic`'s)."""
    model = to_ir(proto)
    graph = model.graph
    for value in [*(v for v in graph.inputs if v.name in inputs), *graph.outputs]:
        dims = list(value.shape.dims) if value.shape is not None else []
        if dims and dims[0] == batch:
            value.shape = ir.Shape([FREED_BATCH, *dims[1:]])
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


def check_feeds(proto: onnx.ModelProto, sizes: dict[str, list], batch: int | None = None) -> dict[str, np.ndarray]:
    """Seeded feeds of ``batch`` samples for every data input (uniform [0, 1) floats, zero integers); by default
    the first batch an input fixes (a positive size: Paddle writes -1 for a free one), else one."""
    if batch is None:
        fixed = [dims[0] for dims in sizes.values() if dims and isinstance(dims[0], int) and dims[0] > 0]
        batch = fixed[0] if fixed else 1
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


def _together_and_apart(
    batched: onnx.ModelProto, single: onnx.ModelProto, feeds: dict[str, np.ndarray], part=None
) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
    """What every batch check compares: the outputs of ``batched`` on ``feeds`` (:data:`_CHECK_BATCH` parts), and
    those of ``single`` on each part (``part(i)``, default the i-th sample's slice)."""
    part = part or (lambda i: _slice(feeds, i, i + 1))
    return _outputs(batched, feeds), [_outputs(single, part(i)) for i in range(_CHECK_BATCH)]


def _slice(feeds: dict[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
    return {name: value[start:stop] if value.ndim else value for name, value in feeds.items()}


def _joined_axis(together: np.ndarray, parts: list[np.ndarray], batch: int) -> int | None:
    """The axis along which the per-sample runs' values, joined, are the batched run's value: the first axis
    (where a merged batch, (N x 256, 2), joins too), else a later one of size ``batch`` in each part; None if
    none is."""
    if together.ndim == 0 or any(p.ndim != together.ndim for p in parts):
        return None
    for axis in range(together.ndim):
        if axis and any(p.shape[axis] != batch for p in parts):
            continue
        joined = np.concatenate(parts, axis=axis)
        if joined.shape == together.shape and np.allclose(together, joined, rtol=1e-4, atol=1e-5):
            return axis
    return None


def _declared_sample_axes(proto: onnx.ModelProto, sizes: dict[str, list]) -> dict[str, tuple[int, int]]:
    """Outputs whose declared shape holds the inputs' free batch on a later axis: name -> (axis, rank)."""
    batches = {d[0] for d in sizes.values() if d and isinstance(d[0], str) and d[0] not in ("", "?")}
    axes = {}
    for vi in proto.graph.output:
        shape = dims(vi) or []
        later = [j for j, d in enumerate(shape) if j and d in batches]
        if shape and shape[0] not in batches and len(later) == 1:
            axes[vi.name] = (later[0], len(shape))
    return axes


def _confirmed(
    proto: onnx.ModelProto, sizes: dict[str, list], axes: dict[str, tuple[int, int]]
) -> dict[str, tuple[int, int]]:
    """Of the outputs ``axes`` declares with their samples on a later axis, those whose samples do join there:
    two one-sample runs against one run of both (an exporter may name the axes wrong)."""
    if not axes:
        return axes
    feeds = check_feeds(proto, sizes, _CHECK_BATCH)
    try:
        together, apart = _together_and_apart(proto, proto, feeds)
    except (OnnxRedundError, ValueError) as e:
        log.debug("the declared sample axes could not be checked: %s", e)
        return {}
    names = [o.name for o in proto.graph.output]
    confirmed = {}
    for name, (axis, rank) in axes.items():
        k = names.index(name)
        if _joined_axis(together[k], [a[k] for a in apart], 1) == axis:
            confirmed[name] = (axis, rank)
        else:
            log.warning("output %r is declared with its samples on axis %d, but they do not join there", name, axis)
    return confirmed


def samples_first(
    proto: onnx.ModelProto, axes: dict[str, tuple[int, int]], declared: dict[str, onnx.TypeProto] | None = None
) -> onnx.ModelProto:
    """Copy of ``proto`` in which each output of ``axes`` (name -> (axis holding its samples, rank)) is the
    Transpose of what the graph computed, samples first; the output keeps its name, and is declared as
    ``declared`` (default: ``proto``'s outputs) has it with its axes in the new order, the samples' size free
    ("N"; the other sizes unknown where the declared rank is not the output's). The Transpose keeps the
    declared type for :func:`samples_back`."""
    model = to_ir(proto)
    graph = model.graph
    names = Names(graph)
    declared = declared or {vi.name: vi.type for vi in proto.graph.output}
    for i, value in enumerate(list(graph.outputs)):
        if value.name not in axes:
            continue
        axis, rank = axes[value.name]
        name = value.name
        value.name = names.fresh(f"{name}/samples_on_axis_{axis}")
        value.shape = None  # an inner tensor now, its declared shape possibly stale (of another rank)
        perm = [axis, *(d for d in range(rank) if d != axis)]
        note = f"samples on axis {axis}; declared {declared[name].SerializeToString().hex()}"
        node = ir.node("Transpose", [value], attributes={"perm": perm}, name=_SAMPLES_FIRST + name, doc_string=note)
        out = node.outputs[0]
        out.name, out.type = name, value.type
        sizes = [None if d == "?" else d for d in dims(onnx.helper.make_value_info(name, declared[name])) or []]
        out.shape = ir.Shape(["N", *(sizes[d] if len(sizes) == rank else None for d in perm[1:])])
        graph.append(node)
        graph.outputs[i] = out
        log.info("output %r holds its samples on axis %d: moved first for the analysis", name, axis)
    return to_proto(model)


def inputs_samples_first(
    proto: onnx.ModelProto, axes: dict[str, int] | None = None, batch: str | None = None
) -> onnx.ModelProto:
    """Copy of ``proto`` in which each data input of ``axes`` (name -> the axis holding its samples; default: those
    with the batch's name on a later axis, :func:`~onnxredund.model.later_batch_axes`) is declared with that axis
    first (its size ``batch`` where given), and a Transpose gives the graph what it read before (If/Loop bodies'
    reads included); ``proto`` itself where there is none. The Transpose keeps the declared type for
    :func:`samples_back`."""
    axes = later_batch_axes(proto.graph) if axes is None else axes
    if not axes:
        return proto
    declared = {vi.name: vi.type for vi in proto.graph.input}
    model = to_ir(proto)
    graph = model.graph
    names = Names(graph)
    for i, value in enumerate(list(graph.inputs)):
        if value.name not in axes:
            continue
        name, axis, shape = value.name, axes[value.name], list(value.shape)
        samples = shape[axis] if batch is None else batch
        first = ir.Value(name=None, type=value.type, shape=ir.Shape([samples, *shape[:axis], *shape[axis + 1 :]]))
        perm = [0 if j == axis else j + 1 if j < axis else j for j in range(len(shape))]
        note = f"samples on axis {axis}; declared {declared[name].SerializeToString().hex()}"
        node = ir.node("Transpose", [first], attributes={"perm": perm}, name=_SAMPLES_FIRST + name, doc_string=note)
        inner = node.outputs[0]
        inner.type, inner.shape = value.type, ir.Shape([*shape[:axis], samples, *shape[axis + 1 :]])
        ir.convenience.replace_all_uses_with(value, inner)
        graph.inputs[i] = first
        value.name = None
        first.name = name
        inner.name = names.fresh(f"{name}/batch_on_axis_{axis}")
        if len(graph):
            graph.insert_before(graph[0], node)
        else:
            graph.append(node)
        log.info("input %r holds its samples on axis %d: the data gives them first", name, axis)
    return to_proto(model)


def free_fixed_states(proto: onnx.ModelProto, sizes: dict[str, list], image: str) -> tuple[onnx.ModelProto, dict]:
    """Where the image input's batch is free and other inputs fix their first axis with one axis of size 1 after
    it (an RNN's state (layers, batch, hidden): AECMOS's GRU state h0 [4, 1, 64]; of rank 3 where the first axis
    is 1 too, Silero VAD v6's [1, 1, 128]), that axis is taken for their batch and they are given samples first
    (:func:`inputs_samples_first`). If one run of two samples gives what two one-sample runs of the file give,
    the batch stays free; else every input's batch is fixed to 1 (the samples run one at a time, each with its
    own state). Returns the model and the inputs' sizes (unchanged where no input is such a state)."""
    batch = sizes[image][0] if sizes[image] else None
    fixed = {
        n: d
        for n, d in sizes.items()
        if n != image and d and isinstance(d[0], int) and (d[0] > 1 or (d[0] == 1 and len(d) == 3))
    }
    if not isinstance(batch, str) or not fixed:
        return proto, sizes
    axes = {}
    for name, d in fixed.items():
        ones = [j for j in range(1, len(d)) if d[j] == 1]
        if len(ones) != 1:
            return proto, sizes
        axes[name] = ones[0]
    moved = inputs_samples_first(proto, axes, batch)
    given = {**sizes, **{n: [batch, *(d for j, d in enumerate(sizes[n]) if j != a)] for n, a in axes.items()}}
    feeds = check_feeds(moved, given, _CHECK_BATCH)

    def one(i: int) -> dict[str, np.ndarray]:  # sample i as the file takes it
        part = _slice(feeds, i, i + 1)
        return {n: np.moveaxis(v, 0, axes[n]) if n in axes else v for n, v in part.items()}

    try:
        together, apart = _together_and_apart(moved, proto, feeds, one)
        free = all(_joins(t, [a[k] for a in apart]) for k, t in enumerate(together))
    except (OnnxRedundError, ValueError) as e:
        log.debug("a batch of two with the states given samples first failed: %s", e)
        free = False
    for name, axis in axes.items():
        log.info(
            "input %r %s holds a batch of one on axis %d: the data gives it samples first", name, fixed[name], axis
        )
    if free:
        return moved, given
    ones = {n: [1, *d[1:]] if d and d[0] == batch else d for n, d in given.items()}
    return _batch_of_one(
        inputs_samples_first(proto, axes, 1), [n for n, d in given.items() if d and d[0] == batch]
    ), ones


def _batch_of_one(proto: onnx.ModelProto, inputs: list[str]) -> onnx.ModelProto:
    """``proto`` with the first axis of ``inputs`` fixed to 1 (in place; returned)."""
    for vi in proto.graph.input:
        if vi.name in inputs:
            first = vi.type.tensor_type.shape.dim[0]
            first.Clear()
            first.dim_value = 1
    return proto


def _joins(together: np.ndarray, parts: list[np.ndarray]) -> bool:
    """Whether one-sample runs' values make the batched run's: joined along an axis, or stacked where one sample's
    value has no batch axis (AECMOS's four scores, (4,) for one sample, (N, 4) for N)."""
    if _joined_axis(together, parts, 1) is not None:
        return True
    stacked = np.stack(parts) if all(p.shape == parts[0].shape for p in parts) else None
    return stacked is not None and stacked.shape == together.shape and np.allclose(together, stacked, 1e-4, 1e-5)


def _moves(graph) -> list:
    return [n for n in graph if n.op_type == "Transpose" and (n.name or "").startswith(_SAMPLES_FIRST)]


def moved_outputs(proto: onnx.ModelProto) -> set[str]:
    """The outputs whose samples :func:`samples_first` moved to the first axis."""
    outputs = {o.name for o in proto.graph.output}
    return {n.output[0] for n in _moves(proto.graph.node) if n.output[0] in outputs}


def moved_inputs(proto: onnx.ModelProto) -> dict[str, str]:
    """The inputs :func:`inputs_samples_first` declared samples first: name -> the tensor the graph reads instead
    (the input as the file declared it, its samples on a later axis)."""
    inputs = {i.name for i in proto.graph.input}
    return {n.input[0]: n.output[0] for n in _moves(proto.graph.node) if n.input[0] in inputs}


def samples_back(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``proto`` without the Transposes of :func:`samples_first` and :func:`inputs_samples_first` (a copy, where it
    has any): each output is again what the graph computes, each input what the graph reads, declared as the file
    declared them (an output's fixed batch left free)."""
    if not _moves(proto.graph.node):
        return proto
    model = to_ir(proto)
    graph = model.graph
    types = {}
    for node in _moves(graph):
        axis, declared = _DECLARED.search(node.doc_string or "").groups()
        out, inner = node.outputs[0], node.inputs[0]
        if inner.is_graph_input():  # an input's move: the graph reads the input again
            ir.convenience.replace_all_uses_with(out, inner)
            graph.remove(node)
            types[inner.name] = (int(axis), onnx.TypeProto.FromString(bytes.fromhex(declared)))
            continue
        graph.outputs[graph.outputs.index(out)] = inner
        graph.remove(node)
        name = out.name
        out.name = None
        inner.name = name
        types[name] = (int(axis), onnx.TypeProto.FromString(bytes.fromhex(declared)))
    back = to_proto(model)
    for vi in back.graph.input:
        if vi.name in types:
            vi.type.CopyFrom(types[vi.name][1])
    for vi in back.graph.output:
        if vi.name in types:
            axis, declared = types[vi.name]
            vi.type.CopyFrom(declared)
            dims = vi.type.tensor_type.shape.dim
            if len(dims) > axis and dims[axis].HasField("dim_value"):
                dims[axis].dim_param = FREED_BATCH  # the batch loading freed stays free
    return back


def batch_outputs(proto: onnx.ModelProto, sizes: dict[str, list]) -> list[str]:
    """The outputs of a free-batch model with no axis that holds its samples: none grows with the batch from two
    samples to three (a statistic over the batch: a mean, a count). Checked by shape, not by value, and only where
    an output's declared first axis is not the inputs' batch (one run of each size; not from one sample, which a
    Squeeze with no axes makes a scalar of)."""
    batches = {d[0] for d in sizes.values() if d and isinstance(d[0], str) and d[0] not in ("", "?")}
    suspects = [vi.name for vi in proto.graph.output if (dims(vi) or [None])[0] not in batches]
    if not suspects:
        return []
    try:
        two, three = (_outputs(proto, check_feeds(proto, sizes, n)) for n in (2, 3))
    except (OnnxRedundError, ValueError) as e:
        log.debug("the outputs' sample axes could not be checked: %s", e)
        return []
    names = [o.name for o in proto.graph.output]
    found = []
    for name in suspects:
        a, b = two[names.index(name)], three[names.index(name)]
        grows = a.ndim == b.ndim and any(2 * y == 3 * x for x, y in zip(a.shape, b.shape, strict=True))
        if not grows:
            found.append(name)
            log.warning("output %r holds no value per sample (%s at every batch size): left out", name, a.shape)
    return found


def fix_baked_batch(proto: onnx.ModelProto, sizes: dict[str, list]) -> tuple[onnx.ModelProto, dict[str, list]]:
    """A model that declares a free batch but bakes a batch of one into its constants (yolo5face's channel
    shuffles: Reshape to [1, 2, 32, 40, 40]) fails on a batch of two, or gives other values: its inputs' batch is
    fixed to 1 here, so that :func:`make_batch_dynamic` frees it where it safely can and runs the samples one at
    a time where not. Checked only where a Reshape of data has a constant target starting with 1; returns the
    model and the inputs' sizes, unchanged otherwise."""
    free = [n for n, d in sizes.items() if d and isinstance(d[0], str)]
    if not free or any(d and isinstance(d[0], int) for d in sizes.values()) or not _reshapes_to_one(proto):
        return proto, sizes
    feeds = check_feeds(proto, sizes, _CHECK_BATCH)
    try:
        together, apart = _together_and_apart(proto, proto, feeds)
        if all(_joined_axis(t, [a[k] for a in apart], 1) is not None for k, t in enumerate(together)):
            return proto, sizes
    except (OnnxRedundError, ValueError) as e:
        log.debug("a batch of two fails: %s", e)
    log.warning("the model declares a free batch but its constants fix it to 1 (a Reshape to [1, ...])")
    ones = {n: [1, *d[1:]] if n in free else d for n, d in sizes.items()}
    return _batch_of_one(copy_model(proto), free), ones


def _reshapes_to_one(proto: onnx.ModelProto) -> bool:
    """Whether a Reshape of data has a constant target of rank 2 or more starting with 1."""
    consts = ConstantTable(proto.graph)
    dependent = data_dependent(proto.graph)
    for node in proto.graph.node:
        if node.op_type != "Reshape" or node.input[0] not in dependent or node.input[1] not in consts:
            continue
        target = np.asarray(consts[node.input[1]])
        if target.ndim == 1 and target.size >= 2 and target[0] == 1:
            return True
    return False


def make_batch_dynamic(proto: onnx.ModelProto, sizes: dict[str, list]) -> tuple[onnx.ModelProto, bool]:
    """Return ``(model, batch_dynamic)``; see the module docstring.

    Args:
        sizes: every data input's dimensions ``[batch, *sample]`` (``[]`` for scalars).
    """
    fixed = {name: dims[0] for name, dims in sizes.items() if dims and isinstance(dims[0], int) and dims[0] > 0}
    if not fixed:
        axes = _confirmed(proto, sizes, _declared_sample_axes(proto, sizes))
        return (samples_first(proto, axes) if axes else proto), True
    batch = max(fixed.values())
    candidate = rebatch(proto, list(fixed), batch)
    feeds = check_feeds(proto, sizes, _CHECK_BATCH * batch)
    try:
        together, apart = _together_and_apart(
            candidate, proto, feeds, lambda i: _slice(feeds, i * batch, (i + 1) * batch)
        )
        axes = [_joined_axis(t, [a[k] for a in apart], batch) for k, t in enumerate(together)]
        ok = len(set(fixed.values())) == 1 and all(axis is not None for axis in axes)
    except (OnnxRedundError, ValueError) as e:
        log.debug("rebatching failed: %s", e)
        ok = False
    if ok:
        log.info("batch fixed to %d in the model: made dynamic (checked against per-sample runs)", batch)
        later = {
            vi.name: (axis, t.ndim) for vi, axis, t in zip(candidate.graph.output, axes, together, strict=True) if axis
        }
        declared = {vi.name: vi.type for vi in proto.graph.output}
        return (samples_first(candidate, later, declared) if later else candidate), True
    if batch == 1:  # a larger fixed batch is the caller's error to say
        log.warning("batch fixed to 1 and cannot be freed safely: running 1 sample at a time")
    return proto, False
