"""The one exception type for user mistakes."""

from __future__ import annotations

__all__ = ["OnnxRedundError"]


class OnnxRedundError(Exception):
    """A mistake in what the user gave us (a file, a flag, data).

    The message says what is wrong and how to fix it, on one line. The CLI prints it
    without a traceback and exits with status 2. Bugs stay ordinary exceptions.
    """
