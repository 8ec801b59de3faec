"""Models with external data are run by path: weights stay on disk, never copied into one protobuf."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from builders import make_model, run_cli, small_cnn
from onnx import helper

from onnxredund import load_model, run_impulse, run_shuffle
from onnxredund.data import Dataset
from onnxredund.engine import runtime
from onnxredund.model import BASEPATH, external_folder, external_tensors


def _save_external(model: onnx.ModelProto, folder, name="model.onnx"):
    folder.mkdir()
    path = folder / name
    onnx.save(model, str(path), save_as_external_data=True, location="weights.bin", size_threshold=0)
    return path


@pytest.fixture
def sessions(monkeypatch):
    """Every model handed to onnxruntime in the test."""
    seen = []
    original = runtime.session_model

    def spy(proto):
        out = original(proto)
        seen.append(out[0])
        return out

    monkeypatch.setattr(runtime, "session_model", spy)
    return seen


def test_external_weights_stay_on_disk_and_give_the_same_numbers(tmp_path, monkeypatch, sessions):
    model, weights = small_cnn(3, residual=True, c_mid=5, c_out=5)
    inline = tmp_path / "inline.onnx"
    onnx.save(model, str(inline))
    path = _save_external(model, tmp_path / "ext")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the data is found next to the model, not in the working folder

    ext = load_model(path)
    pinned = external_tensors(ext.proto)
    assert {t.name for t in pinned} == set(weights)
    assert {external_folder(t) for t in pinned} == {str((tmp_path / "ext").resolve())}
    np.testing.assert_array_equal(ext.constant("w2"), weights["w2"].astype(np.float32))

    rng = np.random.default_rng(0)
    data = Dataset(rng.normal(size=(40, 3, 6, 6)).astype(np.float32), rng.integers(0, 4, 40), "random")
    ref = load_model(inline)
    sessions.clear()
    for exact in (False, True):
        for mode in ("channel", "pixel"):
            a = run_shuffle(ref, "conv2", data, mode=mode, device="cpu", exact_path=exact, batch_size=16)
            b = run_shuffle(ext, "conv2", data, mode=mode, device="cpu", exact_path=exact, batch_size=16)
            np.testing.assert_array_equal(a.cosine, b.cosine)
            np.testing.assert_array_equal(a.accuracy, b.accuracy)
    imp_a, imp_b = run_impulse(ref, device="cpu"), run_impulse(ext, device="cpu")
    for la, lb in zip(imp_a.layers, imp_b.layers, strict=True):
        np.testing.assert_array_equal(la.ncc, lb.ncc)

    # what onnxruntime got: the original weights as references to the file, never their bytes
    ext_sessions = [p for p in sessions if external_tensors(p)]
    assert ext_sessions
    for proto in ext_sessions:
        inline_originals = [t.name for t in proto.graph.initializer if t.name in weights and t.data_location == 0]
        assert inline_originals == []
        assert all(e.key != BASEPATH for t in external_tensors(proto) for e in t.external_data)


def test_the_cli_runs_a_model_with_external_data_from_another_folder(tmp_path, monkeypatch):
    path = _save_external(small_cnn(1)[0], tmp_path / "m")
    before = {p: p.read_bytes() for p in path.parent.iterdir()}
    monkeypatch.chdir(tmp_path)
    r = run_cli("shuffle", str(path), "--layer", "conv2", "--data", "synthetic:32", "--json", "--device", "cpu")
    assert r.exit_code == 0, r.stderr
    assert len(json.loads(r.stdout)["cosine"]) == 4
    assert {p: p.read_bytes() for p in path.parent.iterdir()} == before  # and nothing written beside it


def test_a_model_over_2_gb_runs_by_path(tmp_path):
    """A 2 GiB + 64 B weight (a sparse file of zeros) beside a small conv: loaded, checked and run."""
    n = 2**29 + 16
    folder = tmp_path / "big"
    folder.mkdir()
    with open(folder / "table.bin", "wb") as f:
        f.truncate(4 * n)
    w = np.random.default_rng(0).normal(size=(2, 1, 3, 3)).astype(np.float32)
    model = make_model(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
            helper.make_node("Gather", ["table", "i"], ["g"], name="lookup"),
            helper.make_node("Add", ["c", "g"], ["y"], name="add"),
        ],
        [("x", ["N", 1, 8, 8])],
        [("y", ["N", 2, 6, 6])],
        {"w": w, "i": np.array(0, np.int64), "table": np.zeros(1)},
    )
    table = next(t for t in model.graph.initializer if t.name == "table")  # made external and 2 GiB
    table.ClearField("raw_data")
    table.dims[:] = [n]
    table.data_location = onnx.TensorProto.EXTERNAL
    table.external_data.add(key="location", value="table.bin")
    path = folder / "big.onnx"
    path.write_bytes(model.SerializeToString())
    assert path.stat().st_size + (folder / "table.bin").stat().st_size > 2**31

    r = run_cli("impulse", str(path), "--json", "--device", "cpu")
    assert r.exit_code == 0, r.stderr
    layer = json.loads(r.stdout)["layers"][0]
    # the response of each channel to an impulse is its flipped kernel: the two compare as the kernels do
    flipped = w[:, 0, ::-1, ::-1]
    z = (flipped - flipped.mean(axis=(1, 2), keepdims=True)).reshape(2, -1)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    assert np.isclose(layer["ncc"][0][0], 1.0)
    assert layer["ncc"][0][1] >= float(z[0] @ z[1]) - 1e-6  # lag 0 is one of the lags maximised over


def test_external_weights_on_cuda_give_the_cpu_numbers(tmp_path):
    from onnxredund.engine.runtime import cuda_works

    if not cuda_works():
        pytest.skip("no CUDA for onnxruntime here")
    model = load_model(_save_external(small_cnn(4)[0], tmp_path / "m"))
    rng = np.random.default_rng(1)
    data = Dataset(rng.normal(size=(64, 3, 6, 6)).astype(np.float32), rng.integers(0, 4, 64), "random")
    cpu = run_shuffle(model, "conv2", data, device="cpu", batch_size=32)
    gpu = run_shuffle(model, "conv2", data, device="cuda", batch_size=32)
    assert gpu.device == "cuda"
    np.testing.assert_allclose(gpu.cosine, cpu.cosine, atol=1e-5)
    imp_cpu, imp_gpu = run_impulse(model, device="cpu"), run_impulse(model, device="cuda")
    for a, b in zip(imp_cpu.layers, imp_gpu.layers, strict=True):
        np.testing.assert_allclose(a.ncc, b.ncc, atol=1e-5)
