"""The one exception type for user mistakes, and the one way to quote another exception.

Owns: :class:`OnnxRedundError` and :func:`first_line`. Imports nothing of the package.
"""

from __future__ import annotations

__all__ = ["OnnxRedundError", "first_line"]


class OnnxRedundError(Exception):
    """A mistake in what the user gave us (a file, a flag, data).

    The message says what is wrong and how to fix it, on one line. The CLI prints it
    without a traceback and exits with status 2. Bugs stay ordinary exceptions.
    """


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first non-empty line of an exception's message (at most ``limit`` characters), or its type's name."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()[:limit]
    return type(exc).__name__
