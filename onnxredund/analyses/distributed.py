"""Shuffle sweeps run as units of work on a backend, this process or a Ray cluster: the one way sweeps run, with
one checkpoint format.

A unit is a set of channels of one (layer, mode) sweep (positions in the sweep's channel list), run over every
batch of the data. Every permutation comes from (seed, repeat, channel, batch index) and every sum of a channel
is taken over the batches in order, so a channel's numbers do not depend on which unit holds it, where or when
it runs: merging places each unit's channels in the sweep's arrays (no arithmetic), and a sweep gives the same
numbers bit for bit whatever its units.

How a backend cuts a sweep into units:

- in this process (:class:`~onnxredund.engine.backends.LocalBackend`): one unit per sweep, its channels in runs
  of the fast path's chunk, kept after every batch (an interrupted sweep reports the batches that finished);
- elsewhere (Ray): one unit per chunk, so that the workers share a sweep, kept when it finishes.

Kept units are ``<checkpoint_dir>/units/<layer index>.<mode>.<first position>+<count>.npz``, each a
:class:`~onnxredund.analyses.sweep_state.SweepState` over its positions, keyed by the sweep's arguments and the
chunk; ``resume`` takes the finished ones and continues the others from their last batch, on either backend.
"""

from __future__ import annotations

import dataclasses
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
from onnxredund.engine.backends import Backend, LocalBackend
from onnxredund.engine.runtime import resolve_device
from onnxredund.engine.sweep import SweepRunner, chunk_size
from onnxredund.errors import OnnxRedundError
from onnxredund.interrupts import Interrupted, stop_status
from onnxredund.model import ConvLayer, Model

__all__ = ["SweepJob", "SweepUnit", "clear_units", "job_for", "plan_units", "run_sweeps", "run_unit"]

log = logging.getLogger(__name__)

_KEPT_RUNNERS = 4  # sessions a worker keeps (the latest layers and modes; a cache's "kept_runners" says otherwise)
_UNITS = "units"  # the folder of the kept units, in the checkpoint folder
_RUNNING = "running"  # a kept unit's ``stopped`` while it still runs: continued on resume, not taken
_FINISHED = ("", "time budget")  # a kept unit's ``stopped`` once it has finished (a sequential one may stop early)


@dataclass(frozen=True)
class SweepUnit:
    """Channels at ``positions`` of the channel list of one layer and mode; ``start``: the sums of the batches
    they already ran (a resumed unit), else None."""

    layer: str
    mode: str
    positions: tuple[int, ...]
    start: SweepState | None = field(default=None, compare=False, repr=False)


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
    unit_seconds: float | None = None  # a unit stops past these (once its channels have their minimum)

    def unit_channels(self, unit: SweepUnit) -> list[int]:
        channels = self.channels[(unit.layer, unit.mode)]
        return [channels[p] for p in unit.positions]


def plan_units(job: SweepJob, sweeps: list[tuple[ConvLayer, str]], *, whole: bool = False) -> list[SweepUnit]:
    """The units of ``sweeps`` ((layer, mode) pairs): one per sweep (``whole``), else one per chunk of the fast
    path."""
    units = []
    for layer, mode in sweeps:
        n = len(job.channels[(layer.name, mode)])
        units += _cut(layer.name, mode, list(range(n)), n if whole else job.chunks[layer.name])
    return units


def _cut(layer: str, mode: str, positions: list[int], size: int, start: SweepState | None = None) -> list[SweepUnit]:
    size = max(1, size)
    return [
        SweepUnit(layer, mode, tuple(positions[i : i + size]), _slice(start, i, i + size))
        for i in range(0, len(positions), size)
    ]


def _slice(state: SweepState | None, i: int, j: int) -> SweepState | None:
    """The state of positions i..j of ``state``'s own (every sum holds its channels on axis 1)."""
    if state is None:
        return None
    return dataclasses.replace(state, sums={k: v[:, i:j].copy() for k, v in state.sums.items()})


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


def run_unit(
    job: SweepJob, unit: SweepUnit, cache: dict, on_batch: Callable[[SweepUnit, dict], None] | None = None
) -> dict:
    """One unit's sums over every batch (its channels only), with the path and device that ran it.

    In the driver's process (``on_batch`` given), each batch's outcome is handed to ``on_batch(unit, outcome)``
    and a signal ends the unit with the batches that finished (``stopped`` "interrupted"); in a worker, it
    raises :class:`Interrupted`."""
    layer = job.model.layer(unit.layer)
    runner = _runner(job, unit, cache)
    channels = job.unit_channels(unit)

    def outcome(state: SweepState, stopped: str) -> dict:
        return {
            "sums": state.sums,
            "samples": state.samples_done,
            "seconds": state.seconds,
            "route": runner.path,
            "device": runner.device,
            "stopped": stopped,
        }

    meter = effect_meter(job.model, job.data, job.repeats, len(channels))
    states = [unit.start or new_state(meter, layer)]  # run_shuffle commits each batch as a new state

    def commit(state: SweepState) -> None:
        states.append(state)
        if on_batch is not None:
            on_batch(unit, outcome(state, _RUNNING))

    result = run_shuffle(
        job.model,
        layer,
        job.data,
        mode=unit.mode,
        channels=channels,
        batch_size=job.batch_size,
        repeats=job.repeats,
        seed=job.seed,
        runner=runner,
        state=states[0],
        on_batch=commit,
        estimation=job.estimation,
        max_seconds=job.unit_seconds,
        clean_passes=cache.get("clean_passes"),
    )
    if result.stopped == "interrupted" and on_batch is None:  # a part of a unit in a worker is not a finished unit
        raise Interrupted(stop_status() - 128)
    return outcome(states[-1], result.stopped or "")


def _runner(job: SweepJob, unit: SweepUnit, cache: dict) -> SweepRunner:
    """The sessions of the unit's layer and mode, kept in the worker's ``cache`` for the next units."""
    runner = cache.get((unit.layer, unit.mode))
    if runner is None:
        runner = SweepRunner(
            job.model,
            job.model.layer(unit.layer),
            unit.mode,
            resolve_device(job.device),
            exact=job.exact_path,
            chunk=job.chunks[unit.layer],
            batch_size=min(job.batch_size, len(job.data)),
            threads=cache.get("threads", 0),
        )
        runners = [k for k in cache if isinstance(k, tuple)]
        for old in runners[: max(0, len(runners) - cache.get("kept_runners", _KEPT_RUNNERS) + 1)]:
            del cache[old]
        cache[(unit.layer, unit.mode)] = runner
    return runner


@dataclass
class _Sweep:
    """The merge of one (layer, mode): each position's outcome in, a result out once every position is in."""

    layer: ConvLayer
    mode: str
    size: int
    outcomes: dict[tuple[int, ...], dict] = field(default_factory=dict)  # positions -> outcome

    def put(self, positions: tuple[int, ...], outcome: dict) -> None:
        self.outcomes[positions] = outcome

    def done(self) -> bool:
        return sum(len(p) for p in self.outcomes) == self.size

    def result(self, job: SweepJob) -> ShuffleResult:
        channels = list(job.channels[(self.layer.name, self.mode)])
        meter = effect_meter(job.model, job.data, job.repeats, len(channels))
        state = new_state(meter, self.layer)
        for positions, outcome in self.outcomes.items():  # each channel's numbers come whole from one unit
            for name, value in outcome["sums"].items():
                state.sums[name][:, list(positions)] = value
        outcomes = [self.outcomes[p] for p in sorted(self.outcomes)]
        state.samples_done = max(o["samples"] for o in outcomes)  # sequential units may stop early
        state.batches_done = -(-state.samples_done // job.batch_size)
        state.seconds = max(o.get("seconds", 0.0) for o in outcomes)
        stops = [o["stopped"] for o in outcomes if o["stopped"]]
        stopped = "interrupted" if "interrupted" in stops else (stops[0] if stops else None)
        args = (self.mode, job.seed, job.repeats, job.batch_size)
        route = (outcomes[0]["route"], outcomes[0]["device"])
        data = in_random_order(job.data, job.seed) if job.estimation.sequential else job.data
        return sweep_result(job.model, self.layer, data, route, meter, state, args, channels, stopped, job.estimation)


class _Kept:
    """The units kept in ``<folder>/units`` for one job: reading what a resume starts from, writing as they go."""

    def __init__(self, folder: Path | None, job: SweepJob, *, strict: bool) -> None:
        self.folder = None if folder is None else Path(folder) / _UNITS
        self.job = job
        self.strict = strict  # a kept unit of other arguments: an error (else: started again, said in the log)

    def _key(self, layer: str, mode: str) -> str:
        job = self.job
        base = sweep_key(
            job.model,
            job.model.layer(layer),
            job.data,
            mode=mode,
            channels=list(job.channels[(layer, mode)]),
            batch_size=job.batch_size,
            repeats=job.repeats,
            seed=job.seed,
            exact_path=job.exact_path,
            estimation=job.estimation,
        )
        return f"{base}|chunk {job.chunks[layer]}"  # not the seconds a unit may take: a resume has other time left

    def _files(self, layer: str, mode: str) -> list[Path]:
        index = self.job.model.layer(layer).index
        return sorted(self.folder.glob(f"{index}.{mode}.*.npz")) if self.folder else []

    def save(self, unit: SweepUnit, outcome: dict) -> None:
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        route = f"{outcome['route']}|{outcome['device']}|{outcome['stopped']}"
        sums = {**outcome["sums"], "route": np.array(route), "positions": np.array(unit.positions)}
        key = self._key(unit.layer, unit.mode)
        state = SweepState(0, outcome["samples"], sums, outcome.get("seconds", 0.0), key=key)
        index = self.job.model.layer(unit.layer).index
        state.save(self.folder / f"{index}.{unit.mode}.{unit.positions[0]}+{len(unit.positions)}.npz")

    def load(self, layer: str, mode: str) -> dict[int, tuple[dict, bool]]:
        """Per position, the best kept outcome (finished before running, then the most batches) and whether it
        finished."""
        best: dict[int, tuple[dict, bool]] = {}
        for path in self._files(layer, mode):
            try:
                state = SweepState.load(path, self._key(layer, mode))
            except OnnxRedundError as e:
                if self.strict:
                    raise
                log.warning("%s %s starts again: %s", layer, mode, e)
                continue
            sums = dict(state.sums)
            route, device, stopped = str(sums.pop("route")).split("|")
            positions = [int(p) for p in sums.pop("positions")]
            finished = stopped in _FINISHED
            for i, p in enumerate(positions):
                outcome = {
                    "sums": {k: v[:, i : i + 1] for k, v in sums.items()},
                    "samples": state.samples_done,
                    "seconds": state.seconds,
                    "route": route,
                    "device": device,
                    "stopped": stopped if finished else "",
                }
                old = best.get(p)
                if old is None or (finished, state.samples_done) > (old[1], old[0]["samples"]):
                    best[p] = (outcome, finished)
        return best

    def clear(self, layer: str, mode: str) -> None:
        if self.folder is not None:
            _remove(self._files(layer, mode), self.folder)


def clear_units(checkpoint_dir: Path) -> None:
    """Remove every kept unit in ``checkpoint_dir`` (a finished run's results hold their numbers)."""
    folder = Path(checkpoint_dir) / _UNITS
    _remove(list(folder.glob("*.npz")), folder)


def _remove(paths: list[Path], folder: Path) -> None:
    """Remove ``paths``, and ``folder`` if that leaves it empty."""
    for path in paths:
        path.unlink(missing_ok=True)
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def _stack(outcomes: list[dict], batch_size: int) -> SweepState:
    """One state over the positions of ``outcomes`` (kept at the same batch), in their order."""
    first = outcomes[0]
    sums = {k: np.concatenate([o["sums"][k] for o in outcomes], axis=1) for k in first["sums"]}
    return SweepState(-(-first["samples"] // batch_size), first["samples"], sums, first["seconds"])


def _todo(job: SweepJob, layer: ConvLayer, mode: str, kept: dict, whole: bool) -> tuple[dict, list[SweepUnit]]:
    """The finished positions' outcomes and the units left of one sweep, the ones kept running continued."""
    n = len(job.channels[(layer.name, mode)])
    finished = {p: o for p, (o, done) in kept.items() if done}
    running: dict[int, list[int]] = {}  # samples done -> positions that ran so far
    for p in range(n):
        if p not in finished:
            running.setdefault(kept[p][0]["samples"] if p in kept else 0, []).append(p)
    units = []
    for samples, positions in sorted(running.items()):
        start = _stack([kept[p][0] for p in positions], job.batch_size) if samples else None
        units += _cut(layer.name, mode, positions, len(positions) if whole else job.chunks[layer.name], start)
    return finished, units


def run_sweeps(
    job: SweepJob,
    sweeps: list[tuple[ConvLayer, str]],
    backend: Backend | None = None,
    *,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    strict: bool = True,
    progress: Callable[[str, int, int], Callable[[int], None]] | None = None,
    on_result: Callable[[ShuffleResult], None] | None = None,
) -> tuple[list[ShuffleResult], bool]:
    """Run ``sweeps`` ((layer, mode) pairs) on ``backend`` (default: this process); returns the results of the
    sweeps that finished, in the order of ``sweeps`` (in this process, an interrupted one too, marked
    incomplete), and whether every sweep finished (False after a signal).

    Args:
        checkpoint_dir: where units are kept; ``resume`` takes the finished ones there and continues the rest.
        strict: a resume must find kept units, of these arguments (else what it finds of other arguments is left
            and those sweeps start again).
        progress: ``progress(label, total, done)`` returns a callback taking what finished since: in this
            process one bar per sweep over its samples, on another backend one over all units.
        on_result: called with each sweep's result as soon as its last unit is in.
    """
    backend = backend or LocalBackend()
    whole = backend.in_process
    kept = _Kept(checkpoint_dir, job, strict=strict)
    merges = {(layer.name, mode): _Sweep(layer, mode, len(job.channels[(layer.name, mode)])) for layer, mode in sweeps}
    done: list[ShuffleResult] = []

    def finish(layer: str, mode: str, positions: tuple[int, ...] | None, outcome: dict | None) -> None:
        merge = merges[(layer, mode)]
        if positions is not None:
            merge.put(positions, outcome)
        if merge.done():
            out = merge.result(job)
            done.append(out)
            if on_result is not None:
                on_result(out)

    todo: list[SweepUnit] = []
    taken = False
    for layer, mode in sweeps:
        if not resume:  # a new run: what an earlier one kept of this sweep goes
            kept.clear(layer.name, mode)
        found = kept.load(layer.name, mode) if resume else {}
        taken = taken or bool(found)
        finished, units = _todo(job, layer, mode, found, whole)
        for p, outcome in finished.items():
            merges[(layer.name, mode)].put((p,), outcome)
        todo += units
    if resume and strict and not taken:
        raise OnnxRedundError(f"nothing to resume in {checkpoint_dir} (no kept units there); run without `resume`")
    for layer, mode in sweeps:  # sweeps whose every unit was kept finished
        if merges[(layer.name, mode)].done():
            finish(layer.name, mode, None, None)
    complete = True
    t0 = time.perf_counter()
    try:
        if whole:
            _run_here(job, todo, backend, kept, progress, finish)
        else:
            _run_there(job, todo, backend, kept, progress, finish, len(plan_units(job, sweeps)))
    except KeyboardInterrupt:
        complete = False
        log.warning("interrupted after %.0f s; what finished is kept", time.perf_counter() - t0)
    order = {key: i for i, key in enumerate((layer.name, m) for layer, m in sweeps)}
    return sorted(done, key=lambda r: order[(r.layer, r.mode)]), complete


def _run_here(job: SweepJob, todo: list[SweepUnit], backend: Backend, kept: _Kept, progress, finish) -> None:
    """The units in this process: each kept after every batch, a bar per unit over its samples; a unit a signal
    stopped is merged with the batches it finished, and ends the run (KeyboardInterrupt)."""
    bars: dict[SweepUnit, tuple[Callable[[int], None] | None, list[int]]] = {}

    def on_batch(unit: SweepUnit, outcome: dict) -> None:
        kept.save(unit, outcome)
        bar, last = bars[unit]
        if bar is not None:
            bar(outcome["samples"] - last[0])
        last[0] = outcome["samples"]

    def run(job: SweepJob, unit: SweepUnit, cache: dict) -> dict:
        start = unit.start.samples_done if unit.start else 0
        bar = progress(f"{unit.layer} {unit.mode}", len(job.data), start) if progress else None
        bars[unit] = (bar, [start])
        return run_unit(job, unit, cache, on_batch)

    def on_done(i: int, outcome: dict) -> None:
        unit = todo[i]
        kept.save(unit, outcome)
        finish(unit.layer, unit.mode, unit.positions, outcome)
        if outcome["stopped"] == "interrupted":
            raise KeyboardInterrupt

    backend.run(run, job, todo, on_done)


def _run_there(job: SweepJob, todo: list[SweepUnit], backend: Backend, kept: _Kept, progress, finish, total) -> None:
    """The units on a backend's workers, each kept when it finishes; one bar over all units."""
    label = f"{total} units on {backend.name} ({backend.workers} workers)"
    bar = progress(label, total, max(0, total - len(todo))) if progress else None

    def on_done(i: int, outcome: dict) -> None:
        unit = todo[i]
        kept.save(unit, outcome)
        if bar is not None:
            bar(1)
        finish(unit.layer, unit.mode, unit.positions, outcome)

    backend.run(run_unit, job, todo, on_done)
