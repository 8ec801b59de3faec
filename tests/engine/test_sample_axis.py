"""Outputs that hold their samples on a later axis (a recogniser's time-major (T, N, classes)): the analyses read
them samples first, on the batched path, and a pruned model is written with the file's own output."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from builders import make_model, run_cli, save
from onnx import helper

from onnxredund.analyses.shuffle import run_shuffle
from onnxredund.data import Dataset
from onnxredund.engine import load_model_proto


def time_major(batch: int | None, *, scalar_output: bool = False) -> onnx.ModelProto:
    """x (B, 2, 4, 6) -> conv1 (4) -> Relu -> conv2 (5, 1x1) -> mean over H -> (W, B, 5) "scores"; conv2 reads
    nothing of conv1's channel 1 (its weights there are zero). ``scalar_output`` adds an output with no
    sample axis at all (the mean of everything), which keeps a fixed batch from being freed."""
    rng = np.random.default_rng(0)
    w2 = rng.normal(size=(5, 4, 1, 1))
    w2[:, 1] = 0
    inits = {"w1": rng.normal(size=(4, 2, 3, 3)), "b1": rng.normal(size=4), "w2": w2, "b2": rng.normal(size=5)}
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["a1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["a2"], name="conv2"),
        helper.make_node("ReduceMean", ["a2"], ["m"], axes=[2], keepdims=0),
        helper.make_node("Transpose", ["m"], ["scores"], perm=[2, 0, 1]),
    ]
    n = batch if batch is not None else "N"
    outputs = [("scores", [6, n, 5])]
    if scalar_output:
        nodes.append(helper.make_node("ReduceMean", ["a2"], ["level"], keepdims=0))
        outputs.append(("level", []))
    return make_model(nodes, [("x", [n, 2, 4, 6])], outputs, inits.items())


def _run(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        ["scores"], {"x": x}
    )[0]


def _samples(n: int = 10) -> np.ndarray:
    return np.random.default_rng(1).normal(size=(n, 2, 4, 6)).astype(np.float32)


def test_a_fixed_batch_time_major_output_is_freed_and_read_samples_first():
    proto = time_major(1)
    model = load_model_proto(proto)
    assert model.batch_dynamic  # the batch check joins the per-sample runs along axis 1
    x = _samples(3)
    time_major_values = np.concatenate([_run(proto, x[i : i + 1]) for i in range(3)], axis=1)  # (6, 3, 5)
    np.testing.assert_allclose(_run(model.proto, x), np.moveaxis(time_major_values, 1, 0), rtol=1e-6, atol=1e-6)
    assert model.shapes["scores"] == (6, 5)


def test_a_free_batch_declared_on_a_later_axis_is_read_samples_first():
    proto = time_major(None)
    model = load_model_proto(proto)
    x = _samples(3)
    np.testing.assert_allclose(_run(model.proto, x), np.moveaxis(_run(proto, x), 1, 0), rtol=1e-6, atol=1e-6)
    assert [d.dim_param or d.dim_value for d in model.proto.graph.output[0].type.tensor_type.shape.dim] == ["N", 6, 5]


def test_a_time_major_models_sweep_gives_the_numbers_of_one_sample_at_a_time():
    one_at_a_time = load_model_proto(time_major(1, scalar_output=True))
    assert not one_at_a_time.batch_dynamic  # the scalar output has no sample axis: the batch stays fixed
    data = Dataset(_samples(), None, "toy")
    want = run_shuffle(one_at_a_time, "conv2", data, mode="pixel", batch_size=4, device="cpu")
    for proto in (time_major(1), time_major(None)):
        model = load_model_proto(proto)
        got = run_shuffle(model, "conv2", data, mode="pixel", batch_size=4, device="cpu")
        assert got.route == "fast"
        np.testing.assert_allclose(got.cosine, want.cosine, rtol=1e-5, atol=1e-6)
        ours, theirs = got.to_dict()["outputs"]["scores"], want.to_dict()["outputs"]["scores"]
        for key in ("cosine", "relative_l2"):
            np.testing.assert_allclose(ours[key], theirs[key], rtol=1e-4, atol=1e-6)


def test_a_pruned_time_major_model_is_written_with_the_files_output_its_batch_free(tmp_path):
    path = save(time_major(1), tmp_path)
    np.savez(tmp_path / "d.npz", x=_samples(16))
    out = tmp_path / "small.onnx"
    r = run_cli("prune", path, "--data", tmp_path / "d.npz", "--channels", "conv1:1", "--out", out, "--device", "cpu")
    assert r.exit_code == 0, r.output
    pruned = onnx.load(out)
    onnx.checker.check_model(pruned, full_check=True)
    assert not [n.name for n in pruned.graph.node if "samples_first" in n.name]
    dims = pruned.graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == [6, "N", 5]
    x = _samples(3)
    original = np.concatenate([_run(time_major(1), x[i : i + 1]) for i in range(3)], axis=1)
    np.testing.assert_allclose(_run(pruned, x), original, rtol=1e-5, atol=1e-5)  # conv2 never read channel 1


def test_an_output_declared_with_the_batch_on_a_later_axis_where_its_samples_are_first_stays_as_it_is(caplog):
    proto = time_major(None)
    proto.graph.node.pop()  # no Transpose: "m" is (N, 5, 6), samples first, but declared as if time-major
    proto.graph.node[-1].output[0] = "scores"
    proto.graph.output[0].CopyFrom(helper.make_tensor_value_info("scores", onnx.TensorProto.FLOAT, [5, "N", 6]))
    model = load_model_proto(proto)
    assert not [n for n in model.proto.graph.node if "samples_first" in n.name]
    assert "declared with its samples on axis 1, but they do not join there" in caplog.text
    x = _samples(3)
    np.testing.assert_allclose(_run(model.proto, x), _run(proto, x))


def test_a_free_batch_output_with_no_sample_axis_is_left_out_of_every_measurement():
    # "level", the mean over the whole batch, has no value per sample: measured, it broke the fast model (a
    # Reshape of its () to (K, B)) and the direct path (a traceback unpacking its shape)
    data = Dataset(_samples(), None, "toy")
    model = load_model_proto(time_major(None, scalar_output=True))
    assert model.batch_outputs == ["level"]
    assert model.output_names == ["scores"]
    want = run_shuffle(load_model_proto(time_major(None)), "conv2", data, mode="channel", batch_size=4, device="cpu")
    for exact in (False, True):
        got = run_shuffle(model, "conv2", data, mode="channel", batch_size=4, device="cpu", exact_path=exact)
        assert got.route == ("direct" if exact else "fast")
        assert list(got.to_dict()["outputs"]) == ["scores"]
        ours, theirs = got.to_dict()["outputs"]["scores"], want.to_dict()["outputs"]["scores"]
        for key in ("cosine", "relative_l2"):
            np.testing.assert_allclose(ours[key], theirs[key], rtol=1e-4, atol=1e-6)


def test_a_pruned_model_keeps_the_output_with_no_sample_axis(tmp_path):
    proto = time_major(None, scalar_output=True)
    path = save(proto, tmp_path)
    np.savez(tmp_path / "d.npz", x=_samples(16))
    out = tmp_path / "small.onnx"
    r = run_cli("prune", path, "--data", tmp_path / "d.npz", "--channels", "conv1:1", "--out", out, "--device", "cpu")
    assert r.exit_code == 0, r.output
    pruned = onnx.load(out)
    assert [o.name for o in pruned.graph.output] == ["scores", "level"]
    x = _samples(3)
    want = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    got = ort.InferenceSession(pruned.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    for w, g in zip(want, got, strict=True):  # conv2 never read conv1's channel 1
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_layers_names_the_output_with_no_sample_axis(tmp_path):
    path = save(time_major(None, scalar_output=True), tmp_path)
    r = run_cli("layers", path)
    assert r.exit_code == 0, r.output
    assert "left out (no value per sample, a statistic over the batch): level" in r.output
    r = run_cli("layers", path, "--json")
    assert json.loads(r.stdout)["batch_outputs"] == ["level"]


def state_model() -> onnx.ModelProto:
    """Silero VAD's interface in small: audio x (N, 16) and an RNN-like state (2, N, 3), the batch on its axis 1.
    x -> Unsqueeze -> conv1 (3, k 5) -> Relu -> conv2 (3, k 3) -> Relu -> mean over time, plus the state's mean over
    its layers -> Gemm -> logits (N, 4); conv2 reads nothing of conv1's channel 1."""
    rng = np.random.default_rng(2)
    w2 = rng.normal(size=(3, 3, 3))
    w2[:, 1] = 0
    inits = {"w1": rng.normal(size=(3, 1, 5)), "w2": w2, "fc": rng.normal(size=(3, 4)), "one": np.array([1])}
    nodes = [
        helper.make_node("Unsqueeze", ["x", "one"], ["x1"]),
        helper.make_node("Conv", ["x1", "w1"], ["z1"], name="conv1", pads=[2, 2]),
        helper.make_node("Relu", ["z1"], ["a1"]),
        helper.make_node("Conv", ["a1", "w2"], ["z2"], name="conv2", pads=[1, 1]),
        helper.make_node("Relu", ["z2"], ["a2"]),
        helper.make_node("ReduceMean", ["a2"], ["m"], axes=[2], keepdims=0),
        helper.make_node("ReduceMean", ["state"], ["s"], axes=[0], keepdims=0),
        helper.make_node("Add", ["m", "s"], ["y"]),
        helper.make_node("Gemm", ["y", "fc"], ["logits"]),
    ]
    return make_model(nodes, [("x", ["N", 16]), ("state", [2, "N", 3])], [("logits", ["N", 4])], inits.items())


def _state_data(n: int = 12) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    return {"x": rng.normal(size=(n, 16)).astype(np.float32), "state": rng.normal(size=(n, 2, 3)).astype(np.float32)}


def _logits(proto: onnx.ModelProto, feeds: dict) -> np.ndarray:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["logits"], feeds)[0]


def test_an_input_with_the_batch_on_a_later_axis_is_given_samples_first():
    # it was refused ("has the batch 'batch' on axis 1"), and the state, of image rank, was taken for the image
    model = load_model_proto(state_model())
    assert model.input_name == "x"  # the audio the first conv reads, not the state
    assert model.input("state").sample_shape == (2, 3)
    feeds = _state_data()
    as_declared = {"x": feeds["x"], "state": np.ascontiguousarray(feeds["state"].transpose(1, 0, 2))}
    np.testing.assert_allclose(_logits(model.proto, feeds), _logits(state_model(), as_declared), rtol=1e-6)
    data = Dataset(feeds, None, "toy")
    fast = run_shuffle(model, "conv2", data, batch_size=4, device="cpu")
    direct = run_shuffle(model, "conv2", data, batch_size=4, device="cpu", exact_path=True)
    assert fast.route == "fast"
    np.testing.assert_allclose(fast.outputs["logits"].cosine, direct.outputs["logits"].cosine, atol=1e-6)


def test_a_pruned_model_reads_its_state_as_the_file_declared_it(tmp_path):
    path = save(state_model(), tmp_path)
    np.savez(tmp_path / "d.npz", **_state_data(16))
    out = tmp_path / "small.onnx"
    r = run_cli("prune", path, "--data", tmp_path / "d.npz", "--channels", "conv1:1", "--out", out, "--device", "cpu")
    assert r.exit_code == 0, r.output
    pruned = onnx.load(out)
    onnx.checker.check_model(pruned, full_check=True)
    state = next(i for i in pruned.graph.input if i.name == "state")
    assert [d.dim_param or d.dim_value for d in state.type.tensor_type.shape.dim] == [2, "N", 3]
    assert not [n.name for n in pruned.graph.node if "samples_first" in n.name]
    feeds = _state_data(3)
    feeds["state"] = np.ascontiguousarray(feeds["state"].transpose(1, 0, 2))
    np.testing.assert_allclose(_logits(pruned, feeds), _logits(state_model(), feeds), rtol=1e-5, atol=1e-5)


def fixed_state_model(*, fixed_batch: bool, state_input: bool = True, layers: int = 3) -> onnx.ModelProto:
    """AECMOS's interface in small: x (N, 2, 6, 6) and a state h [layers, 1, 4], its batch of one on axis 1, fixed
    (Silero VAD v6's [1, 1, 128] with ``layers=1``).
    x -> conv1 (3) -> Relu -> conv2 (4) -> Relu -> mean -> (N, 4), joined on a new first axis with the state's
    first two rows h[0:2] (read past conv2), averaged over it: logits. ``fixed_batch`` adds the mean's maximum over
    the batch (its own value for one sample: AECMOS's last two scores differ so in a batch of two);
    ``state_input=False`` makes h a constant of zeros, and the batch 1 (a constant state has a batch of one)."""
    rng = np.random.default_rng(4)
    w2 = rng.normal(size=(4, 3, 3, 3))
    w2[:, 1] = 0
    inits = {
        "w1": rng.normal(size=(3, 2, 3, 3)),
        "w2": w2,
        "zero": np.array([0]),
        "two": np.array([2]),
    }
    if not state_input:
        inits["h"] = np.zeros((layers, 1, 4))
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["z1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["z1"], ["a1"]),
        helper.make_node("Conv", ["a1", "w2"], ["z2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["z2"], ["a2"]),
        helper.make_node("ReduceMean", ["a2"], ["m"], axes=[2, 3], keepdims=0),
        helper.make_node("ReduceMax", ["m"], ["top"], axes=[0], keepdims=1),
        helper.make_node("Add", ["m", "top"], ["m2"]) if fixed_batch else helper.make_node("Identity", ["m"], ["m2"]),
        helper.make_node("Unsqueeze", ["m2", "zero"], ["m3"]),
        helper.make_node("Slice", ["h", "zero", "two", "zero"], ["rows"]),
        helper.make_node("Concat", ["rows", "m3"], ["joined"], axis=0),
        helper.make_node("ReduceMean", ["joined"], ["logits"], axes=[0], keepdims=0),
    ]
    inputs = [("x", ["N", 2, 6, 6]), ("h", [layers, 1, 4])] if state_input else [("x", [1, 2, 6, 6])]
    return make_model(nodes, inputs, [("logits", ["N", 4])], inits.items())


def _fixed_state_data(n: int = 10, layers: int = 3) -> dict[str, np.ndarray]:
    x = np.random.default_rng(6).normal(size=(n, 2, 6, 6)).astype(np.float32)
    return {"x": x, "h": np.zeros((n, layers, 4))}


@pytest.mark.parametrize("layers", [3, 1])
@pytest.mark.parametrize("fixed_batch", [False, True])
def test_a_state_with_a_batch_of_one_on_axis_1_is_given_samples_first(fixed_batch, layers):
    # AECMOS's h0 [4, 1, 64] (and Silero VAD v6's [1, 1, 128]) beside a free batch was refused ("fixes its first
    # axis while 'input' has a free batch")
    model = load_model_proto(fixed_state_model(fixed_batch=fixed_batch, layers=layers))
    assert model.input("h").sample_shape == (layers, 4)
    assert model.batch_dynamic is not fixed_batch  # a batch of two runs and joins: free; else one at a time
    feeds = {k: v.astype(np.float32) for k, v in _fixed_state_data(layers=layers).items()}
    baked = load_model_proto(fixed_state_model(fixed_batch=fixed_batch, state_input=False, layers=layers))
    for mode in ("channel", "pixel"):
        got = run_shuffle(model, "conv2", Dataset(feeds, None, "toy"), mode=mode, batch_size=4, device="cpu")
        want = run_shuffle(
            baked, "conv2", Dataset({"x": feeds["x"]}, None, "toy"), mode=mode, batch_size=4, device="cpu"
        )
        assert got.route == "direct"  # h[0:2], (2, N, 4), is read past conv2: the fast model's rows are first
        np.testing.assert_allclose(got.cosine, want.cosine, atol=1e-6)
        ours, theirs = got.to_dict()["outputs"]["logits"], want.to_dict()["outputs"]["logits"]
        np.testing.assert_allclose(ours["relative_l2"], theirs["relative_l2"], rtol=1e-5, atol=1e-7)


def test_a_pruned_model_declares_its_fixed_state_as_the_file_did(tmp_path):
    proto = fixed_state_model(fixed_batch=True)
    path = save(proto, tmp_path)
    np.savez(tmp_path / "d.npz", **_fixed_state_data(16))
    out = tmp_path / "small.onnx"
    r = run_cli("prune", path, "--data", tmp_path / "d.npz", "--channels", "conv1:1", "--out", out, "--device", "cpu")
    assert r.exit_code == 0, r.output
    pruned = onnx.load(out)
    h = next(i for i in pruned.graph.input if i.name == "h")
    assert [d.dim_param or d.dim_value for d in h.type.tensor_type.shape.dim] == [3, 1, 4]
    x = _fixed_state_data(1)["x"]
    feeds = {"x": x, "h": np.random.default_rng(0).normal(size=(3, 1, 4)).astype(np.float32)}
    np.testing.assert_allclose(_logits(pruned, feeds), _logits(proto, feeds), rtol=1e-5, atol=1e-6)
