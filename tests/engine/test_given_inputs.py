"""Inputs that are one value for every sample (an unsharp mask's ``amount`` [1], PairLIE's ``exposure`` [1]):
given with ``--input-value``, read as the input's default by every run, and asked for again by a pruned file."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from builders import make_model, run_cli, save
from onnx import helper

from onnxredund.engine.channel_groups import channel_groups
from onnxredund.engine.loading import load_model_proto
from onnxredund.engine.runtime import Runner
from onnxredund.errors import OnnxRedundError
from onnxredund.model import data_inputs

RNG = np.random.default_rng(3)
W1 = RNG.normal(size=(4, 2, 3, 3)).astype(np.float32)
W2 = RNG.normal(size=(3, 4, 3, 3)).astype(np.float32)
W2[:, 1] = 0.0  # conv1's channel 1 reaches nothing: removing it changes no output
FC = RNG.normal(size=(3, 5)).astype(np.float32)


def gained(gain_shape=(1,), gain: np.ndarray | None = None) -> onnx.ModelProto:
    """x (N, 2, 6, 6) -> conv1 -> Mul by ``gain`` -> Relu -> conv2 -> GAP -> Flatten -> Gemm -> logits (N, 5);
    ``gain`` is an input of ``gain_shape``, or, where given, a constant of that value (the model it must equal)."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["z1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["z1", "gain"], ["g1"], name="gain_mul"),
        helper.make_node("Relu", ["g1"], ["a1"], name="relu1"),
        helper.make_node("Conv", ["a1", "w2"], ["z2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["z2"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc"], ["logits"], name="fc"),
    ]
    inits = {"w1": W1, "w2": W2, "fc": FC} | ({} if gain is None else {"gain": gain})
    inputs = [("x", ["N", 2, 6, 6])] + ([("gain", list(gain_shape))] if gain is None else [])
    return make_model(nodes, inputs, [("logits", ["N", 5])], inits)


def test_an_input_without_a_batch_and_without_a_value_is_refused_naming_the_flag(tmp_path):
    with pytest.raises(OnnxRedundError, match=r"`input_values` gain=VALUE"):
        load_model_proto(gained())
    result = run_cli("layers", save(gained(), tmp_path))
    assert result.exit_code == 2 and "give it with --input-value gain=VALUE" in result.stderr


def test_a_given_input_frees_the_batch_and_every_run_reads_its_value():
    model = load_model_proto(gained(), input_values={"gain": np.array([2.0])})
    assert model.batch_dynamic
    assert [i.name for i in model.inputs] == ["x"]
    x = np.random.default_rng(0).random((3, 2, 6, 6), dtype=np.float32)
    got = Runner.create(model.proto, "cpu").run({"x": x})[0]
    want = Runner.create(gained(), "cpu").run({"x": x, "gain": np.array([2.0], np.float32)})[0]
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"gian": np.array([2.0])}, r"no input 'gian'.*its inputs: x, gain"),
        ({"gain": np.array([1.0, 2.0])}, r"holds 1 values; 2 given"),
        ({"gain": np.array([1.0]), "x": np.array([0.0])}, r"every input"),
    ],
)
def test_a_value_for_no_input_or_of_the_wrong_size_is_refused(values, message):
    with pytest.raises(OnnxRedundError, match=message):
        load_model_proto(gained(), input_values=values)


def test_a_shuffle_with_a_given_input_equals_the_model_with_the_value_built_in(tmp_path):
    given, built_in = save(gained(), tmp_path, "given.onnx"), save(gained(gain=np.array([2.0])), tmp_path, "in.onnx")
    common = ["--data", "synthetic:8", "--layer", "conv2", "--device", "cpu", "-q", "--json"]
    a = run_cli("shuffle", given, "--input-value", "gain=2", *common)
    b = run_cli("shuffle", built_in, *common)
    assert a.exit_code == 0 and b.exit_code == 0, a.stderr + b.stderr
    got, want = json.loads(a.stdout), json.loads(b.stdout)
    np.testing.assert_allclose(got["cosine"], want["cosine"], rtol=1e-6)


def test_a_pruned_model_asks_for_the_given_input_again_and_computes_the_same(tmp_path):
    path, out = save(gained(), tmp_path), tmp_path / "pruned.onnx"
    result = run_cli(
        "prune", path, "--input-value", "gain=2", "--data", "synthetic:16", "--channels", "conv1:1",
        "--out", out, "--device", "cpu", "-q",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    pruned = onnx.load(str(out))
    assert "gain" not in {t.name for t in pruned.graph.initializer}
    assert [(i.name, [d.dim_value for d in i.type.tensor_type.shape.dim]) for i in data_inputs(pruned.graph)][1] == (
        "gain",
        [1],
    )
    assert next(t for t in pruned.graph.initializer if t.name.startswith("w1")).dims[0] == 3
    assert not any(p.key.startswith("onnxredund") for p in pruned.metadata_props)
    x = np.random.default_rng(1).random((2, 2, 6, 6), dtype=np.float32)
    for gain in (2.0, 0.5):  # any value the user feeds: the removed channel reached nothing
        feeds = {"x": x, "gain": np.array([gain], np.float32)}
        np.testing.assert_allclose(
            Runner.create(pruned, "cpu").run(feeds)[0], Runner.create(gained(), "cpu").run(feeds)[0], rtol=1e-5
        )


def test_a_group_whose_channels_index_a_given_input_is_not_prunable():
    model = load_model_proto(gained((1, 4, 1, 1)), input_values={"gain": np.arange(1.0, 5.0)})
    group = next(g for g in channel_groups(model) if g.producers == ["conv1"])
    assert not group.prunable and "'gain'" in group.reason and "`input_values`" in group.reason


def test_layers_names_the_given_inputs_and_their_values(tmp_path):
    result = run_cli("layers", save(gained(), tmp_path), "--input-value", "gain=2")
    assert result.exit_code == 0, result.stderr
    assert "(--input-value): gain = [2.]" in result.stdout
    result = run_cli("layers", save(gained(), tmp_path), "--input-value", "gain=2", "--json")
    assert json.loads(result.stdout)["given_inputs"] == {"gain": [2.0]}


def test_a_malformed_value_is_a_usage_error(tmp_path):
    result = run_cli("layers", save(gained(), tmp_path), "--input-value", "gain=two")
    assert result.exit_code == 2 and "NAME=1.5" in result.stderr
