"""The example models the exporters build with torch: a 1-D CNN, a two-input model, a 3-D CNN, analysed
end to end (where torch is installed)."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from builders import run_cli  # noqa: E402

from exporters.examples import EXAMPLES, build, export  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Each example trained briefly and exported, with its test samples as a .npz."""
    folder = tmp_path_factory.mktemp("examples")
    out = {}
    for name, (_, _, names) in EXAMPLES.items():
        model, inputs, y = build(name, steps=300)
        export(model, inputs, names, str(folder / f"{name}.onnx"))
        arrays = dict(zip(names, inputs, strict=True)) if len(names) > 1 else {"x": inputs[0]}
        np.savez(folder / f"{name}.npz", **{k: v[:64] for k, v in arrays.items()}, y=y[:64])
        out[name] = (folder / f"{name}.onnx", folder / f"{name}.npz")
    return out


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_each_example_shuffles_the_same_on_both_paths(exported, name):
    model, data = exported[name]
    args = [
        "shuffle",
        model,
        "--layer",
        "conv2",
        "--mode",
        "both",
        "--data",
        data,
        "--device",
        "cpu",
        "--batch-size",
        "16",
        "--json",
    ]
    fast, direct = run_cli(*args), run_cli(*args, "--exact-path")
    assert fast.exit_code == 0 and direct.exit_code == 0, fast.stderr + direct.stderr
    for mode in ("channel", "pixel"):
        a, b = json.loads(fast.stdout)[mode], json.loads(direct.stdout)[mode]
        assert a["path"] == "fast" and b["path"] == "direct"
        np.testing.assert_allclose(a["cosine"], b["cosine"], atol=1e-5)
        assert a["accuracy"] == b["accuracy"] and a["baseline_accuracy"] > 0.5


def test_the_3d_example_interleaves_the_phases_of_its_strided_conv(exported):
    model, _ = exported["video3d"]
    r = run_cli("impulse", model, "--device", "cpu", "--json")
    assert r.exit_code == 0, r.stderr
    conv1, conv2 = json.loads(r.stdout)["layers"]
    assert conv1["phases"] == [1, 1, 1] and conv2["phases"] == [2, 2, 2]
    assert len(conv2["support"]) == 6  # 3 starts and 3 sizes


def test_the_two_input_example_audits_with_an_output_gate(exported, tmp_path):
    model, data = exported["two_inputs"]
    layers = run_cli("layers", model)
    assert "image N x 3x32x32 (NCHW) [impulse], meta N x 8" in layers.stdout
    r = run_cli(
        "audit", model, "--data", data, "--device", "cpu", "--out", tmp_path / "o", "--fail-if", "top1_agreement<1.01"
    )
    assert r.exit_code == 1 and "gate top1_agreement<1.01 failed at conv1" in r.stderr
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    assert results["labelled"] and results["summary"][1]["worst_accuracy_drop"] is not None
