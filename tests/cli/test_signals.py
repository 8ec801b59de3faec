"""Real signals sent to a running `onnxredund` at several points: between batches, between sweeps, during the
writing, at random moments. Whatever the moment, the run exits 0 (it had finished) or 128 + the signal; what it
wrote follows the schema and says it is incomplete; and ``--resume`` ends with the bytes of an uninterrupted run.

``ONNXREDUND_SOAK_RUNS=N`` makes the random-moment test send N signals (``scripts/interrupt_soak.py``).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import onnx
import pytest
from builders import run_cli, small_cnn

from onnxredund.report.schema import check_results, check_sweep

AUDIT = ["--data", "synthetic:256", "--batch-size", "32", "--device", "cpu"]
SOAK_RUNS = int(os.environ.get("ONNXREDUND_SOAK_RUNS", "2"))


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("signals") / "cnn.onnx"
    onnx.save(small_cnn(c_in=3, c_mid=16, c_out=16, size=24, classes=10)[0], str(path))
    return path


@pytest.fixture(scope="module")
def reference(model, tmp_path_factory) -> dict:
    """The uninterrupted audit's results.json."""
    out = tmp_path_factory.mktemp("reference")
    assert run_cli("-q", "audit", model, *AUDIT, "--out", out, "--overwrite").exit_code == 0
    return json.loads((out / "results.json").read_text())


def _start(*args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "onnxredund", "-q", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _signal_when(proc: subprocess.Popen, ready, sig: int, timeout: float = 120) -> tuple[int, str, str]:
    """Send ``sig`` once ``ready()`` holds (polled), then wait: (exit status, stdout, stderr)."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and not ready() and time.monotonic() < deadline:
        time.sleep(0.02)
    if proc.poll() is None:
        proc.send_signal(sig)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def _check_interrupted_audit(out: Path, status: int, sig: int, err: str, reference: dict) -> None:
    """What an audit stopped by ``sig`` leaves: the status, no traceback, and results that say what they are (a
    signal during the last write lets it finish: complete results, exactly the uninterrupted ones). A status of
    -sig is the signal's own default action: before the command's handlers exist (nothing written) or after
    they are gone (Python's finalization, the results written)."""
    assert status in (0, 128 + sig, -sig), (status, err)
    assert "Traceback" not in err, err
    results = out / "results.json"
    if results.exists():
        payload = json.loads(results.read_text())
        check_results(payload)
        if payload["complete"]:
            assert payload == reference
        else:
            assert status == 128 + sig and "INCOMPLETE" in (out / "report.html").read_text()
    else:
        assert status, "a run that ended with 0 wrote its results"
    for sweep in out.glob("shuffle-*.json"):
        check_sweep(json.loads(sweep.read_text()))


def _resumed(model, out: Path, reference: dict) -> None:
    r = run_cli("-q", "audit", model, *AUDIT, "--out", out, "--resume")
    assert r.exit_code == 0, r.stderr
    assert json.loads((out / "results.json").read_text()) == reference
    assert not (out / "units").exists()


@pytest.mark.parametrize(
    ("sig", "point"),
    [
        (signal.SIGINT, "checkpoints/shuffle-0-channel.npz"),  # between two batches of the first sweep
        (signal.SIGTERM, "shuffle-0-channel.json"),  # as the first sweep's files are written, or just after
        (signal.SIGINT, "shuffle-1-channel.json"),  # between sweeps, late in the run
    ],
)
def test_a_signal_at_a_known_point_stops_the_audit_marked_incomplete_and_resume_ends_identical(
    model, reference, tmp_path, sig, point
):
    out = tmp_path / "out"
    status, _, err = _signal_when(_start("audit", model, *AUDIT, "--out", out), (out / point).exists, sig)
    _check_interrupted_audit(out, status, sig, err, reference)
    if status:
        assert "interrupted" in err
    _resumed(model, out, reference)


def test_signals_at_random_moments_never_leave_a_result_out_of_range_or_unmarked(model, reference, tmp_path):
    rng = random.Random(20261206)
    outcomes: Counter = Counter()
    for run in range(SOAK_RUNS):
        out = tmp_path / f"run{run}"
        sig = rng.choice([signal.SIGINT, signal.SIGTERM])
        at = time.monotonic() + rng.uniform(1.0, 6.0)  # the audit takes about 6 s here, 2 of them starting
        proc = _start("audit", model, *AUDIT, "--out", out)
        status, _, err = _signal_when(proc, lambda t=at: time.monotonic() > t, sig)
        _check_interrupted_audit(out, status, sig, err, reference)
        results = out / "results.json"
        written = "none" if not results.exists() else json.loads(results.read_text())["complete"] and "complete"
        outcomes[f"exit {status}, results {written or 'incomplete'}"] += 1
        if status == 128 + sig:  # whatever had finished, or nothing: resume ends where an uninterrupted run does
            _resumed(model, out, reference)
    print(f"\n{SOAK_RUNS} signals at random moments: {dict(sorted(outcomes.items()))}; every resume identical")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_the_command_still_loads_the_library_is_one_line_and_128_plus_it(model, tmp_path, sig):
    at = time.monotonic() + 0.4  # onnx, onnxruntime and scipy take a second or more to import, after the CLI's own
    status, _, err = _signal_when(_start("layers", model), lambda: time.monotonic() > at, sig)
    assert status == 128 + sig and err.strip() == "onnxredund: interrupted"


def test_sigterm_stops_a_shuffle_with_143_and_resume_ends_identical(model, tmp_path):
    args = ["shuffle", model, "--layer", "conv2", "--mode", "channel", *AUDIT]
    full = json.loads(run_cli(*args, "--json").stdout)
    out = tmp_path / "out"
    kept = out / "units"  # after the first batch, the sweep's unit is kept there
    status, printed, err = _signal_when(_start(*args, "--out", out), kept.exists, signal.SIGTERM)
    assert status == 143, err
    partial = json.loads((out / "shuffle-channel.json").read_text())
    assert (
        partial["complete"] is False and partial["stopped"] == "interrupted" and "INCOMPLETE (interrupted)" in printed
    )
    check_sweep(partial)
    r = run_cli(*args, "--out", out, "--resume", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout) == full
    assert not kept.exists()  # the sweep's files hold every number


def test_a_signal_during_prune_writes_nothing(model, tmp_path):
    out = tmp_path / "pruned.onnx"
    proc = _start("prune", model, "--target-macs", "0.3", *AUDIT, "--out", out)
    at = time.monotonic() + 2.8  # after the imports, in the work (3.6 s in all on 2 cores)
    status, _, err = _signal_when(proc, lambda: time.monotonic() > at, signal.SIGINT)
    assert status in (0, 130, -signal.SIGINT) and "Traceback" not in err, err
    written = {p.name for p in tmp_path.iterdir()}
    assert written in (set(), {"pruned.onnx", "pruned.json"}), written  # both or neither
    assert status == 130 or written, (status, written)  # a run the signal did not stop wrote both


def test_a_signal_during_impulse_leaves_all_its_files_or_none(model, tmp_path):
    """SIGTERM once the output folder appears: the files are written under a held section, so the run leaves all
    of an uninterrupted run's files or none. A signal that lands while they are written lets them finish and then
    stops the command (143 with every file: the case CI's loaded machine hit, which the test called a failure)."""
    reference = tmp_path / "reference"
    _start("impulse", model, "--out", reference).communicate(timeout=120)
    whole = sorted(p.name for p in reference.iterdir())
    assert "impulse.json" in whole
    out = tmp_path / "out"
    status, _, err = _signal_when(_start("impulse", model, "--out", out), out.exists, signal.SIGTERM)
    assert status in (0, 143, -signal.SIGTERM) and "Traceback" not in err, err
    written = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert written in ([], whole) and (status != 0 or written == whole), (status, written)


def test_an_interrupted_pruning_study_keeps_the_paper_report_marked_incomplete(mnist_dir, tmp_path, monkeypatch):
    from onnxredund.analyses import reproduce

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C in the study

    monkeypatch.setattr(reproduce, "with_prune_study", interrupted)
    out = tmp_path / "out"
    r = run_cli("-q", "reproduce", "--data", mnist_dir, "--limit", "256", "--device", "cpu", "--out", out)
    assert r.exit_code == 130 and "interrupted during the pruning study" in r.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["complete"] is False and results["prune_study"] is None and results["claims"]
    assert "The pruning study was interrupted" in (out / "report.html").read_text()
