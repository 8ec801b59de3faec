"""Data through the command line: image folders and .npz give the same numbers, loader scripts, several inputs."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
from builders import MODELS, make_model, run_cli, save, small_cnn
from onnx import helper
from PIL import Image

from onnxredund.data import load_mnist


def test_mnist_as_png_folders_gives_the_npz_numbers(mnist_dir, tmp_path):
    ds = load_mnist(mnist_dir, "test")
    raw = (ds.x[:120, 0] * 255).round().astype(np.uint8)
    names = [f"{ds.y[i]}/{i:05d}.png" for i in range(120)]
    for name, img in zip(names, raw, strict=True):
        (tmp_path / "png" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img, "L").save(tmp_path / "png" / name)
    order = sorted(range(120), key=lambda i: names[i])  # an image folder reads in sorted path order
    np.savez(tmp_path / "same.npz", x=ds.x[order], y=ds.y[order])
    common = ["shuffle", MODELS / "lenet5.onnx", "--layer", "conv2", "--mode", "both", "--batch-size", "50"]
    common += ["--device", "cpu", "--json"]
    folder = run_cli(*common, "--data", tmp_path / "png", "--preprocess", "scale=1/255")
    npz = run_cli(*common, "--data", tmp_path / "same.npz")
    assert folder.exit_code == 0 and npz.exit_code == 0, folder.stderr + npz.stderr
    a, b = json.loads(folder.stdout), json.loads(npz.stdout)
    for mode in ("channel", "pixel"):
        for key in ("cosine", "accuracy", "agreement", "baseline_accuracy", "outputs"):
            assert a[mode][key] == b[mode][key], (mode, key)
    assert a["channel"]["data_info"]["kind"] == "images" and a["channel"]["data_info"]["preprocess"].startswith(
        "channels=gray,scale=1/255"
    )
    assert len(a["channel"]["data_info"]["fingerprint"]) == 64


def test_a_loader_script_feeds_a_model_with_two_inputs(tmp_path):
    # x -> conv -> mean over positions, plus a metadata vector through a Gemm: logits (N, 3)
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["z"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["z"], ["a"]),
        helper.make_node("ReduceMean", ["a"], ["m"], axes=[2, 3], keepdims=0),
        helper.make_node("Gemm", ["meta", "fm"], ["mm"]),
        helper.make_node("Add", ["m", "mm"], ["h"]),
        helper.make_node("Gemm", ["h", "fc"], ["logits"]),
    ]
    inits = {"w": rng.normal(size=(4, 2, 3, 3)), "fm": rng.normal(size=(5, 4)), "fc": rng.normal(size=(4, 3))}
    model = save(
        make_model(nodes, [("x", ["N", 2, 6, 6]), ("meta", ["N", 5])], [("logits", ["N", 3])], inits), tmp_path
    )
    script = tmp_path / "loader.py"
    script.write_text(
        textwrap.dedent("""
        import numpy as np

        def load_data():
            rng = np.random.default_rng(1)
            for _ in range(3):
                yield {"x": rng.random((10, 2, 6, 6), dtype=np.float32),
                       "meta": rng.random((10, 5), dtype=np.float32),
                       "labels": rng.integers(0, 3, 10)}
    """)
    )
    args = ["shuffle", model, "--layer", "conv", "--batch-size", "16", "--device", "cpu", "--json"]
    r = run_cli(*args, "--data-loader-script", script)
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["num_samples"] == 30 and res["accuracy"] is not None and res["data_info"]["kind"] == "loader script"
    arrays = {"x": [], "meta": [], "y": []}
    rng = np.random.default_rng(1)
    for _ in range(3):
        arrays["x"].append(rng.random((10, 2, 6, 6), dtype=np.float32))
        arrays["meta"].append(rng.random((10, 5), dtype=np.float32))
        arrays["y"].append(rng.integers(0, 3, 10))
    np.savez(tmp_path / "named.npz", **{k: np.concatenate(v) for k, v in arrays.items()})
    same = json.loads(run_cli(*args, "--data", tmp_path / "named.npz").stdout)
    assert same["cosine"] == res["cosine"] and same["accuracy"] == res["accuracy"]


@pytest.mark.parametrize(
    "body, message",
    [
        (
            "def load_data():\n    raise ValueError('no camera attached')\n",
            "raised ValueError: no camera attached (line 2)",
        ),
        (
            "def load_data():\n    return [{'image': __import__('numpy').zeros((2, 3, 6, 6))}]\n",
            "has an array 'image' that is not an input",
        ),
        (
            "def load_data():\n    return [{'x': __import__('numpy').zeros((2, 3, 5, 5), 'float32')}]\n",
            "data samples have shape (3, 5, 5)",
        ),
        ("def other():\n    return []\n", "defines no function load_data()"),
        ("def load_data(:\n", "raised SyntaxError"),
    ],
)
def test_loader_script_mistakes_are_one_line(tmp_path, body, message):
    model = save(small_cnn()[0], tmp_path)
    script = tmp_path / "bad.py"
    script.write_text(body)
    r = run_cli("shuffle", model, "--layer", "conv2", "--device", "cpu", "--data-loader-script", script)
    assert r.exit_code == 2 and message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
