"""onnxruntime's com.microsoft FusedConv (graphs saved with optimized_model_filepath) read as Conv (+ Add) (+ its
activation): the same numbers, checked by running both; every analysis then sees a Conv."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from builders import run_cli
from onnx import helper, numpy_helper

from onnxredund.engine import load_model_proto
from onnxredund.engine.unfuse import contrib_ops, unfuse_convs
from onnxredund.errors import OnnxRedundError

RNG = np.random.default_rng(0)


def fused_model(activation: str | None, params=(), residual: bool = False, domain: str = "com.microsoft"):
    """x -> FusedConv(activation [, + Z]) -> Conv -> GlobalAveragePool -> Flatten -> y (N, 5)."""
    attrs = {"pads": [1, 1, 1, 1]}
    if activation:
        attrs["activation"] = activation
    if params:
        attrs["activation_params"] = list(params)
    inputs = ["x", "w", "b", *(["x2"] if residual else [])]
    nodes = [
        helper.make_node("FusedConv", inputs, ["a"], name="fc1", domain=domain, **attrs),
        helper.make_node("Conv", ["a", "w2"], ["z2"], name="c2", pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["z2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["y"]),
    ]
    weights = {"w": RNG.normal(size=(4, 3, 3, 3)), "b": RNG.normal(size=4), "w2": RNG.normal(size=(5, 4, 3, 3))}
    if residual:
        nodes.insert(0, helper.make_node("Conv", ["x", "w0"], ["x2"], name="c0", pads=[1, 1, 1, 1]))
        weights["w0"] = RNG.normal(size=(4, 3, 3, 3))
    return _with_domain(nodes, weights, domain)


def _with_domain(nodes, weights: dict, domain: str):
    """A model of ``nodes`` from x (N, 3, 8, 8) to y (N, 5), float32 ``weights``, importing ``domain`` too."""
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()]
    graph = helper.make_graph(
        nodes,
        domain,
        [helper.make_tensor_value_info("x", 1, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", 1, ["N", 5])],
        inits,
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(domain, 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=8)


def _run(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["y"], {"x": x})[0]


@pytest.mark.parametrize(
    ("activation", "params", "residual"),
    [
        ("Relu", (), False),
        ("LeakyRelu", (0.1,), False),
        ("Clip", (0.0, 6.0), False),
        ("Sigmoid", (), True),
        (None, (), True),
        ("HardSigmoid", (0.2, 0.5), False),
    ],
)
def test_a_fused_conv_written_as_standard_ops_gives_the_same_outputs(activation, params, residual):
    fused = fused_model(activation, params, residual)
    plain = unfuse_convs(fused)
    assert all(n.domain in ("", "ai.onnx") for n in plain.graph.node) and contrib_ops(plain) == []
    assert [n.op_type for n in fused.graph.node].count("FusedConv") == 1  # the input is never changed
    x = RNG.random((6, 3, 8, 8), dtype=np.float32)
    np.testing.assert_allclose(_run(plain, x), _run(fused, x), rtol=1e-5, atol=1e-5)


def test_a_fused_conv_is_a_layer_with_its_activation_and_layers_names_the_contrib_ops(tmp_path):
    model = load_model_proto(fused_model("Relu"))
    assert [layer.name for layer in model.layers] == ["fc1", "c2"] and model.layers[0].activation == "a"
    assert model.contrib_ops == ["FusedConv"]
    path = tmp_path / "fused.onnx"
    onnx.save(fused_model("Relu"), str(path))
    r = run_cli("layers", path)
    assert r.exit_code == 0 and "onnxruntime contrib ops (com.microsoft, run natively): FusedConv" in r.stdout
    assert json.loads(run_cli("layers", path, "--json").stdout)["contrib_ops"] == ["FusedConv"]


def test_a_fused_graph_prunes_and_the_value_check_passes(tmp_path):
    path = tmp_path / "fused.onnx"
    onnx.save(fused_model("Relu"), str(path))
    r = run_cli(
        "prune",
        path,
        "--channels",
        "fc1:1",
        "--data",
        "synthetic:16",
        "--out",
        tmp_path / "p.onnx",
        "--json",
        "--device",
        "cpu",
    )
    assert r.exit_code == 0, r.stderr
    check = json.loads(r.stdout)["value_check"]
    assert check["max_relative_error"] <= check["tolerance"] == 1e-3


def test_domains_onnxruntime_does_not_implement_are_still_refused():
    with pytest.raises(OnnxRedundError, match=r"custom domain 'my\.ops'"):
        load_model_proto(fused_model("Relu", domain="my.ops"))


def quick_gelu_model(alpha: float | None):
    """x -> conv c1 -> com.microsoft QuickGelu (x * sigmoid(alpha x); what onnxruntime makes of a SiLU with alpha 1)
    -> conv c2 -> GlobalAveragePool -> Flatten -> y (N, 5)."""
    attrs = {} if alpha is None else {"alpha": alpha}
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["z"], name="c1", pads=[1, 1, 1, 1]),
        helper.make_node("QuickGelu", ["z"], ["a"], name="qg", domain="com.microsoft", **attrs),
        helper.make_node("Conv", ["a", "w2"], ["z2"], name="c2", pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["z2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["y"]),
    ]
    weights = {"w": RNG.normal(size=(4, 3, 3, 3)), "w2": RNG.normal(size=(5, 4, 3, 3))}
    return _with_domain(nodes, weights, "com.microsoft")


@pytest.mark.parametrize(("alpha", "ops"), [(1.0, ["Sigmoid", "Mul"]), (None, ["Mul", "Sigmoid", "Mul"])])
def test_a_quick_gelu_is_written_as_standard_ops_with_the_same_outputs_and_its_conv_prunes(alpha, ops, tmp_path):
    fused = quick_gelu_model(alpha)  # alpha: 1 (a SiLU), or the default 1.702
    plain = unfuse_convs(fused)
    assert [n.op_type for n in plain.graph.node][1:-3] == ops and contrib_ops(plain) == []
    x = RNG.random((6, 3, 8, 8), dtype=np.float32)
    np.testing.assert_allclose(_run(plain, x), _run(fused, x), rtol=1e-5, atol=1e-5)
    path = tmp_path / "quick_gelu.onnx"
    onnx.save(fused, str(path))
    args = ["--channels", "c1:1", "--data", "synthetic:16", "--out", tmp_path / "p.onnx", "--json", "--device", "cpu"]
    r = run_cli("prune", path, *args)  # refused before: "its channels reach a QuickGelu node, which is not handled"
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["value_check"]["max_relative_error"] < 1e-5


def test_a_graph_with_onnxruntimes_nchwc_layout_ops_is_refused_saying_how_to_save_it(tmp_path):
    nchwc = fused_model("Relu", domain="com.microsoft.nchwc")
    path = tmp_path / "all.onnx"
    onnx.save(nchwc, str(path))
    r = run_cli("layers", path)
    assert r.exit_code == 2 and "saved by onnxruntime with its NCHWc layout ops" in r.stderr
    assert "ORT_ENABLE_EXTENDED" in r.stderr and len(r.stderr.strip().splitlines()) == 1
