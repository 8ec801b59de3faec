"""Sweeps as units on a backend: the same JSON as one process, bit for bit, on this process and on a local Ray
(started by the tests with two CPUs); a worker killed mid-unit changes nothing; an interrupted run resumes at
unit granularity on a backend's workers and at batch granularity in this process, on either backend."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading

import numpy as np
import pytest
from builders import ChunksHere, run_cli, save
from prunable import inputs, zoo

from onnxredund.analyses.distributed import job_for, plan_units, run_sweeps
from onnxredund.analyses.sequential import Estimation
from onnxredund.analyses.shuffle import SweepOptions, run_shuffle
from onnxredund.data import Dataset
from onnxredund.engine.backends import make_backend
from onnxredund.engine.loading import load_model_proto
from onnxredund.errors import OnnxRedundError

MODES = ("channel", "pixel")


@pytest.fixture(scope="module")
def setup():
    """A small residual model (Add, Concat, depthwise) and labelled data of 6 batches."""
    m = load_model_proto(zoo(seed=2))
    data = Dataset(inputs(48, seed=3), np.arange(48) % 3, "tiny")
    layers = [m.layer("convB"), m.layer("convC")]
    return m, data, layers


def _local_json(m, data, layers) -> dict:
    return {
        (layer.name, mode): json.dumps(
            run_shuffle(m, layer, data, mode=mode, batch_size=8, device="cpu", chunk=2).to_dict()
        )
        for layer in layers
        for mode in MODES
    }


def _job(m, data, layers):
    sweeps = [(layer, mode, list(range(layer.in_channels))) for layer in layers for mode in MODES]
    return job_for(m, data, sweeps, SweepOptions(batch_size=8, device="cpu", chunk=2)), [
        (layer, mode) for layer in layers for mode in MODES
    ]


def _units_json(results) -> dict:
    return {(r.layer, r.mode): json.dumps(r.to_dict()) for r in results}


class _StopAfter(ChunksHere):
    """A chunked backend whose run is interrupted (as by Ctrl-C) after ``n`` units."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def run(self, fn, context, units, on_done):
        def counted(i, result):
            on_done(i, result)
            if i + 1 >= self.n:
                raise KeyboardInterrupt

        super().run(fn, context, units, counted)


def _interrupted_at_batch(monkeypatch, sweep: int, batch: int) -> None:
    """Ctrl-C between batches ``batch`` and ``batch + 1`` of the ``sweep``-th sweep (from 1) run in this process."""
    from onnxredund.analyses import distributed

    real, calls = distributed.run_shuffle, {"n": 0}

    def interrupted(*args, on_batch, **kwargs):
        calls["n"] += 1

        def commit(state):
            on_batch(state)
            if calls["n"] == sweep and state.batches_done == batch:
                raise KeyboardInterrupt

        return real(*args, on_batch=commit, **kwargs)

    monkeypatch.setattr(distributed, "run_shuffle", interrupted)


def _kept(tmp_path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "units").glob("*.npz"))


def test_a_sweep_gives_the_same_json_bit_for_bit_in_this_process_and_as_chunk_units(setup):
    m, data, layers = setup
    job, sweeps = _job(m, data, layers)
    assert len(plan_units(job, sweeps)) == 2 * (2 + 4)  # convB reads 4 channels, convC 7: chunks of 2
    assert len(plan_units(job, sweeps, whole=True)) == 4  # in this process: a unit per sweep
    results, complete = run_sweeps(job, sweeps)
    assert complete and _units_json(results) == _local_json(m, data, layers)
    results, complete = run_sweeps(job, sweeps, ChunksHere())
    assert complete and _units_json(results) == _local_json(m, data, layers)


def test_a_sweep_interrupted_in_this_process_reports_its_batches_and_resumes_to_the_same_numbers(
    setup, tmp_path, monkeypatch
):
    m, data, layers = setup
    job, sweeps = _job(m, data, layers)
    _interrupted_at_batch(monkeypatch, sweep=2, batch=4)
    results, complete = run_sweeps(job, sweeps, checkpoint_dir=tmp_path)
    assert not complete
    (first, second) = results  # the first finished; the second's numbers are those of its 4 batches of 6
    assert first.complete and not second.complete and second.stopped == "interrupted"
    assert second.samples_done == 32 and set(second.images) == {32}
    assert _kept(tmp_path) == ["1.channel.0+4.npz", "1.pixel.0+4.npz"]  # convB is layer 1; a file per sweep
    monkeypatch.undo()
    resumed, complete = run_sweeps(job, sweeps, checkpoint_dir=tmp_path, resume=True)
    assert complete and _units_json(resumed) == _local_json(m, data, layers)


def test_a_sweep_interrupted_in_this_process_resumes_as_chunk_units_and_the_other_way(setup, tmp_path, monkeypatch):
    m, data, layers = setup
    job, sweeps = _job(m, data, layers)
    _interrupted_at_batch(monkeypatch, sweep=1, batch=3)
    run_sweeps(job, sweeps, checkpoint_dir=tmp_path)
    monkeypatch.undo()
    resumed, complete = run_sweeps(job, sweeps, ChunksHere(), checkpoint_dir=tmp_path, resume=True)
    assert complete and _units_json(resumed) == _local_json(m, data, layers)
    other = tmp_path / "other"
    run_sweeps(job, sweeps, _StopAfter(5), checkpoint_dir=other)  # convB channel's 2 units, pixel's 2, one of convC
    resumed, complete = run_sweeps(job, sweeps, checkpoint_dir=other, resume=True)
    assert complete and _units_json(resumed) == _local_json(m, data, layers)


def test_kept_units_are_named_by_layer_index_inside_the_folder_whatever_the_layer_is_called(tmp_path):
    proto = zoo(seed=2)
    for node in proto.graph.node:  # exporters name nodes like paths
        node.name = f"/block/{node.name}" if node.name else node.name
    m = load_model_proto(proto)
    layer = next(layer for layer in m.layers if layer.name.endswith("convB"))
    data = Dataset(inputs(16, seed=3), np.arange(16) % 3, "tiny")
    job = job_for(m, data, [(layer, "channel", [0, 1, 2, 3])], SweepOptions(batch_size=8, device="cpu", chunk=2))
    _, complete = run_sweeps(job, [(layer, "channel")], _StopAfter(1), checkpoint_dir=tmp_path)
    assert not complete and _kept(tmp_path) == [f"{layer.index}.channel.0+2.npz"]


def test_an_interrupted_run_keeps_its_finished_units_and_resumes_to_the_same_numbers(setup, tmp_path):
    m, data, layers = setup
    job, sweeps = _job(m, data, layers)
    results, complete = run_sweeps(job, sweeps, _StopAfter(3), checkpoint_dir=tmp_path)
    assert not complete and len(_kept(tmp_path)) == 3
    assert [(r.layer, r.mode) for r in results] == [("convB", "channel")]  # its two units were among the three
    resumed, complete = run_sweeps(job, sweeps, ChunksHere(), checkpoint_dir=tmp_path, resume=True)
    assert complete and _units_json(resumed) == _local_json(m, data, layers)


def test_a_unit_interrupted_inside_its_batches_on_a_worker_is_not_kept(setup, tmp_path, monkeypatch):
    m, data, layers = setup
    job, sweeps = _job(m, data, layers)
    _interrupted_at_batch(monkeypatch, sweep=3, batch=2)  # the third unit
    _, complete = run_sweeps(job, sweeps, ChunksHere(), checkpoint_dir=tmp_path)
    assert not complete and len(_kept(tmp_path)) == 2  # not the third's 2 of 6 batches
    monkeypatch.undo()
    resumed, complete = run_sweeps(job, sweeps, ChunksHere(), checkpoint_dir=tmp_path, resume=True)
    assert complete and _units_json(resumed) == _local_json(m, data, layers)


def test_the_progress_of_a_resumed_run_adds_up_to_its_units(setup, tmp_path):
    m, data, layers = setup
    job, sweeps = _job(m, data, layers)
    run_sweeps(job, sweeps, _StopAfter(3), checkpoint_dir=tmp_path)
    seen = []

    def progress(label, total, done):
        seen.append((total, done))
        return seen.append  # takes what finished since the last call, as click's bars do

    run_sweeps(job, sweeps, ChunksHere(), checkpoint_dir=tmp_path, resume=True, progress=progress)
    (total, done), *steps = seen
    assert (total, done) == (12, 3) and done + sum(steps) == total


def test_the_progress_in_this_process_is_a_bar_per_sweep_over_its_samples(setup, tmp_path, monkeypatch):
    m, data, layers = setup
    job, sweeps = _job(m, data, layers[:1])
    _interrupted_at_batch(monkeypatch, sweep=1, batch=2)
    run_sweeps(job, sweeps, checkpoint_dir=tmp_path)
    monkeypatch.undo()
    bars = []

    def progress(label, total, done):
        bars.append([label, total, done])
        return bars[-1].append

    run_sweeps(job, sweeps, checkpoint_dir=tmp_path, resume=True, progress=progress)
    assert bars == [["convB channel", 48, 16, 8, 8, 8, 8], ["convB pixel", 48, 0, 8, 8, 8, 8, 8, 8]]


def test_a_new_run_removes_what_an_earlier_run_kept_of_its_sweeps(setup, tmp_path):
    m, data, layers = setup
    job, sweeps = _job(m, data, layers[:1])
    run_sweeps(job, sweeps, _StopAfter(3), checkpoint_dir=tmp_path)  # convB channel's two units, one of pixel
    fewer = job_for(m, data, [(layers[0], "channel", [1, 2, 3])], SweepOptions(batch_size=8, device="cpu", chunk=2))
    run_sweeps(fewer, sweeps[:1], _StopAfter(1), checkpoint_dir=tmp_path)
    assert _kept(tmp_path) == ["1.channel.0+2.npz", "1.pixel.0+2.npz"]  # the new run's first unit; pixel untouched
    resumed, complete = run_sweeps(fewer, sweeps[:1], checkpoint_dir=tmp_path, resume=True)
    assert complete and resumed[0].channels == [1, 2, 3]


def test_resuming_with_nothing_kept_is_an_error(setup, tmp_path):
    m, data, layers = setup
    job, sweeps = _job(m, data, layers)
    with pytest.raises(OnnxRedundError, match="nothing to resume"):
        run_sweeps(job, sweeps, checkpoint_dir=tmp_path, resume=True)


def test_resuming_with_other_arguments_is_an_error_unless_told_to_start_again(setup, tmp_path):
    m, data, layers = setup
    job, sweeps = _job(m, data, layers[:1])
    run_sweeps(job, sweeps, _StopAfter(1), checkpoint_dir=tmp_path)
    other = dataclasses.replace(job, seed=5)
    with pytest.raises(OnnxRedundError, match="other arguments"):
        run_sweeps(other, sweeps, checkpoint_dir=tmp_path, resume=True)
    results, complete = run_sweeps(other, sweeps, checkpoint_dir=tmp_path, resume=True, strict=False)
    assert complete and [r.seed for r in results] == [5, 5]


def test_local_backend_takes_no_ray_options():
    with pytest.raises(OnnxRedundError, match="go with `backend` ray"):
        make_backend("local", workers=2)


@pytest.fixture(scope="module")
def ray_backend():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    backend = make_backend("ray", workers=2, device="cpu")
    yield backend
    backend.close()
    ray.shutdown()


def test_each_ray_run_gets_its_own_context_even_where_the_object_is_the_same(ray_backend):
    """Workers keep a job's context between its units, by a key: an id() was that key, and CPython gives a new
    job the id of one that is gone, so a worker ran the new job's units on the old context (CI: KeyError
    ('convB', 'pixel') from the previous test's job). The same object changed between two runs is that case."""
    context, got = {"value": 10}, {}

    def _read_value(context, unit, cache):  # nested: Ray's pickle sends it by value, not by this test module's name
        return context["value"] + unit

    ray_backend.run(_read_value, context, [1, 2, 3, 4], lambda i, r: got.__setitem__(("first", i), r))
    context["value"] = 100
    ray_backend.run(_read_value, context, [1, 2, 3, 4], lambda i, r: got.__setitem__(("second", i), r))
    assert [got[("first", i)] for i in range(4)] == [11, 12, 13, 14]
    assert [got[("second", i)] for i in range(4)] == [101, 102, 103, 104]


def test_ray_gives_the_single_process_json_bit_for_bit(setup, ray_backend, tmp_path):
    m, data, layers = setup
    job, sweeps = _job(m, data, layers)
    results, complete = run_sweeps(job, sweeps, ray_backend)
    assert complete and _units_json(results) == _local_json(m, data, layers)


def _same_numbers(got, want, path: str = "") -> None:
    """``got`` equals ``want`` in every key, string and integer, and every float within 1e-6 relative: a sequential
    sweep's runs are made ahead of its decisions, so how many open channels one run holds (its K) depends on
    timing, and onnxruntime's sums over another K may differ in their last bit."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), path
        for key in want:
            _same_numbers(got[key], want[key], f"{path}/{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _same_numbers(g, w, f"{path}[{i}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-6, abs=1e-12, nan_ok=True), path
    else:
        assert got == want, path


def test_sequential_units_on_ray_give_the_single_process_numbers(setup, ray_backend):
    """Each unit decides its own channels; merged, the sweep is the in-process sequential sweep: the same
    decisions and images, the same numbers to float32's last bits."""
    m, data, layers = setup
    estimation = Estimation(sequential=True, cheap_drop=0.2, min_images=8)
    sweeps = [(layer, "channel", list(range(layer.in_channels))) for layer in layers]
    job = job_for(m, data, sweeps, SweepOptions(batch_size=8, device="cpu", chunk=2, estimation=estimation))
    results, complete = run_sweeps(job, [(layer, "channel") for layer, _, _ in sweeps], ray_backend)
    local = {
        layer.name: run_shuffle(m, layer, data, batch_size=8, device="cpu", chunk=2, estimation=estimation).to_dict()
        for layer in layers
    }
    assert complete
    _same_numbers({r.layer: r.to_dict() for r in results}, local)
    assert any(min(r.images) < len(data) for r in results)  # some channels were decided before the end


def test_a_worker_killed_mid_run_changes_nothing(setup, ray_backend):
    m, data, layers = setup
    job, sweeps = _job(m, data, layers)
    victim = ray_backend.pids()[0]
    killed = threading.Event()

    def kill_once(_):
        if not killed.is_set():
            killed.set()
            os.kill(victim, signal.SIGKILL)

    results, complete = run_sweeps(job, sweeps, ray_backend, progress=lambda *a: kill_once)
    assert killed.is_set() and complete
    assert victim not in ray_backend.pids()  # the actor came back in a new process
    assert _units_json(results) == _local_json(m, data, layers)


def test_units_interrupted_on_one_backend_resume_on_ray(setup, ray_backend, tmp_path):
    m, data, layers = setup
    job, sweeps = _job(m, data, layers)
    run_sweeps(job, sweeps, _StopAfter(5), checkpoint_dir=tmp_path)
    resumed, complete = run_sweeps(job, sweeps, ray_backend, checkpoint_dir=tmp_path, resume=True)
    assert complete and _units_json(resumed) == _local_json(m, data, layers)


def test_a_sweep_interrupted_in_this_process_resumes_on_ray(setup, ray_backend, tmp_path, monkeypatch):
    m, data, layers = setup
    job, sweeps = _job(m, data, layers)
    _interrupted_at_batch(monkeypatch, sweep=2, batch=3)
    run_sweeps(job, sweeps, checkpoint_dir=tmp_path)
    monkeypatch.undo()
    resumed, complete = run_sweeps(job, sweeps, ray_backend, checkpoint_dir=tmp_path, resume=True)
    assert complete and _units_json(resumed) == _local_json(m, data, layers)


def test_audit_dry_run_lists_units_and_writes_nothing(tmp_path):
    model = save(zoo(), tmp_path, "zoo.onnx")
    data = tmp_path / "d.npz"
    np.savez(data, x=inputs(40))
    out = tmp_path / "audit"
    r = run_cli("audit", model, "--data", data, "--dry-run", "--json", "--device", "cpu", "--out", out)
    assert r.exit_code == 0, r.output
    estimate = json.loads(r.stdout)
    assert {s["layer"] for s in estimate["sweeps"]} == {"convA", "convB", "dw", "convC"}
    assert estimate["units"] >= len(estimate["sweeps"]) and estimate["estimate_seconds"] > 0
    assert not out.exists()
