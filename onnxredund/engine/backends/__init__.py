"""Where units of work run: in this process (:class:`LocalBackend`) or on a Ray cluster
(:class:`~onnxredund.engine.backends.ray_backend.RayBackend`).

A backend runs ``fn(context, unit, cache)`` for every unit and hands each result back as it finishes, in
whatever order; the caller merges in a fixed order, so where and in which order units ran never changes a
number. ``context`` is what every unit needs (the model, the data, the options), shipped once per worker;
``cache`` is a dict a worker keeps across units (onnxruntime sessions, which do not pickle, live there).
Ray is an optional extra: only :mod:`.ray_backend` imports it, and only when a Ray backend is made.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from onnxredund.choices import BACKENDS
from onnxredund.engine.backends.ray_backend import RayBackend
from onnxredund.engine.sweep import CleanPasses
from onnxredund.errors import OnnxRedundError

__all__ = ["BACKENDS", "Backend", "LocalBackend", "RayBackend", "make_backend"]


UnitFn = Callable[[Any, Any, dict], Any]


class Backend(Protocol):
    name: str
    workers: int
    in_process: bool  # runs the units in the caller's process (then they may report each batch as it ends)

    def run(self, fn: UnitFn, context: Any, units: Sequence, on_done: Callable[[int, Any], None]) -> None:
        """Run ``fn(context, unit, cache)`` for every unit; ``on_done(index, result)`` as each finishes."""

    def close(self) -> None: ...


class LocalBackend:
    """Every unit in this process, one after the other, in order."""

    name = "local"
    workers = 1
    in_process = True

    def __init__(self) -> None:
        self.close()

    def run(self, fn: UnitFn, context: Any, units: Sequence, on_done: Callable[[int, Any], None]) -> None:
        for i, unit in enumerate(units):
            on_done(i, fn(context, unit, self.cache))

    def close(self) -> None:
        # a sweep's sessions go when the next one's are made; its layer's clean runs serve the layer's next sweeps
        self.cache: dict = {"kept_runners": 1, "clean_passes": CleanPasses()}


def make_backend(name: str, *, address: str | None = None, workers: int | None = None, device: str = "auto") -> Backend:
    """The backend called ``name``: "local", or "ray" (on the cluster at ``address``, else ``$RAY_ADDRESS``,
    else a Ray started on this machine), with ``workers`` actors.

    Raises:
        OnnxRedundError: an unknown backend, or Ray not installed or not reachable.
    """
    if name == "local":
        if address or workers not in (None, 1):
            raise OnnxRedundError("`address` and `workers` go with `backend` ray")
        return LocalBackend()
    if name == "ray":
        return RayBackend(address=address, workers=workers, device=device)
    raise OnnxRedundError(f"no backend {name!r}; use one of {', '.join(BACKENDS)}")
