"""`onnxredund prune`: the plan, a pruned file with its plan beside it, and bad requests answered with one line,
exit status 2 and nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import run_cli, save, small_cnn
from prunable import inputs, zoo

import onnxredund.analyses.prune as prune_module


@pytest.fixture
def setup(tmp_path):
    model = save(zoo(dead_b=1), tmp_path, "zoo.onnx")
    data = tmp_path / "data.npz"
    np.savez(data, x=inputs(40), y=np.arange(40) % 3)
    return model, data


def test_plan_lists_the_groups_and_what_reads_them(setup):
    model, _ = setup
    r = run_cli("prune", model, "--plan")
    assert r.exit_code == 0, r.output
    assert "2 channel groups, 2 prunable" in r.output
    assert "convA, convC" in r.output and "convB, convC, fc" in r.output
    groups = json.loads(run_cli("prune", model, "--plan", "--json").output)
    assert [g["producers"] for g in groups] == [["convA", "convC"], ["convB"]]


def test_prune_writes_a_smaller_model_and_its_plan(setup, tmp_path):
    model, data = setup
    out = tmp_path / "small.onnx"
    before = model.read_bytes()
    r = run_cli(
        "prune", model, "--data", data, "--channels", "convB:1", "--calibration", "16", "--out", out, "--device", "cpu"
    )
    assert r.exit_code == 0, r.output
    assert "convB: 3 -> 2 channels" in r.output and "agreement 100.00 %" in r.output
    pruned = onnx.load(str(out))
    onnx.checker.check_model(pruned, full_check=True)
    assert next(t for t in pruned.graph.initializer if t.name == "wb").dims[0] == 2
    plan = json.loads(out.with_suffix(".json").read_text())
    assert plan["plan"]["removed"][0]["removed"] == [1] and plan["pruned_model"] == str(out)
    assert plan["value_check"]["samples"] == 4 and plan["value_check"]["max_relative_error"] < 1e-4
    assert "checked by values on 4 calibration samples" in r.output
    assert model.read_bytes() == before


def test_a_cut_that_differs_from_the_original_zeroed_where_read_is_refused_and_nothing_written(
    setup, tmp_path, monkeypatch
):
    real = prune_module.remove_channels

    def off_by_one(model, groups, removed, **kwargs):  # cuts the neighbour of every channel asked for
        return real(
            model, groups, {g: [(c + 1) % groups[g].channels for c in ch] for g, ch in removed.items()}, **kwargs
        )

    monkeypatch.setattr(prune_module, "remove_channels", off_by_one)
    model, data = setup
    out = tmp_path / "small.onnx"
    r = run_cli(
        "prune", model, "--data", data, "--channels", "convB:0", "--calibration", "16", "--out", out, "--device", "cpu"
    )
    assert r.exit_code == 2, r.output
    assert "removing channels of convB is not exact through Conv 'convB'" in r.output
    assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output
    assert not out.exists() and not out.with_suffix(".json").exists()


def _bn_free(tmp_path):
    return save(small_cnn()[0], tmp_path, "plain.onnx")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target-macs", "0.5", "--channels", "convB:0"], "give only one of"),
        (["--target-macs", "0.5", "--target-speedup", "2"], "give only one of"),
        ([], "give one of"),
        (["--target-speedup", "0.9"], "must be more than 1"),
        (["--target-speedup", "50"], "--target-speedup 50 cannot be reached"),
        (["--target-macs", "0.99", "--scope", "global"], "cannot be reached"),
        (["--target-macs", "1.5"], "strictly between 0 and 1"),
        (["--channels", "convB:0,1,2"], "every channel"),
        (["--channels", "dw:0"], "starts no channel group"),
        (
            ["--target-macs", "0.3", "--criterion", "shuffle", "--shuffle-metric", "accuracy", "--data", "unlabelled"],
            "needs labelled data",
        ),
        (["--target-macs", "0.3", "--calibration", "40"], "leaves none to evaluate"),
    ],
)
def test_bad_requests_exit_2_and_write_nothing(setup, tmp_path, args, message):
    model, data = setup
    if "unlabelled" in args:
        unlabelled = tmp_path / "unlabelled.npz"
        np.savez(unlabelled, x=inputs(40))
        args = [str(unlabelled) if a == "unlabelled" else a for a in args]
    elif "--data" not in args:
        args = [*args, "--data", str(data)]
    out = tmp_path / "out.onnx"
    if "--calibration" not in args:
        args = [*args, "--calibration", "16"]
    r = run_cli("prune", model, *args, "--out", out, "--device", "cpu")
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_the_output_never_replaces_the_model_or_an_existing_file(setup, tmp_path):
    model, data = setup
    before = model.read_bytes()
    r = run_cli("prune", model, "--data", data, "--channels", "convB:1", "--out", model)
    assert r.exit_code == 2 and "is the input model" in r.output
    existing = tmp_path / "taken.onnx"
    existing.write_bytes(b"mine")
    r = run_cli("prune", model, "--data", data, "--channels", "convB:1", "--out", existing)
    assert r.exit_code == 2 and "--overwrite" in r.output
    assert existing.read_bytes() == b"mine" and model.read_bytes() == before
    r = run_cli("prune", model, "--data", data, "--channels", "convB:1", "--out", tmp_path / "x.txt")
    assert r.exit_code == 2 and "FILE.onnx" in r.output


def test_bn_on_a_model_without_batchnorm_is_an_error(tmp_path):
    model = _bn_free(tmp_path)
    data = tmp_path / "d.npz"
    np.savez(data, x=np.random.default_rng(0).random((20, 3, 6, 6), np.float32))
    out = tmp_path / "o.onnx"
    r = run_cli(
        "prune", model, "--data", data, "--criterion", "bn", "--target-macs", "0.2", "--calibration", "8", "--out", out
    )
    assert r.exit_code == 2 and "needs BatchNormalization" in r.output and not out.exists()


def _remove_convb_1(model, data, out, *given):
    """prune MODEL removing channel 1 of convB, calibrated on 16 samples, on the CPU."""
    return run_cli(
        "prune",
        model,
        *given,
        "--data",
        data,
        "--channels",
        "convB:1",
        "--calibration",
        "16",
        "--out",
        out,
        "--device",
        "cpu",
    )


def test_a_model_with_external_weights_prunes_to_a_file_that_carries_its_own_and_leaves_the_data_untouched(
    setup, tmp_path
):
    _, data = setup
    folder = tmp_path / "ext"
    folder.mkdir()
    onnx.save_model(
        zoo(dead_b=1), str(folder / "zoo.onnx"), save_as_external_data=True, location="zoo.onnx.data", size_threshold=0
    )
    weights = (folder / "zoo.onnx.data").read_bytes()
    out = tmp_path / "small.onnx"
    r = _remove_convb_1(folder / "zoo.onnx", data, out)
    assert r.exit_code == 0, r.output
    pruned = onnx.load(str(out))  # no .data beside it: every weight inside
    assert not any(onnx.external_data_helper.uses_external_data(t) for t in pruned.graph.initializer)
    onnx.checker.check_model(pruned, full_check=True)
    assert (folder / "zoo.onnx.data").read_bytes() == weights and not (tmp_path / "small.onnx.data").exists()


def test_the_pruned_model_declares_the_inputs_and_outputs_the_file_declared(tmp_path):
    proto = zoo(dead_b=1)
    for vi in (proto.graph.input[0], proto.graph.output[0]):
        dims = vi.type.tensor_type.shape.dim
        dims[0].dim_param = "batch"
        if vi is proto.graph.input[0]:
            dims[2].dim_param, dims[3].dim_param = "height", "width"
    model = save(proto, tmp_path, "free.onnx")
    data = tmp_path / "data.npz"
    np.savez(data, x=inputs(40), y=np.arange(40) % 3)
    out = tmp_path / "small.onnx"
    r = _remove_convb_1(model, data, out, "--input-shape", "2x6x6")
    assert r.exit_code == 0, r.output
    pruned = onnx.load(str(out))
    shape = lambda vi: [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]  # noqa: E731
    assert shape(pruned.graph.input[0]) == ["batch", 2, "height", "width"]
    assert shape(pruned.graph.output[0]) == shape(proto.graph.output[0])


def test_an_out_folder_that_cannot_be_written_is_refused_before_any_work(setup, tmp_path, monkeypatch):
    import errno
    import tempfile

    model, data = setup
    folder = tmp_path / "mounted-read-only"
    folder.mkdir()
    real_mkstemp = tempfile.mkstemp

    def read_only(*args, dir=None, **kwargs):  # a read-only mount: even root cannot create a file there
        if dir is not None and Path(dir) == folder:
            raise OSError(errno.EROFS, "Read-only file system")
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    monkeypatch.setattr(prune_module, "split_data", lambda *a, **k: pytest.fail("the work started"))
    r = run_cli("prune", model, "--data", data, "--target-macs", "0.3", "--out", folder / "p.onnx")
    assert r.exit_code == 2 and "not writable (Read-only file system)" in r.stderr
    assert not list(folder.iterdir())


def test_the_calibration_default_fits_small_data_and_says_what_it_took(setup, tmp_path):
    model, data = setup  # 40 samples: the fixed default of 1,000 left none to measure on
    out = tmp_path / "p.onnx"
    r = run_cli("prune", model, "--data", data, "--channels", "convB:1", "--out", out, "--json")
    assert r.exit_code == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["calibration_samples"] == 20 and result["evaluation_samples"] == 20
    r = run_cli("prune", model, "--data", data, "--channels", "convB:1", "--out", out, "--overwrite")
    assert "calibrated on 20, measured on 20 held-back samples" in r.stdout


def test_the_plan_names_unnamed_nodes_as_layers_does(tmp_path):
    proto = small_cnn()[0]
    for node in proto.graph.node:
        node.name = ""  # exporters that name nothing
    model = save(proto, tmp_path)
    layer_names = [layer["name"] for layer in json.loads(run_cli("layers", model, "--json").stdout)["layers"]]
    groups = json.loads(run_cli("prune", model, "--plan", "--json").stdout)
    consumers = {name for g in groups for name in g["consumers"]}
    assert layer_names == ["Conv_0", "Conv_2"] and "Conv_2" in consumers
