"""The README's table of ops and what `prune` does with each: one row, one test. A conv ``conv1`` (4 channels)
feeds the op; the rows that prune remove channels 1 and 2 and compare every output with the original where those
channels are zeroed at their consumers (and check that the zeroing mattered); the rows that refuse assert the
group's reason."""

from __future__ import annotations

import numpy as np
import pytest
from builders import make_model
from onnx import helper
from prunable import group_of, prune_and_compare

from onnxredund.engine import op_rules
from onnxredund.engine.channel_groups import channel_groups
from onnxredund.engine.loading import load_model_proto

S = 6  # spatial size
RNG = np.random.default_rng(7)


def _w(*shape) -> np.ndarray:
    return RNG.normal(size=shape).astype(np.float32)


def _conv1() -> tuple[list, dict]:
    return [helper.make_node("Conv", ["x", "w1", "b1"], ["p"], name="conv1", pads=[1, 1, 1, 1])], {
        "w1": _w(4, 2, 3, 3),
        "b1": _w(4),
    }


def _conv2(source: str, channels: int = 4) -> tuple[list, dict]:
    return [helper.make_node("Conv", [source, "w2"], ["y"], name="conv2")], {"w2": _w(3, channels, 1, 1)}


def _model(nodes, inits, out_shape, opset: int = 17, batch="N", first=None):
    head, head_inits = first or _conv1()
    return make_model(head + nodes, [("x", [batch, 2, S, S])], [("y", out_shape)], {**head_inits, **inits}, opset=opset)


def _then_conv2(middle: list, inits: dict, spatial: int = S, **kwargs):
    tail, tail_inits = _conv2("m")
    return _model(middle + tail, {**inits, **tail_inits}, ["N", 3, spatial, spatial], **kwargs)


def _dense(features_node: list, width: int, op: str = "MatMul", inits: dict | None = None):
    if op == "Gemm":
        head = [helper.make_node("Gemm", ["f", "fc", "fcb"], ["y"], name="fc", transB=1)]
        weights = {"fc": _w(5, width), "fcb": _w(5)}
    else:
        head = [helper.make_node("MatMul", ["f", "fc"], ["y"], name="fc")]
        weights = {"fc": _w(width, 5)}
    return _model(features_node + head, {**(inits or {}), **weights}, ["N", 5])


def _transposed_producer():
    nodes = [helper.make_node("ConvTranspose", ["x", "wt", "bt"], ["p"], name="conv1", strides=[2, 2])]
    return nodes, {"wt": _w(2, 4, 2, 2), "bt": _w(4)}


PRUNED = {
    "Conv (consumer)": lambda: _model(*_conv2("p"), ["N", 3, S, S]),
    "Conv, depthwise": lambda: _then_conv2(
        [helper.make_node("Conv", ["p", "wd"], ["m"], group=4, pads=[1, 1, 1, 1])], {"wd": _w(4, 1, 3, 3)}
    ),
    "ConvTranspose (consumer)": lambda: _model(
        [helper.make_node("ConvTranspose", ["p", "wt"], ["y"], name="up", strides=[2, 2])],
        {"wt": _w(4, 3, 2, 2)},
        ["N", 3, 2 * S, 2 * S],
    ),
    "ConvTranspose (producer)": lambda: _model(
        [helper.make_node("Relu", ["p"], ["m"]), *_conv2("m")[0]],
        _conv2("m")[1],
        ["N", 3, 2 * S, 2 * S],
        first=_transposed_producer(),
    ),
    "BatchNormalization": lambda: _then_conv2(
        [helper.make_node("BatchNormalization", ["p", "g", "b", "mu", "var"], ["m"])],
        {"g": _w(4), "b": _w(4), "mu": _w(4), "var": np.abs(_w(4)) + 0.5},
    ),
    "InstanceNormalization": lambda: _then_conv2(
        [helper.make_node("InstanceNormalization", ["p", "g", "b"], ["m"])], {"g": _w(4), "b": _w(4)}
    ),
    "PRelu, per-channel Mul/Add/Div constants": lambda: _then_conv2(
        [
            helper.make_node("PRelu", ["p", "slope"], ["q1"]),
            helper.make_node("Mul", ["q1", "k1"], ["q2"]),
            helper.make_node("Add", ["k2", "q2"], ["q3"]),
            helper.make_node("Div", ["q3", "k3"], ["m"]),
        ],
        {"slope": _w(4, 1, 1), "k1": _w(1, 4, 1, 1), "k2": _w(4, 1, 1), "k3": np.abs(_w(1, 4, 1, 1)) + 1},
    ),
    "QuantizeLinear/DequantizeLinear of activations, per tensor": lambda: _then_conv2(
        [
            helper.make_node("QuantizeLinear", ["p", "qs"], ["q"]),
            helper.make_node("DequantizeLinear", ["q", "qs"], ["m"]),
        ],
        {"qs": np.float32(0.05)},
    ),
    "QuantizeLinear/DequantizeLinear of activations, per channel": lambda: _then_conv2(
        [
            helper.make_node("QuantizeLinear", ["p", "qs"], ["q"], axis=1),
            helper.make_node("DequantizeLinear", ["q", "qs"], ["m"], axis=1),
        ],
        {"qs": np.array([0.05, 0.02, 0.1, 0.07], np.float32)},
    ),
    "Add of two convs (residual)": lambda: _then_conv2(
        [
            helper.make_node("Conv", ["x", "wr"], ["r"], name="convr", pads=[1, 1, 1, 1]),
            helper.make_node("Add", ["p", "r"], ["m"]),
        ],
        {"wr": _w(4, 2, 3, 3)},
    ),
    "Concat on channels": lambda: _model(
        [helper.make_node("Concat", ["p", "x"], ["m"], axis=1), *_conv2("m", 6)[0]], _conv2("m", 6)[1], ["N", 3, S, S]
    ),
    "Split and Slice on channels": lambda: _model(
        [
            helper.make_node("Split", ["p", "parts"], ["s1", "s2"], axis=1),
            helper.make_node("Slice", ["s2", "st", "en", "ax"], ["s3"]),
            helper.make_node("Concat", ["s1", "s3"], ["m"], axis=1),
            *_conv2("m", 3)[0],
        ],
        {"parts": np.array([2, 2]), "st": np.array([0]), "en": np.array([1]), "ax": np.array([1]), **_conv2("m", 3)[1]},
        ["N", 3, S, S],
    ),
    "Slice of every axis, the batch whole (jax2tf's strided slice)": lambda: _model(
        [helper.make_node("Slice", ["p", "st", "en", "ax"], ["m"]), *_conv2("m", 3)[0]],
        {
            "st": np.array([0, 0, 0, 0]),
            "en": np.array([1_000_000_000, 3, 2**31 - 1, 2**31 - 1]),
            "ax": np.array([0, 1, 2, 3]),
            **_conv2("m", 3)[1],
        },
        ["N", 3, S, S],
    ),
    "Flatten -> Gemm": lambda: _dense([helper.make_node("Flatten", ["p"], ["f"])], 4 * S * S, "Gemm"),
    "Transpose(0, 2, 3, 1) -> Flatten -> MatMul (Keras)": lambda: _dense(
        [helper.make_node("Transpose", ["p"], ["t"], perm=[0, 2, 3, 1]), helper.make_node("Flatten", ["t"], ["f"])],
        4 * S * S,
    ),
    "Transpose(0, 2, 3, 1) -> Reshape -> MatMul (tf2onnx)": lambda: _dense(
        [
            helper.make_node("Transpose", ["p"], ["t"], perm=[0, 2, 3, 1]),
            helper.make_node("Reshape", ["t", "shape"], ["f"]),
        ],
        4 * S * S,
        inits={"shape": np.array([-1, 4 * S * S])},
    ),
    "GlobalAveragePool -> Squeeze -> MatMul": lambda: _dense(
        [helper.make_node("GlobalAveragePool", ["p"], ["gp"]), helper.make_node("Squeeze", ["gp", "axes"], ["f"])],
        4,
        inits={"axes": np.array([2, 3])},
    ),
    "ReduceMean -> Unsqueeze -> Flatten -> Gemm": lambda: _dense(
        [
            helper.make_node("ReduceMean", ["p"], ["rm"], axes=[2, 3], keepdims=0),
            helper.make_node("Unsqueeze", ["rm", "axes"], ["u"]),
            helper.make_node("Flatten", ["u"], ["f"]),
        ],
        4,
        "Gemm",
        inits={"axes": np.array([2])},
    ),
    "Resize (scales)": lambda: _then_conv2(
        [helper.make_node("Resize", ["p", "", "sc"], ["m"], mode="nearest")],
        {"sc": np.array([1, 1, 2, 2], np.float32)},
        2 * S,
    ),
    "Upsample (opset 9)": lambda: _then_conv2(
        [helper.make_node("Upsample", ["p", "sc"], ["m"], mode="nearest")],
        {"sc": np.array([1, 1, 2, 2], np.float32)},
        2 * S,
        opset=9,
    ),
    "Pad (constant pads on space)": lambda: _then_conv2(
        [helper.make_node("Pad", ["p", "pads"], ["m"])], {"pads": np.array([0, 0, 1, 1, 0, 0, 1, 1])}, S + 2
    ),
    "pools and unary ops": lambda: _then_conv2(
        [
            helper.make_node("MaxPool", ["p"], ["q"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
            helper.make_node("Sigmoid", ["q"], ["m"]),
        ],
        {},
    ),
}

REFUSED = {
    "Conv, grouped (not depthwise)": (
        lambda: _then_conv2([helper.make_node("Conv", ["p", "wg"], ["m"], group=2)], {"wg": _w(4, 2, 1, 1)}),
        "grouped conv",
    ),
    "LayerNormalization over channels": (
        lambda: _then_conv2(
            [helper.make_node("LayerNormalization", ["p", "g", "b"], ["m"], axis=1)],
            {"g": _w(4, S, S), "b": _w(4, S, S)},
        ),
        "LayerNormalization node",
    ),
    "GroupNormalization": (
        lambda: _then_conv2(
            [helper.make_node("GroupNormalization", ["p", "g", "b"], ["m"], num_groups=2)],
            {"g": _w(4), "b": _w(4)},
            opset=21,
        ),
        "GroupNormalization node",
    ),
    "DepthToSpace": (
        lambda: _model(
            [helper.make_node("DepthToSpace", ["p"], ["m"], blocksize=2), *_conv2("m", 1)[0]],
            _conv2("m", 1)[1],
            ["N", 3, 2 * S, 2 * S],
        ),
        "DepthToSpace node",
    ),
    "QuantizeLinear/DequantizeLinear per row": (
        lambda: _then_conv2(
            [
                helper.make_node("QuantizeLinear", ["p", "qs"], ["q"], axis=2),
                helper.make_node("DequantizeLinear", ["q", "qs"], ["m"], axis=2),
            ],
            {"qs": np.full(S, 0.05, np.float32)},
        ),
        "quantizes them per block or on another axis",
    ),
    "Slice of the batch": (
        lambda: _then_conv2(
            [helper.make_node("Slice", ["p", "st", "en", "ax"], ["m"])],
            {"st": np.array([0]), "en": np.array([1]), "ax": np.array([0])},
        ),
        "slices the batch",
    ),
    "Softmax over channels": (
        lambda: _then_conv2([helper.make_node("Softmax", ["p"], ["m"], axis=1)], {}),
        "Softmax node",
    ),
    "Transpose moving channels elsewhere": (
        lambda: _model(
            [helper.make_node("Transpose", ["p"], ["t"], perm=[0, 2, 1, 3]), helper.make_node("Relu", ["t"], ["y"])],
            {},
            ["N", S, 4, S],
        ),
        "Transpose",
    ),
    "channels that reach a graph output": (
        lambda: _model([helper.make_node("Relu", ["p"], ["y"])], {}, ["N", 4, S, S]),
        "graph output",
    ),
}


@pytest.mark.parametrize("row", list(PRUNED))
def test_prune_removes_channels_through_the_op_exactly(row):
    x = RNG.normal(size=(4, 2, S, S)).astype(np.float32)
    prune_and_compare(PRUNED[row](), "conv1", [1, 2], x)


@pytest.mark.parametrize("row", list(REFUSED))
def test_prune_refuses_the_op_with_its_reason(row):
    build, reason = REFUSED[row]
    group = group_of(channel_groups(load_model_proto(build())), "conv1")
    assert not group.prunable and reason in group.reason, group.reason


def test_an_op_without_a_rule_is_refused_until_a_rule_is_registered_for_it(monkeypatch):
    """Shrink is elementwise, but no rule of onnxredund's names it: its groups are refused with the reason. A
    rule registered for it (as a user would for a custom op) makes them prunable, exactly."""
    model = _then_conv2([helper.make_node("Shrink", ["p"], ["m"], lambd=0.2)], {})
    assert "a Shrink node" in group_of(channel_groups(load_model_proto(model)), "conv1").reason

    class ShrinkRule(op_rules.OpRule):
        ops = ("Shrink",)

        def follow(self, walk, node, carried):
            walk.keep(node, carried)

    monkeypatch.setattr(op_rules, "_RULES", dict(op_rules._RULES))  # the registry as it was, after the test
    op_rules.register_rule(ShrinkRule())
    prune_and_compare(model, "conv1", [1, 2], RNG.normal(size=(4, 2, S, S)).astype(np.float32))
