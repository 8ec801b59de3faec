"""The audit's budget, plan, words and gates, on small models with answers known in advance."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import small_cnn

from onnxredund.analyses.audit import run_audit
from onnxredund.analyses.gates import check_gates, parse_gate
from onnxredund.analyses.plan import MIN_IMAGES, evenly_spaced, plan_sweeps, suffix_share
from onnxredund.data import Dataset
from onnxredund.engine import load_model_proto
from onnxredund.errors import OnnxRedundError

RNG = np.random.default_rng(0)


def labelled(n=96):
    return Dataset(RNG.random((n, 3, 6, 6), dtype=np.float32), RNG.integers(0, 4, n), "toy")


def test_evenly_spaced_indices_cover_first_and_last():
    assert evenly_spaced(3, 9) == [0, 4, 8] and evenly_spaced(1, 5) == [0] and evenly_spaced(7, 4) == [0, 1, 2, 3]


def test_suffix_share_is_the_work_from_a_layer_on():
    m = load_model_proto(small_cnn(c_mid=4, c_out=5)[0])
    first, second = (suffix_share(m, l) for l in m.layers)
    assert first == 1.0 and 0 < second < first


def test_plans_measure_everything_without_a_budget_and_less_with_one():
    m = load_model_proto(small_cnn(c_mid=8, c_out=5)[0])
    sweeps = [(m.layers[1], "channel"), (m.layers[1], "pixel")]
    free = plan_sweeps(m, sweeps, samples=500, seconds=None, seconds_per_image=1e-3)
    assert [(p.images, p.channels) for p in free] == [(500, list(range(8)))] * 2
    # 2 sweeps, 1 ms per image, a pass after conv2 as dear as the whole model: ~(1 + 8 s) ms per image each
    tight = plan_sweeps(m, sweeps, samples=500, seconds=2.0, seconds_per_image=1e-3, pass_cost=1.0)
    assert all(p.images < 500 and p.channels == list(range(8)) for p in tight)
    assert sum(p.seconds for p in tight) <= 2.0
    tighter = plan_sweeps(m, sweeps, samples=500, seconds=1.2, seconds_per_image=1e-3, pass_cost=1.0)
    assert all(p.images == MIN_IMAGES and 1 <= len(p.channels) < 8 for p in tighter)
    assert sum(p.seconds for p in tighter) <= 1.2
    assert tighter[0].channels == evenly_spaced(len(tighter[0].channels), 8)
    # what does not fit is the last sweeps, once every sweep is down to one channel
    squeezed = plan_sweeps(m, sweeps, samples=500, seconds=0.5, seconds_per_image=1e-3, pass_cost=1.0)
    assert [(p.mode, len(p.channels)) for p in squeezed] == [("channel", 1)]
    assert plan_sweeps(m, sweeps, samples=500, seconds=0.01, seconds_per_image=1e-3) == []


def test_a_spent_budget_shuffles_nothing_and_says_so_and_gates_are_not_passed():
    m = load_model_proto(small_cnn(3)[0])
    result = run_audit(m, labelled(), budget=1.0, started=-1e9, device="cpu")  # long spent
    assert result.shuffles == {}
    assert "conv2 channel shuffling skipped: time budget spent" in result.notes
    conv2 = result.layers[1]
    assert conv2.redundancy_score is None and conv2.samples == {} and conv2.worst_accuracy_drop is None
    assert conv2.impulse_redundant_fraction is not None  # the impulse step still ran
    (outcome,) = check_gates(result.layers, [parse_gate("accuracy_drop>0.02")])
    assert outcome.status == "not evaluated" and outcome.failed
    assert "not evaluated" in outcome.line()


def test_unlabelled_data_speaks_of_agreement_and_refuses_accuracy_gates():
    m = load_model_proto(small_cnn(3)[0])
    result = run_audit(m, Dataset(labelled().x, None, "unlabelled"), device="cpu", modes=("channel",))
    conv2 = result.layers[1]
    assert not result.labelled and conv2.worst_accuracy_drop is None and conv2.worst_agreement_drop is not None
    assert any("agreement with the unperturbed model" in n for n in result.notes)
    with pytest.raises(OnnxRedundError, match="use agreement_drop"):
        parse_gate("accuracy_drop>0.1", labelled=False)
    with pytest.raises(OnnxRedundError, match="no classifier output"):
        parse_gate("top1_agreement<0.9", classifier=False)
    outcome = check_gates(result.layers, [parse_gate("agreement_drop>1.5")])[0]
    assert outcome.status == "passed" and outcome.not_evaluated == ()  # both layers shuffled


def test_output_gates_fail_at_the_first_layer_that_trips_them():
    m = load_model_proto(small_cnn(3)[0])
    result = run_audit(m, labelled(64), device="cpu", modes=("pixel",))
    conv1, conv2 = result.layers
    worst = min(conv1.worst_output_sqnr, conv2.worst_output_sqnr)
    outcome = check_gates(result.layers, [parse_gate(f"output_sqnr<{worst + 1e-6}")])[0]
    assert outcome.status == "failed" and outcome.value == pytest.approx(worst)
