"""The ``onnxredund`` command line: thin commands that parse, call one library function and render.

Owns: the click group and its error boundary (:mod:`.app`), the shared options (:mod:`.options`),
everything printed on the console (:mod:`.console`) and the commands (:mod:`.commands`). May import
every other part of the package; nothing imports it.

:func:`run` is the console command; ``main`` (the click group, with its commands) is loaded on first use.
"""

from __future__ import annotations

import importlib
import os
import sys

from onnxredund.interrupts import exit_status, signals_interrupt

__all__ = ["main", "run"]


def _group():
    """The click group with every command registered on it."""
    group = importlib.import_module("onnxredund.cli.app").main
    for command in importlib.import_module("onnxredund.cli.commands").COMMANDS:
        group.add_command(command)
    return group


def run() -> None:
    """The console command. Ctrl-C and SIGTERM stop it with 130 and 143 from its first instant, the import of
    its modules (onnx, onnxruntime, scipy: seconds on a loaded machine) included."""
    with signals_interrupt():
        try:
            group = _group()
        except KeyboardInterrupt as e:
            sys.stderr.write("onnxredund: interrupted\n")
            sys.stderr.flush()
            # nothing is written yet, and an extension module cut mid-import may not survive the interpreter's
            # shutdown (a status of -11 once under load, instead of 143): leave without one
            os._exit(exit_status(e))
        group()


def __getattr__(name: str):
    if name == "main":
        return _group()
    raise AttributeError(f"module 'onnxredund.cli' has no attribute {name!r}")
