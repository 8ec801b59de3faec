"""Class scores left unflattened, (N, classes, 1, 1): a classifier head that ends in a 1 x 1 conv and a global
pooling (SqueezeNet, DenseNet-121 of the Caffe2 model zoo, the light models inside the onnx package). Before, such
an output was not taken for a classifier: no agreement, no accuracy, only output drift; and naming it with
``classifier`` was refused."""

from __future__ import annotations

import json

import numpy as np
import onnx
from builders import run_cli, save
from onnx import TensorProto, helper, numpy_helper

from onnxredund.analyses.evaluate import predict
from onnxredund.analyses.shuffle import run_shuffle
from onnxredund.data import Dataset
from onnxredund.engine.loading import load_model_proto
from onnxredund.engine.runtime import Runner

CLASSES = 5


def squeezenet_head(seed: int = 3) -> onnx.ModelProto:
    """x (N, 3, 8, 8) -> conv1 -> Relu -> conv2 (1 x 1, a channel per class) -> GlobalAveragePool -> Softmax over
    the classes -> prob (N, 5, 1, 1)."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.normal(size=(6, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(size=(CLASSES, 6, 1, 1)).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["a1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["a2"], name="conv2"),
        helper.make_node("GlobalAveragePool", ["a2"], ["pooled"]),
        helper.make_node("Softmax", ["pooled"], ["prob"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", CLASSES, 1, 1])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _data(n: int = 48) -> Dataset:
    rng = np.random.default_rng(11)
    return Dataset(rng.normal(size=(n, 3, 8, 8)).astype(np.float32), rng.integers(0, CLASSES, n), "tiny")


def test_class_scores_of_shape_classes_by_1_by_1_are_the_classifier(tmp_path):
    r = run_cli("layers", save(squeezenet_head(), tmp_path), "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["classifier_outputs"] == ["prob"]
    r = run_cli("layers", save(squeezenet_head(), tmp_path), "--classifier-output", "prob", "--json")
    assert r.exit_code == 0, r.stderr


def test_the_prediction_is_the_top_class_of_the_flattened_scores():
    model, data = load_model_proto(squeezenet_head()), _data()
    scores = Runner.create(model.proto, "cpu").run({"x": data.x})[0]
    assert scores.shape == (48, CLASSES, 1, 1)
    np.testing.assert_array_equal(predict(model, data, device="cpu"), scores[:, :, 0, 0].argmax(axis=1))


def test_a_sweep_measures_agreement_and_accuracy_the_same_on_the_fast_and_the_direct_path():
    model, data = load_model_proto(squeezenet_head()), _data()
    fast = run_shuffle(model, "conv2", data, batch_size=16, device="cpu")
    direct = run_shuffle(model, "conv2", data, batch_size=16, device="cpu", exact_path=True)
    assert fast.route == "fast" and direct.route == "direct"
    assert fast.agreement is not None and fast.accuracy is not None
    np.testing.assert_array_equal(fast.agreement, direct.agreement)
    np.testing.assert_array_equal(fast.accuracy, direct.accuracy)
    np.testing.assert_allclose(
        fast.outputs["prob"].kl_divergence, direct.outputs["prob"].kl_divergence, rtol=1e-4, atol=1e-9
    )
    np.testing.assert_array_equal(fast.outputs["prob"].top5_agreement, direct.outputs["prob"].top5_agreement)
    # the reference: channel k's agreement is the share of images whose top class survives its shuffle
    assert 0.0 <= fast.agreement.min() <= fast.agreement.max() <= 1.0 and fast.agreement.max() < 1.0
