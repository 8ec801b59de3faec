"""Channel groups and physical channel removal on tiny models with a residual Add, a Concat, a depthwise
conv, BatchNormalization and Flatten -> Gemm: removing a channel that is always zero, or merging an exact
duplicate into its twin, leaves every output equal; a removal equals the original with the channel zeroed
(or set to its mean) where its consumers read it."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import make_model
from onnx import helper
from prunable import SIZE, flat_head, group_of, inputs, run, zoo

from onnxredund.data import Dataset
from onnxredund.engine.calibration import collect_statistics
from onnxredund.engine.channel_groups import channel_groups
from onnxredund.engine.loading import load_model_proto
from onnxredund.engine.pruning import PruneCost, compensate, consumer_columns, remove_channels
from onnxredund.engine.runtime import Runner
from onnxredund.errors import OnnxRedundError
from onnxredund.model import copy_model, describe_layers, infer_shapes, shape_table


def test_zoo_groups_tie_the_residual_and_follow_concat_depthwise_and_flatten():
    m = load_model_proto(zoo())
    groups = channel_groups(m)
    assert [sorted(g.producers) for g in groups] == [["convA", "convC"], ["convB"]]
    res, b = group_of(groups, "convA"), group_of(groups, "convB")
    assert res.prunable and b.prunable
    assert res.consumer_names == ["convB", "convC", "fc"]  # convC reads the depthwise copy at offset 3
    roles = {(m.proto.graph.node[s.node].name, s.name, s.axis, s.offset, s.block, s.role) for s in res.slicings}
    assert ("dw", "wd", 0, 0, 1, "depthwise") in roles
    assert ("convC", "wc", 1, 3, 1, "consumer") in roles  # concat offset of d
    assert ("fc", "fc", 1, 0, SIZE * SIZE, "dense") in roles  # transB: columns, a block of 36 per channel
    assert ("bnA", "var", 0, 0, 1, "norm") in roles
    assert {(s.name, s.axis, s.offset) for s in b.slicings if s.role == "consumer"} == {("wc", 1, 0)}


@pytest.mark.parametrize(
    ("kwargs", "producer", "channel"),
    [({"dead_b": 1}, "convB", 1), ({"dead_a": 2}, "convA", 2)],
    ids=["concat-input", "residual-group"],
)
def test_removing_an_always_zero_channel_leaves_every_output_equal(kwargs, producer, channel):
    proto = zoo(**kwargs)
    m = load_model_proto(proto)
    groups = channel_groups(m)
    g = group_of(groups, producer)
    pruned = remove_channels(m, groups, {g.index: [channel]})
    x = inputs()
    np.testing.assert_allclose(run(pruned, x), run(proto, x), rtol=1e-5, atol=1e-5)
    assert PruneCost.measure(m, groups).macs({g.index: [channel]}) < PruneCost.measure(m, groups).macs_total
    onnx.checker.check_model(pruned, full_check=True)


def _zeroed_at_consumers(m, group, channels, mean_of=None) -> onnx.ModelProto:
    """The original with the channels' columns zeroed in every consumer (and, with ``mean_of``, the mean's
    contribution put in its bias): the channels set to zero (or their mean) where they are read."""
    out = copy_model(m.proto)
    inits = {t.name: t for t in out.graph.initializer}
    for c in group.consumers:
        node = out.graph.node[c.node]
        w = onnx.numpy_helper.to_array(inits[node.input[1]]).copy()
        rows = w.reshape(w.shape[0], -1) if node.op_type == "Conv" else w
        if node.op_type == "MatMul" or (
            node.op_type == "Gemm" and not any(a.name == "transB" and a.i for a in node.attribute)
        ):
            rows = w.T  # a view: (O, F) rows
        cols = consumer_columns(m, c, channels)
        if mean_of is not None:
            b = onnx.numpy_helper.to_array(inits[node.input[2]]).copy()
            b += rows[:, cols] @ np.concatenate([mean_of.mean(c, k, len(cols) // len(channels)) for k in channels])
            inits[node.input[2]].CopyFrom(onnx.numpy_helper.from_array(b.astype(np.float32), node.input[2]))
        rows[:, cols] = 0.0
        inits[node.input[1]].CopyFrom(onnx.numpy_helper.from_array(w.astype(np.float32), node.input[1]))
    return out


@pytest.mark.parametrize("producer", ["convA", "convB"])
def test_a_removal_equals_the_channel_zeroed_where_its_consumers_read_it(producer):
    m = load_model_proto(zoo(seed=3))
    groups = channel_groups(m)
    g = group_of(groups, producer)
    channels = [0, 2]
    pruned = remove_channels(m, groups, {g.index: channels})
    x = inputs(seed=5)
    np.testing.assert_allclose(run(pruned, x), run(_zeroed_at_consumers(m, g, channels), x), rtol=1e-5, atol=1e-5)
    assert not np.allclose(run(pruned, x), run(m.proto, x), atol=1e-3)  # the channels did matter


def test_mean_compensation_equals_the_channel_set_to_its_mean_at_a_dense_consumer():
    m = load_model_proto(flat_head())
    groups = channel_groups(m)
    g = groups[0]
    x = inputs(64, seed=7)
    stats = collect_statistics(m, g.consumers, Dataset(x, None, "x"))
    updates = compensate(m, groups, {0: [1]}, "mean", stats)
    pruned = remove_channels(m, groups, {0: [1]}, updates=updates)  # a MatMul without bias gets an Add
    features = Runner.create(infer_shapes(_expose(m.proto, "f")), "cpu").run({"x": x})[1]
    mean = features.mean(axis=0)
    fixed = features.copy()
    fixed[:, 16:32] = mean[16:32]
    want = fixed.astype(np.float64) @ onnx.numpy_helper.to_array(m.proto.graph.initializer[2]).astype(np.float64)
    np.testing.assert_allclose(run(pruned, x), want, rtol=1e-4, atol=1e-4)


def _expose(proto, name):
    out = copy_model(proto)
    out.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return out


def test_merging_an_exact_duplicate_into_its_twin_leaves_every_output_equal():
    proto = zoo(seed=2, twin_b=(0, 2))
    m = load_model_proto(proto)
    groups = channel_groups(m)
    g = group_of(groups, "convB")
    x = inputs(32, seed=9)
    stats = collect_statistics(m, g.consumers, Dataset(x, None, "x"), cross=True)
    pruned = remove_channels(m, groups, {g.index: [2]}, updates=compensate(m, groups, {g.index: [2]}, "merge", stats))
    np.testing.assert_allclose(run(pruned, x), run(proto, x), rtol=1e-5, atol=1e-5)
    plain = remove_channels(m, groups, {g.index: [2]})
    assert not np.allclose(run(plain, x), run(proto, x), atol=1e-3)


def test_least_squares_refit_recovers_a_channel_its_twin_carries():
    proto = zoo(seed=4, twin_b=(1, 0))
    m = load_model_proto(proto)
    groups = channel_groups(m)
    g = group_of(groups, "convB")
    x = inputs(64, seed=11)
    stats = collect_statistics(m, g.consumers, Dataset(x, None, "x"), gram=True)
    exact = compensate(m, groups, {g.index: [0]}, "lstsq", stats, ridge=1e-9)
    np.testing.assert_allclose(
        run(remove_channels(m, groups, {g.index: [0]}, updates=exact), x), run(proto, x), rtol=1e-3, atol=1e-3
    )


def test_least_squares_refit_stays_sound_with_fewer_samples_than_inputs():
    """convC multiplies 7 x 9 + 1 = 64 values per output; one image gives 32 sampled positions. A bare least-squares
    fit then fits noise; the pull towards the original weights keeps it near them. With 16 images the refit beats
    no compensation on other data."""
    proto = zoo(seed=6)
    m = load_model_proto(proto)
    groups = channel_groups(m)
    g = group_of(groups, "convB")
    removal = {g.index: [1]}
    x = inputs(64, seed=2)
    want = run(proto, x)

    def error(n: int, **ridge) -> float:
        stats = collect_statistics(m, g.consumers, Dataset(inputs(n, seed=1), None, "x"), gram=True)
        pruned = remove_channels(m, groups, removal, updates=compensate(m, groups, removal, "lstsq", stats, **ridge))
        return float(np.abs(run(pruned, x) - want).mean())

    assert error(1) < error(1, ridge=1e-9) / 3
    assert error(16) < float(np.abs(run(remove_channels(m, groups, removal), x) - want).mean())


def test_cost_counts_the_pruned_models_macs_and_parameters_exactly():
    m = load_model_proto(zoo())
    groups = channel_groups(m)
    cost = PruneCost.measure(m, groups)
    removal = {group_of(groups, "convA").index: [1, 3], group_of(groups, "convB").index: [0]}
    pruned = remove_channels(m, groups, removal)
    layers = describe_layers(pruned, shape_table(infer_shapes(pruned)))
    assert cost.macs(removal) == sum(layer.macs for layer in layers)
    params = sum(
        t.size for t in (onnx.numpy_helper.to_array(i) for i in pruned.graph.initializer) if t.dtype.kind == "f"
    )
    assert cost.params(removal) == params
    assert cost.macs_total == sum(layer.macs for layer in m.layers)


def test_the_original_model_is_untouched():
    proto = zoo()
    m = load_model_proto(proto)
    before = m.proto.SerializeToString()
    groups = channel_groups(m)
    remove_channels(m, groups, {0: [1]})
    assert m.proto.SerializeToString() == before


def _graph(nodes, w, out_shape):
    return make_model(nodes, [("x", ["N", 2, SIZE, SIZE])], [("out", out_shape)], w)


def _check_against_zeroed(proto, producer, channels):
    """Remove ``channels`` of ``producer``'s group; the outputs equal the original's with them zeroed at the
    consumers. Returns the pruned model."""
    m = load_model_proto(proto)
    groups = channel_groups(m)
    g = group_of(groups, producer)
    assert g.prunable, g.reason
    pruned = remove_channels(m, groups, {g.index: channels})
    x = inputs()
    np.testing.assert_allclose(run(pruned, x), run(_zeroed_at_consumers(m, g, channels), x), rtol=1e-5, atol=1e-5)
    return pruned


def _initializer(proto, node_name: str, position: int) -> np.ndarray:
    node = next(n for n in proto.graph.node if n.name == node_name)
    return next(onnx.numpy_helper.to_array(t) for t in proto.graph.initializer if t.name == node.input[position])


def test_a_split_cuts_each_part_of_a_group_and_its_sizes_are_recounted():
    rng = np.random.default_rng(0)
    w = {
        "w1": rng.normal(size=(4, 2, 3, 3)),
        "split": np.array([2, 2]),
        "wx": rng.normal(size=(3, 2, 1, 1)),
        "wy": rng.normal(size=(3, 2, 1, 1)),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["p"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["p"], ["a"]),
        helper.make_node("Split", ["a", "split"], ["s1", "s2"], name="split", axis=1),
        helper.make_node("Conv", ["s1", "wx"], ["cx"], name="convX"),
        helper.make_node("Conv", ["s2", "wy"], ["cy"], name="convY"),
        helper.make_node("Add", ["cx", "cy"], ["out"]),
    ]
    pruned = _check_against_zeroed(_graph(nodes, w, ["N", 3, SIZE, SIZE]), "conv1", [1, 2])
    assert _initializer(pruned, "split", 1).tolist() == [1, 1]


def test_a_slice_of_the_channels_is_cut_and_its_bounds_recounted():
    rng = np.random.default_rng(1)
    w = {
        "w1": rng.normal(size=(5, 2, 3, 3)),
        "st": np.array([1]),
        "en": np.array([4]),
        "ax": np.array([1]),
        "w5": rng.normal(size=(2, 3, 1, 1)),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["p"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Slice", ["p", "st", "en", "ax"], ["mid"], name="slice"),  # channels 1, 2, 3
        helper.make_node("Conv", ["mid", "w5"], ["out"], name="conv5"),
    ]
    proto = _graph(nodes, w, ["N", 2, SIZE, SIZE])
    pruned = _check_against_zeroed(proto, "conv1", [0, 2])
    assert (_initializer(pruned, "slice", 1).tolist(), _initializer(pruned, "slice", 2).tolist()) == ([0], [2])
    x = inputs()
    np.testing.assert_allclose(run(_check_against_zeroed(proto, "conv1", [0, 4]), x), run(proto, x), rtol=1e-5)


def test_a_reshape_to_features_shrinks_its_shape_constant():
    rng = np.random.default_rng(2)
    w = {
        "w1": rng.normal(size=(3, 2, 3, 3)),
        "shape": np.array([0, 3 * SIZE * SIZE]),
        "fc": rng.normal(size=(3 * SIZE * SIZE, 4)),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["p"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Reshape", ["p", "shape"], ["flat"], name="reshape"),
        helper.make_node("MatMul", ["flat", "fc"], ["out"], name="fc"),
    ]
    pruned = _check_against_zeroed(_graph(nodes, w, ["N", 4]), "conv1", [1])
    assert _initializer(pruned, "reshape", 1).tolist() == [0, 2 * SIZE * SIZE]


@pytest.mark.parametrize("features", [-1, 3], ids=["minus-one", "feature-count"])
def test_a_flatten_whose_shape_is_computed_at_run_time_becomes_a_constant_flatten(features):
    # Paddle's flatten: shape = Concat(Cast(Shape(x)[:1]), Cast([F or -1])), computed from the batch at run time
    rng = np.random.default_rng(4)
    w = {
        "w1": rng.normal(size=(3, 2, 3, 3)),
        "fc": rng.normal(size=(3, 4)),
        "zero": np.array([0]),
        "one": np.array([1]),
        "features": np.array([features]),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["p"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["p"], ["pooled"]),
        helper.make_node("Shape", ["pooled"], ["dims"]),
        helper.make_node("Slice", ["dims", "zero", "one"], ["batch"]),
        helper.make_node("Cast", ["features"], ["f32"], to=onnx.TensorProto.INT32),
        helper.make_node("Cast", ["f32"], ["f64"], to=onnx.TensorProto.INT64),
        helper.make_node("Concat", ["batch", "f64"], ["shape"], axis=0),
        helper.make_node("Reshape", ["pooled", "shape"], ["flat"], name="reshape"),
        helper.make_node("MatMul", ["flat", "fc"], ["out"], name="fc"),
    ]
    pruned = _check_against_zeroed(_graph(nodes, w, ["N", 4]), "conv1", [1])  # run at 16 samples, checked at 1
    assert _initializer(pruned, "reshape", 1).tolist() == [0, -1]
    assert not {"Shape", "Slice", "Concat", "Cast"} & {n.op_type for n in pruned.graph.node}


def test_a_computed_reshape_that_is_not_a_flatten_leaves_the_group_unprunable():
    rng = np.random.default_rng(5)
    w = {"w1": rng.normal(size=(3, 2, 3, 3)), "zero": np.array([0]), "two": np.array([2]), "minus": np.array([-1])}
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["p"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Shape", ["p"], ["dims"]),
        helper.make_node("Slice", ["dims", "zero", "two"], ["lead"]),  # (N, C)
        helper.make_node("Concat", ["lead", "minus"], ["shape"], axis=0),  # (N, C, H * W): not features
        helper.make_node("Reshape", ["p", "shape"], ["out"], name="reshape"),
    ]
    groups = channel_groups(load_model_proto(_graph(nodes, w, ["N", 3, SIZE * SIZE])))
    g = group_of(groups, "conv1")
    assert not g.prunable and "Reshape 'reshape'" in g.reason


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("grouped", "grouped conv"),
        ("output", "graph output"),
        ("transpose", "Transpose"),
        ("reduce", "reduces over the channels"),
    ],
)
def test_groups_that_cannot_be_pruned_say_why(case, reason):
    rng = np.random.default_rng(0)
    w = {"w1": rng.normal(size=(4, 2, 3, 3)), "wg": rng.normal(size=(4, 2, 3, 3))}
    first = helper.make_node("Conv", ["x", "w1"], ["p"], name="conv1", pads=[1, 1, 1, 1])
    out_shape = ["N", 4, SIZE, SIZE]
    if case == "grouped":
        nodes = [first, helper.make_node("Conv", ["p", "wg"], ["out"], name="g", group=2, pads=[1, 1, 1, 1])]
    elif case == "output":
        nodes = [first, helper.make_node("Relu", ["p"], ["out"])]
    elif case == "transpose":
        nodes = [first, helper.make_node("Transpose", ["p"], ["out"], perm=[0, 2, 1, 3])]  # channels to axis 2
        out_shape = ["N", SIZE, 4, SIZE]
    else:
        nodes = [first, helper.make_node("ReduceMean", ["p"], ["out"], axes=[1])]
        out_shape = ["N", 1, SIZE, SIZE]
    m = load_model_proto(_graph(nodes, w, out_shape))
    groups = channel_groups(m)
    g = group_of(groups, "conv1")
    assert not g.prunable and reason in g.reason
    with pytest.raises(OnnxRedundError, match="cannot be removed"):
        remove_channels(m, groups, {g.index: [0]})


def test_a_depthwise_conv_on_the_input_says_its_channels_are_the_inputs_and_a_grouped_one_that_it_is_grouped():
    """onnx-cv-graph's blur: a depthwise 3 x 1 conv on the image, whose channels nothing before it makes ("is
    grouped (3 groups)" before, as if the groups were the obstacle)."""
    rng = np.random.default_rng(1)
    w = {"dw": rng.normal(size=(2, 1, 3, 3)), "gw": rng.normal(size=(4, 1, 3, 3))}
    for weight, groups, reason in [("dw", 2, "is depthwise: its channels are its input's"), ("gw", 2, "is grouped")]:
        nodes = [helper.make_node("Conv", ["x", weight], ["p"], name="c", group=groups, pads=[1, 1, 1, 1])]
        nodes.append(helper.make_node("Conv", ["p", "w2"], ["out"], name="next", pads=[1, 1, 1, 1]))
        w2 = {"w2": rng.normal(size=(3, len(w[weight]), 3, 3))}
        g = group_of(channel_groups(load_model_proto(_graph(nodes, w | w2, ["N", 3, SIZE, SIZE]))), "c")
        assert not g.prunable and reason in g.reason


@pytest.mark.parametrize(
    ("removal", "message"),
    [({1: [5]}, "no channel 5"), ({1: [0, 1, 2]}, "every channel")],
)
def test_bad_removals_are_errors(removal, message):
    m = load_model_proto(zoo())
    with pytest.raises(OnnxRedundError, match=message):
        remove_channels(m, channel_groups(m), removal)


def test_a_spatial_mean_without_kept_axes_feeds_a_dense_layer_one_feature_per_channel():
    rng = np.random.default_rng(3)
    w = {"w1": rng.normal(size=(4, 2, 3, 3)), "fc": rng.normal(size=(4, 3))}
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["p"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("ReduceMean", ["p"], ["pooled"], axes=[2, 3], keepdims=0),
        helper.make_node("Gemm", ["pooled", "fc"], ["out"], name="fc"),
    ]
    pruned = _check_against_zeroed(_graph(nodes, w, ["N", 3]), "conv1", [0, 3])
    assert _initializer(pruned, "fc", 1).shape == (2, 3)


@pytest.mark.parametrize("method", ["mean", "merge", "lstsq"])
def test_compensating_a_bias_free_consumer_that_also_loses_outputs_gives_it_a_bias_of_the_kept_size(method):
    rng = np.random.default_rng(4)
    w = {"w1": rng.normal(size=(4, 2, 3, 3)), "w2": rng.normal(size=(5, 4, 3, 3)), "fc": rng.normal(size=(5 * 16, 3))}
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["p"], name="conv1"),
        helper.make_node("Relu", ["p"], ["a"]),
        helper.make_node("Conv", ["a", "w2"], ["q"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["q"], ["b"]),
        helper.make_node("Flatten", ["b"], ["f"]),
        helper.make_node("MatMul", ["f", "fc"], ["out"], name="fc"),
    ]
    m = load_model_proto(_graph(nodes, w, ["N", 3]))
    groups = channel_groups(m)
    removal = {group_of(groups, "conv1").index: [0], group_of(groups, "conv2").index: [1, 2]}
    x = inputs(32)
    consumers = [c for g in groups for c in g.consumers]
    stats = collect_statistics(m, consumers, Dataset(x, None, "x"), cross=True, gram=True)
    pruned = remove_channels(m, groups, removal, updates=compensate(m, groups, removal, method, stats))
    assert _initializer(pruned, "conv2", 2).shape == (3,)
    assert run(pruned, x).shape == (32, 3)


def test_pads_and_scales_computed_from_constants_let_the_groups_through():
    """Lite-Mono's depth decoder (PyTorch): reflection Pads whose pads are computed from constants (Slice,
    Transpose, Reshape, Cast) and Resizes whose scales are a Concat of two Constants. Shape inference does not
    evaluate the Concat, the shapes after it were unknown, and no group of the decoder was prunable ("they are a
    parameter of Resize"); inference now runs on the model with such tensors folded."""
    rng = np.random.default_rng(3)
    w = {
        "w1": rng.normal(size=(4, 2, 3, 3)).astype(np.float32),
        "w2": rng.normal(size=(3, 4, 3, 3)).astype(np.float32),
        "w3": rng.normal(size=(2, 3, 1, 1)).astype(np.float32),
        "pairs": np.array([[1, 1], [1, 1], [0, 0], [0, 0]], np.float32),  # (begin, end) per axis, last axis first
        "steps": np.array([-1], np.int64),
        "starts": np.array([-1], np.int64),
        "ends": np.array([-(2**62)], np.int64),
        "axes": np.array([0], np.int64),
        "flat_shape": np.array([-1], np.int64),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["a1"]),
        helper.make_node("Slice", ["pairs", "starts", "ends", "axes", "steps"], ["reversed"]),  # the axes in order
        helper.make_node("Transpose", ["reversed"], ["begins_ends"], perm=[1, 0]),  # (2, 4): begins, then ends
        helper.make_node("Reshape", ["begins_ends", "flat_shape"], ["flat"]),
        helper.make_node("Cast", ["flat"], ["pads"], to=onnx.TensorProto.INT64),
        helper.make_node("Pad", ["a1", "pads"], ["padded"], mode="reflect"),
        helper.make_node("Conv", ["padded", "w2"], ["c2"], name="conv2"),
        helper.make_node("Relu", ["c2"], ["a2"]),
        helper.make_node("Constant", [], ["keep"], value=onnx.numpy_helper.from_array(np.ones(2, np.float32))),
        helper.make_node("Constant", [], ["twice"], value=onnx.numpy_helper.from_array(np.full(2, 2, np.float32))),
        helper.make_node("Concat", ["keep", "twice"], ["scales"], axis=0),
        helper.make_node("Resize", ["a2", "", "scales"], ["up"], mode="nearest"),
        helper.make_node("Conv", ["up", "w3"], ["out"], name="conv3"),
    ]
    proto = _graph(nodes, w, ["N", 2, 2 * SIZE, 2 * SIZE])
    m = load_model_proto(proto)
    assert m.shapes["up"] == (3, 2 * SIZE, 2 * SIZE)
    _check_against_zeroed(proto, "conv1", [1, 3])  # through the computed Pad
    _check_against_zeroed(proto, "conv2", [0])  # through the Resize of computed scales
