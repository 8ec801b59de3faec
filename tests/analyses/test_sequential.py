"""Sequential estimation of each shuffled channel's cost: the intervals in closed form, their coverage under
optional stopping (simulated), and sweeps that stop measuring a channel once decided, with the numbers of an
exhaustive sweep over the images the channel saw."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from builders import ChunksHere, make_model, run_cli, save, small_cnn
from onnx import helper

from onnxredund.analyses.distributed import job_for, run_sweeps
from onnxredund.analyses.sequential import (
    CHEAP,
    COSTLY,
    STOPPED,
    UNDECIDED,
    Estimation,
    cost_bounds,
    decide,
    images_to_clear,
    in_random_order,
    proportion_bounds,
    undecidable,
    z_score,
)
from onnxredund.analyses.shuffle import SweepOptions, SweepState, run_shuffle
from onnxredund.cli.console import decision_words
from onnxredund.data import Dataset
from onnxredund.engine import load_model_proto
from onnxredund.errors import OnnxRedundError


def test_z_spends_the_error_over_the_looks():
    # look j at d / (j (j + 1)): the first look of a 95 % interval is a 97.5 % one, and the errors sum to d
    assert z_score(0.95, 1) == pytest.approx(2.2414, abs=1e-4)
    assert z_score(0.95, 3) == pytest.approx(2.8653, abs=1e-4)  # d_3 = 0.05 / 12
    assert z_score(0.95, 1, tests=2) == pytest.approx(2.4977, abs=1e-4)  # two intervals, 0.0125 each
    assert np.all(np.diff(z_score(0.95, np.arange(1, 50))) > 0)
    j = np.arange(1, 100_000, dtype=np.float64)
    assert (0.05 / (j * (j + 1))).sum() == pytest.approx(0.05, rel=1e-4)


def test_a_proportions_interval_with_no_hit_in_closed_form():
    # M_n(p) = (1 + b / (b + n) + 1 / (n + 1)) / 3 / (1 - p)^n with no hit (the point mass at 0, then the two
    # Beta thirds): the upper bound solves M_n = 1 / d
    n, d, b = np.array([64, 700, 1000]), 0.05, 1 / 0.005 - 1
    low, high = proportion_bounds(0, n, d, 0.005)
    expected = 1 - (d * (1 + b / (b + n) + 1 / (n + 1)) / 3) ** (1 / n)
    np.testing.assert_allclose(high, expected, rtol=1e-9)
    assert (low == 0).all() and high[1] > 0.005 > high[2]  # 700 images cannot show 0.5 pp, 1,000 can
    low, high = proportion_bounds(50, 100, d, 0.005)  # far from the prior's mean: the uniform half's width
    assert 0.3 < low < 0.4 and 0.6 < high < 0.7 and low + high == pytest.approx(1, abs=0.01)


def _sums(seen, **arrays) -> dict:
    return {"seen": np.array([seen])} | {k: np.array([v], np.float64) for k, v in arrays.items()}


def test_the_accuracy_drop_interval_is_lost_minus_gained():
    # 1000 images, 30 answers lost and 10 gained: the drop 2 %, inside lo(lost) - hi(gained) .. hi(lost) - lo(gained)
    sums = _sums([1000], lost=[30], correct=[880], baseline_correct=[900])
    low, high = cost_bounds("accuracy", sums, {}, [1], Estimation())
    lost, gained = proportion_bounds(30, 1000, 0.025, 0.005), proportion_bounds(10, 1000, 0.025, 0.005)
    assert low[0] == pytest.approx(lost[0] - gained[1]) and high[0] == pytest.approx(lost[1] - gained[0])
    assert low[0] < 0.02 < high[0]


def test_an_output_cosine_cost_without_spread_has_a_point_interval():
    # every image's cosine 1 (a dead channel): [0, 0], cheap at any threshold; a spread widens it
    sums = _sums([64, 64], c=[64.0, 64 * 0.9], q=[64.0, 64 * 0.81 + 64 * 0.01])
    low, high = cost_bounds("output cosine", sums, {"cos": ["c"], "cos_sq": ["q"]}, [1, 1], Estimation())
    assert low[0] == high[0] == 0.0
    assert low[1] < 0.1 < high[1]
    assert list(decide(low, high, 0.005)) == [CHEAP, COSTLY]


def _simulate(p: float, channels: int = 4000) -> np.ndarray:
    """Decisions of ``channels`` simulated channels of true disagreement ``p``, looked at every 64 images up to
    4,096 against a threshold of 0.5 %."""
    misses = np.random.default_rng(0).random((channels, 4096)) < p
    decision = np.full(channels, UNDECIDED)
    for n in range(64, 4097, 64):
        open_ = np.flatnonzero(decision == UNDECIDED)
        low, high = proportion_bounds(misses[open_, :n].sum(axis=1), n, 0.05, 0.005)
        decision[open_] = decide(low, high, 0.005)
    return decision


def test_sequential_decisions_err_at_most_the_error_under_optional_stopping():
    """Channels of a true disagreement of 0.4 % (cheap at 0.5 %) are called costly, and those at 0.6 % cheap, in
    at most 5 % of channels, though each is looked at 64 times (a 95 % interval at each look errs in 9 %)."""
    assert (_simulate(0.004) == COSTLY).mean() <= 0.05
    assert (_simulate(0.006) == CHEAP).mean() <= 0.05


def test_clear_cut_channels_are_decided_early():
    never = _simulate(0.0, channels=100)  # no flip ever: cheap once the upper bound is under 0.5 %
    assert (never == CHEAP).all()
    assert (_simulate(0.2, channels=100) == COSTLY).all()


def _agreement_sums(hits, n) -> tuple[dict, dict]:
    """Sums of channels with ``hits`` disagreements in ``n`` images each, and the keys that read them."""
    hits, n = np.broadcast_arrays(np.asarray(hits), np.asarray(n))
    return {"seen": n[None].astype(np.int64), "top1": (n - hits)[None].astype(np.int64)}, {"top1": ["top1"]}


def test_the_rest_of_the_data_decides_a_channel_off_the_threshold_not_one_on_it():
    at_threshold = Estimation(sequential=True, cheap_drop=0.005)
    # 20 disagreements in 4,096 images (0.49 %), 6,000 more to come: were its cost 0.49 %, 10,096 images
    # would still leave 0.5 % inside its interval, and no likely drift of its mean changes that; at 2,048
    # images with 8,000 to come its mean may still drift far enough
    sums, keys = _agreement_sums([20, 10, 0, 1, 20, 20, 400], [4096, 2048, 256, 256, 4096, 4096, 4096])
    left = np.array([6000, 8000, 9744, 9744, 0, 2_000_000, 6000])
    looks = [16, 8, 1, 1, 16, 16, 16]
    stop = undecidable("agreement", sums, keys, looks, at_threshold, left, 256)
    # no hit yet: the rest can call it cheap; one hit in 256: its estimate is too loose to give up on it; nothing
    # left: the sweep ends there anyway; two million left: enough to decide 0.49 % against 0.5 %; 400 hits: costly
    assert stop.tolist() == [True, False, False, False, False, False, False]
    never = Estimation(sequential=True, cheap_drop=0.005, futility=0)
    assert not undecidable("agreement", sums, keys, looks, never, left, 256).any()
    # a stream too short to call even a channel with no hit cheap (its upper bound at 512 images is over 0.5 %)
    sums, keys = _agreement_sums([0], [256])
    assert undecidable("agreement", sums, keys, [1], at_threshold, [256], 256).tolist() == [True]


def _simulate_stops(p: float, futility: float, channels: int = 1000, images: int = 4096, step: int = 256):
    """Decisions and images measured of ``channels`` simulated channels of true disagreement ``p`` against 0.5 %,
    looked at every ``step`` images, stopped for futility at ``futility``."""
    misses = np.random.default_rng(3).random((channels, images)) < p
    estimation = Estimation(sequential=True, cheap_drop=0.005, futility=futility)
    decision, looks, seen = np.full(channels, UNDECIDED), np.zeros(channels), np.full(channels, images)
    for n in range(step, images + 1, step):
        open_ = np.flatnonzero(decision == UNDECIDED)
        looks[open_] += 1
        sums, keys = _agreement_sums(misses[open_, :n].sum(axis=1), np.full(len(open_), n))
        low, high = cost_bounds("agreement", sums, keys, looks[open_], estimation)
        now = decide(low, high, 0.005)
        stop = (now == UNDECIDED) & undecidable("agreement", sums, keys, looks[open_], estimation, images - n, step)
        decision[open_] = np.where(stop, STOPPED, now)
        seen[open_[(now != UNDECIDED) | stop]] = n
    return decision, seen


def test_futility_stops_channels_at_the_threshold_early_and_decides_the_others_the_same():
    on, seen = _simulate_stops(0.005, 0.05)
    off, seen_off = _simulate_stops(0.005, 0.0)
    assert (off == UNDECIDED).mean() > 0.9 and seen_off.mean() > 4000  # measured to the end, undecided
    assert seen.mean() < 0.5 * seen_off.mean() and (on == STOPPED).mean() > 0.9
    # a channel is decided on the same images either way until it stops: what both decided is the same
    both = (off != UNDECIDED) & (on != STOPPED)
    assert (on[both] == off[both]).all() and (seen[both] == seen_off[both]).all()
    # a channel at 0.4 of the threshold, which the whole data decides half the time: a few are given up on
    on, _ = _simulate_stops(0.002, 0.05)
    off, _ = _simulate_stops(0.002, 0.0)
    assert (off == CHEAP).mean() > 0.5 and ((off == CHEAP) & (on == STOPPED)).mean() < 0.05
    for p, decision in ((0.0, CHEAP), (0.05, COSTLY)):  # clear-cut channels are decided, never stopped
        assert (_simulate_stops(p, 0.05, channels=100)[0] == decision).all()


def _dead_and_live_model():
    """x (N, 3, 6, 6) -> conv (3 -> 2; input channel 0 dead, 1 weak, 2 strong) -> Relu: an output without a
    classifier, so the cost is 1 - the output cosine."""
    w = np.zeros((2, 3, 3, 3), np.float32)
    w[:, 1] = 0.01
    w[:, 2] = np.random.default_rng(0).normal(size=(2, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["z"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["z"], ["y"]),
    ]
    return make_model(nodes, [("x", ["N", 3, 6, 6])], [("y", ["N", 2, 6, 6])], {"w": w})


def _images(n: int, seed: int = 1, c: int = 3) -> Dataset:
    rng = np.random.default_rng(seed)
    return Dataset(rng.normal(size=(n, c, 6, 6)).astype(np.float32), None, "toy")


SEQUENTIAL = Estimation(sequential=True, cheap_drop=0.005, min_images=32)


@pytest.mark.parametrize("mode", ["channel", "pixel"])
def test_a_sequential_sweep_stops_each_channel_once_decided_with_the_exhaustive_numbers_of_its_images(mode):
    model = load_model_proto(_dead_and_live_model())
    data = _images(320)
    seq = run_shuffle(model, "conv", data, mode=mode, batch_size=32, device="cpu", estimation=SEQUENTIAL)
    assert seq.decision[0] == "cheap" and seq.decision[2] == "costly"
    assert seq.images[0] == seq.images[2] == 32  # decided at the first look
    # the exhaustive sweep over the first n images of the same random order gives each channel's numbers
    for i, n in enumerate(seq.images):
        first = in_random_order(data, 0).limit(int(n))
        full = run_shuffle(model, "conv", first, mode=mode, batch_size=32, device="cpu", channels=[i])
        np.testing.assert_allclose(seq.cosine[i], full.cosine[0], rtol=1e-12)
        assert seq.cost()[i] == pytest.approx(full.cost()[0], abs=1e-12)
    assert seq.complete and seq.samples_done == max(seq.images)
    if seq.decision[1] == "undecided":  # measured to the end of the data, or stopped as not decidable by it
        assert seq.images[1] == 320 or seq.stopped_undecided == [1]


def test_a_sequential_sweep_stops_measuring_a_channel_that_the_rest_of_the_data_would_not_decide():
    """Channel 2's threshold set at what every image of the data gives it: no amount of this data decides it, and
    the sweep stops measuring it before the data ends (it is measured to the end without the rule); the
    channels decided get the same decisions on the same images either way."""
    model = load_model_proto(_dead_and_live_model())
    data = _images(640)
    whole = run_shuffle(model, "conv", in_random_order(data, 0), batch_size=32, device="cpu", channels=[2])
    estimation = Estimation(sequential=True, cheap_drop=float(whole.cost()[0]), min_images=32)
    args = {"batch_size": 32, "device": "cpu"}
    seq = run_shuffle(model, "conv", data, estimation=estimation, **args)
    assert seq.decision[2] == "undecided" and seq.stopped_undecided == [2] and 32 < seq.images[2] < 640
    assert seq.to_dict()["stopped_undecided"] == [2] and "1 stopped early" in decision_words(seq)
    never = run_shuffle(model, "conv", data, estimation=dataclasses.replace(estimation, futility=0), **args)
    assert never.decision[2] == "undecided" and never.images[2] == 640 and never.stopped_undecided == []
    assert seq.decision[:2] == never.decision[:2] and (seq.images[:2] == never.images[:2]).all()
    exhaustive = run_shuffle(model, "conv", data, **args)
    assert exhaustive.stopped_undecided is None and "stopped early" not in decision_words(exhaustive)


def test_sequential_fast_path_equals_direct_path():
    model = load_model_proto(_dead_and_live_model())
    data = _images(200)
    runs = [
        run_shuffle(model, "conv", data, batch_size=32, device="cpu", estimation=SEQUENTIAL, exact_path=exact)
        for exact in (False, True)
    ]
    assert runs[0].route == "fast" and runs[1].route == "direct"
    assert runs[0].decision == runs[1].decision
    np.testing.assert_array_equal(runs[0].images, runs[1].images)
    np.testing.assert_allclose(runs[0].cost(), runs[1].cost(), atol=1e-9)


def test_a_sequential_sweep_resumes_with_its_decisions():
    model = load_model_proto(small_cnn(3, c_mid=4, zero_channel=1)[0])
    data = Dataset(np.random.default_rng(2).normal(size=(384, 3, 6, 6)).astype(np.float32), None, "toy")
    estimation = Estimation(sequential=True, cheap_drop=0.02, min_images=64)
    args = {"batch_size": 64, "device": "cpu", "estimation": estimation}
    whole = run_shuffle(model, "conv2", data, **args)
    assert whole.complete and whole.images[1] > 128  # still measured when the sweep below is stopped
    saved = []

    def stop_after_two(state):
        saved.append(SweepState(state.batches_done, state.samples_done, {k: v.copy() for k, v in state.sums.items()}))
        if state.batches_done == 2:
            raise KeyboardInterrupt

    assert not run_shuffle(model, "conv2", data, on_batch=stop_after_two, **args).complete
    resumed = run_shuffle(model, "conv2", data, state=saved[-1], **args)
    assert resumed.to_dict() == whole.to_dict()


def test_sequential_units_on_a_backend_give_the_sweeps_numbers():
    model = load_model_proto(_dead_and_live_model())
    data = _images(200)
    layer = model.layer("conv")
    local = run_shuffle(model, layer, data, batch_size=32, device="cpu", chunk=1, estimation=SEQUENTIAL)
    options = SweepOptions(batch_size=32, device="cpu", chunk=1, estimation=SEQUENTIAL)
    job = job_for(model, data, [(layer, "channel", [0, 1, 2])], options)
    (merged,), complete = run_sweeps(job, [(layer, "channel")], ChunksHere())
    assert complete and merged.to_dict() == local.to_dict()


def test_a_dead_channel_is_decided_cheap_on_agreement_only_with_enough_images():
    """With a classifier and no labels the cost is a disagreement: no flip in n images bounds it at about
    about log(1 / d) / n, so at a 2 % threshold a dead channel is cheap after a few hundred images, not at
    the first look."""
    model = load_model_proto(small_cnn(3, c_mid=4, zero_channel=1)[0])
    data = Dataset(np.random.default_rng(2).normal(size=(1024, 3, 6, 6)).astype(np.float32), None, "toy")
    estimation = Estimation(sequential=True, cheap_drop=0.02, min_images=64)
    res = run_shuffle(model, "conv2", data, batch_size=64, device="cpu", estimation=estimation)
    assert res.effect_kind == "agreement" and res.decision[1] == "cheap"
    first = int(res.images[1])

    def upper(n: int) -> float:  # no flip in n images
        return proportion_bounds(0, n, 0.05, 0.02)[1]

    assert upper(first - 64) > 0.02 >= upper(first)
    assert images_to_clear(estimation, "agreement", 64, len(data)) == first  # what a dry run says it needs


def test_images_to_clear_follow_the_threshold_and_stop_at_the_data():
    sequential = Estimation(sequential=True, min_images=64)
    at_half_pp = images_to_clear(sequential, "accuracy", 256, 100_000)
    assert at_half_pp == 1024  # the upper bound of no loss in n under 0.5 pp, rounded up to a look
    assert images_to_clear(sequential, "agreement", 64, 100_000) < images_to_clear(sequential, "accuracy", 64, 100_000)
    assert images_to_clear(sequential, "accuracy", 256, 1000) == 1000  # the data is too short: undecided
    assert images_to_clear(sequential, "output cosine", 256, 100_000) == 256  # no spread: the first look


def test_a_sequential_sweep_takes_one_repeat():
    model = load_model_proto(_dead_and_live_model())
    with pytest.raises(OnnxRedundError, match="one repeat"):
        run_shuffle(model, "conv", _images(64), repeats=2, device="cpu", estimation=SEQUENTIAL)


def test_the_shuffle_command_decides_each_channel_and_says_how(tmp_path):
    import json

    path = save(small_cnn(3, c_mid=4, zero_channel=1)[0], tmp_path)
    args = ["shuffle", path, "--layer", "conv2", "--data", "synthetic:512", "--batch-size", "64", "--device", "cpu"]
    result = run_cli(*args, "--sequential", "--cheap-drop", "0.05", "--json")
    assert result.exit_code == 0, result.output
    sweep = json.loads(result.stdout)
    assert sweep["estimation"] == {
        "sequential": True,
        "cheap_drop": 0.05,
        "confidence": 0.95,
        "min_images": 64,
        "futility": 0.05,
    }
    assert sweep["decision"][1] == "cheap" and len(sweep["cost_interval"]) == len(sweep["channel_images"]) == 4
    assert sweep["channel_images"][1] == images_to_clear(Estimation(True, 0.05), "agreement", 64, 512)
    text = run_cli(*args, "--sequential", "--cheap-drop", "0.05").output
    assert "decided: " in text and "images each)" in text
    assert run_cli(*args, "--sequential", "--repeats", "2").exit_code == 2  # one line, no traceback


def test_a_dry_run_gives_the_sequential_range(tmp_path):
    path = save(small_cnn(3, c_mid=4)[0], tmp_path)
    args = ["audit", path, "--data", "synthetic:4096", "--device", "cpu", "--dry-run"]
    sequential = run_cli(*args, "--budget", "600").output
    assert "if every channel is decided at its first look (256 images)" in sequential
    assert "needs 4096 images to be called cheap" not in sequential and "images to be called cheap" in sequential
    assert "does not cover the first looks" not in sequential
    assert "does not cover the first looks" in run_cli(*args, "--budget", "1").output
    assert "sequential:" not in run_cli(*args).output  # no budget: exhaustive
    assert "sequential:" not in run_cli(*args, "--budget", "600", "--exhaustive").output
