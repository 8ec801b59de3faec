"""Graph surgery: cuts reproduce the model, injection reaches the target conv only."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import small_cnn

from onnxredund.engine import load_model_proto
from onnxredund.engine.ir_edit import needed, to_ir
from onnxredund.engine.runtime import Runner
from onnxredund.engine.surgery import (
    cut,
    cut_layer,
    cut_prefix,
    cut_suffix,
    expose_outputs,
    inject_input,
    side_inputs,
)
from onnxredund.errors import OnnxRedundError

X = np.random.default_rng(0).normal(size=(7, 3, 6, 6)).astype(np.float32)


def run(proto, feeds, outputs=None):
    onnx.checker.check_model(proto, full_check=True)
    assert proto.ir_version <= 13
    return Runner.create(proto, "cpu").run(feeds, outputs)


@pytest.mark.parametrize("residual", [False, True])
def test_prefix_and_suffix_reproduce_the_model_exactly(residual):
    m = load_model_proto(small_cnn(residual=residual, c_out=4)[0])
    full = run(m.proto, {"x": X})[0]
    for layer in m.layers:
        prefix = cut_prefix(m.proto, layer)
        names = [o.name for o in prefix.graph.output]
        mids = dict(zip(names, run(prefix, {"x": X}), strict=True))
        suffix = cut_suffix(m.proto, layer)
        out = run(suffix, {i.name: mids[i.name] for i in suffix.graph.input})[0]
        np.testing.assert_array_equal(out, full)


def test_layer_cut_is_conv_and_chain():
    m = load_model_proto(small_cnn(bn=True)[0])
    layer = m.layers[0]
    sub = cut_layer(m.proto, layer)
    assert [n.op_type for n in sub.graph.node] == ["Conv", "BatchNormalization", "Relu"]
    a = run(expose_outputs(m.proto, ["a1"]), {"x": X}, ["a1"])[0]
    np.testing.assert_array_equal(run(sub, {"x": X})[0], a)


def test_injection_leaves_other_consumers_clean():
    m = load_model_proto(small_cnn(residual=True, c_out=4)[0])
    conv2 = m.layer("conv2")
    assert side_inputs(m.proto, conv2.input) == []  # the residual reads a1 itself, which is the cut input
    assert side_inputs(m.proto, conv2.activation) == ["a1"]  # after conv2, the residual still needs clean a1
    inj = expose_outputs(inject_input(m.proto, conv2, "p"), ["a1", "a2", "res"])
    clean = run(expose_outputs(m.proto, ["a1", "a2", "res"]), {"x": X}, ["a1", "a2", "res"])
    a1, a2, res = clean
    # Perturb only the injected tensor: the residual must still add the clean a1
    out = run(inj, {"x": X, "p": np.zeros_like(a1)}, ["a1", "a2", "res"])
    np.testing.assert_array_equal(out[0], a1)
    relu_bias = np.maximum(
        np.broadcast_to(small_cnn(residual=True, c_out=4)[1]["b2"][None, :, None, None], a2.shape), 0
    )
    np.testing.assert_allclose(out[1], relu_bias, atol=1e-6)  # conv2 saw zeros: only its bias
    np.testing.assert_allclose(out[2], out[1] + a1, atol=1e-6)
    # and with the clean tensor injected, everything is as before
    same = run(inj, {"x": X, "p": a1}, ["a2", "res"])
    np.testing.assert_array_equal(same[0], a2)
    np.testing.assert_array_equal(same[1], res)


def test_cut_refuses_a_leaking_graph_input():
    m = load_model_proto(small_cnn()[0])
    with pytest.raises(OnnxRedundError, match="graph inputs"):
        cut(m.proto, ["z2"], ["a1"])  # a1 needs x, which is not among the inputs


def test_expose_unknown_tensor_lists_fix():
    m = load_model_proto(small_cnn()[0])
    with pytest.raises(OnnxRedundError, match="no tensors"):
        expose_outputs(m.proto, ["nope"])


def test_surgery_does_not_touch_its_input():
    m = load_model_proto(small_cnn()[0])
    before = m.proto.SerializeToString()
    inject_input(m.proto, m.layers[1])
    expose_outputs(m.proto, ["a1"])
    cut_prefix(m.proto, m.layers[1])
    assert m.proto.SerializeToString() == before


def _if_reading_an_outer_tensor() -> onnx.ModelProto:
    """x -> a = Relu(x); b = Mul(x, 2); y = If(c) {then: a + b; else: -a}: the branches read a and b without
    listing them as the If's inputs (captured from the outer scope)."""
    from onnx import TensorProto, helper, numpy_helper

    def branch(node, out):
        return helper.make_graph([node], out, [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, [2, 3])])

    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Mul", ["x", "two"], ["b"]),
        helper.make_node(
            "If",
            ["c"],
            ["y"],
            then_branch=branch(helper.make_node("Add", ["a", "b"], ["t"]), "t"),
            else_branch=branch(helper.make_node("Neg", ["a"], ["e"]), "e"),
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [numpy_helper.from_array(np.array(2.0, np.float32), "two")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def test_cut_keeps_the_producers_of_what_an_if_branch_reads_from_the_outer_scope():
    proto = _if_reading_an_outer_tensor()
    x = np.arange(-3, 3, dtype=np.float32).reshape(2, 3)
    sub = cut(proto, ["a", "x", "c"], ["y"])  # b is made by a node the If does not list: it must come along
    assert [n.op_type for n in sub.graph.node] == ["Mul", "If"]
    for c in (True, False):
        want = np.maximum(x, 0) + 2 * x if c else -np.maximum(x, 0)
        got = run(sub, {"a": np.maximum(x, 0), "x": x, "c": np.array(c)})[0]
        np.testing.assert_array_equal(got, want)
    assert [n.op_type for n in needed(to_ir(proto).graph, {"x", "c"}, ["y"])] == ["Relu", "Mul", "If"]


def test_cut_that_needs_a_graph_input_inside_a_branch_names_it():
    with pytest.raises(OnnxRedundError, match=r"graph inputs \['x'\]"):
        cut(_if_reading_an_outer_tensor(), ["a", "c"], ["y"])


def test_a_name_that_is_not_utf8_is_refused_at_loading():
    raw = small_cnn()[0].SerializeToString()
    assert raw.count(b"relu1") == 1  # the Relu node's name: made not UTF-8 in the file, which protobuf reads as is
    proto = onnx.ModelProto.FromString(raw.replace(b"relu1", b"rel\xde1"))
    with pytest.raises(OnnxRedundError, match="not UTF-8 text"):
        load_model_proto(proto)
