"""Writers: the files each result becomes, CSV that survives awkward names, PNGs that decode."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
from builders import make_model, small_cnn
from matplotlib.image import imread
from onnx import helper

from onnxredund.analyses.impulse import run_impulse
from onnxredund.analyses.shuffle import run_shuffle
from onnxredund.atomic import csv_text
from onnxredund.data import Dataset
from onnxredund.engine import load_model_proto
from onnxredund.ncc import ncc_matrix
from onnxredund.report.writers import impulse_payload, write_impulse, write_shuffle


def test_csv_text_quotes_fields_that_need_it_and_writes_none_empty():
    text = csv_text(["layer", "value"], [["block1/conv,a", 0.5], ['say "hi"', None]])
    assert list(csv.reader(io.StringIO(text))) == [["layer", "value"], ["block1/conv,a", "0.5"], ['say "hi"', ""]]


def test_write_shuffle_files_match_the_result(tmp_path):
    model = load_model_proto(small_cnn()[0])
    rng = np.random.default_rng(0)
    data = Dataset(rng.random((20, 3, 6, 6), dtype=np.float32), rng.integers(0, 4, 20), "toy")
    result = run_shuffle(model, "conv2", data, batch_size=10, device="cpu")
    write_shuffle(tmp_path, result)
    assert json.loads((tmp_path / "shuffle-channel.json").read_text()) == result.to_dict()
    rows = list(csv.DictReader(io.StringIO((tmp_path / "shuffle-channel.csv").read_text())))
    assert len(rows) == 4 * 5  # one per (perturbed channel, output channel)
    assert float(rows[7]["cosine"]) == round(float(result.cosine[1, 2]), 8)
    for name in ("shuffle-1-channel-cosine.png", "shuffle-1-channel-accuracy.png"):
        assert imread(str(tmp_path / name)).shape[2] in (3, 4)


def test_write_impulse_csv_keeps_a_layer_name_with_a_comma(tmp_path):
    w = np.random.default_rng(1).normal(size=(3, 1, 3, 3))
    nodes = [helper.make_node("Conv", ["x", "w"], ["z"], name="block,conv", pads=[1, 1, 1, 1])]
    model = load_model_proto(make_model(nodes, [("x", ["N", 1, 7, 7])], [("z", ["N", 3, 7, 7])], {"w": w}))
    result = run_impulse(model, device="cpu")
    write_impulse(tmp_path, result)
    rows = list(csv.DictReader(io.StringIO((tmp_path / "impulse.csv").read_text())))
    assert [r["layer"] for r in rows] == ["block,conv"] * 3
    assert [int(r["best_match"]) for r in rows] == result.layers[0].best_match.tolist()
    assert json.loads((tmp_path / "impulse.json").read_text()) == impulse_payload(result)
    with np.load(tmp_path / "impulse.npz") as z:
        np.testing.assert_array_equal(z["0.ncc"], result.layers[0].ncc)
    assert {p.name for p in tmp_path.glob("*.png")} == {"impulse-0-responses.png", "impulse-0-ncc.png"}


def test_the_json_holds_the_matrices_that_fit_computed_in_float64_and_the_npz_every_one(tmp_path):
    """The analysis computes the matrices of at most 256 channels (the JSON's) in float64 and a 300-channel
    layer's in float32 (the .npz's only); each layer's best matches are float64 either way."""
    rng = np.random.default_rng(2)
    w1, w2 = rng.normal(size=(4, 1, 3, 3)), rng.normal(size=(300, 4, 3, 3))
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="small", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["a", "w2"], ["z"], name="wide", pads=[1, 1, 1, 1]),
    ]
    proto = make_model(nodes, [("x", ["N", 1, 9, 9])], [("z", ["N", 300, 9, 9])], {"w1": w1, "w2": w2})
    result = run_impulse(load_model_proto(proto), device="cpu")
    small_layer, wide_layer = result.layers
    exact = ncc_matrix(small_layer.responses, lags=True)
    np.testing.assert_array_equal(small_layer.ncc, exact)
    np.testing.assert_array_equal(wide_layer.ncc, ncc_matrix(wide_layer.responses, lags=True, single=True))
    assert result.json_layers == {"small"}
    wide_exact = ncc_matrix(wide_layer.responses, lags=True)
    np.fill_diagonal(wide_exact, -np.inf)
    np.testing.assert_allclose(wide_layer.best_value, wide_exact.max(axis=1), rtol=0, atol=1e-12)
    write_impulse(tmp_path, result)
    small, wide = json.loads((tmp_path / "impulse.json").read_text())["layers"]
    assert small["ncc"] == np.round(exact, 6).tolist()
    assert wide["ncc"] is None and wide["channels"] == 300
    with np.load(tmp_path / "impulse.npz") as z:
        np.testing.assert_array_equal(z["0.ncc"], exact)
        np.testing.assert_array_equal(z["1.ncc"], wide_layer.ncc)


def test_the_effect_figure_is_named_after_what_it_plots(tmp_path):
    from onnxredund.report.writers import shuffle_figures

    model = load_model_proto(small_cnn()[0])
    x = np.random.default_rng(1).random((20, 3, 6, 6), dtype=np.float32)
    labelled = run_shuffle(model, "conv2", Dataset(x, np.arange(20) % 4, "toy"), batch_size=10, device="cpu")
    unlabelled = run_shuffle(model, "conv2", Dataset(x, None, "toy"), batch_size=10, device="cpu")
    assert "shuffle-1-channel-accuracy.png" in shuffle_figures(labelled)
    figs = shuffle_figures(unlabelled)
    assert "shuffle-1-channel-agreement.png" in figs and "shuffle-1-channel-accuracy.png" not in figs


def test_a_sampled_sweep_is_drawn_and_titled_in_the_layers_own_channel_indices():
    import matplotlib.pyplot as plt

    from onnxredund.report.figures import _channel_axis
    from onnxredund.report.writers import shuffle_figures, sweep_size

    model = load_model_proto(small_cnn(c_mid=16)[0])
    x = np.random.default_rng(0).random((32, 3, 6, 6), dtype=np.float32)
    one = run_shuffle(model, "conv2", Dataset(x, np.arange(32) % 4, "toy"), channels=[11], batch_size=16, device="cpu")
    assert sweep_size(one) == "1 of 16 input channels, 32 images"
    assert all("1 of 16 input channels, 32 images" in f.caption for f in shuffle_figures(one).values())
    fig, ax = plt.subplots()
    _channel_axis(ax, [11])
    low, high = ax.get_xlim()
    assert low < 0 and high > 11 and [t.get_text() for t in ax.get_xticklabels()] == ["11"]
    plt.close(fig)


def test_the_summary_table_says_what_each_cheap_fraction_is_of():
    from dataclasses import replace

    from onnxredund.analyses.audit import run_audit
    from onnxredund.analyses.sequential import Estimation
    from onnxredund.report.audit_report import _cheap_cell

    model = load_model_proto(small_cnn(c_mid=4)[0])
    x = np.random.default_rng(0).random((48, 3, 6, 6), dtype=np.float32)
    result = run_audit(model, Dataset(x, np.arange(48) % 4, "toy"), batch_size=16, device="cpu")
    conv2 = result.layers[1]
    fraction = f"{100 * conv2.channel_cheap_fraction:.1f} %"
    sweep = result.shuffles["conv2"]["channel"]
    c = sweep.decision_counts()
    decided = f"{c['cheap']} cheap, {c['costly']} costly, {c['undecided']} undecided"
    assert sum(c.values()) == 4
    assert _cheap_cell(result, conv2, "channel") == f"{fraction} of 4 (48 images; at 95.0 %: {decided})"
    sampled = replace(sweep, channels=[1], samples_done=16)
    result.shuffles["conv2"]["channel"] = sampled  # as a budget leaves it: one channel on fewer images
    assert _cheap_cell(result, conv2, "channel") == f"{fraction} of 1 measured of 4 (16 images; at 95.0 %: {decided})"
    sequential = replace(sweep, estimation=Estimation(sequential=True), images=np.array([16, 48, 16, 32]))
    result.shuffles["conv2"]["channel"] = sequential  # channels called at different looks
    assert _cheap_cell(result, conv2, "channel") == f"{fraction} of 4 ({decided}; 16-48 images each)"


def test_the_impulse_cell_says_why_channels_were_not_compared():
    import dataclasses

    from onnxredund.analyses.audit import LayerSummary
    from onnxredund.report.audit_report import _impulse_cell

    base = {f.name: None for f in dataclasses.fields(LayerSummary)}
    base |= {"name": "c", "index": 0, "in_channels": 3, "out_channels": 4, "samples": {}, "ranked_channels": []}

    def cell(compared, fraction, excluded):
        given = {"impulse_compared": compared, "impulse_redundant_fraction": fraction, "impulse_excluded": excluded}
        return _impulse_cell(LayerSummary(**{**base, **given}))

    assert cell(0, None, {"support": 64, "constant": 0}) == "not compared (64 over too few positions)"
    assert cell(511, 0.288, {"support": 0, "constant": 1}) == "28.8 % of 511 (1 constant left out)"
    assert cell(60, 0.5, {"support": 0, "constant": 0}) == "50.0 % of 60"


def test_the_report_gathers_the_time_budgets_notes_into_one_table_and_one_line():
    from onnxredund.report.audit_report import _note_blocks
    from onnxredund.report.html import Table

    notes = [
        "the data has no labels: the effect of shuffling is agreement with the unperturbed model",
        "Conv.0 channel shuffling measured 1 of 3 input channels (evenly spaced) (time budget)",
        "Conv.1 pixel shuffling measured 64 of 128 images (evenly spaced) (time budget)",
        "Conv.5 pixel shuffling skipped: time budget spent",
        "Conv.6 channel shuffling skipped: time budget spent",
    ]
    note, table, skipped = _note_blocks(notes)
    assert note == f"note: {notes[0]}"
    assert isinstance(table, Table) and table.rows == [
        ["Conv.0 channel", "1 of 3 input channels (evenly spaced)"],
        ["Conv.1 pixel", "64 of 128 images (evenly spaced)"],
    ]
    assert skipped == "note: 2 sweeps skipped, the time budget spent: Conv.5 pixel, Conv.6 channel"


def test_no_ncc_matrix_is_computed_twice_however_often_the_result_is_written(tmp_path, monkeypatch):
    """An audit writes impulse.json when the analysis ends, then results.json (and --json): each layer's matrix,
    an FFT per pair of channels, is computed once, by the analysis, in the precision the JSON holds."""
    from onnxredund import ncc

    calls = []
    real = ncc._lagged
    monkeypatch.setattr(ncc, "_lagged", lambda *a, **k: calls.append(k["dtype"]) or real(*a, **k))
    result = run_impulse(load_model_proto(small_cnn()[0]), device="cpu")
    assert calls == [np.complex128] * len(result.layers) == [np.complex128] * 2
    write_impulse(tmp_path, result)
    assert json.loads((tmp_path / "impulse.json").read_text()) == impulse_payload(result)
    assert len(calls) == 2
