"""Units of work on a Ray cluster: one actor per worker, each keeping its onnxruntime sessions across units.

Actors are restarted when their process dies and the unit they ran is tried again elsewhere (Ray's
``max_restarts`` / ``max_task_retries``), so a lost worker costs time, never a result. On a GPU cluster
each actor takes one GPU (device 0 inside it); on CPUs each takes an equal share of the cores and sets
its threads to it. Ray is imported here only, and only when a backend is made: it is an optional extra.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from onnxredund.errors import OnnxRedundError

__all__ = ["RayBackend", "Worker"]

_INSTALL = 'Ray is not installed; install the extra: pip install "onnxredund[ray]"'
_IN_FLIGHT = 2  # units queued per actor, so it never waits for the driver between units


class Worker:
    """The actor's body: contexts by key, a cache that outlives units, and the units it is handed."""

    def __init__(self, threads: int) -> None:
        self.contexts: dict[str, Any] = {}
        self.cache: dict = {"threads": threads}
        if threads:
            os.environ["OMP_NUM_THREADS"] = str(threads)

    def pid(self) -> int:
        return os.getpid()

    def run(self, key: str, boxed: list, fn, unit) -> Any:
        """Run one unit; the context (a reference in a list, so Ray does not fetch it for every unit) is
        fetched once per job, and the cache is kept as long as the job."""
        if key not in self.contexts:
            self.contexts = {key: _ray().get(boxed[0])}
            self.cache = {"threads": self.cache.get("threads", 0)}
        return fn(self.contexts[key], unit, self.cache)


def _ray():
    try:
        import ray
    except ImportError:
        raise OnnxRedundError(_INSTALL) from None
    return ray


class RayBackend:
    """Units on Ray actors (see the module docstring)."""

    name = "ray"
    in_process = False

    def __init__(self, *, address: str | None = None, workers: int | None = None, device: str = "auto") -> None:
        ray = _ray()
        address = address or os.environ.get("RAY_ADDRESS") or None
        if not ray.is_initialized():
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
            except (ConnectionError, RuntimeError, ValueError) as e:
                where = address or "a Ray on this machine"
                raise OnnxRedundError(f"cannot reach Ray at {where}: {str(e).splitlines()[0]}") from None
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
        use_gpu = device == "cuda" or (device == "auto" and gpus > 0)
        if use_gpu and gpus == 0:
            raise OnnxRedundError("`device` cuda asked for, but the Ray cluster has no GPU")
        most = gpus if use_gpu else cpus
        self.workers = min(workers or most, most) if most else 1
        if workers and workers > most:
            raise OnnxRedundError(f"`workers` {workers}: the Ray cluster has {most} {'GPUs' if use_gpu else 'CPUs'}")
        share = max(1, cpus // self.workers) if not use_gpu else 1
        options = {"max_restarts": -1, "max_task_retries": -1}
        options |= {"num_gpus": 1, "num_cpus": 1} if use_gpu else {"num_cpus": share}
        actor = ray.remote(**options)(Worker)
        self.device = "cuda" if use_gpu else "cpu"
        self.actors = [actor.remote(0 if use_gpu else share) for _ in range(self.workers)]
        self.ray = ray

    def pids(self) -> list[int]:
        """The process id of every actor (the tests kill one)."""
        return self.ray.get([a.pid.remote() for a in self.actors])

    def run(self, fn, context: Any, units: Sequence, on_done: Callable[[int, Any], None]) -> None:
        ray = self.ray
        # one key per run: an id() is reused once its object is gone, and a worker would then run a new job's
        # units on the last job's context (a sweep of another job's layers and modes: a KeyError, seen in CI)
        key = uuid.uuid4().hex
        ref = ray.put(context)
        todo = list(range(len(units)))[::-1]
        pending: dict = {}
        load = dict.fromkeys(range(len(self.actors)), 0)
        try:
            while todo or pending:
                for a in load:
                    while todo and load[a] < _IN_FLIGHT:
                        i = todo.pop()
                        pending[self.actors[a].run.remote(key, [ref], fn, units[i])] = (i, a)
                        load[a] += 1
                done, _ = ray.wait(list(pending), num_returns=1)
                for r in done:
                    i, a = pending.pop(r)
                    load[a] -= 1
                    try:
                        result = ray.get(r)
                    except ray.exceptions.RayTaskError as e:  # the unit's own error, raised as itself
                        raise e.cause from None
                    on_done(i, result)
        except KeyboardInterrupt:
            for r in pending:
                ray.cancel(r, force=True)
            raise

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)
        self.actors = []
