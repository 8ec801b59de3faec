"""Big inputs in bounded memory: a run of the network in parts of the samples it can take (the same values), the
fast path only where one channel's run over the batch fits, and a batch refused in one line, naming a size that
fits, where its tensors alone would not (a batch of 256 detector images at 800 x 608 took 20 GB and ended in
numpy's MemoryError)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from builders import make_model, run_cli, save, small_cnn
from onnx import helper

from onnxredund.analyses.shuffle import run_shuffle
from onnxredund.data import Dataset
from onnxredund.engine import load_model_proto, runtime, sweep
from onnxredund.engine.runtime import Runner, rows_per_run
from onnxredund.errors import OnnxRedundError


def _memory(monkeypatch, size: int) -> None:
    monkeypatch.setattr(runtime, "machine_memory", lambda: size)
    monkeypatch.setattr(sweep, "machine_memory", lambda: size)


def test_a_run_in_parts_gives_the_values_of_one_run_and_a_squeezed_part_its_axis_back():
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["z"], name="c"),
        helper.make_node("ReduceMean", ["z"], ["m"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Squeeze", ["m"], ["score"]),  # (N,) of (N, 1, 1, 1); () for one sample
    ]
    proto = make_model(
        nodes, [("x", ["N", 2, 5, 5])], [("z", ["N", 3, 3, 3]), ("score", ["N"])], {"w": rng.normal(size=(3, 2, 3, 3))}
    )
    runner = Runner.create(proto, "cpu")
    x = rng.normal(size=(7, 2, 5, 5)).astype(np.float32)
    whole = runner.run({"x": x})
    for rows in (2, 3, 6):  # 7 in parts of 2 (one of 1), of 3 and of 6
        parts = runner.run_parts({"x": x}, None, rows)
        for w, p in zip(whole, parts, strict=True):
            np.testing.assert_allclose(p, w, rtol=1e-6, atol=1e-7)  # another batch size: the last bit may differ


def test_samples_per_run_are_a_quarter_of_the_memory_over_six_of_the_largest_tensor(monkeypatch):
    model = load_model_proto(small_cnn(size=8)[0])  # largest tensor per sample: 5 x 8 x 8 floats
    _memory(monkeypatch, 4 * 6 * 4 * 320 * 100)
    assert rows_per_run(model, "cpu") == 100
    assert rows_per_run(model, "cuda") is None
    _memory(monkeypatch, 1000)
    assert rows_per_run(model, "cpu") == 2  # at least two


def test_a_sweep_whose_fast_run_would_not_fit_takes_the_direct_path_with_the_same_numbers(monkeypatch):
    model = load_model_proto(small_cnn(size=8)[0])
    rng = np.random.default_rng(3)
    data = Dataset(rng.normal(size=(24, 3, 8, 8)).astype(np.float32), rng.integers(0, 4, 24), "toy")
    want = run_shuffle(model, "conv2", data, batch_size=12, device="cpu", seed=2)
    assert want.route == "fast"
    _memory(monkeypatch, 600_000)  # a fast run of one channel: 16 x 320 floats a sample, 7 samples fit
    got = run_shuffle(model, "conv2", data, batch_size=12, device="cpu", seed=2)
    assert got.route == "direct"
    np.testing.assert_allclose(got.cosine, want.cosine, atol=1e-6)
    np.testing.assert_array_equal(got.accuracy, want.accuracy)


def test_a_batch_whose_tensors_would_not_fit_is_refused_naming_one_that_does(monkeypatch):
    model = load_model_proto(small_cnn(size=8)[0])
    data = Dataset(np.zeros((40, 3, 8, 8), np.float32), None, "toy")
    _memory(monkeypatch, 400_000)
    with pytest.raises(OnnxRedundError, match="a batch of 40 samples"):  # 40 samples: a batch of 256 holds 40
        run_shuffle(model, "conv2", data, batch_size=256, device="cpu")
    pattern = r"a batch of 32 samples holds about .* MB .*has 0.4 MB\); pass `batch_size` \d+ or less"
    with pytest.raises(OnnxRedundError, match=pattern) as refused:
        run_shuffle(model, "conv2", data, batch_size=32, device="cpu")
    fits = int(str(refused.value).split("`batch_size` ")[1].split()[0])
    assert 1 <= fits < 32
    assert run_shuffle(model, "conv2", data, batch_size=fits, device="cpu").samples_done == 40


def test_running_out_of_memory_is_one_line_and_status_2(monkeypatch, tmp_path):
    path = save(small_cnn()[0], tmp_path)

    def exhausted(self, feeds, outputs=None):
        raise MemoryError("Unable to allocate 950. MiB for an array with shape (256, 1, 800, 608)")

    monkeypatch.setattr(Runner, "run", exhausted)
    r = run_cli("shuffle", path, "--layer", "conv2", "--data", "synthetic:8", "--device", "cpu")
    assert r.exit_code == 2
    assert r.stderr.strip().splitlines()[-1].startswith("onnxredund: error: out of memory (Unable to allocate 950. MiB")
    assert "pass a smaller --batch-size" in r.stderr and "Traceback" not in r.stderr


def test_a_prune_in_small_memory_runs_its_batches_in_parts_with_the_same_results(monkeypatch, tmp_path):
    path = save(small_cnn(size=8)[0], tmp_path)
    rng = np.random.default_rng(5)
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(40, 3, 8, 8)).astype(np.float32), y=rng.integers(0, 4, 40))
    args = ["--data", tmp_path / "d.npz", "--target-macs", "0.3", "--round-to", "1", "--device", "cpu", "--json"]
    calls = []
    parts = Runner.run_parts

    def counted(self, feeds, outputs=None, rows=None):
        calls.append(rows)
        return parts(self, feeds, outputs, rows)

    monkeypatch.setattr(Runner, "run_parts", counted)
    plans = []
    for memory in (None, 50_000):  # 50 kB: runs of 2 samples (6 x 320 floats each)
        if memory:
            monkeypatch.setattr(runtime, "machine_memory", lambda m=memory: m)
        r = run_cli("prune", path, *args, "--out", tmp_path / f"small{memory}.onnx")
        assert r.exit_code == 0, r.output
        plans.append(json.loads(r.stdout))
    assert 2 in calls  # the batches went in parts of two samples
    assert plans[1]["plan"] == plans[0]["plan"]
    for key in ("accuracy", "agreement", "output_cosine", "output_drift"):
        np.testing.assert_allclose(plans[1]["quality"]["after"][key], plans[0]["quality"]["after"][key], rtol=1e-5)
