"""Signals as exceptions, and sections a signal cannot cut (onnxredund.interrupts)."""

from __future__ import annotations

import os
import signal

import click
import pytest

from onnxredund.interrupts import Interrupted, deferred, exit_status, signals_interrupt


def test_exit_status_is_128_plus_the_signal_also_through_clicks_abort():
    assert exit_status(Interrupted(signal.SIGTERM)) == 143
    assert exit_status(Interrupted(signal.SIGINT)) == 130
    assert exit_status(KeyboardInterrupt()) == 130
    try:
        try:
            raise Interrupted(signal.SIGTERM)
        except KeyboardInterrupt as e:
            raise click.exceptions.Abort() from e  # what click makes of Ctrl-C
    except click.exceptions.Abort as abort:
        assert exit_status(abort) == 143


def test_sigterm_raises_interrupted_inside_and_the_old_handler_comes_back():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as caught, signals_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(10**6):  # the handler runs at the next bytecode; this loop never ends on its own
            pass
        pytest.fail("SIGTERM did not interrupt")
    assert caught.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_signal_in_a_deferred_section_is_raised_once_the_section_is_done():
    finished = []
    with pytest.raises(Interrupted) as caught, deferred():
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        finished.append("the whole section")
    assert finished == ["the whole section"] and caught.value.signum == signal.SIGTERM  # the first that came
    with deferred():
        finished.append("no signal, nothing raised")
    assert len(finished) == 2


def test_a_signal_in_a_section_held_inside_another_is_raised_when_the_outer_one_ends():
    finished = []
    with pytest.raises(Interrupted) as caught, signals_interrupt(), deferred():
        with deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            finished.append("inner")
        finished.append("the rest of the outer section")
    assert finished == ["inner", "the rest of the outer section"] and caught.value.signum == signal.SIGTERM


def test_a_signal_right_after_the_temporary_file_is_made_leaves_the_file_whole_and_nothing_else(tmp_path, monkeypatch):
    """The race CI met once: a signal between ``mkstemp`` and the cleanup's reach left a ``.tmp`` in the folder."""
    import tempfile

    from onnxredund.atomic import atomic_write

    made = tempfile.mkstemp

    def then_a_signal(*args, **kwargs):
        fd, name = made(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)  # its handler runs at the next bytecode, before the caller has the name
        return fd, name

    monkeypatch.setattr(tempfile, "mkstemp", then_a_signal)
    with pytest.raises(Interrupted), signals_interrupt():
        atomic_write(tmp_path / "unit.npz", b"the whole unit")
    assert [p.name for p in tmp_path.iterdir()] == ["unit.npz"]
    assert (tmp_path / "unit.npz").read_bytes() == b"the whole unit"


def test_a_signal_inside_numpys_zip_writer_leaves_the_checkpoint_whole_then_stops(tmp_path, monkeypatch):
    """The race CI met on a sweep: SIGTERM while ``np.savez`` had a member open made zipfile's cleanup raise its own
    ValueError ("Can't close the ZIP file while there is an open writing handle"), and the stop became a crash."""
    import zipfile

    import numpy as np

    from onnxredund.analyses.sweep_state import SweepState

    opened = zipfile.ZipFile.open

    def then_a_signal(self, *args, **kwargs):
        handle = opened(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)  # lands while the member is open for writing
        return handle

    monkeypatch.setattr(zipfile.ZipFile, "open", then_a_signal)
    state = SweepState(3, 96, {"cos_sum": np.arange(6.0).reshape(1, 2, 3)}, 1.5, key="k")
    with pytest.raises(Interrupted) as caught, signals_interrupt():
        state.save(tmp_path / "unit.npz")
    assert caught.value.signum == signal.SIGTERM
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["unit.npz"]
    again = SweepState.load(tmp_path / "unit.npz", "k")
    assert (again.batches_done, again.samples_done, again.seconds) == (3, 96, 1.5)
    np.testing.assert_array_equal(again.sums["cos_sum"], state.sums["cos_sum"])


def test_an_error_a_library_raised_while_a_signal_passed_through_exits_as_the_signal(tmp_path):
    """Not a traceback and status 1: the command stops with 128 + the signal, and says so in one line."""
    from click.testing import CliRunner

    from onnxredund.cli.app import _Group

    @click.group(cls=_Group)
    def group():
        pass

    @group.command()
    def cleanup_fails():
        try:
            raise Interrupted(signal.SIGTERM)
        finally:
            raise ValueError("Can't close the ZIP file while there is an open writing handle on it.")

    @group.command()
    def own_error():
        raise ValueError("a bug of its own")

    result = CliRunner().invoke(group, ["cleanup-fails"])
    assert result.exit_code == 143 and result.output.strip() == "onnxredund: interrupted"
    result = CliRunner().invoke(group, ["own-error"])
    assert result.exit_code == 1 and isinstance(result.exception, ValueError)
