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
