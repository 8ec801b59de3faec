"""Shuffle sweeps: fast path == direct path == a plain numpy reference, and known answers."""

from __future__ import annotations

import json
import logging
import warnings

import numpy as np
import onnx
import pytest
from builders import make_model, run_cli, small_cnn
from onnx import helper, numpy_helper

from onnxredund.analyses.effects import EffectMeter
from onnxredund.analyses.sequential import Estimation
from onnxredund.analyses.shuffle import SweepState, run_shuffle
from onnxredund.choices import MODES
from onnxredund.data import Dataset
from onnxredund.engine import load_model_proto
from onnxredund.engine.permutations import apply_permutation, permutation_for
from onnxredund.engine.sweep import CleanPasses, SweepRunner
from onnxredund.metrics import cosine_per_channel


def conv2d(x, w, b, pad=1, groups=1):
    """Plain numpy conv, stride 1: x (N, C, H, W), w (O, C/g, kh, kw)."""
    n, _, h, wd = x.shape
    o, cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = h + 2 * pad - kh + 1, wd + 2 * pad - kw + 1
    out = np.zeros((n, o, ho, wo))
    og = o // groups
    for oc in range(o):
        g = oc // og
        for i in range(kh):
            for j in range(kw):
                patch = xp[:, g * cg : (g + 1) * cg, i : i + ho, j : j + wo]
                out[:, oc] += np.einsum("nchw,c->nhw", patch, w[oc, :, i, j])
    return out + b[None, :, None, None]


def reference(w, x, y, mode, channels, batch, seed, groups=1):
    """The conv2 sweep of small_cnn done by hand in numpy (float64)."""
    relu = lambda t: np.maximum(t, 0)  # noqa: E731
    a1 = relu(conv2d(x, w["w1"], w["b1"]))

    def tail(a1_in, a1_clean):
        a2 = relu(conv2d(a1_in, w["w2"], w["b2"], groups=groups))
        return a2, (a2.mean(axis=(2, 3)) @ w["fc"] + w["fcb"]).argmax(1)

    clean_a2, clean_top = tail(a1, a1)
    cos = np.zeros((len(channels), w["w2"].shape[0]))
    correct = np.zeros(len(channels))
    agree = np.zeros(len(channels))
    pixels = a1.shape[2] * a1.shape[3]
    for bi, s in enumerate(range(0, len(x), batch)):
        xa, ca, ct, yb = a1[s : s + batch], clean_a2[s : s + batch], clean_top[s : s + batch], y[s : s + batch]
        for i, k in enumerate(channels):
            perm = permutation_for(mode, seed, 0, k, bi, len(xa), pixels)
            a2, top = tail(apply_permutation(xa, k, perm, mode), xa)
            cos[i] += cosine_per_channel(a2, ca).sum(0)
            correct[i] += (top == yb).sum()
            agree[i] += (top == ct).sum()
    return cos / len(x), correct / len(x), agree / len(x), (clean_top == y).mean()


def data(n=37, seed=1, c=3, size=6, classes=4):
    rng = np.random.default_rng(seed)
    return Dataset(rng.normal(size=(n, c, size, size)).astype(np.float32), rng.integers(0, classes, n), "toy")


@pytest.mark.parametrize("mode", ["channel", "pixel"])
@pytest.mark.parametrize("exact", [False, True])
def test_matches_numpy_reference(mode, exact):
    proto, w = small_cnn()
    model = load_model_proto(proto)
    d = data()
    res = run_shuffle(model, "conv2", d, mode=mode, batch_size=16, seed=3, device="cpu", exact_path=exact)
    cos, acc, agr, base = reference(w, d.x.astype(np.float64), d.y, mode, list(range(4)), 16, 3)
    assert res.route == ("direct" if exact else "fast")
    np.testing.assert_allclose(res.cosine, cos, atol=1e-5)
    np.testing.assert_allclose(res.accuracy, acc)
    np.testing.assert_allclose(res.agreement, agr)
    assert res.baseline_accuracy == pytest.approx(base)
    assert res.cosine.shape == (4, 5) and res.num_samples == 37


@pytest.mark.parametrize(
    "kwargs", [{"residual": True, "c_out": 4}, {"bn": True}, {"groups": 2, "c_mid": 4, "c_out": 6}]
)
@pytest.mark.parametrize("mode", ["channel", "pixel"])
def test_fast_equals_direct(kwargs, mode):
    model = load_model_proto(small_cnn(2, **kwargs)[0])
    d = data(50)
    for layer in ("conv1", "conv2"):
        fast = run_shuffle(model, layer, d, mode=mode, batch_size=20, seed=5, device="cpu", chunk=3)
        direct = run_shuffle(model, layer, d, mode=mode, batch_size=20, seed=5, device="cpu", exact_path=True)
        assert fast.route == "fast" and direct.route == "direct"
        np.testing.assert_allclose(fast.cosine, direct.cosine, atol=1e-5)
        np.testing.assert_array_equal(fast.accuracy, direct.accuracy)
        np.testing.assert_array_equal(fast.agreement, direct.agreement)


def test_chunk_size_does_not_change_numbers():
    model = load_model_proto(small_cnn(4)[0])
    d = data(40)
    runs = [run_shuffle(model, 1, d, mode="pixel", batch_size=16, device="cpu", chunk=c) for c in (1, 3, 4)]
    for r in runs[1:]:
        np.testing.assert_allclose(r.cosine, runs[0].cosine, atol=1e-6)
        np.testing.assert_array_equal(r.accuracy, runs[0].accuracy)


def test_zero_weight_channel_is_fully_redundant():
    model = load_model_proto(small_cnn(0, zero_channel=2)[0])
    res = run_shuffle(model, "conv2", data(), mode="channel", batch_size=16, device="cpu")
    np.testing.assert_allclose(res.cosine[2], 1.0, atol=1e-6)
    assert res.accuracy[2] == pytest.approx(res.baseline_accuracy)
    assert res.agreement[2] == 1.0
    assert res.cosine[[0, 1, 3]].min() < 0.99  # the other channels do matter


def test_constant_channel_is_unchanged_by_both_shuffles():
    model = load_model_proto(small_cnn(1)[0])
    d = data()
    x = d.x.copy()
    x[:, 1] = 0.7  # conv1 is the target: its input channel 1 is constant in every sample
    d = Dataset(x, d.y, "const")
    for mode in ("channel", "pixel"):
        res = run_shuffle(model, "conv1", d, mode=mode, batch_size=16, device="cpu", channels=[1])
        np.testing.assert_allclose(res.cosine, 1.0, atol=1e-6)
        assert res.agreement[0] == 1.0


def test_batch_of_one_channel_shuffle_is_noop_and_says_so(caplog):
    model = load_model_proto(small_cnn(1)[0])
    with caplog.at_level(logging.WARNING, logger="onnxredund"):
        res = run_shuffle(model, "conv2", data(5), mode="channel", batch_size=1, device="cpu")
    np.testing.assert_allclose(res.cosine, 1.0, atol=1e-6)
    assert "no-op" in caplog.text


def test_same_seed_same_numbers_other_seed_other_numbers():
    model = load_model_proto(small_cnn(3)[0])
    d = data(64)
    a = run_shuffle(model, 1, d, mode="channel", seed=7, batch_size=32, device="cpu")
    b = run_shuffle(model, 1, d, mode="channel", seed=7, batch_size=32, device="cpu")
    c = run_shuffle(model, 1, d, mode="channel", seed=8, batch_size=32, device="cpu")
    assert a.to_dict() == b.to_dict()
    assert not np.allclose(a.cosine, c.cosine)


def test_repeats_give_mean_and_spread():
    model = load_model_proto(small_cnn(3)[0])
    d = data(64)
    res = run_shuffle(model, 1, d, mode="channel", repeats=3, seed=7, batch_size=32, device="cpu")
    single = run_shuffle(model, 1, d, mode="channel", seed=7, batch_size=32, device="cpu")
    assert res.cosine_repeats.shape == (3, 4, 5)
    np.testing.assert_allclose(res.cosine_repeats[0], single.cosine)  # repeat 0 is the single run
    np.testing.assert_allclose(res.cosine, res.cosine_repeats.mean(0))
    np.testing.assert_allclose(res.cosine_std, res.cosine_repeats.std(0))
    assert res.cosine_std.max() > 0


def test_resume_gives_the_uninterrupted_numbers():
    model = load_model_proto(small_cnn(6)[0])
    d = data(70)
    full = run_shuffle(model, 1, d, mode="pixel", batch_size=16, device="cpu", seed=2)
    saved = []

    def stop_after_two(state):
        sums = {k: v.copy() for k, v in state.sums.items()}
        saved.append(SweepState(state.batches_done, state.samples_done, sums))
        if state.batches_done == 2:
            raise KeyboardInterrupt

    partial = run_shuffle(model, 1, d, mode="pixel", batch_size=16, device="cpu", seed=2, on_batch=stop_after_two)
    assert not partial.complete and partial.samples_done == 32
    resumed = run_shuffle(model, 1, d, mode="pixel", batch_size=16, device="cpu", seed=2, state=saved[-1])
    assert resumed.complete
    np.testing.assert_allclose(resumed.cosine, full.cosine, atol=1e-12)
    np.testing.assert_array_equal(resumed.accuracy, full.accuracy)
    assert resumed.to_dict()["outputs"] == full.to_dict()["outputs"]


def test_labels_are_optional():
    model = load_model_proto(small_cnn(3)[0])
    d = data(20)
    res = run_shuffle(model, 1, Dataset(d.x, None, "nolabels"), device="cpu")
    assert res.accuracy is None and res.baseline_accuracy is None and res.agreement is not None


def test_permutation_feed_on_threads_draws_the_same_permutations():
    from onnxredund.engine.permutations import PermutationFeed

    inline = PermutationFeed("pixel", 3, 2, [0, 2, 5], 49, workers=0)
    threaded = PermutationFeed("pixel", 3, 2, [0, 2, 5], 49, workers=3)
    threaded.request(4, 17)
    a, b = inline.take(4, 17), threaded.take(4, 17)
    threaded.close()
    assert a.keys() == b.keys() and all(np.array_equal(a[c], b[c]) for c in a)


@pytest.mark.parametrize("mode", ["channel", "pixel"])
def test_cuda_gives_the_cpu_numbers(mode):
    from onnxredund.engine.runtime import cuda_works

    if not cuda_works():
        pytest.skip("no CUDA for onnxruntime here")
    model = load_model_proto(small_cnn(5, residual=True, c_out=4)[0])
    d = data(300)
    cpu = run_shuffle(model, "conv2", d, mode=mode, batch_size=64, device="cpu", exact_path=True)
    for exact in (False, True):
        gpu = run_shuffle(model, "conv2", d, mode=mode, batch_size=64, device="cuda", exact_path=exact)
        assert gpu.device == "cuda"
        np.testing.assert_allclose(gpu.cosine, cpu.cosine, atol=1e-5)
        np.testing.assert_allclose(gpu.accuracy, cpu.accuracy, atol=1 / 300)
        for name, effect in cpu.to_dict()["outputs"].items():  # measured on the device on the fast path
            for what, values in effect.items():
                if isinstance(values, list):
                    got = gpu.to_dict()["outputs"][name][what]
                    np.testing.assert_allclose(got, values, rtol=1e-4, atol=1e-6, err_msg=f"{name} {what}")


def nhwc_model():
    """input (N, 6, 6, 3) -> Transpose -> conv1 -> Relu -> conv2 -> Relu -> GAP -> Flatten -> Gemm."""
    proto, _ = small_cnn(7)
    from onnx import helper

    g = proto.graph
    g.node.insert(0, helper.make_node("Transpose", ["x_nhwc"], ["x"], perm=[0, 3, 1, 2], name="to_nchw"))
    g.input[0].name = "x_nhwc"
    dims = g.input[0].type.tensor_type.shape.dim
    dims[1].dim_value, dims[3].dim_value = 6, 3
    return proto


def test_nhwc_model_fast_equals_direct_and_takes_nchw_data():
    model = load_model_proto(nhwc_model())
    assert model.layout == "NHWC"
    d = data(40)  # NCHW data: moved to NHWC for the model
    for layer in ("conv1", "conv2"):
        fast = run_shuffle(model, layer, d, mode="pixel", batch_size=16, device="cpu")
        direct = run_shuffle(model, layer, d, mode="pixel", batch_size=16, device="cpu", exact_path=True)
        np.testing.assert_allclose(fast.cosine, direct.cosine, atol=1e-5)
        np.testing.assert_array_equal(fast.accuracy, direct.accuracy)


def test_fixed_batch_model_runs_sample_by_sample_with_the_same_numbers():
    from onnx import helper, numpy_helper

    dynamic = load_model_proto(small_cnn(8)[0])
    proto = small_cnn(8, batch=1)[0]
    g = proto.graph
    # Flatten -> Reshape to (C, 1) then Transpose to (1, C): the batch of 1 is baked into the element count
    flatten = next(i for i, n in enumerate(g.node) if n.op_type == "Flatten")
    g.node[flatten].CopyFrom(helper.make_node("Reshape", ["gap", "c1"], ["col"], name="bake"))
    g.node.insert(flatten + 1, helper.make_node("Transpose", ["col"], ["flat"], perm=[1, 0], name="row"))
    g.initializer.append(numpy_helper.from_array(np.array([5, 1], np.int64), "c1"))
    fixed = load_model_proto(proto)
    assert not fixed.batch_dynamic
    d = data(30)
    a = run_shuffle(dynamic, "conv2", d, mode="channel", batch_size=8, device="cpu")
    b = run_shuffle(fixed, "conv2", d, mode="channel", batch_size=8, device="cpu")
    np.testing.assert_allclose(a.cosine, b.cosine, atol=1e-6)


@pytest.mark.parametrize("opset", [7, 9, 11, 12, 13, 17, 21])
def test_opsets_7_and_later(opset):
    proto, _ = small_cnn(9, bn=True)
    proto.opset_import[0].version = opset
    model = load_model_proto(proto)
    d = data(24)
    direct = run_shuffle(model, "conv2", d, mode="channel", batch_size=8, device="cpu", exact_path=True)
    default = run_shuffle(model, "conv2", d, mode="channel", batch_size=8, device="cpu")
    assert default.route == "fast"  # before opset 11: on onnx's conversion of the graph, checked by values
    np.testing.assert_allclose(default.cosine, direct.cosine, atol=1e-5)


def _opset9_cnn(*, ir3_batch1: bool = False) -> onnx.ModelProto:
    """conv1 -> Relu -> conv2 -> Clip (bounds as attributes) -> Pad (pads as an attribute) -> Upsample (scales as an
    input): the opset-9 forms that opset 11 changed, all past the target conv. ``ir3_batch1``: as Caffe2 exported
    (IR 3, initializers listed as graph inputs) with the batch fixed to 1 in a Reshape, which loading frees by a
    constant of its own (not a graph input)."""
    proto, _ = small_cnn(12, batch=1 if ir3_batch1 else None)
    g = proto.graph
    if ir3_batch1:
        flatten = next(n for n in g.node if n.op_type == "Flatten")
        flatten.CopyFrom(helper.make_node("Reshape", ["gap", "flat_shape"], ["flat"], name="flatten"))
        g.initializer.append(numpy_helper.from_array(np.array([1, -1], np.int64), "flat_shape"))
        proto.ir_version = 3
    relu2 = next(i for i, n in enumerate(g.node) if n.name == "relu2")
    g.node[relu2].CopyFrom(helper.make_node("Clip", ["z2"], ["a2"], name="clip2", min=0.0, max=0.5))
    gap = next(n for n in g.node if n.op_type == "GlobalAveragePool")
    gap.input[0] = "up"
    g.node.insert(
        relu2 + 1, helper.make_node("Pad", ["a2"], ["padded"], name="pad", pads=[0, 0, 1, 2, 0, 0, 0, 1], value=0.25)
    )
    g.node.insert(relu2 + 2, helper.make_node("Upsample", ["padded", "scales"], ["up"], name="up", mode="nearest"))
    g.initializer.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"))
    proto.opset_import[0].version = 9
    if ir3_batch1:
        g.input.extend(helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in g.initializer)
    return proto


@pytest.mark.parametrize(("mode", "ir3_batch1"), [("channel", False), ("pixel", False), ("channel", True)])
def test_an_opset_9_graph_takes_the_fast_path_on_its_conversion_to_opset_11_with_the_direct_numbers(mode, ir3_batch1):
    from onnxredund.engine.analysis_models import fast_path_blocker, fast_source

    model = load_model_proto(_opset9_cnn(ir3_batch1=ir3_batch1))
    assert model.batch_dynamic
    assert fast_path_blocker(model, model.layer("conv2")) is None
    assert fast_source(model).opset_import[0].version == 11
    d = data(24)
    direct = run_shuffle(model, "conv2", d, mode=mode, batch_size=8, device="cpu", seed=2, exact_path=True)
    fast = run_shuffle(model, "conv2", d, mode=mode, batch_size=8, device="cpu", seed=2)
    assert (direct.route, fast.route) == ("direct", "fast")
    np.testing.assert_allclose(fast.cosine, direct.cosine, atol=1e-5)
    np.testing.assert_allclose(fast.agreement, direct.agreement)
    np.testing.assert_allclose(fast.outputs["logits"].cosine, direct.outputs["logits"].cosine, atol=1e-5)


def test_a_conversion_to_opset_11_that_changes_the_outputs_leaves_the_model_on_the_direct_path(monkeypatch):
    import onnx.version_converter

    from onnxredund.engine.analysis_models import fast_path_blocker

    convert = onnx.version_converter.convert_version

    def wrong(proto, version):  # a converter bug: one weight scaled
        out = convert(proto, version)
        w = next(t for t in out.graph.initializer if t.name == "w2")
        w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * 2.0, "w2"))
        return out

    monkeypatch.setattr(onnx.version_converter, "convert_version", wrong)
    model = load_model_proto(_opset9_cnn())
    assert fast_path_blocker(model, model.layer("conv2")) == (
        "the model's opset 9 is older than 11 and onnx's conversion of it changes output 'logits'"
    )
    assert run_shuffle(model, "conv2", data(16), batch_size=8, device="cpu").route == "direct"


def test_output_effects_match_a_numpy_reference():
    proto, w = small_cnn(11)
    model = load_model_proto(proto)
    d = data(48, seed=4)
    res = run_shuffle(model, "conv2", d, mode="pixel", batch_size=16, seed=1, device="cpu")
    relu = lambda t: np.maximum(t, 0)  # noqa: E731
    a1 = relu(conv2d(d.x.astype(np.float64), w["w1"], w["b1"]))

    def logits(a):
        return relu(conv2d(a, w["w2"], w["b2"])).mean(axis=(2, 3)) @ w["fc"] + w["fcb"]

    clean = logits(a1)
    effect = res.outputs["logits"]
    pixels = a1.shape[2] * a1.shape[3]
    for k in range(4):
        perms = [permutation_for("pixel", 1, 0, k, s // 16, 16, pixels) for s in range(0, 48, 16)]
        pert = np.concatenate(
            [logits(apply_permutation(a1[16 * i : 16 * i + 16], k, p, "pixel")) for i, p in enumerate(perms)]
        )
        err = pert - clean
        cos = (pert * clean).sum(1) / np.linalg.norm(pert, axis=1) / np.linalg.norm(clean, axis=1)
        assert effect.cosine[k] == pytest.approx(cos.mean(), abs=1e-5)
        assert effect.relative_l2[k] == pytest.approx(np.sqrt((err**2).sum() / (clean**2).sum()), rel=1e-4)
        assert effect.sqnr_db[k] == pytest.approx(10 * np.log10((clean**2).sum() / (err**2).sum()), abs=1e-3)
        assert effect.abs_error_max[k] == pytest.approx(np.abs(err).max(), rel=1e-4)
        assert effect.abs_error_max[k] >= effect.abs_error_p99[k] >= effect.abs_error_p50[k] >= 0
        p50 = np.quantile(np.abs(err), 0.5)
        assert p50 * (1 - 1e-5) <= effect.abs_error_p50[k] <= p50 * 10 ** (1 / 20) * (1 + 1e-5)  # one bin above at most
        top = clean.argmax(1)
        assert effect.top1_agreement[k] == pytest.approx((pert.argmax(1) == top).mean())
        assert effect.top5_agreement[k] == 1.0  # 4 classes: the clean top-1 is always among the top 5
        lp = clean - np.log(np.exp(clean).sum(1, keepdims=True))
        lq = pert - np.log(np.exp(pert).sum(1, keepdims=True))
        assert effect.kl_divergence[k] == pytest.approx((np.exp(lp) * (lp - lq)).sum(1).mean(), rel=1e-4, abs=1e-9)
    np.testing.assert_allclose(res.agreement, effect.top1_agreement)


def test_a_zero_weight_channel_leaves_every_output_unchanged():
    model = load_model_proto(small_cnn(0, zero_channel=2)[0])
    effect = run_shuffle(model, "conv2", data(), mode="channel", batch_size=16, device="cpu").outputs["logits"]
    assert effect.cosine[2] == pytest.approx(1.0) and effect.relative_l2[2] == 0.0
    assert effect.sqnr_db[2] == 300.0 and effect.abs_error_max[2] == 0.0 and effect.kl_divergence[2] == 0.0


def feature_map_model(batch=None, sequence=False):
    """x -> conv1 -> Relu -> conv2 -> Relu, the feature map itself the output (a detector's head): no
    (N, classes) output; with ``batch`` 1 the map leaves through a Reshape that bakes the batch in, as
    (1, 5, 36), or with ``sequence`` as (36, 1, 5) (a recogniser's (T, N, classes): its first axis is not the
    batch)."""
    proto, _ = small_cnn(12, batch=batch)
    g = proto.graph
    keep = [n for n in g.node if n.name in ("conv1", "relu1", "conv2", "relu2")]
    out = "a2"
    if batch == 1:
        keep.append(onnx.helper.make_node("Reshape", ["a2", "baked"], ["r"]))
        if sequence:
            keep.append(onnx.helper.make_node("Transpose", ["r"], ["t"], perm=[1, 0]))
        keep.append(
            onnx.helper.make_node("Unsqueeze", ["t" if sequence else "r", "ax1" if sequence else "ax0"], ["boxes"])
        )
        out = "boxes"
    del g.node[:]
    g.node.extend(keep)
    del g.output[:]
    shape = ([36, 1, 5] if sequence else [1, 5, 36]) if batch == 1 else ["N", 5, 6, 6]
    g.output.append(onnx.helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, shape))
    used = {t for n in keep for t in n.input}
    inits = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(inits)
    if batch == 1:
        g.initializer.extend(
            [
                onnx.numpy_helper.from_array(np.array([5, 36], np.int64), "baked"),
                onnx.numpy_helper.from_array(np.array([0], np.int64), "ax0"),
                onnx.numpy_helper.from_array(np.array([1], np.int64), "ax1"),
            ]
        )
        used = {t for n in keep for t in n.input}
        kept = [t for t in g.initializer if t.name in used]
        del g.initializer[:]
        g.initializer.extend(kept)
    return proto


@pytest.mark.parametrize(("exact", "sequence"), [(False, False), (True, False), (True, True)])
def test_models_without_a_classifier_output_measure_output_drift(exact, sequence):
    # the face detector case: an output that is not (N, classes), the batch fixed to 1 (run sample by sample);
    # and ddddocr's recogniser's: each sample's output (T, 1, classes), its first axis not the batch
    model = load_model_proto(feature_map_model(batch=1, sequence=sequence))
    assert model.classifiers == [] and not model.batch_dynamic
    d = Dataset(data(20).x, None, "unlabelled")
    res = run_shuffle(model, "conv2", d, mode="pixel", batch_size=8, device="cpu", exact_path=exact)
    assert res.route == "direct" and res.accuracy is None and res.agreement is None
    effect = res.outputs["boxes"]
    assert not effect.classifier and effect.top1_agreement is None
    assert (effect.cosine < 1.0).all() and (effect.relative_l2 > 0).all()
    # the same numbers from the freed model's fast path: the output is A_2 itself, reshaped
    fast = run_shuffle(load_model_proto(feature_map_model()), "conv2", d, mode="pixel", batch_size=8, device="cpu")
    assert fast.route == "fast"
    np.testing.assert_allclose(fast.outputs["a2"].cosine, effect.cosine, atol=1e-5)
    np.testing.assert_allclose(fast.outputs["a2"].sqnr_db, effect.sqnr_db, rtol=1e-4)
    np.testing.assert_allclose(fast.cosine, res.cosine, atol=1e-5)


def conv1d_model():
    """x (N, 2, 16) -> conv (3 channels, k 5, pad 2) -> Relu -> conv (4, k 3, stride 2) -> Relu -> mean -> Gemm."""
    rng = np.random.default_rng(3)
    nodes = [
        onnx.helper.make_node("Conv", ["x", "w1", "b1"], ["z1"], name="c1", pads=[2, 2]),
        onnx.helper.make_node("Relu", ["z1"], ["a1"]),
        onnx.helper.make_node("Conv", ["a1", "w2"], ["z2"], name="c2", pads=[1, 1], strides=[2]),
        onnx.helper.make_node("Relu", ["z2"], ["a2"]),
        onnx.helper.make_node("ReduceMean", ["a2"], ["m"], axes=[2], keepdims=0),
        onnx.helper.make_node("Gemm", ["m", "fc"], ["logits"]),
    ]
    inits = {
        "w1": rng.normal(size=(3, 2, 5)),
        "b1": rng.normal(size=3) * 0.1,
        "w2": rng.normal(size=(4, 3, 3)),
        "fc": rng.normal(size=(4, 3)),
    }
    return make_model(nodes, [("x", ["N", 2, 16])], [("logits", ["N", 3])], inits)


@pytest.mark.parametrize("mode", ["channel", "pixel"])
def test_one_dimensional_convs_fast_equals_direct(mode):
    model = load_model_proto(conv1d_model())
    assert model.layout == "NCL" and model.layers[1].kernel == (3,)
    rng = np.random.default_rng(0)
    d = Dataset(rng.normal(size=(30, 2, 16)).astype(np.float32), rng.integers(0, 3, 30), "signals")
    for layer in ("c1", "c2"):
        fast = run_shuffle(model, layer, d, mode=mode, batch_size=10, device="cpu", seed=4)
        direct = run_shuffle(model, layer, d, mode=mode, batch_size=10, device="cpu", seed=4, exact_path=True)
        assert fast.route == "fast"
        np.testing.assert_allclose(fast.cosine, direct.cosine, atol=1e-5)
        np.testing.assert_array_equal(fast.accuracy, direct.accuracy)
        np.testing.assert_allclose(
            fast.outputs["logits"].kl_divergence, direct.outputs["logits"].kl_divergence, rtol=1e-4, atol=1e-9
        )


def if_reading_the_activation_model():
    """conv1d_model with its pooling inside an If: the branches read a2 from the outer scope (no input of the If
    names it), and the condition is computed from constants."""
    h = onnx.helper

    def branch(op, out):
        node = h.make_node(op, ["a2"], [out], axes=[2], keepdims=0)
        return h.make_graph([node], out, [], [h.make_tensor_value_info(out, onnx.TensorProto.FLOAT, ["N", 4])])

    pooled = h.make_node(
        "If", ["c"], ["m"], then_branch=branch("ReduceMean", "t"), else_branch=branch("ReduceMax", "e")
    )
    nodes = [n for n in conv1d_model().graph.node if n.op_type != "ReduceMean"]
    nodes[4:4] = [h.make_node("Greater", ["one", "zero"], ["c"]), pooled]
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in conv1d_model().graph.initializer}
    inits |= {"one": np.array(1.0), "zero": np.array(0.0)}
    return make_model(nodes, [("x", ["N", 2, 16])], [("logits", ["N", 3])], inits)


@pytest.mark.parametrize("layer", ["c1", "c2"])
def test_fast_path_copies_an_if_whose_branches_read_the_network_from_the_outer_scope(layer):
    model = load_model_proto(if_reading_the_activation_model())
    rng = np.random.default_rng(0)
    d = Dataset(rng.normal(size=(30, 2, 16)).astype(np.float32), rng.integers(0, 3, 30), "signals")
    fast = run_shuffle(model, layer, d, batch_size=10, device="cpu", seed=4)
    direct = run_shuffle(model, layer, d, batch_size=10, device="cpu", seed=4, exact_path=True)
    assert fast.route == "fast" and list(fast.outputs) == ["logits"]  # the If's output depends on the layer
    assert (fast.outputs["logits"].cosine < 1 - 1e-4).any()
    np.testing.assert_allclose(fast.outputs["logits"].cosine, direct.outputs["logits"].cosine, atol=1e-6)
    np.testing.assert_array_equal(fast.accuracy, direct.accuracy)


def if_reading_a_second_input_model():
    """conv1d_model whose pooled features get, inside an If, an offset computed from a second input ``s`` (N, 4)
    (Silero VAD's decoder reads its LSTM state so): the branch is the only reader of that offset."""
    h = onnx.helper
    then = h.make_graph(
        [h.make_node("Add", ["m", "offset"], ["t"])],
        "t",
        [],
        [h.make_tensor_value_info("t", onnx.TensorProto.FLOAT, None)],
    )
    other = h.make_graph(
        [h.make_node("Identity", ["m"], ["e"])], "e", [], [h.make_tensor_value_info("e", onnx.TensorProto.FLOAT, None)]
    )
    nodes = list(conv1d_model().graph.node)
    nodes[-1].input[0] = "shifted"
    nodes[-1:-1] = [
        h.make_node("Relu", ["s"], ["offset"]),
        h.make_node("Greater", ["one", "zero"], ["c"]),
        h.make_node("If", ["c"], ["shifted"], then_branch=then, else_branch=other),
    ]
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in conv1d_model().graph.initializer}
    inits |= {"one": np.array(1.0), "zero": np.array(0.0)}
    return make_model(nodes, [("x", ["N", 2, 16]), ("s", ["N", 4])], [("logits", ["N", 3])], inits)


def test_direct_path_feeds_what_an_if_branch_alone_reads_from_the_outer_scope():
    # the direct model kept only the inputs its top-level nodes read: onnxruntime refused it ("input 'offset'
    # of node Add is not output of any previous nodes")
    model = load_model_proto(if_reading_a_second_input_model())
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 2, 16)).astype(np.float32)
    d = Dataset({"x": x, "s": rng.normal(size=(30, 4)).astype(np.float32)}, rng.integers(0, 3, 30), "signals")
    fast = run_shuffle(model, "c2", d, batch_size=10, device="cpu", seed=4)
    direct = run_shuffle(model, "c2", d, batch_size=10, device="cpu", seed=4, exact_path=True)
    assert fast.route == "fast" and direct.route == "direct"
    assert (direct.outputs["logits"].cosine < 1 - 1e-4).any()
    np.testing.assert_allclose(direct.outputs["logits"].cosine, fast.outputs["logits"].cosine, atol=1e-6)
    np.testing.assert_array_equal(direct.accuracy, fast.accuracy)


def test_error_bins_on_the_device_are_the_numpy_bins_at_and_beside_every_edge():
    import onnx_ir as ir
    import onnxruntime as ort

    from onnxredund.engine.analysis_models import _error_bins, _GraphBuilder
    from onnxredund.engine.ir_edit import to_ir
    from onnxredund.metrics import ERROR_EDGES, error_bins

    finite = ERROR_EDGES[:-1]
    values = np.concatenate(
        [finite, np.nextafter(finite, -np.inf)[1:], np.nextafter(finite, np.inf), [1e-300, 3e-13, 7e9, np.inf, np.nan]]
    )
    for opset in (11, 17, 21):
        empty = onnx.helper.make_graph([], "source", [], [])
        source = to_ir(onnx.helper.make_model(empty, opset_imports=[onnx.helper.make_opsetid("", opset)], ir_version=7))
        b = _GraphBuilder(source, [onnx.helper.make_tensor_value_info("err", onnx.TensorProto.DOUBLE, [None])])
        out = _error_bins(b, "err")
        model = b.model({"bins": (out, ir.TensorType(ir.DataType.INT32), [None])}, "bins")
        onnx.checker.check_model(model, full_check=True)
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        (got,) = sess.run(None, {"err": values})
        np.testing.assert_array_equal(got, error_bins(values))
    assert error_bins(values)[-2:].tolist() == [401, 401]  # infinity and NaN in the last bin


def test_fast_path_effects_measured_on_the_device_equal_the_numpy_ones():
    from onnxredund.analyses.effects import per_sample_effects
    from onnxredund.engine.analysis_models import build_fast_model
    from onnxredund.engine.sweep import SweepRunner

    model = load_model_proto(small_cnn(13)[0])
    layer = model.layer("conv2")
    x = data(24, seed=6).x
    fast = SweepRunner(model, layer, "pixel", "cpu", exact=False, chunk=3, batch_size=24)
    direct = SweepRunner(model, layer, "pixel", "cpu", exact=True, chunk=None, batch_size=24)
    clean = fast.run_clean({model.input_name: x})
    pixels = int(np.prod(layer.input_shape[1:]))
    perms = [permutation_for("pixel", 4, 0, k, 0, 24, pixels) for k in (0, 2, 3)]
    cos_fast, _, rows = fast.run(clean, [0, 2, 3], perms)
    cos_direct, outputs, _ = direct.run(clean, [0, 2, 3], perms)
    reference = per_sample_effects({"logits": ("logits", True)}, outputs, fast.clean_outputs(clean))
    np.testing.assert_allclose(cos_fast, cos_direct, atol=1e-5)
    assert set(rows) == set(reference)
    for key, value in reference.items():
        if value.dtype.kind in "biu":
            np.testing.assert_array_equal(rows[key], value, err_msg=str(key))
        else:
            np.testing.assert_allclose(rows[key], value, rtol=1e-5, atol=1e-9, err_msg=str(key))
    assert reference["logits", "max"].max() > 0 and reference["logits", "kl"].max() > 0  # the channels matter
    proto, _ = build_fast_model(model, layer, "pixel", ["logits"])
    onnx.checker.check_model(proto, full_check=True)
    names = [t.name for t in proto.graph.initializer]
    assert len(names) == len(set(names))  # the constants the cosines and effects share are made once


def test_a_sweep_with_permutation_threads_writes_the_same_json(monkeypatch):
    from onnxredund.analyses import shuffle

    model = load_model_proto(small_cnn(8)[0])
    d = data(40, seed=3)
    inline = run_shuffle(model, "conv2", d, mode="pixel", batch_size=16, device="cpu", repeats=2, chunk=3)
    monkeypatch.setattr(shuffle, "permutation_workers", lambda device: 3)
    threaded = run_shuffle(model, "conv2", d, mode="pixel", batch_size=16, device="cpu", repeats=2, chunk=3)
    assert json.dumps(threaded.to_dict()) == json.dumps(inline.to_dict())


class FailingData(Dataset):
    """A dataset whose third batch cannot be read (a corrupt image, say)."""

    def arrays(self, start, stop):
        if start >= 32:
            from onnxredund.errors import OnnxRedundError

            raise OnnxRedundError("cannot decode image 33")
        return super().arrays(start, stop)


def test_an_error_reading_data_mid_sweep_reaches_the_caller_after_the_finished_batches():
    import threading

    model = load_model_proto(small_cnn(9)[0])
    d = data(60)
    before = threading.active_count()
    seen = []
    with pytest.raises(Exception, match="cannot decode image 33"):
        run_shuffle(
            model,
            "conv2",
            FailingData(d.x, d.y, "failing"),
            batch_size=16,
            device="cpu",
            on_batch=lambda s: seen.append(s.samples_done),
        )
    assert seen == [16, 32]  # the two batches read were summed and checkpointed
    assert threading.active_count() == before  # the thread that runs the models is gone


def test_an_interrupt_while_a_batch_is_summed_leaves_the_numbers_of_the_batches_before_it(monkeypatch):
    """Ctrl-C lands in the loop that sums a batch (here: in its third run's effects, in the main thread, as a
    real SIGINT would): the batch's clean sums and earlier runs are not kept without its sample count, so the
    partial result is the full result of the batches before it, to the bit."""
    model = load_model_proto(small_cnn(6)[0])
    d = data(100)
    per_batch = model.layers[1].in_channels  # the direct path: one run, one add_per_sample, per channel and batch
    real, calls = EffectMeter.add_per_sample, {"n": 0}

    def interrupt_inside_the_third_batch(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2 * per_batch + 2:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(EffectMeter, "add_per_sample", interrupt_inside_the_third_batch)
    partial = run_shuffle(model, 1, d, mode="pixel", batch_size=20, device="cpu", seed=4, exact_path=True)
    monkeypatch.setattr(EffectMeter, "add_per_sample", real)
    assert not partial.complete and partial.samples_done == 40 and calls["n"] == 2 * per_batch + 2
    first_two = run_shuffle(model, 1, d.limit(40), mode="pixel", batch_size=20, device="cpu", seed=4, exact_path=True)
    for key in ("outputs", "cosine", "accuracy", "agreement", "baseline_accuracy"):
        assert partial.to_dict()[key] == first_two.to_dict()[key], key


@pytest.mark.parametrize("exact", [False, True])
def test_a_sweep_interrupted_before_its_first_batch_ends_reports_no_numbers_not_zeros(monkeypatch, tmp_path, exact):
    """Stopped before any image reached a channel, a sweep has no cosine, effect or decision to give: null in
    JSON (not the 0.0 its empty sums divide to, which read as "costly"), every channel undecided on 0 images, and
    the console and files say so without a numpy warning."""
    from onnxredund.cli.console import shuffle_lines
    from onnxredund.report.writers import write_shuffle

    model = load_model_proto(small_cnn(6)[0])
    c = model.layers[1].in_channels

    def interrupt(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(EffectMeter, "add_per_sample", interrupt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "All-NaN slice" and "Mean of empty slice" among them
        result = run_shuffle(model, 1, data(40), batch_size=20, device="cpu", exact_path=exact)
        lines = shuffle_lines(result)
        write_shuffle(tmp_path, result)
    payload = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert not result.complete and result.samples_done == 0
    assert payload["channel_images"] == [0] * c and payload["decision"] == ["undecided"] * c
    assert payload["mean_cosine"] == [None] * c and payload["cost"] == [None] * c
    assert all(v is None for row in payload["cosine"] + payload["cosine_std"] for v in row)
    assert payload["accuracy"] == [None] * c and payload["baseline_accuracy"] is None
    assert payload["cost_interval"] == [[None, None]] * c
    assert all(v is None for effect in payload["outputs"].values() for v in effect["cosine"])
    assert lines[1] == "  no channel measured: no batch finished"
    assert f"decided: 0 cheap, 0 costly, {c} undecided" in lines[2]
    assert json.loads((tmp_path / "shuffle-channel.json").read_text())["mean_cosine"] == [None] * c


def test_a_finished_sweeps_numbers_do_not_change_with_the_unmeasured_masking():
    """Every channel measured: no NaN anywhere, and the JSON equals its float-rounded numbers."""
    model = load_model_proto(small_cnn(6)[0])
    d = data(40)
    result = run_shuffle(model, 1, d, batch_size=20, device="cpu")
    payload = result.to_dict()
    assert payload["channel_images"] == [40] * model.layers[1].in_channels
    assert payload["cosine"] == np.round(result.cosine, 10).tolist()
    assert all(isinstance(v, float) for v in payload["mean_cosine"])


def test_an_output_declared_with_sizes_for_another_input_runs_the_fast_path_as_the_direct_one():
    # PP-OCRv2's recogniser declares [-1, 25, 6625] and gives 80 time steps at width 320: the fast model, which
    # reads the clean outputs as inputs, took the declared sizes and onnxruntime refused the run
    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["z1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["z1"], ["a1"]),
        helper.make_node("Conv", ["a1", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1]),
    ]
    inits = {"w1": rng.normal(size=(4, 2, 3, 3)), "w2": rng.normal(size=(3, 4, 3, 3))}
    proto = make_model(nodes, [("x", ["N", 2, "H", "W"])], [("y", ["N", 3, 5, 5])], inits)  # 5 x 5: stale
    m = load_model_proto(proto, input_shape=(2, 8, 8))
    data = Dataset(rng.random((16, 2, 8, 8), dtype=np.float32), None, "x")
    fast = run_shuffle(m, "conv2", data, batch_size=8, device="cpu")
    direct = run_shuffle(m, "conv2", data, batch_size=8, device="cpu", exact_path=True)
    assert fast.route == "fast" and direct.route == "direct"
    np.testing.assert_allclose(fast.cosine, direct.cosine, rtol=1e-5, atol=1e-6)
    assert m.shapes["y"] == (3, 8, 8)  # computed, not the declared 5 x 5


def _same_numbers(a, b) -> None:
    np.testing.assert_array_equal(a.cosine, b.cosine)
    np.testing.assert_array_equal(a.accuracy, b.accuracy)
    np.testing.assert_array_equal(a.agreement, b.agreement)
    assert a.to_dict()["outputs"] == b.to_dict()["outputs"]


@pytest.mark.parametrize("exact", [False, True])
def test_a_layers_second_mode_takes_the_first_modes_clean_runs_and_gets_the_same_numbers(monkeypatch, exact):
    model = load_model_proto(small_cnn(4)[0])
    d = data(50)  # batches of 16, 16, 16 and 2
    alone = {m: run_shuffle(model, "conv2", d, mode=m, batch_size=16, device="cpu", exact_path=exact) for m in MODES}
    runs = []
    real = SweepRunner.run_clean
    monkeypatch.setattr(SweepRunner, "run_clean", lambda self, feeds: runs.append(1) or real(self, feeds))
    passes = CleanPasses()
    shared = {}
    for m in MODES:
        shared[m] = run_shuffle(
            model, "conv2", d, mode=m, batch_size=16, device="cpu", exact_path=exact, clean_passes=passes
        )
        _same_numbers(shared[m], alone[m])
    assert len(runs) == 4 and passes.reused == 4  # the pixel sweep ran no clean pass of its own


def test_clean_runs_are_not_taken_for_other_images_another_order_another_layer_or_past_the_memory_limit():
    model = load_model_proto(small_cnn(4)[0])
    d = data(50)
    kwargs = {"batch_size": 16, "device": "cpu"}
    passes = CleanPasses()
    run_shuffle(model, "conv2", d, clean_passes=passes, **kwargs)
    other = data(50, seed=2)
    _same_numbers(
        run_shuffle(model, "conv2", other, clean_passes=passes, **kwargs), run_shuffle(model, "conv2", other, **kwargs)
    )
    run_shuffle(model, "conv2", d, clean_passes=passes, **kwargs, seed=4)  # other permutations, the same clean runs
    assert passes.reused == 4
    sequential = Estimation(sequential=True)  # the images in a seeded random order: other batches
    run_shuffle(model, "conv2", d, clean_passes=passes, estimation=sequential, **kwargs)
    run_shuffle(model, "conv1", d, clean_passes=passes, **kwargs)
    assert passes.reused == 4 and passes.layer[0] == "conv1"  # one layer's runs are held at a time
    small = CleanPasses(limit=1000)  # less than one batch's clean tensors
    run_shuffle(model, "conv2", d, clean_passes=small, **kwargs)
    run_shuffle(model, "conv2", d, mode="pixel", clean_passes=small, **kwargs)
    assert small.reused == 0 and not small.runs


def test_shuffle_both_modes_runs_each_clean_pass_once_and_writes_what_separate_passes_write(monkeypatch, tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(small_cnn()[0], path)
    args = ("shuffle", path, "--layer", "conv2", "--data", "synthetic:40", "--batch-size", "16", "--mode", "both")
    runs = []
    real = SweepRunner.run_clean
    monkeypatch.setattr(SweepRunner, "run_clean", lambda self, feeds: runs.append(1) or real(self, feeds))
    shared = run_cli(*args, "--device", "cpu", "--json")
    assert shared.exit_code == 0, shared.stderr
    assert len(runs) == 3  # three batches, once
    apart = run_cli(*args, "--device", "cpu", "--json", env={"ONNXREDUND_CLEAN_MEMORY": "0"})
    assert len(runs) == 9  # three batches in each mode
    assert json.loads(shared.stdout) == json.loads(apart.stdout)


def _flattened_by_the_batch(read: str) -> onnx.ModelProto:
    """small_cnn's convs, then a Reshape to (B, -1) whose target is computed from the input's shape (jax2tf
    writes every Reshape so): by Shape and a Slice, by Shape's start and end (opset 15), or by Size."""
    rng = np.random.default_rng(0)
    inits = {
        "w1": rng.normal(size=(4, 3, 3, 3)),
        "w2": rng.normal(size=(5, 4, 3, 3)),
        "fc": rng.normal(size=(5 * 36, 4)),
        "first": np.array([0]),
        "one": np.array([1]),
        "rest": np.array([-1]),
        "per_sample": np.array(3 * 36),  # Size is a scalar
    }
    if read == "slice":
        batch = [
            helper.make_node("Shape", ["x"], ["shape"]),
            helper.make_node("Slice", ["shape", "first", "one"], ["batch"]),
        ]
    elif read == "start_end":
        batch = [helper.make_node("Shape", ["x"], ["batch"], start=0, end=1)]
    else:
        batch = [
            helper.make_node("Size", ["x"], ["size"]),
            helper.make_node("Div", ["size", "per_sample"], ["count"]),
            helper.make_node("Reshape", ["count", "one"], ["batch"]),
        ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["a2"], name="conv2", pads=[1, 1, 1, 1]),
        *batch,
        helper.make_node("Concat", ["batch", "rest"], ["target"], axis=0),
        helper.make_node("Reshape", ["a2", "target"], ["f"]),
        helper.make_node("MatMul", ["f", "fc"], ["logits"]),
    ]
    return make_model(nodes, [("x", ["N", 3, 6, 6])], [("logits", ["N", 4])], inits.items())


@pytest.mark.parametrize("read", ["slice", "start_end", "size"])
@pytest.mark.parametrize("mode", ["channel", "pixel"])
def test_a_reshape_target_computed_from_the_inputs_batch_past_the_layer_takes_the_fast_path(read, mode):
    # the fast model's K x B rows contradict a B read from a shape: the direct path ran (Google's Magika, 4.3x)
    model = load_model_proto(_flattened_by_the_batch(read))
    d = data(40)
    fast = run_shuffle(model, "conv1", d, mode=mode, batch_size=16, device="cpu")
    direct = run_shuffle(model, "conv1", d, mode=mode, batch_size=16, device="cpu", exact_path=True)
    assert fast.route == "fast"
    np.testing.assert_allclose(fast.cosine, direct.cosine, atol=1e-5)
    np.testing.assert_array_equal(fast.agreement, direct.agreement)
    np.testing.assert_allclose(
        fast.to_dict()["outputs"]["logits"]["cosine"], direct.to_dict()["outputs"]["logits"]["cosine"], atol=1e-6
    )


def test_an_output_squeezed_to_a_scalar_by_a_one_sample_batch_is_one_samples_value(tmp_path):
    # PLCMOS's score: a Squeeze with no axes makes (N,) of (N, 1), and () of a last batch of one: a traceback
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["z"], name="conv1"),
        helper.make_node("Relu", ["z"], ["r"]),
        helper.make_node("Conv", ["r", "w2"], ["z2"], name="conv2"),
        helper.make_node("GlobalAveragePool", ["z2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("MatMul", ["f", "fc"], ["m"]),
        helper.make_node("Squeeze", ["m"], ["score"]),
    ]
    inits = {"w": rng.normal(size=(4, 3, 1, 1)), "w2": rng.normal(size=(5, 4, 3, 3)), "fc": rng.normal(size=(5, 1))}
    model = load_model_proto(make_model(nodes, [("x", ["N", 3, 6, 6])], [("score", [])], inits.items()))
    d = data(9)  # batches of 4, 4 and 1
    fast = run_shuffle(model, "conv2", d, mode="pixel", batch_size=4, device="cpu")
    direct = run_shuffle(model, "conv2", d, mode="pixel", batch_size=4, device="cpu", exact_path=True)
    assert fast.route == "fast" and fast.samples_done == direct.samples_done == 9
    np.testing.assert_allclose(fast.cosine, direct.cosine, atol=1e-5)
    ours, theirs = fast.to_dict()["outputs"]["score"], direct.to_dict()["outputs"]["score"]
    np.testing.assert_allclose(ours["relative_l2"], theirs["relative_l2"], rtol=1e-4, atol=1e-7)
