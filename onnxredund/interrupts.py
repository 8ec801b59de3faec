"""Stopping a long command with Ctrl-C (SIGINT) or SIGTERM, and never writing half a result.

The command line installs :func:`signals_interrupt` for the whole command: both signals raise
:class:`Interrupted` (a ``KeyboardInterrupt``, so library code needs to know only that) in the main
thread, carrying the signal, and the command exits with ``128 + signal`` (130, 143). The loops commit a
batch's sums together with its sample count in one assignment, so the exception lands before a batch
counts or after, never between. A section that must not be cut (writing files that belong together: a
pruned model and its plan, a report and its results) runs under :func:`deferred`: a signal there is
held, and raised when the section ends.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["Interrupted", "deferred", "exit_status", "signal_behind", "signals_interrupt", "stop_status"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received: list[int] = []  # the signals the handlers turned into Interrupted, in order
_holders: set = set()  # the handlers of the held sections now open


class Interrupted(KeyboardInterrupt):
    """A stop asked for by a signal (SIGINT or SIGTERM)."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


def exit_status(error: BaseException | None) -> int:
    """The exit status of a command stopped by ``error`` (or what caused it): 128 + its signal, 130 for a
    plain ``KeyboardInterrupt``."""
    while error is not None:
        if isinstance(error, Interrupted):
            return 128 + error.signum
        if isinstance(error, KeyboardInterrupt):
            return 128 + signal.SIGINT
        error = error.__cause__ or error.__context__
    return 128 + signal.SIGINT


def signal_behind(error: BaseException) -> Interrupted | None:
    """The signal that caused ``error``, where it was raised while a library cleaned up after one (numpy's
    ``savez`` closing its zip file while :class:`Interrupted` passes through: "Can't close the ZIP file while
    there is an open writing handle"); None for an error of its own."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, Interrupted):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def stop_status() -> int:
    """The exit status for a command a signal stopped, where the loop that caught it returned normally:
    128 + the last signal received (130 when none came through the handlers: a ``KeyboardInterrupt``)."""
    return 128 + (_received[-1] if _received else signal.SIGINT)


def _raise(signum, frame) -> None:
    _received.append(signum)
    raise Interrupted(signum)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def signals_interrupt() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` while inside (the previous handlers come back after)."""
    if not _in_main_thread():
        yield
        return
    previous = {s: signal.signal(s, _raise) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM while inside; the first one that came is raised as :class:`Interrupted` on
    leaving (after the section finished: its writes are whole). Inside another held section, it is passed on to
    that one's holder instead (the outer section's writes stay whole too)."""
    if not _in_main_thread():
        yield
        return
    held: list[int] = []

    def hold(signum, frame) -> None:
        held.append(signum)

    _holders.add(hold)
    previous = {s: signal.signal(s, hold) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _holders.discard(hold)
    if held:
        outer = previous[signal.Signals(held[0])]
        if outer in _holders:  # an enclosing held section's: it raises the signal when it ends
            outer(held[0], None)
            return
        _received.append(held[0])
        raise Interrupted(held[0])
