"""The :class:`Model` record and the queries that describe a model without running it: its data input and
layout, the per-sample shape of every tensor, and which output holds class scores.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import onnx

from onnxredund.errors import OnnxRedundError
from onnxredund.model.graph import ConstantTable, attribute, data_inputs, dims, fold_tensors, producers_of
from onnxredund.model.layers import CONV_OPS, ConvLayer
from onnxredund.words import short_name

__all__ = [
    "LAYOUTS",
    "Model",
    "ModelInput",
    "channel_axis",
    "classifier_output",
    "classifier_outputs",
    "image_layout",
    "input_sizes",
    "is_class_scores",
    "output_kind",
    "pick_image_input",
    "set_input_shape",
    "shape_table",
]

log = logging.getLogger(__name__)


#: the layouts of an image input, by rank: channels first, then channels last
LAYOUTS = {3: ("NCL", "NLC"), 4: ("NCHW", "NHWC"), 5: ("NCDHW", "NDHWC")}


@dataclass(frozen=True)
class ModelInput:
    """One data input of a model.

    Attributes:
        name: the graph input.
        dtype: its numpy dtype name ("float32", "int64", ...).
        sample_shape: its shape without the batch axis (() for a scalar).
        batched: whether axis 0 is the batch (scalars are not batched: the same value feeds every sample).
        layout: for an image input ("NCHW", "NHWC", "NCL", "NLC", "NCDHW", "NDHWC"), else "".
    """

    name: str
    dtype: str
    sample_shape: tuple[int, ...]
    batched: bool = True
    layout: str = ""

    @property
    def channels_last(self) -> bool:
        return self.layout in ("NHWC", "NLC", "NDHWC")

    @property
    def channels(self) -> int:
        """Channels of an image input (its channel axis' size)."""
        return self.sample_shape[-1] if self.channels_last else self.sample_shape[0]

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Spatial sizes of an image input, in the input's own order."""
        return self.sample_shape[:-1] if self.channels_last else self.sample_shape[1:]


@dataclass
class Model:
    """A validated model.

    Attributes:
        proto: the model, IR version <= 13, batch dynamic when ``batch_dynamic``.
        path: the file it came from (never written).
        inputs: every data input, in graph order.
        input_name: the image input: the one impulses go into and data without names feed.
        output_names: the graph outputs that hold a value per sample: what the analyses measure.
        classifiers: the outputs that hold class scores (N, classes), the prediction first; may be empty.
        layers: conv layers in graph order.
        batch_dynamic: whether batches of any size can run in one call.
        shapes: sample shape (no batch) of every tensor whose shape is known.
        declared: the types the file declares for its graph inputs and outputs, before any size was given or
            the batch freed (what a rewritten model keeps as its interface).
        contrib_ops: the onnxruntime contrib ops (com.microsoft) the file uses, past its QOperator ops (read in
            the QDQ form they compute); its FusedConvs are read as Conv (+ Add) (+ activation).
        folded_ops: the ops with which the file computes conv weights or biases from constants (a weight
            normalisation's ReduceL2, Div, Mul, say), folded to constants (:mod:`onnxredund.engine.fold`).
        batch_outputs: the graph outputs of a free-batch model that hold no value per sample (a statistic over
            the batch, the same shape at every batch size): left out of every measurement, kept in a pruned file.
        shaped_outputs: the graph outputs whose shape depends on the values (after a NonMaxSuppression, a
            NonZero): left out of every measurement, each with the float tensors measured in its place (what the
            first such op reads, outputs of :attr:`proto` too and in :attr:`output_names`; taken out before a
            model is written: :mod:`onnxredund.engine.post_processing`).
        given_inputs: the inputs the user gave one value for every sample (``input_values``) -> that value, read
            as the input's default by :attr:`proto` (:mod:`onnxredund.engine.given_inputs`).
        decided_ifs: the If nodes whose condition the input's sizes decide, each replaced in :attr:`proto` by the
            branch it takes ("If_117 (then branch, 1 conv inside)"; :mod:`onnxredund.engine.decided_ifs`).
        shape_constants: in a model run one sample at a time, the values of the tensors computed from the
            data's shapes alone (a RetinaFace's Upsample scales) that the rest reads: the same for every sample,
            they are constants of the analysis models, never fed per sample.
    """

    proto: onnx.ModelProto
    path: str
    inputs: list[ModelInput]
    input_name: str
    output_names: list[str]
    layers: list[ConvLayer]
    batch_dynamic: bool
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    classifiers: list[str] = field(default_factory=list)
    declared: dict[str, onnx.TypeProto] = field(default_factory=dict, repr=False, compare=False)
    contrib_ops: list[str] = field(default_factory=list)
    given_inputs: dict[str, np.ndarray] = field(default_factory=dict, compare=False)
    folded_ops: list[str] = field(default_factory=list)
    decided_ifs: list[str] = field(default_factory=list)
    batch_outputs: list[str] = field(default_factory=list)
    shaped_outputs: dict[str, list[str]] = field(default_factory=dict)
    shape_constants: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)
    _constants: ConstantTable | None = field(default=None, repr=False, compare=False)
    _analysis: onnx.ModelProto | None = field(default=None, repr=False, compare=False)
    _derived: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def analysis_proto(self) -> onnx.ModelProto:
        """The model the analysis models are cut from: :attr:`proto` with :attr:`shape_constants` as constants
        (the same nodes at the same indices)."""
        if self._analysis is None:
            self._analysis = fold_tensors(self.proto, self.shape_constants)
        return self._analysis

    @property
    def image_input(self) -> ModelInput:
        return self.input(self.input_name)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The image input's shape without the batch."""
        return self.image_input.sample_shape

    @property
    def layout(self) -> str:
        """The image input's layout."""
        return self.image_input.layout

    def input(self, name: str) -> ModelInput:
        """Look a data input up by name; a miss lists the inputs."""
        for i in self.inputs:
            if i.name == name:
                return i
        raise OnnxRedundError(f"no input {name!r}; the model's inputs are {[i.name for i in self.inputs]}")

    def layer(self, key: str | int) -> ConvLayer:
        """Look a layer up by index, name, short name (:func:`short_name`) or a part of its name that only it
        has; a miss lists the valid ones."""
        if isinstance(key, str) and key.strip().lstrip("-").isdigit():
            key = int(key)
        if isinstance(key, int):
            if 0 <= key < len(self.layers):
                return self.layers[key]
        else:
            for layer in self.layers:
                if layer.name == key:
                    return layer
            found = [layer for layer in self.layers if short_name(layer.name) == key] or [
                layer for layer in self.layers if key in layer.name
            ]
            if len(found) == 1:
                return found[0]
            if found:
                some = ", ".join(f"{layer.index}={short_name(layer.name)}" for layer in found[:5])
                raise OnnxRedundError(f"conv layer {key!r} names {len(found)} layers ({some}, ...); give its index")
        valid = ", ".join(f"{layer.index}={short_name(layer.name)}" for layer in self.layers)
        raise OnnxRedundError(f"no conv layer {key!r}; valid layers: {valid}")

    def pick_layers(self, keys: list[str | int]) -> list[ConvLayer]:
        """The layers named (or indexed) by ``keys``, each once, in the order first named."""
        picked = {}
        for key in keys:
            layer = self.layer(key.strip() if isinstance(key, str) else key)
            picked.setdefault(layer.index, layer)
        return list(picked.values())

    def derived(self, key: str, make: Callable[[], Any]) -> Any:
        """Something computed from the model once and kept with it (``make()`` the first time ``key`` is asked
        for): what must not change once made, such as the analysis model's IR that builders read, never edit."""
        if key not in self._derived:
            self._derived[key] = make()
        return self._derived[key]

    def constant(self, name: str) -> np.ndarray | None:
        """The value of a constant tensor (initializer, Constant node, Identity of one), or None."""
        if self._constants is None:
            self._constants = ConstantTable(self.proto.graph)
        return self._constants.get(name)


_PROBABILITIES = ("Softmax", "LogSoftmax")


def is_class_scores(sample_shape: tuple) -> bool:
    """Whether one sample of an output holds class scores: (classes,), or (classes, 1, ...) (a classifier head
    that ends in a 1 x 1 conv or a global pooling, not flattened: (N, 1000, 1, 1))."""
    return len(sample_shape) >= 1 and sample_shape[0] >= 2 and all(d == 1 for d in sample_shape[1:])


def classifier_outputs(proto: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """The outputs that hold class scores (N, classes), or (N, classes, 1, 1) where the head is not flattened: those
    a Softmax or LogSoftmax writes (or a softmax written out), or else the first output of that shape a learned
    map makes (logits). A regression head beside a softmax head (a face detector's boxes) is not one, nor are
    pooled features (an embedding).
    """
    made_by = {o: n for n in proto.graph.node for o in n.output}
    two_d = [
        o.name
        for o in proto.graph.output
        if is_class_scores(shapes.get(o.name, ())) and _classes_are_channels(made_by, shapes, o.name)
    ]
    soft = [name for name in two_d if _probabilities(made_by, made_by.get(name))]
    return soft or [name for name in two_d if _scored(proto.graph, made_by, name)][:1]


#: ops that carry a reduction's result to the shape it divides (jax2tf: a Reshape, then an Expand)
_BROADCASTING = frozenset({"Reshape", "Expand", "Unsqueeze", "Identity", "Cast"})


def _probabilities(made_by: dict[str, onnx.NodeProto], node: onnx.NodeProto | None) -> bool:
    """Whether ``node`` writes probabilities: a Softmax or a LogSoftmax, or a softmax written out, an Exp divided
    by its own sum (jax2tf's, a hand-written head's)."""
    if node is None:
        return False
    if node.op_type in _PROBABILITIES:
        return True
    if node.op_type != "Div" or len(node.input) != 2 or getattr(made_by.get(node.input[0]), "op_type", "") != "Exp":
        return False
    total = made_by.get(node.input[1])
    while total is not None and total.op_type in _BROADCASTING:
        total = made_by.get(total.input[0])
    return total is not None and total.op_type == "ReduceSum" and total.input[0] == node.input[0]


#: ops between a classifier's scores and the output: reshapes, pooling, an activation, a quantization
_PASSING = frozenset(
    {"Flatten", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Cast", "Relu", "Clip"}
    | {"QuantizeLinear", "DequantizeLinear"}
    | {"GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax", "AveragePool", "MaxPool"}
)
#: ops that map features to scores: a dense layer (MatMul then a bias Add), a 1 x 1 conv (SqueezeNet), a sigmoid
_SCORING = frozenset({"Gemm", "MatMul", "Conv", "FusedConv", "Sigmoid", "Softmax", "LogSoftmax"})


_MAPS = frozenset({"Gemm", "MatMul", "Conv", "FusedConv"})


def _classes_are_channels(made_by: dict[str, onnx.NodeProto], shapes: dict, name: str) -> bool:
    """Whether the classes of output ``name`` are the channels of the learned map that makes them (a conv's output
    channels, a dense layer's features), not its positions: a face detector's per-anchor scores, a 1-channel
    conv's 40 x 40 map transposed and reshaped to (1600, 1), are no classifier. True where it cannot be told."""
    classes = shapes[name][0]
    node = made_by.get(name)
    while node is not None and node.op_type not in _MAPS and node.input:
        node = made_by.get(node.input[0])
    made = shapes.get(node.output[0]) if node is not None else None
    if not made:
        return True
    channels = made[0] if node.op_type in ("Conv", "FusedConv") else made[-1]
    return channels == classes


def _scored(graph: onnx.GraphProto, made_by: dict[str, onnx.NodeProto], name: str) -> bool:
    """Whether output ``name`` is made by a learned map to scores (past reshapes and pooling), not pooled features:
    a ResNet trunk's embedding (Flatten of a GlobalAveragePool of a Relu of a residual Add) is not class scores.
    ``made_by``: each tensor's producer."""
    constants = {t.name for t in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    node = made_by.get(name)
    while node is not None and node.op_type in _PASSING:
        node = made_by.get(node.input[0])
    if node is None:
        return True  # a graph input or a constant: nothing to say otherwise
    if node.op_type == "Add":  # a dense layer's bias after its MatMul
        inputs = [made_by.get(t) for t in node.input if t not in constants]
        return len(inputs) == 1 and inputs[0] is not None and inputs[0].op_type in _SCORING
    return node.op_type in _SCORING


def classifier_output(model: Model) -> str | None:
    """The output whose top-1 is the prediction (labels are checked against it), or None."""
    return model.classifiers[0] if model.classifiers else None


def output_kind(proto: onnx.ModelProto, name: str) -> str:
    """What a classifier output holds: "probabilities", "log_probabilities" or "logits" (what writes it)."""
    op = next((n.op_type for n in proto.graph.node if name in n.output), "")
    return {"Softmax": "probabilities", "LogSoftmax": "log_probabilities"}.get(op, "logits")


_IMAGE_RANKS = (3, 4, 5)
_NEEDS_IMAGE = "an image tensor N x C x H x W (or N x H x W x C), N x C x L or N x C x D x H x W"


def _dtype(vi: onnx.ValueInfoProto) -> str:
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)).name
    except (KeyError, TypeError):
        return "unknown"


def _rank(vi: onnx.ValueInfoProto) -> int:
    return len(dims(vi) or [])


def pick_image_input(proto: onnx.ModelProto, path: Path, name: str | None = None) -> str:
    """The input impulses go into: ``name``, or the only float32 input of rank 3 to 5; or a model's only input
    where it holds integers (token ids or bytes that the graph embeds before its convs) or is (N, L) floats (a
    raw signal): the main input, not an image; the impulses then go to the first conv's input.

    Raises:
        OnnxRedundError: no such input, none of image rank, or several without ``name``.
    """
    inputs = data_inputs(proto.graph)
    if name is not None:
        candidates = [i for i in inputs if i.name == name]
        if not candidates:
            names = [i.name for i in inputs]
            raise OnnxRedundError(f"`impulse_input` {name!r} is not an input of {path}; its inputs: {names}")
    else:
        candidates = [i for i in inputs if _rank(i) in _IMAGE_RANKS and _dtype(i) == "float32"]
        first = _first_conv_inputs(proto.graph)
        signals = [i for i in inputs if i.name in first and _rank(i) == 2 and _dtype(i) == "float32"]
        if len(signals) == 1 and not any(i.name in first for i in candidates):
            candidates = signals  # Silero VAD's audio (N, L) beside its state (N, 2, 128), which no conv reads first
        elif len(candidates) > 1 and sum(i.name in first for i in candidates) == 1:
            candidates = [i for i in candidates if i.name in first]
        if len(candidates) > 1:
            names = [i.name for i in candidates]
            raise OnnxRedundError(f"{path} has {len(names)} image inputs {names}; pass `impulse_input` NAME")
        if not candidates and len(inputs) == 1:
            candidates = inputs  # one input: say what is wrong with it
    if not candidates:
        shapes = {i.name: dims(i) for i in inputs}
        raise OnnxRedundError(f"{path} has no input of image shape (inputs {shapes}); onnxredund needs {_NEEDS_IMAGE}")
    vi = candidates[0]
    if _dtype(vi) in ("float16", "bfloat16", "float64"):
        raise OnnxRedundError(
            f"input {vi.name!r} is {_dtype(vi)}; onnxredund feeds float32 images: convert the model with float32 "
            "inputs and outputs (its inside may stay half precision, as convert_float_to_float16(keep_io_types=True) "
            "writes it)"
        )
    integers = _dtype(vi) != "unknown" and np.dtype(_dtype(vi)).kind in "iu"
    if integers and not any(n.op_type in CONV_OPS and n.input[:1] == [vi.name] for n in proto.graph.node):
        if not _rank(vi):
            raise OnnxRedundError(f"input {vi.name!r} is an integer scalar; onnxredund needs a batch of samples")
        return vi.name  # tokens the graph embeds: the data's input, not an image
    if _dtype(vi) == "float32" and _rank(vi) == 2:
        return vi.name  # a signal or a feature vector (N, L), made into the convs' channels by the graph
    if _dtype(vi) != "float32":
        raise OnnxRedundError(f"input {vi.name!r} is not float32; onnxredund analyses float image models")
    if _rank(vi) not in _IMAGE_RANKS:
        raise OnnxRedundError(f"input {vi.name!r} has shape {dims(vi)}; onnxredund needs {_NEEDS_IMAGE}")
    return vi.name


def _first_conv_inputs(graph: onnx.GraphProto) -> set[str]:
    """The graph inputs that the first conv (in graph order) reads, through the nodes before it."""
    first = next((n for n in graph.node if n.op_type in CONV_OPS), None)
    if first is None:
        return set()
    producers = producers_of(graph)
    seen, todo = set(), [first.input[0]]
    while todo:
        t = todo.pop()
        if t in seen or not t:
            continue
        seen.add(t)
        if t in producers:
            todo.extend(graph.node[producers[t]].input)
    return seen & {i.name for i in graph.input}


def later_batch_axes(graph: onnx.GraphProto) -> dict[str, int]:
    """The data inputs with the batch's name (a free first size of another input) on a later axis (an RNN's state,
    (layers, batch, hidden)): name -> that axis."""
    shapes = {i.name: dims(i) or [] for i in data_inputs(graph)}
    batches = {d[0] for d in shapes.values() if d and isinstance(d[0], str)} - {"?", ""}  # '?': any free size
    axes = {}
    for name, shape in shapes.items():
        later = [j for j, d in enumerate(shape) if j and d in batches and d != shape[0]]
        if later:
            axes[name] = later[0]
    return axes


def input_sizes(proto: onnx.ModelProto, image: str, given: dict[str | None, tuple[int, ...]]) -> dict[str, list]:
    """Every data input's dimensions ``[batch, *sample]`` (``[]`` for a scalar) with every sample size known.

    Args:
        image: the image input.
        given: sample sizes from --input-shape, by input name (None: the image input).

    Raises:
        OnnxRedundError: free sizes not given, sizes that contradict the model, or a name that is no input.
    """
    inputs = {i.name: i for i in data_inputs(proto.graph)}
    unknown = [n for n in given if n is not None and n not in inputs]
    if unknown:
        raise OnnxRedundError(f"`input_shape` names {unknown[0]!r}, which is not an input; inputs: {list(inputs)}")
    sizes = {}
    kernel = _first_kernel(proto.graph)
    for name, vi in inputs.items():
        shape = dims(vi)
        if shape is None:
            raise OnnxRedundError(f"input {name!r} has no shape in the model; re-export it with shapes")
        want = given.get(name, given.get(None) if name == image else None)
        sizes[name] = _with_sizes(name, shape, want, name == image, kernel)
    return sizes


def _first_kernel(graph: onnx.GraphProto) -> int:
    """The longest kernel side of the first conv (in graph order) whose weights are constant; 0 if none."""
    table = ConstantTable(graph)
    for node in graph.node:
        if node.op_type in CONV_OPS and len(node.input) > 1 and node.input[1] in table:
            return max(np.shape(table[node.input[1]])[2:], default=0)
    return 0


def _fits(want: tuple[int, ...], sample: list) -> bool:
    return all(not (isinstance(have, int) and have > 0) or have == w for w, have in zip(want, sample, strict=True))


def _in_model_order(name: str, want: tuple[int, ...], sample: list) -> tuple[int, ...]:
    """``want`` in the order of the input's own axes: as given, or, where only the other order fits the model's
    fixed sizes, moved between channels first and channels last (said in the log)."""
    if _fits(want, sample):
        return want
    others = [(want[1:] + want[:1], "channels first", "last"), (want[-1:] + want[:-1], "channels last", "first")]
    for other, given_as, model_has in others if len(want) >= 3 else []:
        if _fits(other, sample):
            log.warning(
                "`input_shape` %s taken as %s: input %r has its channels %s, so it gets %s",
                "x".join(map(str, want)),
                given_as,
                name,
                model_has,
                "x".join(map(str, other)),
            )
            return other
    given = "x".join(map(str, want))
    raise OnnxRedundError(f"`input_shape` {given} contradicts the model's fixed input {name!r} {sample}")


def _with_sizes(name: str, shape: list, want: tuple[int, ...] | None, is_image: bool = True, kernel: int = 0) -> list:
    if not shape:
        return []
    sample = shape[1:]
    if want is not None:
        if len(want) != len(sample):
            raise OnnxRedundError(
                f"`input_shape` for {name!r} needs {len(sample)} sizes like {'x'.join(['8'] * len(sample))}, got "
                f"{'x'.join(map(str, want))}"
            )
        sample = list(_in_model_order(name, want, sample))
    if any(not isinstance(d, int) or d <= 0 for d in sample):
        # a signal (N, L) that the graph frames for a first conv of a long kernel (an STFT's 256 taps) needs more
        free = str(max(64, 2 * kernel)) if len(sample) == 1 else "64"
        example = "x".join(str(d) if isinstance(d, int) and d > 0 else free for d in sample)
        example = example if is_image else f"{name}={example}"  # a bare --input-shape is the image input's
        least = f"; the first conv's kernel spans {kernel}" if len(sample) == 1 and kernel > 32 else ""
        raise OnnxRedundError(
            f"input {name!r} has free dimensions {shape}; pass `input_shape` {example} (its sizes after the batch"
            f"{least})"
        )
    return [shape[0], *sample]


def set_input_shape(proto: onnx.ModelProto, name: str, sizes: list) -> None:
    """Write ``sizes`` into the graph input ``name`` in place (non-positive or symbolic sizes become 'N')."""
    vi = next(i for i in proto.graph.input if i.name == name)
    for d, v in zip(vi.type.tensor_type.shape.dim, sizes, strict=True):
        d.Clear()
        if isinstance(v, int) and v > 0:
            d.dim_value = v
        else:
            d.dim_param = "N"


_AXIS_KEEPING = frozenset(
    {
        "Identity",
        "Cast",
        "QuantizeLinear",
        "DequantizeLinear",
        "Relu",
        "LeakyRelu",
        "Clip",
        "Sigmoid",
        "Tanh",
        "HardSigmoid",
        "HardSwish",
        "Elu",
        "Selu",
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Pow",
        "Sqrt",
        "Neg",
        "Abs",
        "Exp",
        "Log",
        "Max",
        "Min",
        "Sum",
        "Mean",
        "PRelu",
        "BatchNormalization",
        "InstanceNormalization",
        "Slice",
        "Pad",
        "Concat",
        "Split",
        "MaxPool",
        "AveragePool",
        "LpPool",
        "Resize",
        "Upsample",
        "Dropout",
        "Floor",
        "Ceil",
        "Round",
        "Where",
    }
)


def _reshape_axes(before: tuple, after: tuple, axes: tuple) -> tuple | None:
    """For a Reshape of per-sample shapes ``before`` -> ``after`` that only moves, drops or inserts size-1 axes,
    the input axis behind each output axis given ``axes`` for its input (the batch's first; -1: an axis the graph
    inserted), else None.

    The axes longer than 1 keep their order. A size-1 axis holds no order: one of the input's own goes to the
    one size-1 axis out where there is one of each; otherwise every size-1 axis out is taken for an inserted one
    (-1: a conv reading it has one channel, which the loader takes for the input's size-1 axis).
    """
    kept_from = [i for i, d in enumerate(before) if d != 1]
    kept_to = [i for i, d in enumerate(after) if d != 1]
    if [before[i] for i in kept_from] != [after[i] for i in kept_to]:
        return None
    ones_to = [i for i, d in enumerate(after) if d == 1]
    own = [axes[i + 1] for i, d in enumerate(before) if d == 1 and axes[i + 1] != -1]
    out = [axes[0]] + [own[0] if len(own) == len(ones_to) == 1 else -1] * len(after)
    for src, dst in zip(kept_from, kept_to, strict=True):
        out[dst + 1] = axes[src + 1]
    return tuple(out)


class _Flat(NamedTuple):
    """A sample flattened by a Reshape (a min-max normalisation over all of it, say): the shape it had and its
    axes then, given back by a Reshape to that shape."""

    shape: tuple
    axes: tuple


class _Merged(NamedTuple):
    """A sample whose leading axes a Reshape merged into the batch, its last axis kept (TensorFlow's Tensordot:
    (N, H, W, 3) -> (N x H x W, 3), a MatMul over the channels, and back): the shape it had and its axes then,
    given back by a Reshape to that shape (its last axis may have another size after the MatMul)."""

    shape: tuple
    axes: tuple


#: ops whose output is a statistic of their input (a min, a norm): it is broadcast back, but says nothing of the axes
_REDUCTIONS = frozenset(
    {"ReduceMin", "ReduceMax", "ReduceMean", "ReduceSum", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSumExp"}
    | {"ReduceSumSquare", "ArgMin", "ArgMax", "Shape", "Size"}
)


def channel_axis(graph: onnx.GraphProto, name: str, shapes: dict[str, tuple[int, ...]]) -> int | None:
    """The axis of input ``name`` that the convs it reaches read as channels.

    Found by following the input through axis-keeping ops, Transposes, Reshapes that only move, drop or insert
    size-1 axes (TensorFlow exporters write NHWC -> NCHW of one channel so; -1 where the convs read an axis the
    graph inserted) and a flattening Reshape undone by another. A reduction that keeps its axes is followed weakly:
    a conv it reaches tells the axis (a mean over the channels, a grayscale conversion, leaves them at size 1 where
    they were), a statistic broadcast back (a sample's min or max) or an op not understood after it tells nothing.
    None where paths disagree or a shape-changing op stands in the way.
    """
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for t in node.input:
            consumers.setdefault(t, []).append(node)
    constants = ConstantTable(graph)
    found: set[int | None] = set()
    # (tensor, its axes, weak): a weak path went through a reduction that kept its axes (XFeat's grayscale, a mean
    # over the channels): a conv it reaches says which axis the channels are, anything else it reaches says nothing
    stack: list = [(name, tuple(range(len(shapes[name]) + 1)), False)]
    seen = set()
    while stack:
        tensor, axes, weak = item = stack.pop()
        if item in seen:
            continue
        seen.add(item)
        for node in consumers.get(tensor, []):
            if node.op_type in _REDUCTIONS:
                if node.op_type.startswith("Reduce") and attribute(node, "keepdims", 1) and node.input[0] == tensor:
                    stack.append((node.output[0], axes, True))
                continue
            if node.op_type == "Reshape" and node.input[0] == tensor:
                before, after = shapes.get(tensor), shapes.get(node.output[0])
                stack.append((node.output[0], _reshaped(before, after, axes), weak))
            elif node.op_type in _AXIS_KEEPING:
                stack.extend((o, axes, weak) for o in node.output if o)
            elif node.op_type == "MatMul" and node.input[0] == tensor and _matrix(constants, node.input[1]):
                stack.append((node.output[0], axes, weak))  # mixes the last axis, as a 1 x 1 conv mixes channels
            elif (isinstance(axes, (_Flat, _Merged)) or axes is None) and not weak:
                found.add(None)
            elif node.op_type in CONV_OPS and isinstance(axes, tuple):
                if node.input[0] == tensor or not weak:
                    found.add(axes[1] if node.input[0] == tensor else None)
            elif node.op_type == "Transpose" and isinstance(axes, tuple):
                perm = attribute(node, "perm", list(range(len(axes)))[::-1])
                stack.append((node.output[0], tuple(axes[p] for p in perm), weak))
            elif node.op_type in ("Unsqueeze", "Squeeze") and node.input[0] == tensor and isinstance(axes, tuple):
                stack.append((node.output[0], _squeezed_axes(node, axes, constants), weak))
            elif not weak:
                found.add(None)
    return found.pop() if len(found) == 1 else None


def _matrix(constants: ConstantTable, name: str) -> bool:
    return name in constants and np.ndim(constants[name]) == 2


def _reshaped(before: tuple | None, after: tuple | None, axes) -> tuple | _Flat | _Merged | None:
    """The axes after a Reshape of per-sample shapes ``before`` -> ``after`` (see :func:`channel_axis`)."""
    if axes is None or not before or not after:
        return None
    if isinstance(axes, _Flat):
        return axes.axes if after == axes.shape else None
    if isinstance(axes, _Merged):
        return axes.axes if after[:-1] == axes.shape[:-1] and len(after) == len(axes.shape) else None
    if len(after) == 1 and len(before) > 1 and after[0] == int(np.prod(before)):
        return _Flat(before, axes)
    if len(after) == 1 and len(before) > 1 and after[0] == before[-1]:  # the rest merged into the batch
        return _Merged(before, axes)
    return _reshape_axes(before, after, axes)


def _squeezed_axes(node: onnx.NodeProto, axes: tuple, constants: ConstantTable) -> tuple | None:
    """The input axis behind each axis of an Unsqueeze's or Squeeze's output (-1: an axis it inserted), given
    ``axes`` for its input; None where the axes it works on are not constants (or, for a Squeeze, not given)."""
    if len(node.input) > 1 and node.input[1]:  # opset 13 on: an input
        if node.input[1] not in constants:
            return None
        moved = [int(a) for a in np.asarray(constants[node.input[1]]).ravel()]
    else:
        moved = attribute(node, "axes", None)
        if moved is None:
            return None
    if node.op_type == "Squeeze":
        gone = {a % len(axes) for a in moved}
        return tuple(a for i, a in enumerate(axes) if i not in gone)
    rank = len(axes) + len(moved)
    inserted = {a % rank for a in moved}
    rest = iter(axes)
    return tuple(-1 if i in inserted else next(rest) for i in range(rank))


def image_layout(rank: int, axis: int | None, given: str | None, name: str, sample: tuple = ()) -> str:
    """The layout of an image input of ``rank``: the one given (--layout nchw|nhwc), else the one its channel
    axis shows; where the graph cannot tell, the one its ``sample`` sizes show (one end at most 4, the other at
    least 16: 240 x 320 x 3 is channels last), else channels first; both said in a warning."""
    first, last = LAYOUTS[rank]
    if given is not None:
        return first if given.lower() in ("nchw", "channels_first") else last
    if axis == 1:
        return first
    if axis == rank - 1:
        return last
    ends = [d if isinstance(d, int) else 0 for d in (sample[:1] + sample[-1:])] if len(sample) >= 2 else []
    if ends and ends[1] in range(1, 5) and ends[0] >= 16:
        log.warning(
            "cannot tell from the graph whether input %r has its channels first or last; its sizes %s say last: "
            "assuming %s (pass `layout` nchw if they are first)",
            name,
            "x".join(map(str, sample)),
            last,
        )
        return last
    log.warning(
        "cannot tell from the graph whether input %r has its channels first or last; assuming %s "
        "(pass `layout` nhwc if they are last)",
        name,
        first,
    )
    return first


def shape_table(proto: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Per-sample shape (no batch) of every tensor whose sizes past the batch are all known in ``proto``."""
    g = proto.graph
    table = {}
    for vi in [*g.input, *g.value_info, *g.output]:
        shape = dims(vi)
        if shape and all(isinstance(d, int) and d > 0 for d in shape[1:]):
            table[vi.name] = tuple(shape[1:])
    return table
