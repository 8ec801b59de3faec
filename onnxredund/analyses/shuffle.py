"""Channel and pixel shuffling sweeps (the paper's section 2) on any conv layer.

For every perturbed input channel k of the target conv, over all samples:

- ``cosine[k, c]``: mean over samples of the cosine similarity (eq. 1) of output channel c of A_i
  clean and perturbed;
- the effect at every graph output (:mod:`onnxredund.analyses.effects`): output cosine, relative L2,
  SQNR, absolute error percentiles; for classifier outputs top-1 and top-5 agreement and KL
  divergence; ``accuracy[k]`` against labels where they exist;
- ``agreement[k]``: for the classifier output, the fraction of samples whose perturbed top-1 equals
  the clean top-1 (label-free).

Pseudocode::

    for each mini-batch (B samples; the last one may be smaller):
        X, Z, A, side, outputs = clean_model(batch)
        for repeat r, for each run of K channels ks:
            perms = [permutation(seed, r, k, batch index) for k in ks]
            cos_sum[r, ks] += sum_b cosine(A, A_perturbed)     # in-graph on the fast path
            output effect sums[r, ks] += ...                   # per sample in-graph on the fast path (on the
                                                               # host for the direct path), summed on the host
    cosine = mean over repeats of cos_sum / N (std over repeats too)

A sweep's running sums are a :class:`~onnxredund.analyses.sweep_state.SweepState`; saved after each
batch (:func:`~onnxredund.analyses.distributed.run_sweeps`), it lets an interrupted sweep resume with the same
permutations.

The model runs and the sums are a pipeline on threads (the clean runs, on a GPU; the perturbed runs; the sums
in the caller's thread), so the device computes the next batch while the host adds up the last one; the sums
are added in the same order as without it, so the numbers are the same to the bit.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from onnxredund.analyses.effects import (
    EffectMeter,
    OutputEffect,
    effect_kind,
    merge_sums,
    nan_to_none,
    unmeasured,
)
from onnxredund.analyses.sequential import (
    DECISIONS,
    EXHAUSTIVE,
    STOPPED,
    UNDECIDED,
    Estimation,
    decide,
    in_random_order,
)
from onnxredund.analyses.sweep_state import SweepState
from onnxredund.atomic import csv_text
from onnxredund.choices import BATCH_SIZE
from onnxredund.data import DataSource, conform_feeds, iter_batches
from onnxredund.engine.analysis_models import output_role
from onnxredund.engine.permutations import MODES, PermutationFeed
from onnxredund.engine.runtime import resolve_device
from onnxredund.engine.sweep import CleanPasses, SweepRunner, permutation_workers
from onnxredund.errors import OnnxRedundError
from onnxredund.model import ConvLayer, Model, classifier_output

__all__ = [
    "ShuffleResult",
    "SweepOptions",
    "SweepState",
    "effect_kind",
    "effect_meter",
    "new_state",
    "run_shuffle",
    "sweep_result",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShuffleResult:
    """One sweep's numbers.

    Attributes:
        channels: the perturbed input channels k, length K.
        cosine: mean cosine similarity of A_i, shape (K, C_out); cosine_std: std over repeats, same shape.
        cosine_repeats: the cosine of each repeat, shape (R, K, C_out).
        outputs: per graph output, the effects of perturbing each channel (arrays (K,)).
        classifier: the classifier output the accuracy and agreement are of, or None.
        accuracy, accuracy_std: shape (K,), or None without labels or a classifier output.
        agreement, agreement_std: top-1 agreement with the clean model, shape (K,), or None without a
            classifier output.
        baseline_accuracy: clean top-1 accuracy, or None.
        route: "fast" or "direct", the way the sweep ran (``path`` in the JSON).
        samples_done: samples measured (all of them unless ``complete`` is False).
        stopped: why an incomplete sweep stopped: "interrupted" (Ctrl-C, SIGTERM) or "time budget"; None
            when complete.
        data_info: what the data was (:meth:`DataSource.describe`).
        images: per perturbed channel, the images it was measured on (all of ``samples_done`` unless a
            sequential sweep stopped measuring it once decided), shape (K,).
        channel_baseline: per perturbed channel, the clean top-1 accuracy on its images (K,), or None.
        cost_low, cost_high: each channel's :meth:`cost` interval at ``estimation.confidence`` (K,)
            (:mod:`onnxredund.analyses.sequential`).
        decision: per channel "cheap", "costly" or "undecided" against ``estimation.cheap_drop``.
        stopped_undecided: the undecided channels a sequential sweep stopped measuring before the end of the
            data, which would not decide them (:func:`~onnxredund.analyses.sequential.undecidable`); None for
            an exhaustive sweep.
        estimation: how the channels were decided (sequential or exhaustive, threshold, confidence).
    """

    model: str
    layer: str
    layer_index: int
    mode: str
    seed: int
    repeats: int
    batch_size: int
    num_samples: int
    data: str
    channels: list[int]
    cosine: np.ndarray
    cosine_std: np.ndarray
    accuracy: np.ndarray | None
    accuracy_std: np.ndarray | None
    agreement: np.ndarray | None
    agreement_std: np.ndarray | None
    baseline_accuracy: float | None
    route: str
    device: str
    complete: bool = True
    samples_done: int = 0
    seconds: float = 0.0
    cosine_repeats: np.ndarray | None = None
    outputs: dict[str, OutputEffect] = field(default_factory=dict)
    classifier: str | None = None
    data_info: dict = field(default_factory=dict)
    stopped: str | None = None
    layer_in_channels: int | None = None  # the layer's input channels (``channels`` may be a sample of them)
    images: np.ndarray | None = None
    channel_baseline: np.ndarray | None = None
    cost_low: np.ndarray | None = None
    cost_high: np.ndarray | None = None
    decision: list[str] | None = None
    stopped_undecided: list[int] | None = None
    estimation: Estimation = field(default_factory=Estimation)

    def mean_cosine(self) -> np.ndarray:
        """Mean over output channels of ``cosine``: one number per perturbed channel, shape (K,)."""
        return self.cosine.mean(axis=1)

    def to_dict(self, *, timing: bool = False) -> dict:
        d = {
            "model": self.model,
            "layer": self.layer,
            "layer_index": self.layer_index,
            "layer_in_channels": self.layer_in_channels,
            "mode": self.mode,
            "seed": self.seed,
            "repeats": self.repeats,
            "batch_size": self.batch_size,
            "num_samples": self.num_samples,
            "samples_done": self.samples_done,
            "complete": self.complete,
            "stopped": self.stopped,
            "data": self.data,
            "data_info": self.data_info,
            "path": self.route,
            "channels": list(self.channels),
            "cosine": _rounded(self.cosine),
            "cosine_std": _rounded(self.cosine_std),
            "mean_cosine": _rounded(self.mean_cosine()),
            "classifier_output": self.classifier,
            "accuracy": _rounded(self.accuracy),
            "accuracy_std": _rounded(self.accuracy_std),
            "agreement": _rounded(self.agreement),
            "agreement_std": _rounded(self.agreement_std),
            "baseline_accuracy": nan_to_none([self.baseline_accuracy])[0]
            if self.baseline_accuracy is not None
            else None,
            "outputs": {name: effect.to_dict() for name, effect in self.outputs.items()},
            "estimation": self.estimation.to_dict(),
            "channel_images": None if self.images is None else [int(v) for v in self.images],
            "cost": nan_to_none(self.cost()),
            "cost_interval": _intervals(self.cost_low, self.cost_high),
            "decision": self.decision,
            "stopped_undecided": self.stopped_undecided,
        }
        if timing:
            d["device"], d["seconds"] = self.device, round(self.seconds, 3)
        return d

    @property
    def effect_kind(self) -> str:
        """What this sweep's effect at the outputs is read in (:func:`effect_kind`)."""
        return effect_kind(self.accuracy is not None and self.baseline_accuracy is not None, self.agreement is not None)

    def effect(self) -> np.ndarray | None:
        """Per perturbed channel (K,), the effect a person reads first, in :attr:`effect_kind`: top-1 accuracy,
        top-1 agreement with the clean model, or the lowest cosine over the outputs (None: no output measured)."""
        kind = self.effect_kind
        if kind == "accuracy":
            return self.accuracy
        if kind == "agreement":
            return self.agreement
        return np.min([e.cosine for e in self.outputs.values()], axis=0) if self.outputs else None

    def cost(self) -> np.ndarray:
        """Per perturbed channel (K,), what perturbing it costs: the accuracy drop, the top-1 disagreement with
        the clean model, or 1 - the lowest output cosine (the cheap threshold applies to this)."""
        effect = self.effect()
        if effect is None:
            return np.full(len(self.channels), np.nan)
        if self.effect_kind != "accuracy":
            return 1.0 - effect
        return (self.baseline_accuracy if self.channel_baseline is None else self.channel_baseline) - effect

    def decision_counts(self) -> dict[str, int]:
        """How many channels are cheap, costly and undecided."""
        return {d: (self.decision or []).count(d) for d in DECISIONS}

    def to_csv(self) -> str:
        """One row per (k, c): channel, output_channel, cosine, cosine_std, accuracy, agreement."""
        rows = []
        for i, k in enumerate(self.channels):
            acc = None if self.accuracy is None else f"{self.accuracy[i]:.6f}"
            agr = None if self.agreement is None else f"{self.agreement[i]:.6f}"
            for c in range(self.cosine.shape[1]):
                rows.append([self.mode, k, c, f"{self.cosine[i, c]:.8f}", f"{self.cosine_std[i, c]:.8f}", acc, agr])
        header = ["mode", "channel", "output_channel", "cosine", "cosine_std", "accuracy", "agreement"]
        return csv_text(header, rows)

    def decisions_csv(self) -> str:
        """One row per perturbed channel: the images it was measured on, its cost, the cost's interval and its
        decision."""
        cost, low, high = self.cost(), self.cost_low, self.cost_high
        rows = [
            [self.mode, k, int(self.images[i]), f"{cost[i]:.8f}", f"{low[i]:.8f}", f"{high[i]:.8f}", self.decision[i]]
            for i, k in enumerate(self.channels)
        ]
        return csv_text(["mode", "channel", "images", "cost", "cost_low", "cost_high", "decision"], rows)


def _rounded(a) -> list | None:
    """Nested lists for JSON, rounded to 10 digits, with None for NaN (a channel not measured)."""
    if a is None:
        return None
    a = np.round(np.asarray(a, np.float64), 10)
    if np.isfinite(a).all():
        return a.tolist()
    kept = a.astype(object)
    kept[~np.isfinite(a)] = None
    return kept.tolist()


def _intervals(low, high) -> list | None:
    if low is None or high is None:
        return None
    return [list(pair) for pair in zip(nan_to_none(low), nan_to_none(high), strict=True)]


def _warn_degenerate(mode: str, batch_size: int, num: int) -> None:
    if mode == "channel" and min(batch_size, num) == 1:
        log.warning("channel shuffling with a batch of 1 is a no-op: every sample keeps its own channel")


def _check_arguments(layer: ConvLayer, mode: str, channels: list[int], batch_size: int, repeats: int) -> None:
    if mode not in MODES:
        raise OnnxRedundError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    if batch_size < 1 or repeats < 1:
        raise OnnxRedundError("`batch_size` and `repeats` must be at least 1")
    bad = [k for k in channels if not 0 <= k < layer.in_channels]
    if bad:
        which = f"channel {bad[0]} does not" if len(bad) == 1 else f"channels {', '.join(map(str, bad))} do not"
        raise OnnxRedundError(f"{which} exist: {layer.name!r} has input channels 0..{layer.in_channels - 1}")


def check_labels(model: Model, data: DataSource) -> None:
    """Labels must fit the classifier output's classes."""
    pred = classifier_output(model)
    if data.y is not None and pred is not None:
        classes = model.shapes[pred][0]
        if data.y.size and int(data.y.max()) >= classes:
            raise OnnxRedundError(
                f"labels go up to {int(data.y.max())} but the model has {classes} classes (output {pred!r})"
            )


def effect_meter(model: Model, data: DataSource, repeats: int, channels: int) -> EffectMeter:
    """The meter of a sweep's output effects for ``model`` on ``data``."""
    roles = {name: output_role(model, name) for name in model.output_names}
    return EffectMeter(model.output_names, model.classifiers, roles, repeats, channels, data.y is not None)


def new_state(meter: EffectMeter, layer: ConvLayer, key: str = "") -> SweepState:
    """An empty sweep state: the output effects' sums and the cosine sums of A_i."""
    sums = meter.new_sums()
    sums["cos_sum"] = np.zeros((meter.repeats, meter.channels, layer.out_channels))
    sums["looks"] = np.zeros((meter.repeats, meter.channels), np.int64)
    sums["decision"] = np.zeros((meter.repeats, meter.channels), np.int8)
    return SweepState(0, 0, sums, key=key)


@dataclass(frozen=True)
class SweepOptions:
    """How the sweeps of one run go, the same for each (layer, mode): the keyword arguments of
    :func:`run_shuffle` that the shuffle command, the audit and the units on a backend pass on."""

    batch_size: int = BATCH_SIZE
    repeats: int = 1
    seed: int = 0
    device: str = "auto"
    exact_path: bool = False
    chunk: int | None = None
    estimation: Estimation = EXHAUSTIVE


def run_shuffle(
    model: Model,
    layer: ConvLayer | str | int,
    data: DataSource,
    *,
    mode: str = "channel",
    channels: list[int] | None = None,
    batch_size: int = BATCH_SIZE,
    repeats: int = 1,
    seed: int = 0,
    device: str = "auto",
    exact_path: bool = False,
    chunk: int | None = None,
    progress: Callable[[int], None] | None = None,
    state: SweepState | None = None,
    on_batch: Callable[[SweepState], None] | None = None,
    max_seconds: float | None = None,
    runner: SweepRunner | None = None,
    estimation: Estimation = EXHAUSTIVE,
    clean_passes: CleanPasses | None = None,
) -> ShuffleResult:
    """Shuffle each input channel of a conv layer and measure the layer's cosine and the effect at the outputs.

    Args:
        model: from :func:`onnxredund.load_model`.
        layer: the target conv (record, name or index).
        data: inputs and optional labels (any :class:`~onnxredund.data.DataSource`).
        mode: "channel" (across the samples of each mini-batch) or "pixel" (within each sample).
        channels: input channels to perturb; default all.
        batch_size: mini-batch size (the last batch may be smaller).
        repeats: R seeds (seed, seed's repeat 1, ...); results give mean and std over them.
        seed: the seed every permutation derives from.
        device: "auto", "cuda" or "cpu".
        exact_path: run the direct path (one full run per channel) instead of the fast one.
        chunk: channels per run on the fast path (default: sized to memory).
        progress: called with the number of samples finished after each batch.
        state: a :class:`SweepState` to resume from (same arguments as the interrupted run).
        on_batch: called with the state after each batch (checkpoints): a new object each time, the batch's
            sums committed together with its sample count; ``state`` itself is not changed.
        max_seconds: stop after the batch that passes this time (``stopped`` "time budget").
        runner: the sessions to use (built for this layer, mode and device; a worker keeps them across calls).
        estimation: how the channels are decided (:class:`~onnxredund.analyses.sequential.Estimation`); a
            sequential sweep takes the images in a seeded random order and stops measuring a channel once
            its cost's interval clears the threshold, and the whole sweep once every channel is decided.
        clean_passes: where the layer's clean runs are kept for its next sweeps and taken from (the other
            mode's sweep over the same batches; :class:`~onnxredund.engine.sweep.CleanPasses`).

    Returns:
        A :class:`ShuffleResult` of the batches that finished; ``complete`` is False, and ``stopped`` says why,
        when a signal (Ctrl-C, SIGTERM) or ``max_seconds`` stopped it before the end of the data.
    """
    layer = layer if isinstance(layer, ConvLayer) else model.layer(layer)
    channels = list(range(layer.in_channels)) if channels is None else channels
    _check_arguments(layer, mode, channels, batch_size, repeats)
    if estimation.sequential and repeats != 1:
        raise OnnxRedundError("a sequential sweep takes one repeat: its images are its repeats")
    _warn_degenerate(mode, batch_size, len(data))
    check_labels(model, data)
    device = resolve_device(device)
    if estimation.sequential:
        data = in_random_order(data, seed)
    if runner is None:
        batch = min(batch_size, len(data))  # what a run holds at most
        runner = SweepRunner(model, layer, mode, device, exact=exact_path, chunk=chunk, batch_size=batch)
    if runner.blocker:
        log.warning("fast path unavailable for %s (%s): using the direct path", layer.name, runner.blocker)
    meter = effect_meter(model, data, repeats, len(channels))
    state = state or new_state(meter, layer)
    pixels = int(np.prod(layer.input_shape[1:]))
    stopped = None
    t0 = time.perf_counter() - state.seconds
    feed = PermutationFeed(mode, seed, repeats, channels, pixels, workers=permutation_workers(device))
    batches = iter_batches(data, batch_size, state.batches_done)
    judge = _Judge(meter, estimation, state, len(data), batch_size)
    # stages on threads: the clean runs (on a GPU, ahead on a thread of their own: the two sessions' streams
    # overlap; on a CPU they would only share its cores), the perturbed runs, and the sums here
    run_clean = runner.run_clean if clean_passes is None else functools.partial(clean_passes.run, runner)
    clean_batches = _clean_batches(runner, run_clean, model, data, feed, batches, state.samples_done, batch_size)
    if device != "cpu":
        clean_batches = _RunAhead(clean_batches)
    steps = _RunAhead(_device_steps(runner, clean_batches, channels, repeats, judge))
    try:
        for step in steps:
            if isinstance(step, _Clean):  # a batch's sums start apart from the state's
                clean_outputs, labels = step.outputs, step.labels
                batch = {k: np.zeros_like(v) for k, v in state.sums.items()}
                clean_sums = meter.clean_sums(clean_outputs, labels)
                continue
            if isinstance(step, _Run):
                at, cos, perturbed, per_sample = judge.still_open(step.at, step.cos, step.perturbed, step.per_sample)
                if not len(cos):  # every channel of the run was decided while it ran
                    continue
                batch["cos_sum"][step.repeat, at] += cos
                if per_sample is None:  # the direct path: the outputs themselves came back
                    per_sample = meter.per_sample(perturbed, clean_outputs)
                meter.add_per_sample(batch, step.repeat, at, per_sample, clean_outputs, clean_sums, labels)
                continue
            bi, size = step.batch, step.size
            # the batch's sums and its sample count become the state in one assignment: an interrupt lands
            # before it (the batch is not counted, nor summed) or after it, never between
            sums = judge.look(merge_sums(state.sums, batch))
            state = dataclasses.replace(
                state,
                sums=sums,
                batches_done=bi + 1,
                samples_done=state.samples_done + size,
                seconds=time.perf_counter() - t0,
            )
            if on_batch is not None:
                on_batch(state)
            if progress is not None:
                progress(size)
            if not judge.open:
                break  # every channel decided
            if (
                max_seconds is not None
                and state.seconds >= max_seconds
                and state.samples_done < len(data)
                and judge.measured_enough(state)
            ):
                stopped = "time budget"
                log.warning("time budget spent after %d of %d samples", state.samples_done, len(data))
                break
    except KeyboardInterrupt:
        stopped = "interrupted"
        log.warning("interrupted after %d of %d samples", state.samples_done, len(data))
    finally:
        steps.close()
        clean_batches.close()  # a _RunAhead, or the generator itself (already closed with the steps)
        batches.close()
        feed.close()
    args = (mode, seed, repeats, batch_size)
    route = (runner.path, runner.device)
    return sweep_result(model, layer, data, route, meter, state, args, channels, stopped, estimation)


class _Judge:
    """A sweep's decisions: which channels are still measured, and after each batch, which of them are decided
    (sequential sweeps; an exhaustive one keeps every channel open to the end).

    The decisions and each channel's looks are kept in the sweep's sums (``decision``, ``looks``), so a resumed
    sweep goes on with them. The runs are made ahead of the sums, on a thread: they read :attr:`positions`, which
    only shrinks, and :meth:`still_open` drops what they measured of channels decided since.
    """

    def __init__(self, meter: EffectMeter, estimation: Estimation, state: SweepState, samples: int, batch: int):
        self.meter, self.estimation = meter, estimation
        self.samples, self.batch = samples, batch  # the data's, to tell what the rest of it could decide
        self.decision = state.sums["decision"][0].copy()
        self.positions = np.flatnonzero(self.decision == UNDECIDED).tolist()

    @property
    def open(self) -> bool:
        return bool(self.positions)

    def still_open(self, at: list[int], cos, perturbed, per_sample) -> tuple:
        """A run's numbers for its channels at positions ``at`` (returned as an index array), less those of
        channels decided since."""
        keep = self.decision[at] == UNDECIDED
        if not keep.all():
            at, cos = [p for p, k in zip(at, keep, strict=True) if k], cos[keep]
            perturbed = None if perturbed is None else {name: v[keep] for name, v in perturbed.items()}
            per_sample = None if per_sample is None else {key: v[keep] for key, v in per_sample.items()}
        return np.asarray(at, np.int64), cos, perturbed, per_sample

    def measured_enough(self, state: SweepState) -> bool:
        """Whether every channel has seen its minimum of images (a budget may stop the sweep then, not before)."""
        return not self.estimation.sequential or state.samples_done >= self.estimation.min_images

    def look(self, sums: dict) -> dict:
        """After a batch: the open channels with their minimum of images are looked at, and decided where their
        interval clears the threshold, or stopped where the rest of the data would not decide them (``sums``, a
        new dict of new arrays, is updated in place and returned)."""
        if not self.estimation.sequential:
            return sums
        looking = (sums["decision"][0] == UNDECIDED) & (sums["seen"][0] >= self.estimation.min_images)
        if not looking.any():
            return sums
        looks = sums["looks"][0]
        looks[looking] += 1
        low, high = self.meter.cost_bounds(sums, looks, self.estimation)
        decided = decide(low, high, self.estimation.cheap_drop)
        left = self.samples - sums["seen"][0]
        futile = (decided == UNDECIDED) & self.meter.undecidable(sums, looks, self.estimation, left, self.batch)
        sums["decision"][0, looking] = np.where(futile, STOPPED, decided)[looking]
        self.decision = sums["decision"][0].copy()
        self.positions = np.flatnonzero(self.decision == UNDECIDED).tolist()
        return sums


class _RunAhead:
    """Iterates ``steps`` on a thread, at most ``depth`` steps ahead of the loop that takes them, so the device
    runs the next batch while the host sums up the last one; the loop sees the steps in their order, and an
    error raised while making a step is raised again where the loop takes it."""

    def __init__(self, steps: Iterator, depth: int = 2) -> None:
        self.queue: queue.Queue = queue.Queue(depth)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._produce, args=(steps,), name="onnxredund-runs", daemon=True)
        self.thread.start()

    def _produce(self, steps: Iterator) -> None:
        try:
            for step in steps:
                if not self._put((True, step)):
                    return
        except BaseException as e:  # handed to the loop, which raises it where it stands
            self._put((False, e))
            return
        finally:
            close = getattr(steps, "close", None)
            if close is not None:  # a generator stopped early finishes its own clean-up (threads) here
                close()
        self._put((False, None))

    def _put(self, entry) -> bool:
        while not self.stopping.is_set():
            try:
                self.queue.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator:
        while True:
            is_step, value = self.queue.get()
            if not is_step:
                if value is not None:
                    raise value
                return
            yield value

    def close(self) -> None:
        """Stop making steps (the run in progress finishes) and wait for the thread."""
        self.stopping.set()
        self.thread.join()


def _clean_batches(runner: SweepRunner, run_clean, model: Model, data: DataSource, feed, batches, done, batch_size):
    """Each batch with its permutations and its clean run (``run_clean(feeds)``): (batch index, size, labels,
    permutations, clean tensors, clean outputs)."""
    for bi, arrays, labels in batches:
        feeds = conform_feeds(arrays, model.inputs, model.input_name, data.name)
        size = len(feeds[model.input_name])
        perms = feed.take(bi, size)
        done += size
        if done < len(data):
            feed.request(bi + 1, min(batch_size, len(data) - done))
        clean = run_clean(feeds)
        yield bi, size, labels, perms, clean, runner.clean_outputs(clean)


class _Clean(NamedTuple):
    """A batch's clean outputs: its sums start."""

    outputs: dict
    labels: np.ndarray | None


class _Run(NamedTuple):
    """One run of channels on a batch: the positions in ``channels`` it took, their cosine sums, and the perturbed
    outputs (direct path) or the per-sample effects (fast path)."""

    repeat: int
    at: np.ndarray
    cos: np.ndarray
    perturbed: list | None
    per_sample: dict | None


class _End(NamedTuple):
    """A batch's runs are all in: its sums and its size become the state's."""

    batch: int
    size: int


def _device_steps(runner: SweepRunner, clean_batches, channels: list[int], repeats: int, judge: _Judge):
    """The sweep's model runs, in order, as steps for the loop that sums them up: a :class:`_Clean` per batch,
    a :class:`_Run` per run of the channels still open (:meth:`SweepRunner.run`), then an :class:`_End`."""
    for bi, size, labels, perms, clean, clean_outputs in clean_batches:
        yield _Clean(clean_outputs, labels)
        positions = judge.positions
        for r in range(repeats):
            for c0 in range(0, len(positions), runner.k):
                at = positions[c0 : c0 + runner.k]
                ks = [channels[p] for p in at]
                yield _Run(r, at, *runner.run(clean, ks, [perms[r, k] for k in ks]))
        yield _End(bi, size)


def _mean_std(per_repeat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return per_repeat.mean(axis=0), per_repeat.std(axis=0)


def sweep_result(
    model, layer, data, route, meter, state, args, channels, stopped=None, estimation: Estimation = EXHAUSTIVE
) -> ShuffleResult:
    """The result of a sweep from its sums; ``route`` is (path, device), ``args`` (mode, seed, repeats, batch),
    ``stopped`` why it stopped before the end of the data (None: it did not), ``estimation`` how its channels
    are decided (default: exhaustively, at the default threshold and confidence)."""
    mode, seed, repeats, batch_size = args
    sums = state.sums
    seen = np.maximum(sums["seen"], 1)  # (R, K): each channel's images
    cosine, cosine_std = _mean_std(sums["cos_sum"] / seen[..., None])
    pred = classifier_output(model)
    acc = _mean_std(sums["correct"] / seen) if meter.labelled else (None, None)
    agr = _mean_std(sums[meter.key(pred, "top1")] / seen) if pred else (None, None)
    most = int(np.argmax(sums["seen"][0])) if sums["seen"].size else 0  # a channel that saw every image
    baseline = int(sums["baseline_correct"][0, most]) / int(seen[0, most]) if sums["seen"].size else 0.0
    looks = sums["looks"][0]
    low, high = meter.cost_bounds(sums, np.where(looks > 0, looks, 1), estimation)
    # a sequential sweep's decisions were taken as it went; an exhaustive one's at its one look, at the end
    decision = sums["decision"][0] if estimation.sequential else decide(low, high, estimation.cheap_drop)
    # a channel no image reached yet (a sweep stopped before its first batch ended) has no numbers: NaN
    # (null in JSON), undecided, never the zeros its empty sums would give
    unseen = sums["seen"].min(axis=0) == 0
    cosine_repeats = unmeasured(sums["cos_sum"] / seen[..., None], unseen, axis=1)
    cosine, cosine_std, low, high = (unmeasured(a, unseen) for a in (cosine, cosine_std, low, high))
    acc, agr = (tuple(unmeasured(v, unseen) for v in pair) for pair in (acc, agr))
    decision = np.where(unseen, UNDECIDED, decision)
    stopped_undecided = [k for k, d in zip(channels, decision, strict=True) if d == STOPPED]
    channel_baseline = (sums["baseline_correct"] / seen).mean(axis=0) if meter.labelled else None
    channel_baseline = unmeasured(channel_baseline, unseen)
    if unseen.all() and meter.labelled:
        baseline = float("nan")
    return ShuffleResult(
        model=model.path,
        layer=layer.name,
        layer_index=layer.index,
        mode=mode,
        seed=seed,
        repeats=repeats,
        batch_size=batch_size,
        num_samples=len(data),
        data=data.name,
        channels=list(channels),
        cosine=cosine,
        cosine_std=cosine_std,
        accuracy=acc[0],
        accuracy_std=acc[1],
        agreement=agr[0],
        agreement_std=agr[1],
        baseline_accuracy=baseline if meter.labelled else None,
        route=route[0],
        device=route[1],
        complete=stopped is None,
        stopped=stopped,
        layer_in_channels=layer.in_channels,
        samples_done=state.samples_done,
        seconds=state.seconds,
        cosine_repeats=cosine_repeats,
        outputs={name: effect.unmeasured(unseen) for name, effect in meter.effects(sums).items()},
        classifier=pred,
        data_info=data.describe(),
        images=sums["seen"][0].copy(),
        channel_baseline=channel_baseline,
        cost_low=low,
        cost_high=high,
        decision=[DECISIONS[UNDECIDED if d == STOPPED else d] for d in decision],
        stopped_undecided=stopped_undecided if estimation.sequential else None,
        estimation=estimation,
    )
