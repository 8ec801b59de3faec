"""The shipped models: accuracy measured by onnxruntime on the ONNX files, and the model card."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest
from builders import MODELS

from onnxredund.analyses.evaluate import evaluate
from onnxredund.analyses.impulse import run_impulse
from onnxredund.data import load_mnist
from onnxredund.engine import load_model

PAPER_PAIR = ("lenet5", "lenet5x10")


@pytest.mark.parametrize(("name", "minimum", "channels"), [("lenet5", 0.990, (6, 16)), ("lenet5x10", 0.992, (60, 160))])
def test_accuracy_on_the_mnist_test_set(mnist_dir, name, minimum, channels):
    model = load_model(MODELS / f"{name}.onnx")
    assert [layer.name for layer in model.layers] == ["conv1", "conv2"]
    assert tuple(layer.out_channels for layer in model.layers) == channels
    assert model.input_name == "input" and model.output_names == ["logits"] and model.batch_dynamic
    assert model.proto.opset_import[0].version == 17 and model.proto.ir_version <= 13
    result = evaluate(model, load_mnist(mnist_dir, "test"), device="cpu")
    assert result["num_samples"] == 10000
    assert result["accuracy"] >= minimum


def test_model_card_lists_each_file_with_its_sha256():
    card = (MODELS / "README.md").read_text()
    for name in ("lenet5.onnx", "lenet5x10.onnx"):
        digest = hashlib.sha256((MODELS / name).read_bytes()).hexdigest()
        row = next(line for line in card.splitlines() if f"`{name}`" in line)
        assert digest in row
        assert re.search(r"\d{2}\.\d{2} %", row)


def test_the_wide_model_has_more_near_duplicate_impulse_responses_in_both_convs():
    """The paper's impulse finding (issue 5's acceptance) on the shipped pair; models/STUDY.md has the recipes."""
    small, wide = (run_impulse(load_model(MODELS / f"{n}.onnx"), across=False, device="cpu") for n in PAPER_PAIR)
    for a, b in zip(small.layers, wide.layers, strict=True):
        assert b.redundant_fraction > a.redundant_fraction, a.name
        assert np.nanmean(b.best_value) > np.nanmean(a.best_value), a.name
