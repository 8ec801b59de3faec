"""Sessions: the device choice, what onnxruntime is handed, and the ways a model is run."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import small_cnn

from onnxredund.engine.runtime import Runner, cuda_works, probe_shapes, resolve_device, session_model
from onnxredund.errors import OnnxRedundError
from onnxredund.model import BASEPATH

X = np.random.default_rng(0).random((5, 3, 6, 6), dtype=np.float32)


def test_device_choice():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if cuda_works() else "cpu")
    with pytest.raises(OnnxRedundError, match="unknown device 'tpu'"):
        resolve_device("tpu")


def test_cuda_that_cannot_be_had_is_an_error():
    if cuda_works():
        pytest.skip("CUDA works here")
    with pytest.raises(OnnxRedundError, match="`device` cuda: onnxruntime cannot run on CUDA here"):
        resolve_device("cuda")


def test_run_per_sample_equals_one_batched_run():
    runner = Runner.create(small_cnn()[0], "cpu")
    batched = runner.run({"x": X})[0]
    np.testing.assert_allclose(runner.run_per_sample({"x": X})[0], batched, rtol=1e-6)
    on_device = runner.run({"x": runner.to_device(X)})[0]  # an OrtValue input goes through IO binding
    np.testing.assert_array_equal(on_device, batched)


def test_session_model_lowers_the_ir_and_strips_folder_keys():
    model = small_cnn()[0]
    model.ir_version = 14
    t = model.graph.initializer[0]
    t.ClearField("raw_data")
    t.ClearField("float_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    t.external_data.add(key="location", value="w.bin")
    t.external_data.add(key=BASEPATH, value="/data/models")
    handed, folder = session_model(model)
    assert handed.ir_version == 13 and folder == "/data/models"
    assert [e.key for e in handed.graph.initializer[0].external_data] == ["location"]
    assert [e.key for e in model.graph.initializer[0].external_data] == ["location", BASEPATH]  # a copy


def test_a_model_onnxruntime_refuses_is_one_user_error():
    broken = small_cnn()[0]
    broken.graph.node[0].op_type = "NoSuchOp"
    with pytest.raises(OnnxRedundError, match="onnxruntime cannot load the model"):
        Runner.create(broken, "cpu")


def test_probe_shapes_runs_one_zero_sample():
    shapes = probe_shapes(small_cnn()[0], {"x": np.zeros((1, 3, 6, 6), np.float32)}, ["z1", "a2", "flat"])
    assert shapes == {"z1": (4, 6, 6), "a2": (5, 6, 6), "flat": (5,)}


def test_running_over_data_gives_the_same_outputs_batched_and_sample_by_sample():
    from builders import make_model
    from onnx import helper

    from onnxredund.data import Dataset
    from onnxredund.engine import load_model_proto

    w = np.random.default_rng(1).normal(size=(4, 3, 3, 3))

    def model(batch, out):
        nodes = [helper.make_node("Conv", ["x", "w"], ["z"], name="c"), helper.make_node("Reshape", ["z", "s"], ["y"])]
        inits = {"w": w, "s": np.array([d if isinstance(d, int) else -1 for d in out])}
        return load_model_proto(make_model(nodes, [("x", [batch, 3, 6, 6])], [("y", out)], inits))

    free = model("N", ["N", 4, 16])
    fixed = model(1, [4, 16])  # an export that squeezed its batch of 1: it cannot be freed, one sample at a time
    assert free.batch_dynamic and not fixed.batch_dynamic
    data = Dataset(np.random.default_rng(2).random((10, 3, 6, 6), dtype=np.float32), None, "toy")
    a = Runner.create(free.proto, "cpu").run_over(free, data, batch_size=4)[0]
    b = Runner.create(fixed.proto, "cpu").run_over(fixed, data, batch_size=4)[0]
    assert a.shape == b.shape == (10, 4, 16)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_onnxruntimes_own_warnings_do_not_reach_the_console(tmp_path):
    """A TensorFlow export's Resize with the deprecated `tf_half_pixel_for_nn` made onnxruntime print a warning on
    stderr (through its default logger, not the session's) for every session: LYT-Net's `prune` printed dozens."""
    import subprocess
    import sys

    from builders import make_model
    from onnx import helper

    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node(
            "Resize", ["c", "", "scales"], ["y"], mode="nearest", coordinate_transformation_mode="tf_half_pixel_for_nn"
        ),
    ]
    inits = {"w": np.ones((2, 1, 1, 1)), "scales": np.array([1.0, 1.0, 2.0, 2.0])}
    path = tmp_path / "resize.onnx"
    onnx.save(make_model(nodes, [("x", ["N", 1, 4, 4])], [("y", ["N", 2, 8, 8])], inits, opset=13), str(path))
    code = "import sys\nfrom onnxredund.cli import run\nsys.argv = ['onnxredund', *sys.argv[1:]]\nrun()"
    args = ["shuffle", str(path), "--data", "synthetic:4", "--layer", "0", "--device", "cpu", "-q"]
    r = subprocess.run([sys.executable, "-c", code, *args], check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "tf_half_pixel_for_nn" not in r.stderr  # the warning, once per session, before
