"""Detectors exported with a fixed batch (RetinaFace-style): an Upsample whose scales are computed from two
feature maps' shapes, and a score output that squeezed or merged the batch."""

from __future__ import annotations

import numpy as np
import pytest
from builders import make_model
from onnx import TensorProto, helper

from onnxredund.analyses.impulse import run_impulse
from onnxredund.analyses.shuffle import run_shuffle
from onnxredund.data import Dataset
from onnxredund.engine.loading import load_model_proto

N = helper.make_node


def _detector(scores: str, opset: int):
    """x (1, 3, 16, 16) -> conv1 -> a; conv2 (stride 2) -> c2 -> b; conv3 -> bb; up = resize(bb) to a's size by
    scales computed from Shape(a) / Shape(c2); conv4(up + a) -> (1, 2, 16, 16) -> NHWC -> the scores, laid out as
    ``scores`` says: "keep" (N, 256, 2), "merge" (N x 256, 2), "squeeze" (256, 2) with the batch fixed to 1."""
    rng = np.random.default_rng(3)
    inits = {
        "w1": rng.normal(size=(4, 3, 3, 3)) * 0.5,
        "w2": rng.normal(size=(6, 4, 3, 3)) * 0.5,
        "w3": rng.normal(size=(4, 6, 1, 1)) * 0.5,
        "w4": rng.normal(size=(2, 4, 1, 1)) * 0.5,
        "ones": np.ones(2, np.float32),
        "target": {"keep": [0, -1, 2], "merge": [-1, 2], "squeeze": [1, -1, 2]}[scores],
    }
    if opset >= 10:
        inits |= {"s2": [2], "e4": [4], "a0": [0]}
    nodes = [
        N("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        N("Relu", ["c1"], ["a"]),
        N("Conv", ["a", "w2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2], name="conv2"),
        N("Relu", ["c2"], ["b"]),
        N("Conv", ["b", "w3"], ["c3"], name="conv3"),
        N("Relu", ["c3"], ["bb"]),
        N("Shape", ["a"], ["sa"]),
        N("Shape", ["c2"], ["sb"]),
    ]
    for src, dst in (("sa", "ha"), ("sb", "hb")):
        if opset >= 10:
            nodes.append(N("Slice", [src, "s2", "e4", "a0"], [dst]))
        else:
            nodes.append(N("Slice", [src], [dst], starts=[2], ends=[4], axes=[0]))
    nodes += [
        N("Cast", ["ha"], ["fa"], to=TensorProto.FLOAT),
        N("Cast", ["hb"], ["fb"], to=TensorProto.FLOAT),
        N("Div", ["fa", "fb"], ["ratio"]),
        N("Concat", ["ones", "ratio"], ["scales"], axis=0),
        N("Upsample", ["bb", "scales"], ["up"], mode="nearest")
        if opset < 10
        else N("Resize", ["bb", "", "scales"], ["up"], mode="nearest"),
        N("Add", ["up", "a"], ["s"]),
        N("Conv", ["s", "w4"], ["c4"], name="conv4"),
        N("Transpose", ["c4"], ["t"], perm=[0, 2, 3, 1]),
    ]
    if scores == "squeeze":
        squeeze = N("Squeeze", ["r"], ["scores"], axes=[0]) if opset < 13 else N("Squeeze", ["r", "a0"], ["scores"])
        nodes += [N("Reshape", ["t", "target"], ["r"]), squeeze]
        out_shape = [256, 2]
    else:
        nodes.append(N("Reshape", ["t", "target"], ["scores"]))
        out_shape = [1, 256, 2] if scores == "keep" else [256, 2]
    proto = make_model(
        nodes, [("x", [1, 3, 16, 16])], [("scores", out_shape)], inits, opset=opset, ir=4 if opset < 10 else 7
    )
    return load_model_proto(proto)


@pytest.fixture(scope="module")
def images():
    return Dataset(np.random.default_rng(0).random((6, 3, 16, 16), dtype=np.float32), None, "t")


def _effects(model, layer, images, exact):
    result = run_shuffle(model, layer, images, batch_size=4, device="cpu", exact_path=exact)
    assert result.route == ("direct" if exact or not model.batch_dynamic else "fast")
    out = result.outputs["scores"]
    return result.mean_cosine(), out.cosine, out.relative_l2, out.abs_error_max


def test_shape_computed_upsample_scales_are_constants_of_a_per_sample_model_not_stacked_feeds(images):
    model = _detector("squeeze", opset=9)
    assert not model.batch_dynamic
    assert list(model.shape_constants) == ["scales"]  # what the per-sample runs stacked to (N, 4)
    np.testing.assert_array_equal(model.shape_constants["scales"], [1, 1, 2, 2])
    for layer in ("conv1", "conv2", "conv3", "conv4"):  # conv3: "Invalid rank for input: scales Got: 2 Expected: 1"
        cos, *_ = _effects(model, layer, images, exact=True)
        assert np.all((cos > -1 - 1e-9) & (cos < 1 + 1e-9))


def test_scores_that_merge_or_squeeze_the_batch_are_measured_per_sample_as_scores_that_keep_it(images):
    """Differential: the same network with three layouts of its score output gives the same effects, on the
    fast path, the direct path and one sample at a time (the merged layout read 237 as a mean cosine). conv2's
    and conv3's suffix reads the scales computed from shapes: the fast model makes them again for its K x B rows
    (it ran the direct path for them before)."""
    keep = _detector("keep", opset=13)
    merge, squeeze = _detector("merge", opset=13), _detector("squeeze", opset=13)
    assert keep.batch_dynamic and merge.batch_dynamic and not squeeze.batch_dynamic
    for layer in ("conv1", "conv2", "conv3", "conv4"):
        want = _effects(keep, layer, images, exact=True)
        assert np.all(want[1] <= 1.0) and np.all(want[1] > 0.0)
        for model, exact in ((keep, False), (merge, True), (merge, False), (squeeze, True)):
            got = _effects(model, layer, images, exact)
            for a, b in zip(got, want, strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_impulses_reach_every_conv_of_a_fixed_batch_detector_past_its_computed_upsample():
    squeeze, keep = _detector("squeeze", opset=9), _detector("keep", opset=13)
    a, b = run_impulse(squeeze, device="cpu"), run_impulse(keep, device="cpu")
    assert [layer.name for layer in a.layers] == ["conv1", "conv2", "conv3", "conv4"]
    for la, lb in zip(a.layers, b.layers, strict=True):
        np.testing.assert_allclose(la.responses, lb.responses, rtol=1e-5, atol=1e-6)
