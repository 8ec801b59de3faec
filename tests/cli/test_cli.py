"""The command line: help, version, layers, shuffle, and one-line errors with exit status 2."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from builders import run_cli, save, small_cnn

from onnxredund import __version__
from onnxredund.analyses.audit import run_audit
from onnxredund.cli.console import redundancy_lines
from onnxredund.data import Dataset
from onnxredund.engine import load_model_proto
from onnxredund.errors import OnnxRedundError


def test_version_and_help():
    r = run_cli("--version")
    assert r.exit_code == 0 and __version__ in r.stdout
    r = run_cli("--help")
    assert r.exit_code == 0
    for cmd in ("layers", "shuffle", "impulse", "evaluate"):
        assert cmd in r.stdout
    assert run_cli("shuffle", "--help").exit_code == 0


def test_layers_table_and_json(tmp_path):
    path = save(small_cnn()[0], tmp_path)
    r = run_cli("layers", path)
    assert r.exit_code == 0 and "conv1" in r.stdout and "3->4" in r.stdout
    r = run_cli("layers", path, "--json")
    payload = json.loads(r.stdout)
    assert payload["inputs"] == [
        {"name": "x", "dtype": "float32", "sample_shape": [3, 6, 6], "layout": "NCHW", "batched": True, "image": True}
    ]
    assert payload["outputs"] == ["logits"] and payload["classifier_outputs"] == ["logits"]
    rows = payload["layers"]
    assert [row["name"] for row in rows] == ["conv1", "conv2"]
    for key in (
        "index",
        "name",
        "op",
        "in_channels",
        "out_channels",
        "kernel",
        "groups",
        "input",
        "output",
        "activation",
    ):
        assert key in rows[0]
    assert rows[1]["activation"] == "a2" and rows[1]["kernel"] == [3, 3]


def test_shuffle_json_and_outputs(tmp_path):
    path = save(small_cnn()[0], tmp_path)
    x = np.random.default_rng(0).random((40, 3, 6, 6)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(40) % 4)
    out = tmp_path / "out"
    r = run_cli(
        "shuffle",
        path,
        "--layer",
        "conv2",
        "--data",
        tmp_path / "d.npz",
        "--batch-size",
        "16",
        "--device",
        "cpu",
        "--mode",
        "both",
        "--out",
        out,
        "--json",
    )
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)
    assert set(res) == {"channel", "pixel"}
    ch = res["channel"]
    for key in (
        "model",
        "layer",
        "mode",
        "seed",
        "batch_size",
        "num_samples",
        "channels",
        "cosine",
        "accuracy",
        "agreement",
        "baseline_accuracy",
    ):
        assert key in ch
    assert ch["channels"] == [0, 1, 2, 3] and len(ch["cosine"][0]) == 5 and ch["num_samples"] == 40
    assert json.loads((out / "shuffle-channel.json").read_text()) == ch
    assert (out / "shuffle-pixel.csv").read_text().startswith("mode,channel,output_channel")
    # a non-empty folder is not overwritten without --overwrite
    r = run_cli("shuffle", path, "--layer", "1", "--data", tmp_path / "d.npz", "--out", out, "--device", "cpu")
    assert r.exit_code == 2 and "--overwrite" in r.stderr


def test_errors_are_one_line_with_status_2(tmp_path):
    path = save(small_cnn()[0], tmp_path)
    cases = [
        (("layers", tmp_path / "missing.onnx"), "does not exist"),
        (("shuffle", path, "--layer", "conv7", "--data", "synthetic:4"), "valid layers: 0=conv1, 1=conv2"),
        (("shuffle", path, "--layer", "1", "--channels", "9", "--data", "synthetic:4"), "channel 9 does not exist"),
        (("shuffle", path, "--layer", "1", "--bogus"), "No such option"),
        (("layers",), "Missing argument"),
    ]
    for args, message in cases:
        r = run_cli(*args)
        assert r.exit_code == 2, (args, r.stdout, r.stderr)
        assert message in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_public_api_names_resolve():
    import onnxredund

    for name in onnxredund.__all__:
        assert getattr(onnxredund, name) is not None


def test_ctrl_c_writes_partial_results_and_resume_finishes_with_the_same_numbers(tmp_path, monkeypatch):
    from onnxredund.engine.sweep import SweepRunner

    path = save(small_cnn()[0], tmp_path)
    args = [
        "shuffle",
        path,
        "--layer",
        "conv2",
        "--data",
        "synthetic:100",
        "--batch-size",
        "20",
        "--device",
        "cpu",
        "--mode",
        "pixel",
    ]
    full = json.loads(run_cli(*args, "--json").stdout)
    calls = {"n": 0}
    real = SweepRunner.run_fast

    def interrupt_third_run(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(SweepRunner, "run_fast", interrupt_third_run)
    out = tmp_path / "out"
    r = run_cli(*args, "--out", out)
    assert r.exit_code == 130 and "INTERRUPTED" in r.stdout
    partial = json.loads((out / "shuffle-pixel.json").read_text())
    assert partial["complete"] is False and partial["samples_done"] == 40
    assert [p.name for p in (out / "units").iterdir()] == ["1.pixel.0+4.npz"]  # conv2 (layer 1) reads 4
    monkeypatch.setattr(SweepRunner, "run_fast", real)
    r = run_cli(*args, "--out", out, "--resume", "--seed", "9")
    assert r.exit_code == 2 and "other arguments" in r.stderr  # other permutations: not a continuation
    r = run_cli(*args, "--out", out, "--resume", "--json")
    assert r.exit_code == 0, r.stderr
    resumed = json.loads(r.stdout)
    assert resumed["complete"] and resumed["cosine"] == full["cosine"] and resumed["agreement"] == full["agreement"]
    assert not (out / "units").exists()
    # nothing left to resume: refused, and the finished results stay
    r = run_cli(*args, "--out", out, "--resume", "--seed", "9")
    assert r.exit_code == 2 and "nothing to resume" in r.stderr
    assert json.loads((out / "shuffle-pixel.json").read_text())["cosine"] == full["cosine"]


def test_no_data_on_a_model_mnist_does_not_fit_says_the_shape_and_how(tmp_path):
    path = save(small_cnn()[0], tmp_path)
    r = run_cli("shuffle", path, "--layer", "conv2", "--device", "cpu")
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "MNIST (1x28x28) does not fit the model's input 'x' (3x6x6, NCHW)" in r.stderr
    assert "--data" in r.stderr and "--data-loader-script" in r.stderr and "download" not in r.stderr


def test_verbosity_flags_work_after_the_command_too(tmp_path):
    path = save(small_cnn()[0], tmp_path)
    quiet = run_cli(
        "shuffle", path, "--layer", "1", "--data", "synthetic:8", "--device", "cpu", "--batch-size", "1", "-q"
    )
    assert quiet.exit_code == 0 and "no-op" not in quiet.stderr  # -q: warnings hidden
    loud = run_cli("shuffle", path, "--layer", "1", "--data", "synthetic:8", "--device", "cpu", "--batch-size", "1")
    assert "no-op" in loud.stderr
    verbose = run_cli("layers", path, "-v")
    assert verbose.exit_code == 0


def test_unlabelled_audits_speak_of_agreement_and_accuracy_gates_name_agreement_drop(tmp_path):
    path = save(small_cnn(3)[0], tmp_path)
    args = ["audit", path, "--data", "synthetic:64", "--device", "cpu", "--modes", "channel"]
    r = run_cli(*args, "--out", tmp_path / "a")
    assert r.exit_code == 0, r.stderr
    assert "accuracy" not in r.stdout.replace("agreement", "") and "worst agreement drop" in r.stdout
    bad = run_cli(*args, "--out", tmp_path / "b", "--fail-if", "accuracy_drop>0.1")
    assert bad.exit_code == 2 and "use agreement_drop" in bad.stderr
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").iterdir())


def test_an_audit_budget_covers_the_whole_command_and_says_what_it_left_out(tmp_path):
    path = save(small_cnn(3)[0], tmp_path)
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).random((64, 3, 6, 6)), y=np.arange(64) % 4)
    r = run_cli(
        "audit",
        path,
        "--data",
        tmp_path / "d.npz",
        "--device",
        "cpu",
        "--budget",
        "1",
        "--out",
        tmp_path / "o",
        "--fail-if",
        "accuracy_drop>0.5",
    )
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    skipped = [n for n in results["notes"] if "skipped: time budget spent" in n]
    measured = {s["name"]: s for s in results["summary"]}
    # a 1 s budget leaves the sweeps out (or some of them); every layer left out says so and has no score
    for s in measured.values():
        if not s["samples"]:
            assert s["redundancy_score"] is None and any(s["name"] in n for n in skipped)
    if not any(s["samples"] for s in measured.values()):
        assert r.exit_code == 1 and "not evaluated" in r.stderr


def test_audit_lines_say_how_many_channels_a_budget_measured_and_count_sweeps_in_words():
    rng = np.random.default_rng(0)
    data = Dataset(rng.random((32, 3, 6, 6), dtype=np.float32), rng.integers(0, 4, 32), "toy")
    result = run_audit(load_model_proto(small_cnn(seed=3)[0]), data, device="cpu", modes=("channel",))
    full = redundancy_lines(result)
    assert "measured)" not in " ".join(full)
    conv2 = result.shuffles["conv2"]["channel"]
    sampled = replace(conv2, channels=conv2.channels[:1], cosine=conv2.cosine[:1], accuracy=conv2.accuracy[:1])
    result.shuffles["conv2"]["channel"] = sampled
    result.notes.append("conv2 channel shuffling measured 1 of 4 input channels (evenly spaced) (time budget)")
    lines = redundancy_lines(result)
    assert "channel-cheap" in lines[1] and f"(1 of {result.layers[1].in_channels} measured)" in lines[1]
    assert lines[-1] == "  note: 1 sweep measured fewer images or channels to fit the time budget (see the report)"


def test_layers_of_one_input_channel_are_named_short_in_one_note_line():
    # basic-pitch's 25 conv1d filters of the raw signal gave 25 note lines of up to 300 characters
    from onnxredund.words import ONE_CHANNEL_NOTE

    rng = np.random.default_rng(0)
    data = Dataset(rng.random((8, 3, 6, 6), dtype=np.float32), None, "toy")
    result = run_audit(load_model_proto(small_cnn(seed=3)[0]), data, device="cpu", modes=("channel",))
    fused = "model_1/re_lu_{0}/Relu;model_1/re_lu_{0}/Relu;model_1/conv1d_{0}/Conv2D;model_1/conv1d_{0}/BiasAdd"
    result.notes.extend(f"{fused.format(i)} {ONE_CHANNEL_NOTE}" for i in range(6))
    notes = [line for line in redundancy_lines(result) if "not shuffled" in line]
    assert notes == [
        "  note: 6 layers are not shuffled (model_1/conv1d_0/Conv2D, model_1/conv1d_1/Conv2D, model_1/conv1d_2/Conv2D, "
        "model_1/conv1d_3/Conv2D and 2 more): each reads one input channel, and perturbing that perturbs the whole "
        "input"
    ]


def test_progress_where_stderr_is_no_terminal_is_throttled_log_lines_with_step_count_and_eta(capsys):
    from onnxredund.cli import console

    bars = console.StepBars(quiet=False)  # pytest's stderr is no terminal
    assert bars.lines is not None and console.StepBars(quiet=True).lines is None
    bars.lines.every = 0.0
    update = bars("conv2 channel (1/2)", 100, 20)
    update(30)
    update(50)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(",")[0] for line in lines] == [
        "onnxredund: progress: conv2 channel (1/2): 50/100",
        "onnxredund: progress: conv2 channel (1/2): 100/100",
    ]
    assert "step ETA" in lines[0] and "ETA" not in lines[1]
    bars.lines.every = 3600.0
    bars("impulse", 10)(10)
    assert capsys.readouterr().err == ""  # within the interval: nothing


def test_reproduce_finds_the_shipped_models_from_any_folder(tmp_path, monkeypatch):
    import sysconfig

    from onnxredund.analyses.reproduce import shipped_models

    installed = tmp_path / "prefix" / "share" / "onnxredund" / "models"
    installed.mkdir(parents=True)
    monkeypatch.setattr(sysconfig, "get_path", lambda name: str(tmp_path / "prefix"))
    monkeypatch.chdir(tmp_path)  # no models/ here
    with pytest.raises(OnnxRedundError, match=r"are in none of models, .*prefix/share/onnxredund/models"):
        shipped_models()
    for name in ("lenet5", "lenet5x10"):
        (installed / f"{name}.onnx").write_bytes(b"")
    assert shipped_models() == installed
    (tmp_path / "models").mkdir()
    for name in ("lenet5", "lenet5x10"):
        (tmp_path / "models" / f"{name}.onnx").write_bytes(b"")
    assert shipped_models() == Path("models") and shipped_models(tmp_path / "x") == tmp_path / "x"


def test_every_command_defined_is_registered_on_the_group():
    import click

    from onnxredund.cli import commands, main

    defined = {obj.name for obj in vars(commands).values() if isinstance(obj, click.Command)}
    assert defined == {c.name for c in commands.COMMANDS} == set(main.commands)


def _tf2onnx_named(tmp_path):
    """small_cnn with its convs named as tf2onnx names a conv: everything fused into it, joined by ';'."""
    proto = small_cnn()[0]
    long = {}
    for node in proto.graph.node:
        if node.op_type == "Conv":
            i = len(long) + 1
            node.name = (
                f"model_1/re_lu_{i}/Relu;model_1/re_lu_{i}/Relu;model_1/batch_normalization_{i}/FusedBatchNormV3;"
                f"model_1/batch_normalization_{i}/FusedBatchNormV3/ReadVariableOp;model_1/conv2d_{i}/Conv2D;"
                f"model_1/conv2d_{i}/BiasAdd/ReadVariableOp"
            )
            long[node.name] = f"model_1/conv2d_{i}/Conv2D"
    return save(proto, tmp_path), long


def test_long_fused_names_are_short_in_tables_whole_in_json_and_accepted_short_or_in_part(tmp_path):
    path, long = _tf2onnx_named(tmp_path)
    table = run_cli("layers", path).stdout
    assert all(len(line) < 160 for line in table.splitlines())
    assert "model_1/conv2d_2/Conv2D" in table and "FusedBatchNormV3" not in table
    assert [row["name"] for row in json.loads(run_cli("layers", path, "--json").stdout)["layers"]] == list(long)
    for key in ("model_1/conv2d_2/Conv2D", "conv2d_2", list(long)[1], "1"):
        r = run_cli("shuffle", path, "--layer", key, "--data", "synthetic:8", "--json", "--device", "cpu")
        assert r.exit_code == 0 and json.loads(r.stdout)["layer"] == list(long)[1]
    r = run_cli("shuffle", path, "--layer", "batch_normalization", "--data", "synthetic:8")
    assert r.exit_code == 2 and "names 2 layers" in r.stderr and "give its index" in r.stderr


def test_long_names_quoted_in_a_reason_are_short_and_the_others_kept():
    from onnxredund.words import short_names_in

    reshape = "model_1/cq/Neg;model_1/cq/Neg;model_1/cq/transpose_5;model_1/cq/transpose_5;model_1/cq/conv1d_1/Squeeze"
    reason = f"Reshape '{reshape}' reshapes them in a way not handled; 'Flatten_3' reads them"
    assert short_names_in(reason) == (
        "Reshape 'model_1/cq/conv1d_1/Squeeze' reshapes them in a way not handled; 'Flatten_3' reads them"
    )
    assert short_names_in("a name's quote is kept: 'it's'") == "a name's quote is kept: 'it's'"


def test_a_cell_of_many_names_shows_the_first_and_how_many_more():
    from onnxredund.words import name_list

    convs = [f"model_1/cq_t2010v2_1/conv1d_{i}" for i in range(9)]  # basic-pitch: nine convs share one kernel
    assert name_list(convs) == "model_1/cq_t2010v2_1/conv1d_0 and 8 more"
    assert name_list(convs[:3]) == ", ".join(convs[:3]) and name_list([]) == ""


def test_the_librarys_defaults_are_the_command_lines():
    """A default is one constant (onnxredund.choices): the Python API gives what the command gives (run_prune
    ranked globally at batch 128 where prune ranks layer by layer at 256)."""
    import inspect

    from onnxredund.analyses.audit import run_audit
    from onnxredund.analyses.evaluate import evaluate
    from onnxredund.analyses.impulse import run_impulse
    from onnxredund.analyses.prune import run_prune
    from onnxredund.analyses.shuffle import run_shuffle
    from onnxredund.cli import commands

    pairs = {
        commands.prune: (
            run_prune,
            ["criterion", "scope", "shuffle_metric", "shuffle_samples", "round_to", "batch_size"],
        ),
        commands.audit: (run_audit, ["threshold", "cheap_drop", "batch_size"]),
        commands.impulse: (run_impulse, ["threshold"]),
        commands.shuffle: (run_shuffle, ["batch_size"]),
        commands.evaluate: (evaluate, ["batch_size"]),
    }
    for command, (function, names) in pairs.items():
        cli = {p.name: p.default for p in command.params}
        library = inspect.signature(function).parameters
        for name in names:
            assert library[name].default == cli[name], (command.name, name, library[name].default, cli[name])


def test_impulse_budget_leaves_the_comparisons_with_earlier_layers_out_once_spent_and_says_so(tmp_path, monkeypatch):
    import time as clock

    from onnxredund.analyses import impulse

    path = save(small_cnn()[0], tmp_path)
    full = json.loads(run_cli("impulse", path, "--json", "--device", "cpu").stdout)
    assert not any("earlier layers left out" in n for n in full["notes"])
    real = clock.perf_counter
    start = real()  # a microsecond becomes a second
    monkeypatch.setattr(impulse.time, "perf_counter", lambda: start + 1e6 * (real() - start))
    r = run_cli("impulse", path, "--json", "--device", "cpu", "--budget", "5")
    assert r.exit_code == 0, r.stderr
    cut = json.loads(r.stdout)
    assert any("comparisons with earlier layers left out" in n for n in cut["notes"])
    assert [layer["best_value"] for layer in cut["layers"]] == [
        layer["best_value"] for layer in full["layers"]
    ]  # within: all
    assert all(v is None for v in cut["layers"][-1]["across_best_value"])
