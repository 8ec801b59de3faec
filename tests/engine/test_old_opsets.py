"""Models at opsets older than onnxruntime runs (PyTorch's exports of 2017-2018 at opset 6): analysed as onnx's
conversion of them, used only where onnxruntime computes on it what onnx's reference evaluator computes on the
original."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import run_cli, save
from onnx import TensorProto, helper, numpy_helper

from onnxredund.engine import load_model_proto
from onnxredund.engine.old_opsets import UPGRADE_OPSET
from onnxredund.engine.runtime import Runner
from onnxredund.errors import OnnxRedundError
from onnxredund.model import default_opset


def legacy_model(slope_shape=None, *, modern: bool = False) -> onnx.ModelProto:
    """Opset 6, IR 3 as Caffe2 and PyTorch 0.3 wrote it: initializers listed as inputs, the first conv's bias added
    by a legacy broadcasting Add (``broadcast=1, axis=1``), a Relu (or a PRelu of ``slope_shape``), a conv, a
    batch of 2. ``modern``: the same network written at opset 11 (the bias (6, 1, 1), broadcast the numpy way)."""
    rng = np.random.default_rng(0)
    w = {
        "w1": rng.normal(size=(6, 3, 3, 3)),
        "b1": rng.normal(size=(6, 1, 1) if modern else 6),
        "w2": rng.normal(size=(4, 6, 3, 3)),
        "b2": rng.normal(size=4),
    }
    if slope_shape:
        w["slope"] = rng.uniform(0.1, 0.3, size=slope_shape)
    legacy = {} if modern else {"broadcast": 1, "axis": 1}
    act = helper.make_node("PRelu", ["s", "slope"], ["r"]) if slope_shape else helper.make_node("Relu", ["s"], ["r"])
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["a", "b1"], ["s"], **legacy),
        act,
        helper.make_node("Conv", ["r", "w2", "b2"], ["z"], pads=[1, 1, 1, 1]),
    ]
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in w.items()]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8, 8])]
    if not modern:
        inputs += [helper.make_tensor_value_info(t.name, TensorProto.FLOAT, list(t.dims)) for t in inits]
    outputs = [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 4, 8, 8])]
    graph = helper.make_graph(nodes, "legacy", inputs, outputs, initializer=inits)
    opset, ir = (11, 6) if modern else (6, 3)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir)


def test_an_opset_6_model_with_a_bias_broadcast_from_axis_1_is_analysed_as_its_conversion():
    # the legacy Add(broadcast=1, axis=1) is read by neither onnx's converter nor its reference evaluator: both
    # refused it before its bias got the trailing axes that make the modern rule agree
    original = legacy_model()
    model = load_model_proto(original)
    assert default_opset(original) == 6 and default_opset(model.proto) == UPGRADE_OPSET
    assert [layer.out_channels for layer in model.layers] == [6, 4] and model.batch_dynamic
    x = np.random.default_rng(1).normal(size=(2, 3, 8, 8)).astype(np.float32)
    want = Runner.create(legacy_model(modern=True), "cpu").run({"x": x})[0]
    np.testing.assert_allclose(Runner.create(model.proto, "cpu").run({"x": x})[0], want, rtol=1e-5, atol=1e-5)


def test_an_opset_6_model_is_pruned_into_a_checked_file_at_the_new_opset(tmp_path):
    path = save(legacy_model(), tmp_path)
    before = path.read_bytes()
    out = tmp_path / "pruned.onnx"
    r = run_cli(
        "prune", str(path), "--data", "synthetic:8", "--target-macs", "0.3", "--round-to", "1", "--out", str(out)
    )
    assert r.exit_code == 0, r.output
    assert "uses opset 6, older than onnxruntime runs" in r.output
    pruned = onnx.load(str(out))
    onnx.checker.check_model(pruned)
    assert default_opset(pruned) == UPGRADE_OPSET
    assert numpy_helper.to_array(next(t for t in pruned.graph.initializer if t.name == "w1")).shape[0] < 6
    assert path.read_bytes() == before


def test_a_conversion_onnxruntime_cannot_run_is_refused_naming_why():
    # opset 6's PRelu broadcast a (C,) slope along the channels; from opset 7 on it broadcasts from the last axis,
    # and onnx's converter leaves the slope as it is: onnxruntime fails on the conversion
    with pytest.raises(OnnxRedundError, match=r"uses opset 6; .*onnxruntime cannot run onnx's conversion of it"):
        load_model_proto(legacy_model(slope_shape=(6,)))


BACKEND = Path(onnx.__file__).parent / "backend" / "test" / "data" / "pytorch-converted"
# PyTorch 0.3's exports that onnx ships as backend tests (opset 6, IR 3, fixed batches of 2 to 4), one per family
EXPORTS = [
    "test_Conv1d_groups",
    "test_Conv2d_depthwise_with_multiplier",
    "test_Conv2d_dilated",
    "test_Conv3d_stride_padding",
    "test_ConvTranspose2d",
]


@pytest.mark.parametrize("name", EXPORTS)
def test_pytorchs_opset_6_exports_give_pytorchs_outputs_and_go_through_impulse_and_sweeps(name):
    from onnxredund.analyses.impulse import run_impulse
    from onnxredund.analyses.shuffle import run_shuffle
    from onnxredund.data import Dataset
    from onnxredund.engine import load_model

    folder = BACKEND / name
    model = load_model(folder / "model.onnx")
    x = numpy_helper.to_array(onnx.load_tensor(str(folder / "test_data_set_0" / "input_0.pb")))
    want = numpy_helper.to_array(onnx.load_tensor(str(folder / "test_data_set_0" / "output_0.pb")))
    got = Runner.create(model.proto, "cpu").run({model.input_name: x})[0]  # PyTorch's own output, kept by onnx
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    layer = model.layers[0]
    assert layer.output_shape == want.shape[1:]  # the fixed batch is the batch, not part of a sample
    assert run_impulse(model, device="cpu").layers[0].responses.shape[:2] == (layer.out_channels, layer.in_channels)
    data = Dataset(np.random.default_rng(0).normal(size=(6, *x.shape[1:])).astype(np.float32), None, name)
    fast = run_shuffle(model, layer.name, data, batch_size=3, device="cpu")
    direct = run_shuffle(model, layer.name, data, batch_size=3, device="cpu", exact_path=True)
    np.testing.assert_allclose(fast.cosine, direct.cosine, atol=1e-6)
