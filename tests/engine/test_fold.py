"""Conv weights an export computes in its graph (issue 24's unseen families): a weight normalisation (ReduceL2, Div,
Mul of initializers: audio vocoders and separators exported with ``weight_norm`` on) and the weights old Caffe2
exports make with ConstantOfShape, their initializers listed as graph inputs (IR 3; the "light" model-zoo CNNs
inside the onnx package). Before, the weight's shape was read per sample (its output channels taken for a batch):
``layers`` listed a 3 x 3 conv with 4 outputs as "3->3, kernel 3", the impulse analysis and ``prune`` ended in
tracebacks, and the light models were refused as "reads 3 channels but its weights expect 7"."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from builders import run_cli, save
from onnx import TensorProto, helper, numpy_helper

from onnxredund.analyses.impulse import run_impulse
from onnxredund.engine.fold import computed_parameters
from onnxredund.engine.loading import load_model_proto
from onnxredund.engine.runtime import Runner
from onnxredund.errors import OnnxRedundError

RNG = np.random.default_rng(7)
V = RNG.normal(size=(4, 3, 3, 3)).astype(np.float32)
G = RNG.uniform(0.5, 1.5, size=(4, 1, 1, 1)).astype(np.float32)
W2 = RNG.normal(size=(5, 4, 3, 3)).astype(np.float32)


def _model(weight_nodes, inits, *, ir_version: int = 8, weights_as_inputs: bool = False) -> onnx.ModelProto:
    """x (N, 3, 8, 8) -> conv1 (weights ``w1`` from ``weight_nodes``) -> Relu -> conv2 -> mean -> y (N, 5)."""
    nodes = [
        *weight_nodes,
        helper.make_node("Conv", ["x", "w1"], ["a1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["a1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["a2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("GlobalAveragePool", ["a2"], ["p"]),
        helper.make_node("Flatten", ["p"], ["y"]),
    ]
    inits = [*inits, numpy_helper.from_array(W2, "w2")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])]
    if weights_as_inputs:  # IR 3: every initializer is a graph input too
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])])
    graph.initializer.extend(inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9 if ir_version < 4 else 13)])
    model.ir_version = ir_version
    onnx.checker.check_model(model)
    return model


def weight_normalised() -> onnx.ModelProto:
    """conv1's weight is g * v / ||v|| (per output channel), computed in the graph."""
    nodes = [
        helper.make_node("ReduceL2", ["v"], ["vn"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Div", ["v", "vn"], ["vu"]),
        helper.make_node("Mul", ["vu", "g"], ["w1"]),
    ]
    return _model(nodes, [numpy_helper.from_array(V, "v"), numpy_helper.from_array(G, "g")])


def constant_of_shape(value: float = 0.02) -> onnx.ModelProto:
    """conv1's weight is ConstantOfShape([4, 3, 3, 3]) of ``value``, in an IR 3 file listing weights as inputs."""
    shape = numpy_helper.from_array(np.array([4, 3, 3, 3], np.int64), "w1_shape")
    fill = helper.make_tensor("value", TensorProto.FLOAT, [1], [value])
    nodes = [helper.make_node("ConstantOfShape", ["w1_shape"], ["w1"], value=fill)]
    return _model(nodes, [shape], ir_version=3, weights_as_inputs=True)


def test_a_weight_normalised_conv_is_listed_with_its_real_shape_and_the_fold_said(tmp_path):
    r = run_cli("layers", save(weight_normalised(), tmp_path), "--json")
    assert r.exit_code == 0, r.stderr
    layer = json.loads(r.stdout)["layers"][0]
    assert (layer["in_channels"], layer["out_channels"], layer["kernel"]) == (3, 4, [3, 3])
    assert json.loads(r.stdout)["folded_ops"] == ["ReduceL2", "Div", "Mul"]
    r = run_cli("layers", save(weight_normalised(), tmp_path))
    assert "conv weights computed in the graph from constants (ReduceL2, Div, Mul): folded to constants" in r.stdout


def test_folding_changes_no_output_and_leaves_the_parametrisation_out():
    original = weight_normalised()
    model = load_model_proto(original)
    assert computed_parameters(original) == ["w1"] and computed_parameters(model.proto) == []
    assert {n.op_type for n in model.proto.graph.node} == {"Conv", "Relu", "GlobalAveragePool", "Flatten"}
    folded = numpy_helper.to_array(next(t for t in model.proto.graph.initializer if t.name == "w1"))
    np.testing.assert_allclose(folded, G * V / np.sqrt((V**2).sum(axis=(1, 2, 3), keepdims=True)), rtol=1e-6)
    x = RNG.normal(size=(6, 3, 8, 8)).astype(np.float32)
    expected = Runner.create(original, "cpu").run({"x": x})[0]
    np.testing.assert_array_equal(Runner.create(model.proto, "cpu").run({"x": x})[0], expected)
    assert [o.op_type for o in original.graph.node][:3] == ["ReduceL2", "Div", "Mul"]  # the input is not changed


def test_the_impulse_response_of_a_folded_conv_is_its_kernel():
    model = load_model_proto(weight_normalised())
    result = run_impulse(model, device="cpu", layers=[model.layer("conv1")])
    w = G * V / np.sqrt((V**2).sum(axis=(1, 2, 3), keepdims=True))
    # an impulse in input channel m at the centre gives channel c the kernel w[c, m], flipped (a correlation)
    np.testing.assert_allclose(result.layers[0].responses, w[:, :, ::-1, ::-1], rtol=1e-5, atol=1e-7)


def test_a_weight_normalised_model_prunes_and_passes_its_value_check(tmp_path):
    path = save(weight_normalised(), tmp_path)
    out = tmp_path / "pruned.onnx"
    r = run_cli("prune", path, "--data", "synthetic:16", "--channels", "conv1:1", "--out", out, "--device", "cpu")
    assert r.exit_code == 0, r.stderr
    assert "largest output difference 0 (relative)" in r.stdout
    pruned = onnx.load(out)
    w1 = next(t for t in pruned.graph.initializer if t.name == "w1")
    assert list(w1.dims) == [3, 3, 3, 3] and "ReduceL2" not in {n.op_type for n in pruned.graph.node}


def test_constant_of_shape_weights_of_an_ir3_export_are_constants_every_channel_alike(tmp_path):
    model = load_model_proto(constant_of_shape())
    conv1 = model.layer("conv1")
    assert (conv1.in_channels, conv1.out_channels, conv1.kernel) == (3, 4, (3, 3))
    result = run_impulse(model, device="cpu", layers=[conv1])
    np.testing.assert_allclose(result.layers[0].responses, np.full((4, 3, 3, 3), 0.02, np.float32))
    assert result.layers[0].redundant_fraction is None  # a constant response over its box: compared with nothing
    r = run_cli(
        "prune",
        save(constant_of_shape(), tmp_path),
        "--data",
        "synthetic:16",
        "--channels",
        "conv1:0",
        "--out",
        tmp_path / "p.onnx",
        "--device",
        "cpu",
    )
    assert r.exit_code == 0 and "largest output difference 0 (relative)" in r.stdout, r.stderr


def test_a_conv_whose_weights_come_from_the_input_is_refused_in_one_line(tmp_path):
    proto = weight_normalised()
    # a dynamic filter: conv1's weight scaled by the input's mean
    proto.graph.node.insert(0, helper.make_node("ReduceMean", ["x"], ["xm"], keepdims=0))
    mul = next(n for n in proto.graph.node if n.op_type == "Mul")
    proto.graph.node.insert(1, helper.make_node("ReduceMean", ["xm"], ["s"], keepdims=0))
    mul.input[1] = "s"
    with pytest.raises(OnnxRedundError, match="computes its weights from the input"):
        load_model_proto(proto)
    r = run_cli("layers", save(proto, tmp_path))
    assert r.exit_code == 2 and "Traceback" not in r.stderr and "(a dynamic filter)" in r.stderr.splitlines()[-1]
