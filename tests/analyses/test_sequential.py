"""Sequential estimation of each shuffled channel's cost: the intervals in closed form, their coverage under
optional stopping (simulated), and sweeps that stop measuring a channel once decided, with the numbers of an
exhaustive sweep over the images the channel saw."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_model, small_cnn
from onnx import helper

from onnxredund.analyses.distributed import job_for, run_sweep_units
from onnxredund.analyses.sequential import (
    CHEAP,
    COSTLY,
    UNDECIDED,
    Estimation,
    cost_bounds,
    decide,
    in_random_order,
    wilson,
    z_score,
)
from onnxredund.analyses.shuffle import SweepState, run_shuffle
from onnxredund.data import Dataset
from onnxredund.engine import load_model_proto
from onnxredund.engine.backends import LocalBackend
from onnxredund.errors import OnnxRedundError


def test_z_spends_the_error_over_the_looks():
    # look j at d / (j (j + 1)): the first look of a 95 % interval is a 97.5 % one, and the errors sum to d
    assert z_score(0.95, 1) == pytest.approx(2.2414, abs=1e-4)
    assert z_score(0.95, 3) == pytest.approx(2.8653, abs=1e-4)  # d_3 = 0.05 / 12
    assert z_score(0.95, 1, tests=2) == pytest.approx(2.4977, abs=1e-4)  # two intervals, 0.0125 each
    assert np.all(np.diff(z_score(0.95, np.arange(1, 50))) > 0)
    j = np.arange(1, 100_000, dtype=np.float64)
    assert (0.05 / (j * (j + 1))).sum() == pytest.approx(0.05, rel=1e-4)


def test_wilson_interval_in_closed_form():
    z = 1.96
    low, high = wilson(0, 100, z)  # no hit: [0, z^2 / (n + z^2)], not [0, 0]
    assert low == 0 and high == pytest.approx(z * z / (100 + z * z))
    low, high = wilson(50, 100, z)  # symmetric about 1/2
    assert low + high == pytest.approx(1.0) and high - 0.5 == pytest.approx(z * 0.5 / np.sqrt(100 + z * z))
    low, high = wilson(np.array([0, 100]), np.array([100, 100]), z)
    assert high[1] == pytest.approx(1) and low[1] == pytest.approx(1 - z * z / (100 + z * z))


def _sums(seen, **arrays) -> dict:
    return {"seen": np.array([seen])} | {k: np.array([v], np.float64) for k, v in arrays.items()}


def test_the_accuracy_drop_interval_is_lost_minus_gained():
    # 1000 images, 30 answers lost and 10 gained: the drop 2 %, inside lo(lost) - hi(gained) .. hi(lost) - lo(gained)
    sums = _sums([1000], lost=[30], correct=[880], baseline_correct=[900])
    low, high = cost_bounds("accuracy", sums, {}, [1], 0.95)
    z = z_score(0.95, 1, tests=2)
    lost, gained = wilson(30, 1000, z), wilson(10, 1000, z)
    assert low[0] == pytest.approx(lost[0] - gained[1]) and high[0] == pytest.approx(lost[1] - gained[0])
    assert low[0] < 0.02 < high[0]


def test_an_output_cosine_cost_without_spread_has_a_point_interval():
    # every image's cosine 1 (a dead channel): [0, 0], cheap at any threshold; a spread widens it
    sums = _sums([64, 64], c=[64.0, 64 * 0.9], q=[64.0, 64 * 0.81 + 64 * 0.01])
    low, high = cost_bounds("output cosine", sums, {"cos": ["c"], "cos_sq": ["q"]}, [1, 1], 0.95)
    assert low[0] == high[0] == 0.0
    assert low[1] < 0.1 < high[1]
    assert list(decide(low, high, 0.005)) == [CHEAP, COSTLY]


def _simulate(p: float, spent: bool, channels: int = 10_000) -> np.ndarray:
    """Decisions of ``channels`` simulated channels of true disagreement ``p``, looked at every 64 images up to
    4,096 against a threshold of 0.5 %, with the error spent over the looks or (``spent`` False) not."""
    misses = np.random.default_rng(0).random((channels, 4096)) < p
    decision = np.full(channels, UNDECIDED)
    for look, n in enumerate(range(64, 4097, 64), start=1):
        open_ = decision == UNDECIDED
        low, high = wilson(misses[:, :n].sum(axis=1), n, z_score(0.95, look) if spent else 1.96)
        decision[open_] = decide(low, high, 0.005)[open_]
    return decision


def test_sequential_decisions_err_at_most_the_error_under_optional_stopping():
    """Channels of a true disagreement of 0.4 % (cheap at 0.5 %) are called costly, and those at 0.8 % cheap, in
    at most 5 % of channels; a 95 % interval at every look without the correction errs more often."""
    assert (_simulate(0.004, spent=True) == COSTLY).mean() <= 0.05
    assert (_simulate(0.008, spent=True) == CHEAP).mean() <= 0.05
    assert (_simulate(0.004, spent=False) == COSTLY).mean() > 0.05


def test_clear_cut_channels_are_decided_early():
    never = _simulate(0.0, spent=True, channels=100)  # no flip ever: cheap once z^2 / n <= 0.005
    assert (never == CHEAP).all()
    assert (_simulate(0.2, spent=True, channels=100) == COSTLY).all()


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
    if seq.decision[1] == "undecided":
        assert seq.images[1] == 320  # measured to the end of the data


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
    assert whole.complete and whole.images[1] == 384  # the dead channel needs more images than there are
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
    job = job_for(
        model, data, [(layer, "channel", [0, 1, 2])], batch_size=32, device="cpu", chunk=1, estimation=SEQUENTIAL
    )
    (merged,), complete = run_sweep_units(job, [(layer, "channel")], LocalBackend())
    assert complete and merged.to_dict() == local.to_dict()


def test_a_dead_channel_is_decided_cheap_on_agreement_only_with_enough_images():
    """With a classifier and no labels the cost is a disagreement: no flip in n images bounds it at about
    z^2 / n, so at a 2 % threshold a dead channel is cheap after 640 images, not at the first look."""
    model = load_model_proto(small_cnn(3, c_mid=4, zero_channel=1)[0])
    data = Dataset(np.random.default_rng(2).normal(size=(1024, 3, 6, 6)).astype(np.float32), None, "toy")
    estimation = Estimation(sequential=True, cheap_drop=0.02, min_images=64)
    res = run_shuffle(model, "conv2", data, batch_size=64, device="cpu", estimation=estimation)
    assert res.effect_kind == "agreement" and res.decision[1] == "cheap"
    first = int(res.images[1])

    def upper(n: int) -> float:  # no flip in n images, at look n / 64
        return wilson(0, n, z_score(0.95, n // 64))[1]

    assert first == 640 and upper(first - 64) > 0.02 >= upper(first)  # z^2 / (n + z^2), z at the 10th look


def test_a_sequential_sweep_takes_one_repeat():
    model = load_model_proto(_dead_and_live_model())
    with pytest.raises(OnnxRedundError, match="one repeat"):
        run_shuffle(model, "conv", _images(64), repeats=2, device="cpu", estimation=SEQUENTIAL)
