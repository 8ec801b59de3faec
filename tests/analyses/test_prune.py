"""Pruning criteria, channel selection and the measured pruning run, on tiny models with answers known in advance."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from builders import MODELS, make_model, small_cnn
from onnx import helper
from prunable import group_of, inputs, zoo

import onnxredund.analyses.prune as prune_module
from onnxredund.analyses.prune import (
    Reference,
    Target,
    channel_importance,
    explicit_removal,
    removable,
    run_prune,
    select_channels,
    split_data,
)
from onnxredund.analyses.prune_criteria import one_of_each_pair
from onnxredund.choices import BATCH_SIZE
from onnxredund.data import Dataset
from onnxredund.engine.calibration import collect_statistics
from onnxredund.engine.channel_groups import channel_groups
from onnxredund.engine.loading import load_model_proto
from onnxredund.engine.pruning import PruneCost
from onnxredund.errors import OnnxRedundError
from onnxredund.model import describe_layers, infer_shapes, shape_table


def labelled(n: int, seed: int = 0) -> Dataset:
    x = inputs(n, seed)
    return Dataset(x, np.arange(n) % 3, "tiny")


def test_l1_is_the_mean_absolute_kernel_weight_averaged_over_a_groups_producers():
    proto = zoo()
    m = load_model_proto(proto)
    groups = channel_groups(m)
    scores = channel_importance(m, groups, "l1")
    w = {t.name: np.abs(onnx.numpy_helper.to_array(t)) for t in proto.graph.initializer}
    b = group_of(groups, "convB")
    np.testing.assert_allclose(scores[b.index], w["wb"].reshape(3, -1).mean(axis=1), rtol=1e-6)
    res = group_of(groups, "convA")
    want = (w["wa"].reshape(4, -1).mean(axis=1) + w["wc"].reshape(4, -1).mean(axis=1)) / 2
    np.testing.assert_allclose(scores[res.index], want, rtol=1e-6)


def test_bn_reads_the_batchnorm_scale_and_leaves_groups_without_one():
    proto = zoo()
    m = load_model_proto(proto)
    groups = channel_groups(m)
    scores = channel_importance(m, groups, "bn")
    g = next(t for t in proto.graph.initializer if t.name == "g")
    np.testing.assert_allclose(scores[group_of(groups, "convA").index], np.abs(onnx.numpy_helper.to_array(g)))
    assert group_of(groups, "convB").index not in scores
    plain = load_model_proto(small_cnn()[0])
    with pytest.raises(OnnxRedundError, match="needs BatchNormalization"):
        channel_importance(plain, channel_groups(plain), "bn")


def test_random_importance_comes_from_the_seed():
    m = load_model_proto(zoo())
    groups = channel_groups(m)
    a, b = channel_importance(m, groups, "random", seed=3), channel_importance(m, groups, "random", seed=3)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    c = channel_importance(m, groups, "random", seed=4)
    assert not all(np.array_equal(a[k], c[k]) for k in a)


def test_activation_and_shuffle_rank_a_channel_that_is_always_zero_lowest():
    m = load_model_proto(zoo(dead_b=1))
    groups = channel_groups(m)
    g = group_of(groups, "convB")
    data = labelled(32)
    stats = collect_statistics(m, [c for group in groups for c in group.consumers], data)
    for criterion in ("activation", "variance", "shuffle"):
        scores = channel_importance(m, groups, criterion, data=data, stats=stats)[g.index]
        assert scores[1] == pytest.approx(0.0, abs=1e-7), criterion
        assert scores.argmin() == 1 and scores.min() < np.delete(scores, 1).min(), criterion


def test_shuffle_accuracy_needs_labels():
    m = load_model_proto(zoo())
    unlabelled = Dataset(inputs(8), None, "x")
    with pytest.raises(OnnxRedundError, match="needs labelled data"):
        channel_importance(m, channel_groups(m), "shuffle", data=unlabelled, shuffle_metric="accuracy")


def test_impulse_keeps_one_channel_of_each_matching_pair():
    layer = SimpleNamespace(
        best_value=np.array([0.99, 0.99, 0.2, 0.95, np.nan]),
        best_match=np.array([1, 0, 3, 0, -1]),
        across_best_value=np.array([np.nan, np.nan, np.nan, np.nan, 0.97]),
    )
    importance = one_of_each_pair(layer)
    # 0 and 1 match each other: 0 can go, 1 stays; 3 matches 0, which already goes: 0 is not protected;
    # 2's match is below the threshold; 4 matches a channel of an earlier layer
    np.testing.assert_allclose(importance, [0.01, 1.01, 0.8, 0.05, 0.03])


def _setup():
    m = load_model_proto(zoo())
    groups = channel_groups(m)
    return m, groups, PruneCost.measure(m, groups), channel_importance(m, groups, "l1")


def test_layer_scope_removes_one_fraction_everywhere_and_the_least_important_channels():
    _, groups, cost, scores = _setup()
    removal = select_channels(groups, scores, cost, Target("macs", 0.3), "layer", "l1")
    fractions = {len(ch) / groups[g].channels for g, ch in removal.items()}
    assert 1 - cost.macs(removal) / cost.macs_total >= 0.3
    for g, channels in removal.items():
        assert sorted(channels) == sorted(np.argsort(scores[g], kind="stable")[: len(channels)].tolist())
    assert len({round(f * 12) for f in fractions}) <= 2  # floor(q x 4) of 4 and floor(q x 3) of 3 channels


def test_global_scope_meets_the_target_and_stops_there():
    _, groups, cost, scores = _setup()
    for target in (Target("macs", 0.4), Target("params", 0.4)):
        removal = select_channels(groups, scores, cost, target, "global", "l1")
        assert target.removed(cost, removal) >= 0.4
        # one channel fewer misses it: the selection stops as soon as the target is met
        assert all(len(ch) < groups[g].channels for g, ch in removal.items())


@pytest.mark.parametrize(
    ("channels", "chosen", "round_to", "goes"),
    [
        (256, 77, 8, 72),
        (256, 77, 16, 64),
        (256, 80, 8, 80),
        (6, 5, 8, 0),
        (16, 15, 8, 8),
        (60, 31, 1, 31),
        (60, 31, 8, 28),
    ],
)
def test_removable_keeps_a_multiple_of_round_to_rounded_up(channels, chosen, round_to, goes):
    assert removable(channels, chosen, round_to) == goes


def _wide(seed: int = 0):
    """conv1 (40 channels) -> conv2 (24) -> out: groups too wide for the zoo's 3 and 4 channels to round."""
    rng = np.random.default_rng(seed)
    w = {
        "w1": rng.normal(size=(40, 2, 3, 3)),
        "w2": rng.normal(size=(24, 40, 3, 3)),
        "w3": rng.normal(size=(3, 24, 1, 1)),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["ra"]),
        helper.make_node("Conv", ["ra", "w2"], ["b"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["b"], ["rb"]),
        helper.make_node("Conv", ["rb", "w3"], ["out"], name="conv3"),
    ]
    m = load_model_proto(make_model(nodes, [("x", ["N", 2, 6, 6])], [("out", ["N", 3, 6, 6])], w))
    groups = channel_groups(m)
    return m, groups, PruneCost.measure(m, groups), channel_importance(m, groups, "l1")


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_rounded_selections_keep_multiples_of_eight_and_still_meet_the_target(scope):
    _, groups, cost, scores = _wide()
    for fraction in (0.2, 0.45, 0.7):
        target = Target("macs", fraction)
        removal = select_channels(groups, scores, cost, target, scope, "l1", round_to=8)
        assert target.removed(cost, removal) >= fraction
        kept = {groups[g].channels - len(removal.get(g, [])) for g in scores}
        assert all(k % 8 == 0 for k in kept), kept
        for g, channels in removal.items():  # still the least important ones
            assert sorted(channels) == sorted(np.argsort(scores[g], kind="stable")[: len(channels)].tolist())
        plain = select_channels(groups, scores, cost, target, scope, "l1")
        assert target.removed(cost, plain) >= fraction


@pytest.mark.parametrize("round_to", [1, 8])
def test_layer_scope_meets_the_target_as_closely_as_the_rounding_allows(round_to):
    _, groups, cost, scores = _wide()
    for fraction in (0.2, 0.45, 0.7):
        target = Target("macs", fraction)
        removal = select_channels(groups, scores, cost, target, "layer", "l1", round_to=round_to)
        assert target.removed(cost, removal) >= fraction
        for g, channels in removal.items():  # no group can give back one rounding step and still meet it
            fewer = removable(groups[g].channels, len(channels) - 1, round_to)
            assert target.removed(cost, {**removal, g: sorted(channels)[:fewer]}) < fraction, (fraction, g)


def test_a_target_rounding_cannot_reach_says_how_to_remove_channels_one_by_one():
    _, groups, cost, scores = _setup()  # groups of 3 and 4 channels: nothing can go in multiples of 8
    with pytest.raises(OnnxRedundError, match="`round_to` 1 removes them one by one"):
        select_channels(groups, scores, cost, Target("macs", 0.3), "layer", "l1", round_to=8)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Target("macs", 1.0), "strictly between 0 and 1"),
        (lambda: Target("macs", 0.0), "strictly between 0 and 1"),
        (lambda: Target("flops", 0.5), "no target"),
    ],
)
def test_bad_targets_are_errors(make, message):
    with pytest.raises(OnnxRedundError, match=message):
        make()


def test_an_unreachable_target_is_an_error():
    _, groups, cost, scores = _setup()
    with pytest.raises(OnnxRedundError, match="cannot be reached"):
        select_channels(groups, scores, cost, Target("macs", 0.99), "global", "l1")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"convB": [3]}, "no channel 3"),
        ({"convB": [0, 1, 2]}, "every channel"),
        ({"nope": [0]}, "no conv layer"),
        ({"dw": [0]}, "starts no channel group"),
    ],
)
def test_explicit_removals_that_cannot_be_done_are_errors(spec, message):
    m = load_model_proto(zoo())
    with pytest.raises(OnnxRedundError, match=message):
        explicit_removal(m, channel_groups(m), spec)


def test_run_prune_measures_both_models_on_samples_it_did_not_calibrate_on():
    m = load_model_proto(zoo(dead_b=1))
    data = labelled(40)
    result = run_prune(m, data, channels={"convB": [1]}, calibration=16, latency=False, device="cpu")
    assert (result.calibration_samples, result.evaluation_samples) == (16, 24)
    assert result.quality_after["agreement"] == 1.0 and result.quality_after["output_drift"] < 1e-6
    assert result.quality_before["accuracy"] == result.quality_after["accuracy"]
    layers = describe_layers(result.proto, shape_table(infer_shapes(result.proto)))
    assert result.after["conv_macs"] == sum(layer.macs for layer in layers) < result.before["conv_macs"]
    assert result.after["file_bytes"] < result.before["file_bytes"]
    assert result.removed == [{"group": 1, "producers": ["convB"], "channels": 3, "kept": 2, "removed": [1]}]


def test_run_prune_to_a_target_with_compensation_writes_what_it_did():
    m = load_model_proto(zoo())
    result = run_prune(
        m,
        labelled(48),
        criterion="l1",
        target=Target("macs", 0.3),
        compensation="lstsq",
        calibration=24,
        latency=True,
        device="cpu",
        round_to=1,
    )
    d = result.to_dict()
    assert 1 - d["after"]["conv_macs"] / d["before"]["conv_macs"] >= 0.3
    # the command's default batch is more than the 24 held-back samples: a run times the 24 it holds, and says so
    assert BATCH_SIZE > 24 and set(d["after"]["latency_ms"]) == {"1", "24"} == set(d["before"]["latency_ms"])
    for side in ("before", "after"):  # the median between its quartiles, over at least 5 timed runs
        for batch, (low, high) in d[side]["latency_quartiles_ms"].items():
            assert low <= d[side]["latency_ms"][batch] <= high and d[side]["latency_runs"][batch] >= 5
    assert d["plan"]["removed"] and d["compensation"] == "lstsq"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target": None, "channels": None}, "give a target"),
        ({"target": Target("macs", 0.5), "channels": {"convB": [0]}}, "not both"),
        ({"target": Target("macs", 0.5), "compensation": "magic"}, "no compensation"),
        ({"target": Target("macs", 0.5), "calibration": 40}, "leaves none to evaluate"),
        ({"target": Target("macs", 0.5), "criterion": "taste"}, "no criterion"),
    ],
)
def test_bad_prune_requests_are_errors(kwargs, message):
    m = load_model_proto(zoo())
    with pytest.raises(OnnxRedundError, match=message):
        run_prune(m, labelled(40), **{"calibration": 16, "latency": False, **kwargs})


def test_criteria_place_a_group_tied_in_part_channel_by_channel():
    """conv A (4 channels) is split 2 + 2; its second half is added to conv B's 2 channels (YOLOv8's C2f): one group
    of 4 channels, the last two made by both producers. l1 averages the producers that make each channel."""
    rng = np.random.default_rng(5)
    w = {
        "wa": rng.normal(size=(4, 2, 3, 3)),
        "wb": rng.normal(size=(2, 2, 3, 3)) * 3,
        "split": np.array([2, 2]),
        "wc": rng.normal(size=(3, 4, 1, 1)),
    }
    nodes = [
        onnx.helper.make_node("Conv", ["x", "wa"], ["a"], name="convA", pads=[1, 1, 1, 1]),
        onnx.helper.make_node("Split", ["a", "split"], ["a1", "a2"], axis=1),
        onnx.helper.make_node("Conv", ["x", "wb"], ["b"], name="convB", pads=[1, 1, 1, 1]),
        onnx.helper.make_node("Add", ["a2", "b"], ["s"]),
        onnx.helper.make_node("Concat", ["a1", "s"], ["cat"], axis=1),
        onnx.helper.make_node("Conv", ["cat", "wc"], ["out"], name="convC"),
    ]
    m = load_model_proto(make_model(nodes, [("x", ["N", 2, 6, 6])], [("out", ["N", 3, 6, 6])], w))
    groups = channel_groups(m)
    g = next(g for g in groups if "convA" in g.producers)
    assert g.producers == ["convA", "convB"] and g.channels == 4 and g.prunable
    la, lb = (np.abs(w[k]).reshape(len(w[k]), -1).mean(axis=1) for k in ("wa", "wb"))
    np.testing.assert_allclose(
        channel_importance(m, groups, "l1")[g.index], [la[0], la[1], *(la[2:] + lb) / 2], rtol=1e-6
    )


def test_calibration_samples_are_spread_over_data_sorted_by_class():
    """An image folder lists one class after the other: the first samples would all be of one class."""
    data = Dataset(inputs(40), np.repeat([0, 1], 20), "sorted")
    cal, ev = split_data(data, 10, None)
    assert set(cal.y.tolist()) == {0, 1} and len(cal) + len(ev) == 40
    first, _ = split_data(data, 10, None, spread=False)
    assert set(first.y.tolist()) == {0}


def _conv_macs(proto: onnx.ModelProto) -> int:
    return sum(layer.macs for layer in describe_layers(proto, shape_table(infer_shapes(proto))))


def test_a_speedup_target_finds_the_smallest_fraction_whose_pruned_model_is_that_much_faster(monkeypatch):
    """With a latency that is the conv MACs (a stand-in for the clock, which tests never read), the search
    returns a fraction whose model is 2x as fast, and every smaller fraction it tried was not."""
    m = load_model_proto(onnx.load(str(MODELS / "lenet5x10.onnx")))
    groups = channel_groups(m)
    scores = {g.index: np.arange(g.channels, dtype=float)[::-1].copy() for g in groups if g.prunable}
    monkeypatch.setattr(
        prune_module,
        "latency_runs",
        lambda model, protos, data, batch, device: [{"median": float(_conv_macs(p))} for p in protos],
    )
    cost = PruneCost.measure(m, groups)
    fraction, measured, tried = prune_module.macs_for_speedup(
        m, groups, scores, cost, prune_module.SpeedTarget(2.0, 8), "layer", "l1", 8, None, "cpu"
    )
    removal = prune_module.select_channels(groups, scores, cost, prune_module.Target("macs", fraction), "layer", "", 8)
    assert measured == pytest.approx(_conv_macs(m.proto) / cost.macs(removal)) and measured >= 2.0
    assert all(t["speedup"] < 2.0 for t in tried if t["macs_fraction"] < fraction)
    assert len(tried) == 1 + prune_module.SPEEDUP_STEPS


def test_latency_times_the_models_by_turns_so_a_drifting_clock_slows_them_alike(monkeypatch):
    """A machine that slows down as it goes (a throttling CPU): each reading of the clock is further from the last.
    Timed one after the other, the second of two identical models would take about twice as long; by turns, one
    run each, their medians are within a few runs' drift of each other."""
    m = load_model_proto(zoo())
    clock = {"t": 0.0, "calls": 0, "runs": []}

    def perf_counter():
        clock["calls"] += 1
        clock["t"] += 1e-3 * clock["calls"]
        return clock["t"]

    real_create = prune_module.Runner.create

    def create(proto, device, derived=False):
        runner, index, run = real_create(proto, device, derived=derived), len(clock["runs"]), None
        clock["runs"].append(0)
        run = runner.run

        def counted(feeds):
            clock["runs"][index] += 1
            return run(feeds)

        runner.run = counted
        return runner

    monkeypatch.setattr(prune_module.Runner, "create", staticmethod(create))
    monkeypatch.setattr(prune_module.time, "perf_counter", perf_counter)
    first, second = prune_module.latency_runs(m, [m.proto, m.proto], labelled(8), 4, "cpu")
    assert first["runs"] == second["runs"] >= 5 and clock["runs"] == [first["runs"] + 1] * 2  # and a warm-up each
    assert second["median"] / first["median"] < 1.25


def _attention(size: int = 8) -> onnx.ModelProto:
    """x (N, 4, size, size) -> conv -> (N, positions, 4) by a Reshape to a computed shape (its sizes read off
    Shape, as tf2onnx writes them: shape inference cannot tell) -> MatMul with its transpose: (N, P, P), LYT-Net's
    self-attention scores -> Softmax -> MatMul back -> y (N, P, 4)."""
    p = size * size
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Shape", ["c"], ["dims"]),
        helper.make_node("Slice", ["dims", "zero", "one"], ["n"]),
        helper.make_node("Concat", ["n", "rest"], ["target"], axis=0),
        helper.make_node("Transpose", ["c"], ["t"], perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["t", "target"], ["q"]),
        helper.make_node("Transpose", ["q"], ["k"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "k"], ["scores"], name="scores"),
        helper.make_node("Softmax", ["scores"], ["attn"], axis=-1),
        helper.make_node("MatMul", ["attn", "q"], ["y"]),
    ]
    inits = {"w": np.ones((4, 4, 3, 3)), "zero": [0], "one": [1], "rest": [-1, 4]}
    return make_model(nodes, [("x", ["N", 4, size, size])], [("y", ["N", p, 4])], inits)


def test_a_latency_run_holds_no_more_samples_than_a_quarter_of_the_memory_counting_attention_maps(monkeypatch):
    """LYT-Net at 640 x 360: 52 MB of attention scores a head and sample behind Reshapes to computed shapes; the
    latency run of 16 samples was killed at 24 GB. The scores' size is known now, and a run holds what fits."""
    from onnxredund.engine import runtime

    m = load_model_proto(_attention())
    assert m.shapes["scores"] == (64, 64)  # unknown before: the largest tensor counted was the conv's 4 x 8 x 8
    data = Dataset(np.zeros((16, 4, 8, 8), np.float32), None, "x")
    assert prune_module.timed_batch(m, data, 16, "cpu") == 16
    per_run = runtime._RUN_SHARE * runtime._PEAK_PER_LARGEST * 4 * 64 * 64  # the bytes one sample's run takes
    monkeypatch.setattr(runtime, "machine_memory", lambda: 5 * per_run)
    assert prune_module.timed_batch(m, data, 16, "cpu") == 5


def test_output_drift_leaves_out_samples_whose_original_output_is_all_zero_and_counts_them():
    # y = Relu(x * w + b): sample 0's input is negative, so the original gives zeros there; a bias of 1 in the
    # "pruned" model changes it, which has no scale (its relative L2 was inf, and prune's JSON failed to write)
    def model(bias: float):
        nodes = [helper.make_node("Conv", ["x", "w", "b"], ["z"]), helper.make_node("Relu", ["z"], ["y"])]
        inits = {"w": np.ones((1, 1, 1, 1)), "b": np.array([bias])}
        return make_model(nodes, [("x", ["N", 1, 2, 2])], [("y", ["N", 1, 2, 2])], inits)

    x = np.stack([np.full((1, 2, 2), -0.5), np.full((1, 2, 2), 3.0)]).astype(np.float32)
    reference = Reference.measure(load_model_proto(model(0.0)), Dataset(x, None, "x"), device="cpu")
    quality = reference.compare(model(1.0))
    assert quality["output_drift_unscaled"] == 1 and quality["output_drift"] == pytest.approx(1 / 3)  # 3 -> 4
    assert reference.compare()["output_drift"] == 0.0 and reference.compare()["output_drift_unscaled"] == 0
