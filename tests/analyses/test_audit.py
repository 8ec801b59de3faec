"""The audit's budget, plan, words and gates, on small models with answers known in advance."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from builders import make_model, small_cnn
from onnx import helper, numpy_helper

from onnxredund.analyses.audit import run_audit
from onnxredund.analyses.gates import Gate, check_gate_applies, check_gates
from onnxredund.analyses.plan import MIN_IMAGES, evenly_spaced, plan_sweeps, suffix_share
from onnxredund.cli.console import redundancy_lines
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
    first, second = (suffix_share(m, layer) for layer in m.layers)
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
    (outcome,) = check_gates(result.layers, [Gate("accuracy_drop", ">", 0.02)])
    assert outcome.status == "not evaluated" and outcome.failed
    assert "not evaluated" in outcome.line()


def test_unlabelled_data_speaks_of_agreement_and_refuses_accuracy_gates():
    m = load_model_proto(small_cnn(3)[0])
    result = run_audit(m, Dataset(labelled().x, None, "unlabelled"), device="cpu", modes=("channel",))
    conv2 = result.layers[1]
    assert not result.labelled and conv2.worst_accuracy_drop is None and conv2.worst_agreement_drop is not None
    assert any("agreement with the unperturbed model" in n for n in result.notes)
    with pytest.raises(OnnxRedundError, match="use agreement_drop"):
        check_gate_applies(Gate("accuracy_drop", ">", 0.1), labelled=False)
    with pytest.raises(OnnxRedundError, match="no classifier output"):
        check_gate_applies(Gate("top1_agreement", "<", 0.9), classifier=False)
    outcome = check_gates(result.layers, [Gate("agreement_drop", ">", 1.5)])[0]
    assert outcome.status == "passed" and outcome.not_evaluated == ()  # both layers shuffled


def test_output_gates_fail_at_the_first_layer_that_trips_them():
    m = load_model_proto(small_cnn(3)[0])
    result = run_audit(m, labelled(64), device="cpu", modes=("pixel",))
    conv1, conv2 = result.layers
    worst = min(conv1.worst_output_sqnr, conv2.worst_output_sqnr)
    outcome = check_gates(result.layers, [Gate("output_sqnr", "<", worst + 1e-6)])[0]
    assert outcome.status == "failed" and outcome.value == pytest.approx(worst)


def _interrupting(at_label: int, after_batches: int, labels: list[str]):
    """A progress callback maker that raises KeyboardInterrupt (as Ctrl-C would) after the given batch of the
    given sweep (counted from 1), and records every bar it was asked for."""

    def progress(label, total, done):
        labels.append(label)
        seen = {"batches": 0}

        def step(n):
            seen["batches"] += 1
            if len(labels) == at_label and seen["batches"] == after_batches:
                raise KeyboardInterrupt

        return step

    return progress


def test_an_interrupted_audits_console_note_names_the_sweeps_not_measured_short_and_its_json_in_full():
    # tf2onnx names a conv after everything fused into it: the note listed each such name whole, on one line
    proto = small_cnn(c_mid=4, c_out=5)[0]
    fused = "model_1/re_lu_{0}/Relu;model_1/batch_normalization_{0}/FusedBatchNormV3;model_1/conv2d_{0}/Conv2D"
    for i, node in enumerate(n for n in proto.graph.node if n.op_type == "Conv"):
        node.name = fused.format(i)
    m, data = load_model_proto(proto), labelled(96)
    part = run_audit(m, data, progress=_interrupting(3, 2, []), batch_size=16, device="cpu")
    whole = [n for n in part.notes if n.startswith("interrupted:")]
    assert whole == [
        f"interrupted: 1 of 4 sweeps finished; not measured: {fused.format(0)} pixel, {fused.format(1)} channel, "
        f"{fused.format(1)} pixel (a resumed audit continues from the checkpoints)"
    ]
    shown = [line for line in redundancy_lines(part) if "interrupted:" in line]
    assert shown == [
        "  note: interrupted: 1 of 4 sweeps finished; not measured: model_1/conv2d_0/Conv2D pixel, "
        "model_1/conv2d_1/Conv2D channel, model_1/conv2d_1/Conv2D pixel (a resumed audit continues from the "
        "checkpoints)"
    ]


def test_an_interrupted_audit_stops_at_once_marks_itself_and_resumes_to_the_same_numbers(tmp_path):
    m, data = load_model_proto(small_cnn(c_mid=4, c_out=5)[0]), labelled(96)
    options = {"batch_size": 16, "device": "cpu"}
    full = run_audit(m, data, **options).to_dict()
    labels: list[str] = []
    # bar 1 is the impulse analysis; bar 3 the second sweep (conv1 pixel): stopped after its 2nd batch
    part = run_audit(m, data, progress=_interrupting(3, 2, labels), checkpoint_dir=tmp_path, **options)
    assert part.complete is False and part.to_dict()["complete"] is False
    assert len(labels) == 3  # no sweep started after the interrupted one
    assert list(part.shuffles) == ["conv1"] and list(part.shuffles["conv1"]) == ["channel"]
    assert any(
        n.startswith("interrupted: 1 of 4 sweeps finished; not measured: conv1 pixel, conv2 channel")
        for n in part.notes
    )
    kept = np.load(tmp_path / "units" / "0.pixel.0+3.npz")  # conv1 (layer 0) reads 3 channels
    assert int(kept["samples_done"]) == 32  # two batches of 16, committed with their sums
    resumed = run_audit(m, data, checkpoint_dir=tmp_path, resume=True, **options).to_dict()
    assert resumed == full and resumed["complete"] is True


def test_an_interrupt_between_sweeps_keeps_the_finished_ones_whole(tmp_path):
    m, data = load_model_proto(small_cnn(c_mid=4, c_out=5)[0]), labelled(96)
    options = {"batch_size": 16, "device": "cpu"}
    finished = []

    def on_sweep(result):
        finished.append(result)
        if len(finished) == 2:
            raise KeyboardInterrupt  # lands after the second sweep's files were written

    part = run_audit(m, data, on_sweep=on_sweep, checkpoint_dir=tmp_path, **options)
    assert not part.complete and [(r.layer, r.mode) for r in finished] == [("conv1", "channel"), ("conv1", "pixel")]
    assert all(r.complete for modes in part.shuffles.values() for r in modes.values())
    assert part.layers[1].samples == {}  # conv2: not shuffled, not a partial number


def test_an_audit_says_when_the_model_gives_one_class_to_all_the_data_and_why_a_conv_is_not_shuffled():
    proto = small_cnn(c_in=1, c_mid=4, c_out=5)[0]
    for init in proto.graph.initializer:
        if init.name == "fcb":
            init.CopyFrom(numpy_helper.from_array(np.array([0, 0, 1e4, 0], np.float32), "fcb"))
    m = load_model_proto(proto)
    noise = Dataset(RNG.random((40, 1, 6, 6), dtype=np.float32), None, "noise")
    notes = run_audit(m, noise, batch_size=20, device="cpu").notes
    assert any(n.startswith("the model gives class 2 to every one of the first 40 samples of noise") for n in notes)
    assert "conv1 is not shuffled: it reads one input channel, and perturbing that perturbs the whole input" in notes
    rng = np.random.default_rng(0)
    spread = rng.normal(size=(40, 1, 6, 6)) * rng.uniform(-5, 5, (40, 1, 1, 1))  # inputs the model tells apart
    varied = Dataset(spread.astype(np.float32), None, "varied")
    assert not any(
        "gives class" in n
        for n in run_audit(load_model_proto(small_cnn(c_in=1)[0]), varied, batch_size=20, device="cpu").notes
    )


def chain_cnn(widths=(3, 32, 64, 128, 256), size: int = 16, classes: int = 10, seed: int = 0):
    """A Keras-style classifier: 3x3 convs with stride 2 and Relu, widening as in the issue's 4-conv model, then
    global average pooling and a dense layer."""
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], {}, "x"
    for i, (c_in, c_out) in enumerate(itertools.pairwise(widths), start=1):
        inits[f"w{i}"] = rng.normal(size=(c_out, c_in, 3, 3)) * np.sqrt(2 / (9 * c_in))
        nodes += [
            helper.make_node("Conv", [x, f"w{i}"], [f"z{i}"], name=f"conv{i}", pads=[1, 1, 1, 1], strides=[2, 2]),
            helper.make_node("Relu", [f"z{i}"], [f"a{i}"]),
        ]
        x = f"a{i}"
    inits["fc"] = rng.normal(size=(widths[-1], classes))
    nodes += [
        helper.make_node("GlobalAveragePool", [x], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("MatMul", ["f", "fc"], ["logits"]),
    ]
    return make_model(nodes, [("x", ["N", widths[0], size, size])], [("logits", ["N", classes])], inits)


def test_a_budgeted_audit_decides_every_channel_of_every_layer():
    """The issue's case: a budget that once measured 1 of 32 channels of a layer and skipped two layers now gives
    every channel of every layer at least the minimum of images, and a decision or an undecided count."""
    m = load_model_proto(chain_cnn())
    data = Dataset(RNG.random((256, 3, 16, 16), dtype=np.float32), None, "synthetic")
    result = run_audit(m, data, budget=60.0, device="cpu", modes=("channel",))
    assert result.estimation.sequential  # the default with a budget
    assert not any("skipped" in n for n in result.notes)
    for layer in m.layers[1:]:
        sweep = result.shuffles[layer.name]["channel"]
        assert sweep.channels == list(range(layer.in_channels))
        assert sweep.images.min() >= MIN_IMAGES
        summary = next(s for s in result.layers if s.name == layer.name)
        counts = summary.decisions["channel"]
        assert sum(counts.values()) == layer.in_channels
        assert summary.channel_cheap_fraction == counts["cheap"] / layer.in_channels  # the undecided as not cheap


def test_an_exhaustive_audit_measures_every_image_and_counts_cheap_by_the_estimate():
    m = load_model_proto(small_cnn(3, c_mid=8, zero_channel=1)[0])
    data = labelled(96)
    result = run_audit(m, data, budget=120.0, device="cpu", modes=("channel",), sequential=False)
    sweep = result.shuffles["conv2"]["channel"]
    assert not result.estimation.sequential and (sweep.images == 96).all()
    conv2 = result.layers[1]
    assert conv2.channel_cheap_fraction == float((sweep.cost() <= result.cheap_drop).mean())
    assert sweep.decision[1] == "undecided"  # a dead channel: no drop in 96 images, but 96 images cannot show 0.5 %
    assert sweep.cost_low[1] <= 0.0 <= sweep.cost()[1] <= sweep.cost_high[1]


def test_a_budget_too_short_for_a_first_look_at_every_channel_plans_as_an_exhaustive_audit():
    """Chosen by the budget, a sequential audit needs one batch for every channel of every sweep; where that does
    not fit the time left, the sweeps are sampled as an exhaustive audit samples them, and a note says why."""
    import time

    from onnxredund.analyses.audit import _Clock, _within_budget
    from onnxredund.analyses.sequential import Estimation

    m = load_model_proto(chain_cnn())
    data = Dataset(RNG.random((512, 3, 16, 16), dtype=np.float32), None, "synthetic")
    sweeps = [(layer, "channel") for layer in m.layers[1:]]
    sequential = Estimation(sequential=True)
    for budget, stays in ((1e6, True), (1e-3, False)):
        notes: list[str] = []
        clock = _Clock(time.perf_counter(), budget, reserve=0.0)
        chosen = _within_budget(m, data, sweeps, clock, sequential, 256, "cpu", 1, notes)
        assert chosen.sequential is stays and bool(notes) is not stays
    assert "does not cover a first look at every channel (256 images each" in notes[0]
