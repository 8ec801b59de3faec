"""Shuffle sweeps as units of work on a backend (this process or a Ray cluster), merged in a fixed order.

A unit is one (layer, mode, channel chunk): the channels one fast-path run takes (the same chunks a
single-process sweep runs), over every batch of the data. Every permutation comes from (seed, repeat,
channel, batch index) and every sum of a channel is taken over the batches in order inside one unit, so a
unit's numbers do not depend on where or when it runs: merging places each unit's channels in the sweep's
arrays (no arithmetic), and a distributed sweep gives the single-process sweep's numbers bit for bit.

Finished units are kept as they finish (``<checkpoint_dir>/units/*.npz``); ``resume`` skips them, on either
backend. Ctrl-C cancels the units in flight; what finished stays.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from onnxredund.analyses.sequential import EXHAUSTIVE, Estimation, in_random_order
from onnxredund.analyses.shuffle import (
    ShuffleResult,
    SweepOptions,
    effect_meter,
    new_state,
    run_shuffle,
    sweep_result,
)
from onnxredund.analyses.sweep_state import SweepState, sweep_key
from onnxredund.choices import BATCH_SIZE
from onnxredund.data import DataSource
from onnxredund.engine.analysis_models import fast_path_blocker
from onnxredund.engine.backends import Backend
from onnxredund.engine.runtime import resolve_device
from onnxredund.engine.sweep import SweepRunner, chunk_size
from onnxredund.errors import OnnxRedundError
from onnxredund.interrupts import Interrupted, stop_status
from onnxredund.model import ConvLayer, Model

__all__ = ["SweepJob", "SweepUnit", "job_for", "plan_units", "run_sweep_units", "run_unit"]

log = logging.getLogger(__name__)

_KEPT_RUNNERS = 4  # sessions a worker keeps (the most recent layers and modes)


@dataclass(frozen=True)
class SweepUnit:
    """Channels ``channels`` (from position ``first`` of the sweep's channel list) of one layer and mode."""

    layer: str
    mode: str
    first: int
    channels: tuple[int, ...]

    @property
    def key(self) -> str:
        return f"{self.layer}.{self.mode}.{self.first}"


@dataclass(frozen=True)
class SweepJob:
    """What every unit needs, shipped once to each worker."""

    model: Model
    data: DataSource
    channels: dict[tuple[str, str], tuple[int, ...]]  # the sweep's channel list per (layer, mode)
    chunks: dict[str, int]  # channels per run per layer (1 on the direct path)
    seed: int = 0
    batch_size: int = BATCH_SIZE
    repeats: int = 1
    exact_path: bool = False
    device: str = "auto"
    estimation: Estimation = EXHAUSTIVE
    unit_seconds: float | None = None  # a sequential unit stops past these, its channels measured on the minimum


def plan_units(job: SweepJob, sweeps: list[tuple[ConvLayer, str]]) -> list[SweepUnit]:
    """The units of ``sweeps`` ((layer, mode) pairs), chunked as a single-process sweep chunks them."""
    units = []
    for layer, mode in sweeps:
        channels, k = job.channels[(layer.name, mode)], job.chunks[layer.name]
        units += [SweepUnit(layer.name, mode, c0, tuple(channels[c0 : c0 + k])) for c0 in range(0, len(channels), k)]
    return units


def job_for(
    model: Model,
    data: DataSource,
    sweeps: list[tuple[ConvLayer, str, list[int]]],
    options: SweepOptions | None = None,
    *,
    unit_seconds: float | None = None,
) -> SweepJob:
    """A job for the sweeps ``(layer, mode, channels)`` run as ``options`` say, with the chunk size each layer's
    fast path takes (``options.chunk``, else sized to memory; default options: :class:`SweepOptions`'s);
    ``unit_seconds`` as :class:`SweepJob` takes it."""
    o = options or SweepOptions()
    device = resolve_device(o.device)
    chunks = {}
    for layer, _, _ in sweeps:
        direct = o.exact_path or fast_path_blocker(model, layer) is not None
        chunks[layer.name] = 1 if direct else o.chunk or chunk_size(model, layer, device, o.batch_size)
    return SweepJob(
        model,
        data,
        {(layer.name, m): tuple(c) for layer, m, c in sweeps},
        chunks,
        seed=o.seed,
        batch_size=o.batch_size,
        repeats=o.repeats,
        exact_path=o.exact_path,
        device=o.device,
        estimation=o.estimation,
        unit_seconds=unit_seconds,
    )


def run_unit(job: SweepJob, unit: SweepUnit, cache: dict) -> dict:
    """One unit's sums over every batch (its channels only), with the path and device that ran it."""
    layer = job.model.layer(unit.layer)
    runner = cache.get((unit.layer, unit.mode))
    if runner is None:
        device = resolve_device(job.device)
        runner = SweepRunner(
            job.model,
            layer,
            unit.mode,
            device,
            exact=job.exact_path,
            chunk=job.chunks[unit.layer],
            batch_size=job.batch_size,
            threads=cache.get("threads", 0),
        )
        runners = [k for k in cache if isinstance(k, tuple)]
        for old in runners[: max(0, len(runners) - _KEPT_RUNNERS + 1)]:
            del cache[old]
        cache[(unit.layer, unit.mode)] = runner
    meter = effect_meter(job.model, job.data, job.repeats, len(unit.channels))
    states = [new_state(meter, layer)]  # run_shuffle commits each batch as a new state: the last is the unit's
    result = run_shuffle(
        job.model,
        layer,
        job.data,
        mode=unit.mode,
        channels=list(unit.channels),
        batch_size=job.batch_size,
        repeats=job.repeats,
        seed=job.seed,
        runner=runner,
        state=states[0],
        on_batch=states.append,
        estimation=job.estimation,
        max_seconds=job.unit_seconds,
    )
    if result.stopped == "interrupted":  # by a signal in this process: a part of a unit is not a finished unit
        raise Interrupted(stop_status() - 128)
    last = states[-1]
    return {
        "sums": last.sums,
        "samples": last.samples_done,
        "route": runner.path,
        "device": runner.device,
        "stopped": result.stopped or "",
    }


@dataclass
class _Sweep:
    """The merge of one (layer, mode): units in, a result out once all are in."""

    layer: ConvLayer
    mode: str
    units: list[SweepUnit]
    results: dict[int, dict] = field(default_factory=dict)

    def done(self) -> bool:
        return len(self.results) == len(self.units)

    def result(self, job: SweepJob) -> ShuffleResult:
        channels = list(job.channels[(self.layer.name, self.mode)])
        meter = effect_meter(job.model, job.data, job.repeats, len(channels))
        state = new_state(meter, self.layer)
        for unit in self.units:  # a fixed order; each channel's numbers come whole from one unit
            for name, value in self.results[unit.first]["sums"].items():
                state.sums[name][:, unit.first : unit.first + len(unit.channels)] = value
        first = self.results[0]
        state.samples_done = max(r["samples"] for r in self.results.values())  # sequential units may stop early
        state.batches_done = -(-state.samples_done // job.batch_size)
        stopped = next((r["stopped"] for r in self.results.values() if r.get("stopped")), None)
        args = (self.mode, job.seed, job.repeats, job.batch_size)
        route = (first["route"], first["device"])
        data = in_random_order(job.data, job.seed) if job.estimation.sequential else job.data
        return sweep_result(job.model, self.layer, data, route, meter, state, args, channels, stopped, job.estimation)


def _unit_path(checkpoint_dir: Path, unit: SweepUnit) -> Path:
    return checkpoint_dir / "units" / f"{unit.key}.npz"


def _unit_key(job: SweepJob, unit: SweepUnit) -> str:
    base = sweep_key(
        job.model,
        job.model.layer(unit.layer),
        job.data,
        mode=unit.mode,
        channels=list(job.channels[(unit.layer, unit.mode)]),
        batch_size=job.batch_size,
        repeats=job.repeats,
        seed=job.seed,
        exact_path=job.exact_path,
        estimation=job.estimation,
    )
    seconds = f"|{job.unit_seconds} s" if job.estimation.sequential and job.unit_seconds else ""
    return f"{base}{seconds}|unit {unit.first}+{len(unit.channels)}|chunk {job.chunks[unit.layer]}"


def _save_unit(checkpoint_dir: Path, job: SweepJob, unit: SweepUnit, result: dict) -> None:
    route = f"{result['route']}|{result['device']}|{result['stopped']}"
    state = SweepState(0, result["samples"], {**result["sums"], "route": np.array(route)}, key=_unit_key(job, unit))
    state.save(_unit_path(checkpoint_dir, unit))


def _load_unit(checkpoint_dir: Path, job: SweepJob, unit: SweepUnit) -> dict | None:
    state = SweepState.load(_unit_path(checkpoint_dir, unit), _unit_key(job, unit))
    if state is None:
        return None
    sums = dict(state.sums)
    route, device, stopped = str(sums.pop("route")).split("|")
    return {"sums": sums, "samples": state.samples_done, "route": route, "device": device, "stopped": stopped}


def run_sweep_units(
    job: SweepJob,
    sweeps: list[tuple[ConvLayer, str]],
    backend: Backend,
    *,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    progress: Callable[[str, int, int], Callable[[int], None]] | None = None,
    on_result: Callable[[ShuffleResult], None] | None = None,
) -> tuple[list[ShuffleResult], bool]:
    """Run ``sweeps`` ((layer, mode) pairs) as units on ``backend``; returns the results of the sweeps whose
    units all finished, in the order of ``sweeps``, and whether every sweep did (False after Ctrl-C).

    Args:
        checkpoint_dir: where finished units are kept; ``resume`` takes those already there.
        progress: one bar over all units: ``progress(label, units, units already done)``.
        on_result: called with each sweep's result as soon as its last unit is in.
    """
    units = plan_units(job, sweeps)
    merges = {
        (layer.name, mode): _Sweep(layer, mode, [u for u in units if (u.layer, u.mode) == (layer.name, mode)])
        for layer, mode in sweeps
    }
    if checkpoint_dir is not None:
        (checkpoint_dir / "units").mkdir(parents=True, exist_ok=True)
    done: list[ShuffleResult] = []

    def finish(unit: SweepUnit, result: dict) -> None:
        merge = merges[(unit.layer, unit.mode)]
        merge.results[unit.first] = result
        if merge.done():
            out = merge.result(job)
            done.append(out)
            if on_result is not None:
                on_result(out)

    todo = []
    for unit in units:
        kept = _load_unit(checkpoint_dir, job, unit) if (resume and checkpoint_dir is not None) else None
        if kept is None:
            todo.append(unit)
        else:
            finish(unit, kept)
    if resume and len(todo) == len(units):
        raise OnnxRedundError(f"nothing to resume in {checkpoint_dir} (no finished units there); run without `resume`")
    bar = (
        progress(
            f"{len(units)} units on {backend.name} ({backend.workers} workers)", len(units), len(units) - len(todo)
        )
        if progress
        else None
    )
    finished = len(units) - len(todo)
    t0 = time.perf_counter()

    def on_done(i: int, result: dict) -> None:
        nonlocal finished
        unit = todo[i]
        if checkpoint_dir is not None:
            _save_unit(checkpoint_dir, job, unit, result)
        finished += 1
        if bar is not None:
            bar(1)
        finish(unit, result)

    complete = True
    try:
        backend.run(run_unit, job, todo, on_done)
    except KeyboardInterrupt:
        complete = False
        log.warning(
            "interrupted after %d of %d units (%.0f s); the finished ones are kept",
            finished,
            len(units),
            time.perf_counter() - t0,
        )
    order = {key: i for i, key in enumerate((layer.name, m) for layer, m in sweeps)}
    return sorted(done, key=lambda r: order[(r.layer, r.mode)]), complete
