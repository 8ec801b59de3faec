"""The ``onnxredund`` command line: thin commands that parse, call one library function and render.

Owns: the click group and its error boundary (:mod:`.app`), the shared options (:mod:`.options`),
everything printed on the console (:mod:`.console`) and the commands (:mod:`.commands`). May import
every other part of the package; nothing imports it.
"""

from __future__ import annotations

from onnxredund.cli import commands  # noqa: F401  (registers the commands on the group)
from onnxredund.cli.app import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
