"""If nodes the input's sizes decide (pyannote's SincNet runs its first conv in ``if x.shape[1] == 1``): the branch
taken is analysed in place of the If, its convs listed and measured; a pruned file has the If back, both branches."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from builders import make_model, run_cli, save
from onnx import helper

from onnxredund.engine.channel_groups import channel_groups
from onnxredund.engine.decided_ifs import put_back_ifs, taken_nodes
from onnxredund.engine.loading import load_model_proto
from onnxredund.engine.runtime import Runner

RNG = np.random.default_rng(5)
W0 = RNG.normal(size=(4, 1, 5)).astype(np.float32)  # the conv inside the If, its weight read from the outer graph
W1 = RNG.normal(size=(6, 4, 3)).astype(np.float32)
W2 = RNG.normal(size=(3, 6, 3)).astype(np.float32)
W2[:, 4:] = 0.0  # conv1's channels 4 and 5 reach nothing: removing them changes no output, in either branch


def branch(name: str, nodes: list, out: str) -> onnx.GraphProto:
    return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, None)])


def with_if(condition: str = "channels") -> onnx.ModelProto:
    """x (N, C, L) -> If(cond) [then: conv0(x); else: conv0(mean of x over its channels)] -> Relu -> conv1 -> Relu ->
    conv2 -> y. ``condition``: "channels" (C == 1, decided by the sample's sizes), "batch" (N == 1, not decided by
    them) or "values" (sum(x) > 0, not decided)."""
    if condition == "values":
        cond = [
            helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
            helper.make_node("Greater", ["total", "zero"], ["cond"]),
        ]
    else:
        cond = [
            helper.make_node("Shape", ["x"], ["shape"]),
            helper.make_node("Gather", ["shape", "axis"], ["size"]),
            helper.make_node("Equal", ["size", "one"], ["cond"]),
        ]
    then = branch("then", [helper.make_node("Conv", ["x", "w0"], ["t0"], name="conv0_mono")], "t0")
    other = branch(
        "else",
        [
            helper.make_node("ReduceMean", ["x"], ["mean"], axes=[1], keepdims=1),
            helper.make_node("Conv", ["mean", "w0"], ["e0"], name="conv0_mixed"),
        ],
        "e0",
    )
    nodes = [
        *cond,
        helper.make_node("If", ["cond"], ["z0"], name="if_mono", then_branch=then, else_branch=other),
        helper.make_node("Relu", ["z0"], ["a0"]),
        helper.make_node("Conv", ["a0", "w1"], ["z1"], name="conv1", pads=[1, 1]),
        helper.make_node("Relu", ["z1"], ["a1"]),
        helper.make_node("Conv", ["a1", "w2"], ["y"], name="conv2"),
    ]
    inits = {
        "w0": W0,
        "w1": W1,
        "w2": W2,
        "axis": np.array(0 if condition == "batch" else 1, np.int64),
        "one": np.array(1, np.int64),
        "zero": np.array(0.0, np.float32),
    }
    return make_model(nodes, [("x", ["N", "C", "L"])], [("y", ["N", 3, "M"])], inits)


def test_the_conv_in_an_if_the_input_sizes_decide_is_a_layer_and_the_model_computes_the_same():
    model = load_model_proto(with_if(), input_shape=(1, 40))
    assert [layer.name for layer in model.layers] == ["conv0_mono", "conv1", "conv2"]
    assert model.decided_ifs == ["'if_mono' (then branch, 1 conv inside)"]
    assert model.layers[0].output_shape == (4, 36)
    x = RNG.normal(size=(3, 1, 40)).astype(np.float32)
    np.testing.assert_allclose(
        Runner.create(model.proto, "cpu").run({"x": x})[0], Runner.create(with_if(), "cpu").run({"x": x})[0], rtol=1e-6
    )


def test_the_else_branch_is_taken_where_the_sizes_say_so():
    model = load_model_proto(with_if(), input_shape=(2, 40))
    assert [layer.name for layer in model.layers] == ["conv0_mixed", "conv1", "conv2"]
    assert model.decided_ifs == ["'if_mono' (else branch, 1 conv inside)"]
    x = RNG.normal(size=(2, 2, 40)).astype(np.float32)
    np.testing.assert_allclose(
        Runner.create(model.proto, "cpu").run({"x": x})[0], Runner.create(with_if(), "cpu").run({"x": x})[0], rtol=1e-6
    )


@pytest.mark.parametrize("condition", ["batch", "values"])
def test_an_if_on_the_batch_size_or_on_values_stays_an_if(condition):
    model = load_model_proto(with_if(condition), input_shape=(1, 40))
    assert [layer.name for layer in model.layers] == ["conv1", "conv2"]
    assert model.decided_ifs == [] and not taken_nodes(model.proto)
    assert sum(n.op_type == "If" for n in model.proto.graph.node) == 1


def test_the_channels_through_the_taken_branch_are_not_pruned_and_others_are():
    model = load_model_proto(with_if(), input_shape=(1, 40))
    groups = {g.producers[0]: g for g in channel_groups(model)}
    assert not groups["conv0_mono"].prunable and "'if_mono'" in groups["conv0_mono"].reason
    assert groups["conv1"].prunable


def test_a_pruned_file_has_the_if_back_and_computes_the_original_in_both_branches(tmp_path):
    path, out = save(with_if(), tmp_path), tmp_path / "pruned.onnx"
    result = run_cli(
        "prune", path, "--input-shape", "1x40", "--data", "synthetic:16", "--channels", "conv1:4,5",
        "--out", out, "--device", "cpu", "-q",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    pruned = onnx.load(str(out))
    onnx.checker.check_model(pruned, full_check=True)
    assert [n.name for n in pruned.graph.node if n.op_type == "If"] == ["if_mono"]
    assert not any(p.key.startswith("onnxredund") for p in pruned.metadata_props)
    assert next(t for t in pruned.graph.initializer if t.name.startswith("w1")).dims[0] == 4
    for channels, length in ((1, 40), (1, 64), (3, 40)):  # the then branch, another length, the else branch
        x = RNG.normal(size=(2, channels, length)).astype(np.float32)
        np.testing.assert_allclose(
            Runner.create(pruned, "cpu").run({"x": x})[0], Runner.create(with_if(), "cpu").run({"x": x})[0], rtol=1e-5
        )


def test_put_back_keeps_a_model_without_decided_ifs_as_it_is():
    proto = with_if()
    assert put_back_ifs(proto) is proto


def test_layers_names_the_decided_if_in_the_console_and_the_json(tmp_path):
    path = save(with_if(), tmp_path)
    result = run_cli("layers", path, "--input-shape", "1x40")
    assert result.exit_code == 0, result.stderr
    assert "analysed as the branch taken: 'if_mono' (then branch, 1 conv inside)" in result.stdout
    payload = json.loads(run_cli("layers", path, "--input-shape", "1x40", "--json").stdout)
    assert payload["decided_ifs"] == ["'if_mono' (then branch, 1 conv inside)"]


def test_the_if_put_back_comes_after_its_condition_wherever_a_rewrite_moved_the_branchs_nodes():
    """A pruned graph's rewrite may place the branch's nodes before what computes the If's condition (silero VAD:
    "Nodes in a graph must be topologically sorted")."""
    proto = load_model_proto(with_if(), input_shape=(1, 40)).proto
    taken = taken_nodes(proto)
    nodes = sorted(proto.graph.node, key=lambda n: not any(o in taken for o in n.output))  # the branch first
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    back = put_back_ifs(proto)
    onnx.checker.check_model(back, full_check=True)
    order = [n.op_type for n in back.graph.node]
    assert order.index("Equal") < order.index("If")


def test_unnamed_ifs_are_each_decided_by_their_own_condition():
    """Exporters leave nodes unnamed: two Ifs named "" took the first one's branch both."""
    proto = with_if()
    graph = proto.graph
    graph.node[3].name = ""  # the If on the channel count: then at C = 1
    other = helper.make_node(
        "If",
        ["cond2"],
        ["y"],
        then_branch=branch("then2", [helper.make_node("Neg", ["y0"], ["n2"])], "n2"),
        else_branch=branch("else2", [helper.make_node("Identity", ["y0"], ["i2"])], "i2"),
    )
    graph.node[-1].output[0] = "y0"
    graph.node.extend([helper.make_node("Equal", ["size", "two"], ["cond2"]), other])
    graph.initializer.append(onnx.numpy_helper.from_array(np.array(2, np.int64), "two"))
    model = load_model_proto(proto, input_shape=(1, 40))
    assert [layer.name for layer in model.layers] == ["conv0_mono", "conv1", "conv2"]
    assert model.decided_ifs == ["'If->z0' (then branch, 1 conv inside)", "'If->y' (else branch)"]
    x = RNG.normal(size=(2, 1, 40)).astype(np.float32)
    np.testing.assert_allclose(
        Runner.create(model.proto, "cpu").run({"x": x})[0], Runner.create(proto, "cpu").run({"x": x})[0], rtol=1e-6
    )
