"""Outputs whose size depends on their values (a detector's NonMaxSuppression): left out of the measurements,
the boxes and scores the NMS reads measured in their place, and taken out of a pruned file again (YOLOX-nano
with its post-processing in the graph: its sweeps compared empty tensors, or stopped on "an output's shape
changes from sample to sample", and its prune was checked on nothing)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from builders import make_model, run_cli, save
from onnx import TensorProto, helper

from onnxredund.analyses.shuffle import run_shuffle
from onnxredund.data import Dataset
from onnxredund.engine import load_model_proto
from onnxredund.engine.post_processing import data_shaped_outputs, expose_measured, without_measured


def _detector(nms: bool = True, w0: np.ndarray | None = None) -> onnx.ModelProto:
    """x (N, 1, 4, 4) -> c0 (1 -> 3, 3 x 3) -> Relu -> c1 (3 -> 4, 1 x 1) -> boxes (N, 16, 4) by a Transpose and a
    Reshape; c1 -> c2 (4 -> 1) -> Sigmoid -> scores (N, 1, 16). With ``nms`` the one output is NonMaxSuppression's
    selected indices (n, 3): up to 3 boxes of a score over 0.9 per sample (0 to 3 on noise); without, boxes and
    scores are the outputs."""
    rng = np.random.default_rng(0)
    weights = [rng.normal(size=shape).astype(np.float32) for shape in ((3, 1, 3, 3), (4, 3, 1, 1), (1, 4, 1, 1))]
    inits = {
        "w0": weights[0] if w0 is None else w0,
        "w1": weights[1],
        "w2": weights[2],
        "bshape": np.array([0, -1, 4]),
        "sshape": np.array([0, 1, -1]),
        "most": np.array([3]),
        "iou": np.array([0.5], np.float32),
        "least": np.array([0.9], np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["h"], name="c0", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Conv", ["r", "w1"], ["a"], name="c1"),
        helper.make_node("Transpose", ["a"], ["at"], perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["at", "bshape"], ["boxes"]),
        helper.make_node("Conv", ["a", "w2"], ["s"], name="c2"),
        helper.make_node("Sigmoid", ["s"], ["p"]),
        helper.make_node("Reshape", ["p", "sshape"], ["scores"]),
    ]
    outputs = [("boxes", ["N", 16, 4]), ("scores", ["N", 1, 16])]
    if nms:
        nodes.append(helper.make_node("NonMaxSuppression", ["boxes", "scores", "most", "iou", "least"], ["sel"]))
        outputs = [("sel", ["n", 3])]
    model = make_model(nodes, [("x", ["N", 1, 4, 4])], outputs, inits)
    if nms:
        model.graph.output[0].type.tensor_type.elem_type = TensorProto.INT64
    return model


def _images(n: int = 32) -> np.ndarray:
    return np.random.default_rng(1).normal(size=(n, 1, 4, 4)).astype(np.float32)


def _selected(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [session.run(None, {"x": x[i : i + 1]})[0] for i in range(len(x))]


def test_an_nms_output_is_left_out_and_the_boxes_and_scores_it_reads_are_measured(tmp_path):
    counts = {len(s) for s in _selected(_detector(), _images())}
    assert len(counts) > 1  # the output's size changes from sample to sample
    m = load_model_proto(_detector())
    assert m.shaped_outputs == {"sel": ["boxes", "scores"]}
    assert m.output_names == ["boxes", "scores"] and m.classifiers == []
    text = run_cli("layers", str(save(_detector(), tmp_path))).output
    assert (
        "left out (its size depends on its values, as after a NonMaxSuppression): sel; measured in its place: " in text
    )
    listed = json.loads(run_cli("layers", str(save(_detector(), tmp_path)), "--json").stdout)
    assert listed["shaped_outputs"] == {"sel": ["boxes", "scores"]}
    # a model without one is left as it is
    assert data_shaped_outputs(_detector(nms=False)) == {}
    plain = _detector(nms=False)
    assert expose_measured(plain, {}) is plain and without_measured(plain) is plain


def test_a_nonzero_whose_indices_are_scattered_back_into_a_whole_map_keeps_its_output_measured():
    """y[y < 0] = 0 as PyTorch exports it: NonZero's indices, a ScatterND of zeros into y; the output is y's size."""
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["y"], name="c"),
        helper.make_node("Less", ["y", "zero"], ["negative"]),
        helper.make_node("NonZero", ["negative"], ["where"]),
        helper.make_node("Transpose", ["where"], ["idx"], perm=[1, 0]),
        helper.make_node("Shape", ["idx"], ["idx_shape"], end=1),
        helper.make_node("Expand", ["zero"], ["updates"]),
        helper.make_node("ScatterND", ["y", "idx", "updates"], ["out"]),
    ]
    nodes[5].input.append("idx_shape")
    w = np.random.default_rng(2).normal(size=(2, 1, 3, 3)).astype(np.float32)
    model = make_model(nodes, [("x", ["N", 1, 4, 4])], [("out", ["N", 2, 2, 2])], {"w": w, "zero": np.float32(0)})
    assert data_shaped_outputs(model) == {}
    m = load_model_proto(model)
    assert m.output_names == ["out"] and m.shaped_outputs == {}
    x = _images(2)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert (session.run(None, {"x": x})[0] >= 0).all()  # the model does what it says


@pytest.mark.parametrize("mode", ["channel", "pixel"])
def test_a_sweep_through_an_nms_measures_what_the_same_model_without_it_outputs(mode):
    data = Dataset(_images(), None, "noise")
    results = [
        run_shuffle(load_model_proto(_detector(nms)), "c1", data, mode=mode, batch_size=8, device="cpu")
        for nms in (True, False)
    ]
    assert [list(r.outputs) for r in results] == [["boxes", "scores"]] * 2
    for name in ("boxes", "scores"):
        with_nms, without = (r.outputs[name].to_dict() for r in results)
        for key, value in without.items():
            if isinstance(value, list):
                np.testing.assert_allclose(np.asarray(with_nms[key], float), np.asarray(value, float), atol=1e-6)
    np.testing.assert_allclose(results[0].cost(), results[1].cost(), atol=1e-6)
    assert (results[0].cost() > 1e-3).all()  # not the empty tensors' "no change"


def test_a_pruned_detector_keeps_its_nms_output_and_nothing_measured_in_its_place(tmp_path):
    path, out = save(_detector(), tmp_path), tmp_path / "pruned.onnx"
    r = run_cli(
        "prune", str(path), "--data", "synthetic:16", "--channels", "c0:0", "--out", str(out), "--device", "cpu"
    )
    assert r.exit_code == 0, r.output
    pruned = onnx.load(str(out))
    assert [o.name for o in pruned.graph.output] == ["sel"] and len(pruned.metadata_props) == 0
    assert pruned.graph.output[0].type == _detector().graph.output[0].type
    # removing c0's channel 0 (read through a Relu) is zeroing it: the same boxes are kept
    w0 = next(t for t in _detector().graph.initializer if t.name == "w0")
    zeroed = onnx.numpy_helper.to_array(w0).copy()
    zeroed[0] = 0
    x = _images()
    for got, want in zip(_selected(pruned, x), _selected(_detector(w0=zeroed), x), strict=True):
        np.testing.assert_array_equal(got, want)


def _decoder() -> onnx.ModelProto:
    """x (N, 2, 6) -> conv (2 -> 3) -> Relu -> feats; a Loop of as many steps as 4 x the largest feature (cast to an
    integer: the values decide it, as a decoder stops at its end token), each step a (N, 1) read of the features'
    mean from the outer graph -> (steps, N, 1) -> y (N, steps, 1)."""
    rng = np.random.default_rng(2)
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Cast", ["i"], ["fi"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["mean2", "fi"], ["step"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("step", TensorProto.FLOAT, None),
        ],
    )
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["z"], name="conv"),
        helper.make_node("Relu", ["z"], ["feats"]),
        helper.make_node("ReduceMean", ["feats"], ["mean"], axes=[1, 2], keepdims=0),
        helper.make_node("Unsqueeze", ["mean", "one_axis"], ["mean2"]),
        helper.make_node("ReduceMax", ["feats"], ["top"], keepdims=0),
        helper.make_node("Mul", ["top", "four"], ["scaled"]),
        helper.make_node("Cast", ["scaled"], ["steps"], to=TensorProto.INT64),
        helper.make_node("Loop", ["steps", "true"], ["ys"], body=body),
        helper.make_node("Transpose", ["ys"], ["y"], perm=[1, 0, 2]),
    ]
    inits = {
        "w": rng.normal(size=(3, 2, 3)).astype(np.float32),
        "one_axis": np.array([1]),
        "four": np.array(4.0, np.float32),
    }
    true = helper.make_tensor("t", TensorProto.BOOL, [], [1])
    nodes.insert(0, helper.make_node("Constant", [], ["true"], value=true))
    return make_model(nodes, [("x", ["N", 2, 6])], [("y", ["N", "steps", 1])], inits)


def test_a_loop_whose_steps_the_values_decide_is_left_out_and_what_its_body_reads_is_measured(tmp_path):
    """SLANet's table decoder (a Loop until every sample emitted its end token): a perturbed run took more steps
    than the clean one, and the sweep ended in a traceback ("operands could not be broadcast together with shapes
    (1,16,1288) (1,16,1424)") or in onnxruntime's refusal inside the body."""
    model = _decoder()
    assert data_shaped_outputs(model) == {"y": ["mean2"]}
    path = save(model, tmp_path)
    for path_flag in ([], ["--exact-path"]):
        result = run_cli("shuffle", path, "--data", "synthetic:32", "--layer", "0", "--device", "cpu", "--json",
                         *path_flag)  # fmt: skip
        assert result.exit_code == 0, result.stderr
        assert list(json.loads(result.stdout)["outputs"]) == ["mean2"]
