"""Structured pruning guided by a criterion, with its cost re-measured.

Pseudocode::

    groups = channel dependency groups of the model            # engine.channel_groups
    calibration, evaluation = first C samples, the rest         # never the same samples
    importance[g][c] = criterion(group g, channel c)           # higher: keep
    removed = lowest-importance channels until the target      # layer-wise: one fraction for every group;
                                                               # global: one ranking, importance per MAC saved
    updates = compensation of the consumers (mean, merge, lstsq), from calibration statistics
    pruned = the model with the channels cut out               # engine.pruning.remove_channels
    measure both on the evaluation samples: accuracy, agreement, output drift; params, conv MACs,
    file size, onnxruntime latency

The criteria are in :mod:`.prune_criteria`; importances on a layer's own scale (l1, activation, variance) are
divided by their group's mean before a global ranking, the others are compared as they are.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxredund.analyses.plan import evenly_spaced
from onnxredund.analyses.prune_criteria import (
    CRITERIA,
    NEEDS_STATS,
    OWN_SCALE,
    SHUFFLE_METRICS,
    channel_importance,
)
from onnxredund.choices import (
    BATCH_SIZE,
    PRUNE_CRITERION,
    PRUNE_SCOPE,
    ROUND_TO,
    SCOPES,
    SHUFFLE_METRIC,
    SHUFFLE_SAMPLES,
)
from onnxredund.data import DataSource, conform_feeds
from onnxredund.engine.calibration import collect_statistics
from onnxredund.engine.channel_groups import ChannelGroup, channel_groups, node_label
from onnxredund.engine.pruning import (
    CHECK_TOLERANCE,
    COMPENSATED_KINDS,
    COMPENSATIONS,
    PruneCost,
    check_by_values,
    check_removal,
    compensate,
    compensate_sequential,
    describe_removal,
    read_by_consumer,
    remove_channels,
)
from onnxredund.engine.runtime import Runner, resolve_device, rows_per_run
from onnxredund.errors import OnnxRedundError
from onnxredund.metrics import flat_cosine, relative_l2_per_sample, top1
from onnxredund.model import Model, classifier_output

__all__ = [
    "CRITERIA",
    "SCOPES",
    "SHUFFLE_METRICS",
    "PruneResult",
    "Reference",
    "SpeedTarget",
    "Target",
    "channel_importance",
    "run_prune",
    "select_channels",
]

log = logging.getLogger(__name__)

_LATENCY_SECONDS = 0.5  # per model and batch size


@dataclass(frozen=True)
class Target:
    """What to remove: ``fraction`` of the model's conv MACs ("macs") or of its parameters ("params")."""

    kind: str
    fraction: float

    def __post_init__(self) -> None:
        if self.kind not in ("macs", "params"):
            raise OnnxRedundError(f"no target {self.kind!r}; use macs or params")
        if not 0.0 < self.fraction < 1.0:
            raise OnnxRedundError(f"`target_{self.kind}` {self.fraction} must lie strictly between 0 and 1")

    def removed(self, cost: PruneCost, removal: dict[int, list[int]]) -> float:
        """The fraction of the conv MACs (or parameters) ``removal`` removes."""
        if self.kind == "macs":
            return 1.0 - cost.macs(removal) / cost.macs_total
        return 1.0 - cost.params(removal) / cost.params_total

    def reached(self, cost: PruneCost, tally) -> bool:
        left = tally.macs() / cost.macs_total if self.kind == "macs" else tally.params() / cost.params_total
        return 1.0 - left >= self.fraction


@dataclass(frozen=True)
class SpeedTarget:
    """Prune until onnxruntime runs the model ``speedup`` times as fast, on this machine, at batch ``batch``:
    the conv-MAC fraction that reaches it is searched (:func:`macs_for_speedup`)."""

    speedup: float
    batch: int

    def __post_init__(self) -> None:
        if not self.speedup > 1.0:
            raise OnnxRedundError(f"`target_speedup` {self.speedup} must be more than 1")


#: halvings of the conv-MAC fraction when searching a speed-up (each builds and times a pruned model)
SPEEDUP_STEPS = 6


def macs_for_speedup(
    model: Model,
    groups,
    scores,
    cost: PruneCost,
    target: SpeedTarget,
    scope: str,
    criterion: str,
    round_to: int,
    data: DataSource,
    device: str,
) -> tuple[float, float, list[dict]]:
    """The smallest conv-MAC fraction (within :data:`SPEEDUP_STEPS` halvings) whose pruned model runs at least
    ``target.speedup`` times as fast as the original (median onnxruntime latency at ``target.batch``), the
    speed-up measured there, and every fraction tried with its speed-up. Timings move by a few per cent from
    run to run, so the result does too.

    Raises:
        OnnxRedundError: removing all the ranked groups can lets go of still does not reach the speed-up.
    """

    def speedup(fraction: float) -> float:  # the original and the pruned model timed by turns
        removal = select_channels(groups, scores, cost, Target("macs", fraction), scope, criterion, round_to)
        pruned = remove_channels(model, groups, removal)
        base, after = latency_runs(model, [model.proto, pruned], data, target.batch, device)
        return base["median"] / after["median"]

    hi = min(most_removed(groups, scores, cost, "macs", round_to), 0.999) * (1 - 1e-9)
    if hi <= 0:
        raise OnnxRedundError(
            f"`target_speedup` {target.speedup:g} cannot be reached: no channel can go (`round_to` {round_to} keeps "
            f"a multiple of {round_to} channels in every group; `round_to` 1 removes them one by one)"
        )
    tried = [{"macs_fraction": hi, "speedup": speedup(hi)}]
    if tried[0]["speedup"] < target.speedup:
        batch = timed_batch(model, data, target.batch, device)
        raise OnnxRedundError(
            f"`target_speedup` {target.speedup:g} cannot be reached: removing all it can ({hi:.3f} of the conv MACs) "
            f"runs {tried[0]['speedup']:.2f}x as fast at batch {batch} on this machine"
        )
    lo, at_hi = 0.0, tried[0]["speedup"]
    for _ in range(SPEEDUP_STEPS):
        mid = (lo + hi) / 2
        tried.append({"macs_fraction": mid, "speedup": speedup(mid)})
        if tried[-1]["speedup"] >= target.speedup:
            hi, at_hi = mid, tried[-1]["speedup"]
        else:
            lo = mid
    return hi, at_hi, tried


def _by_producer(groups: list[ChannelGroup], model: Model, layer: str) -> ChannelGroup:
    for g in groups:
        if layer in g.producers:
            return g
    name = model.layer(layer).name  # an index, or a miss that lists the layers
    for g in groups:
        if name in g.producers:
            return g
    raise OnnxRedundError(f"conv {name!r} starts no channel group (its output channels continue its input's)")


def explicit_removal(model: Model, groups: list[ChannelGroup], spec: dict[str, list[int]]) -> dict[int, list[int]]:
    """The removal named by ``--channels`` (layer -> channels), checked as every removal is
    (:func:`~onnxredund.engine.pruning.check_removal`)."""
    removed: dict[int, list[int]] = {}
    for layer, channels in spec.items():
        g = _by_producer(groups, model, layer)
        removed[g.index] = sorted(set(removed.get(g.index, [])) | set(channels))
    check_removal(groups, removed)
    return removed


# -- selection -------------------------------------------------------------------------------------------


def _comparable(scores: dict[int, np.ndarray], criterion: str) -> dict[int, np.ndarray]:
    if criterion not in OWN_SCALE:
        return scores
    return {g: s / (np.abs(s).mean() or 1.0) for g, s in scores.items()}


def select_channels(
    groups: list[ChannelGroup],
    scores: dict[int, np.ndarray],
    cost: PruneCost,
    target: Target,
    scope: str,
    criterion: str = "",
    round_to: int = 1,
) -> dict[int, list[int]]:
    """The lowest-importance channels to remove until ``target`` is met (at least one channel stays in
    every group).

    Layer-wise: the smallest fraction q such that removing floor(q x channels) from every ranked group meets
    the target, then whole rounding steps given back where the target still holds (it is met as closely as
    the rounding allows). Global: channels in one ranking by importance per MAC (or parameter) one removal saves.
    ``round_to``: every group keeps a multiple of that many channels (or all of them), removing fewer of
    the channels chosen where needed: onnxruntime's and cuDNN's fast kernels work on blocks of 8 or 16
    channels, and a pruned conv left with 179 can run slower than the original's 256.

    Raises:
        OnnxRedundError: the target cannot be reached with the groups the criterion ranks.
    """
    if scope not in SCOPES:
        raise OnnxRedundError(f"no scope {scope!r}; choose layer or global")
    if round_to < 1:
        raise OnnxRedundError(f"`round_to` {round_to} must be at least 1")
    lowest = _lowest(groups, scores)
    reach = most_removed(groups, scores, cost, target.kind, round_to)
    if reach < target.fraction:
        rounded = (
            f" (`round_to` {round_to} keeps a multiple of {round_to} channels in every group; `round_to` 1 "
            "removes them one by one)"
            if round_to > 1
            else ""
        )
        raise OnnxRedundError(
            f"`target_{target.kind}` {target.fraction:g} cannot be reached: removing "
            f"{'all but one channel' if round_to == 1 else 'all it can'} of every group "
            f"{criterion or 'the criterion'} ranks removes {reach:.3f} of the {target.kind}{rounded}"
        )
    if scope == "layer":
        return lowest(_layer_counts(groups, scores, cost, target, lowest, round_to))
    return _global_removal(groups, _comparable(scores, criterion), cost, target, round_to)


def protected_channels(groups: list[ChannelGroup], scores: dict[int, np.ndarray]) -> dict[int, set[int]]:
    """Per ranked group, the channels no selection removes: the most important one each consumer reads, so
    that no consumer is left with nothing of the group to read (a Split's half read by one conv, as YOLOv8's
    C2f blocks have it, would become a conv of zero input channels)."""
    protected = {}
    for g, s in scores.items():
        windows = [sorted(w) for w in read_by_consumer(groups[g]).values() if w] or [range(len(s))]
        protected[g] = {max(w, key=lambda k: (s[k], k)) for w in windows}  # ties: the last, as a stable sort
    return protected


def _lowest(groups: list[ChannelGroup], scores: dict[int, np.ndarray]):
    """counts (group -> n) -> the n lowest-importance channels of each group, never a protected one
    (:func:`protected_channels`; at most ``channels - len(protected)`` can go)."""
    protected = protected_channels(groups, scores)
    order = {}
    for g, s in scores.items():
        last = np.isin(np.arange(len(s)), sorted(protected[g]))
        order[g] = np.lexsort((s, last))  # by importance, the protected after every other
    return lambda counts: {g: sorted(order[g][:n].tolist()) for g, n in counts.items() if n}


def _most_chosen(groups: list[ChannelGroup], scores: dict[int, np.ndarray]) -> dict[int, int]:
    """Per ranked group, how many channels a selection may remove (all but the protected ones)."""
    protected = protected_channels(groups, scores)
    return {g: groups[g].channels - max(len(protected[g]), 1) for g in scores}


def most_removed(groups: list[ChannelGroup], scores, cost: PruneCost, kind: str, round_to: int) -> float:
    """The fraction of the conv MACs (``kind`` "macs") or parameters that removing all a selection may from
    every ranked group (as far as ``round_to`` lets it) removes: the most any target can ask."""
    chosen = _most_chosen(groups, scores)
    most = {g: removable(groups[g].channels, chosen[g], round_to) for g in scores}
    return Target(kind, 0.5).removed(cost, _lowest(groups, scores)(most))


def removable(channels: int, chosen: int, round_to: int) -> int:
    """How many of the ``chosen`` channels of a group of ``channels`` go so that the number kept is a multiple
    of ``round_to`` (rounded up) or every channel."""
    kept = -(-(channels - chosen) // round_to) * round_to
    return max(0, channels - kept)


def _layer_counts(groups, scores, cost: PruneCost, target: Target, lowest, round_to: int) -> dict[int, int]:
    """Channels per group for the smallest uniform fraction that meets the target; then, since rounding to
    blocks of ``round_to`` makes coarse steps in small groups (and the fractions compound through a conv's
    input and output channels), whole steps are given back, from the groups that lose the largest share
    first, while the target still holds: the target is met as closely as the rounding allows."""
    c, most = {g: groups[g].channels for g in scores}, _most_chosen(groups, scores)

    def counts(q: float) -> dict[int, int]:
        return {g: removable(c[g], min(int(np.floor(q * c[g])), most[g]), round_to) for g in scores}

    def meets(n: dict[int, int]) -> bool:
        return target.removed(cost, lowest(n)) >= target.fraction

    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if meets(counts(mid)):
            hi = mid
        else:
            lo = mid
    best = counts(hi)
    if not meets(best):
        return best
    gave_back = True
    while gave_back:
        gave_back = False
        for g in sorted(best, key=lambda g: (-best[g] / c[g], g)):
            fewer = removable(c[g], best[g] - 1, round_to) if best[g] else 0
            if fewer < best[g] and meets({**best, g: fewer}):
                best[g], gave_back = fewer, True
    return best


def _global_removal(groups, scores, cost: PruneCost, target: Target, round_to: int) -> dict[int, list[int]]:
    """Remove channels in one ranking by importance per unit saved (MACs or parameters), until the target; a
    group's chosen channels go, in the order chosen, as far as ``round_to`` lets them (:func:`removable`)."""
    tally = cost.tally()
    measure = tally.macs if target.kind == "macs" else tally.params
    base = measure()
    saving = {}
    for g, s in scores.items():
        one = cost.tally()
        one.remove(g, int(np.argmin(s)))
        saving[g] = max(base - (one.macs() if target.kind == "macs" else one.params()), 1)
    mean_saving = float(np.mean(list(saving.values())))
    ranked = sorted(
        (float(s[c]) / (saving[g] / mean_saving), g, int(c)) for g, s in scores.items() for c in range(len(s))
    )
    chosen: dict[int, list[int]] = {g: [] for g in scores}
    removal: dict[int, list[int]] = {g: [] for g in scores}
    protected, most = protected_channels(groups, scores), _most_chosen(groups, scores)
    for _, g, c in ranked:
        if len(chosen[g]) >= most[g] or c in protected[g]:
            continue
        chosen[g].append(c)
        for k in chosen[g][len(removal[g]) : removable(groups[g].channels, len(chosen[g]), round_to)]:
            removal[g].append(k)
            tally.remove(g, k)
        if target.reached(cost, tally):
            break
    return {g: sorted(ch) for g, ch in removal.items() if ch}


def _uncompensated(model: Model, groups: list[ChannelGroup], removed: dict[int, list[int]]) -> list[str]:
    """A note naming the consumers compensation does not go into (transposed convs), if any read removed channels."""
    names = sorted(
        {
            node_label(model.proto.graph, c.node)
            for g in removed
            for c in groups[g].consumers
            if c.kind not in COMPENSATED_KINDS
        }
    )
    if not names:
        return []
    return [f"{', '.join(names)} (transposed) read the removed channels as zeros: no compensation goes into them"]


def _dequantized(model: Model, updates: dict) -> list[str]:
    """A note naming the compensated consumers whose weights were quantized (QDQ): their new weights are float."""
    graph = model.proto.graph
    made_by = {o: n.op_type for n in graph.node for o in n.output}
    names = [node_label(graph, i) for i in sorted(updates) if made_by.get(graph.node[i].input[1]) == "DequantizeLinear"]
    if not names:
        return []
    return [
        f"{', '.join(names)}: compensated weights are float, no longer quantized (the file grows); quantize the "
        "pruned model again, or prune without compensation to keep them int8"
    ]


# -- measuring -------------------------------------------------------------------------------------------


@dataclass
class Reference:
    """The original model's outputs on the evaluation samples, to compare pruned models against."""

    model: Model
    data: DataSource
    outputs: list[np.ndarray]
    batch_size: int
    device: str

    @classmethod
    def measure(
        cls, model: Model, data: DataSource, *, batch_size: int = BATCH_SIZE, device: str = "auto"
    ) -> Reference:
        return cls(model, data, _outputs(model, model.proto, data, batch_size, device), batch_size, device)

    def compare(self, proto: onnx.ModelProto | None = None) -> dict:
        """Quality of ``proto`` (the original when None) on the evaluation samples: accuracy (with labels and a
        classifier), agreement of its top-1 with the original's, output drift (mean relative L2 over the samples
        whose original output is not all zero, the others counted in ``output_drift_unscaled``; None where
        none is) and cosine."""
        outs = self.outputs if proto is None else _outputs(self.model, proto, self.data, self.batch_size, self.device)
        pred = classifier_output(self.model)
        n = len(self.outputs[0])
        ref = np.concatenate([o.reshape(n, -1) for o in self.outputs], axis=1).astype(np.float64)
        new = np.concatenate([o.reshape(n, -1) for o in outs], axis=1).astype(np.float64)
        drift = relative_l2_per_sample(ref, new)
        scaled = drift[np.isfinite(drift)]  # inf: an all-zero original output that changed has no scale
        result = {
            "samples": n,
            "output_drift": float(scaled.mean()) if len(scaled) else None,
            "output_drift_unscaled": int(len(drift) - len(scaled)),
            "output_cosine": float(flat_cosine(ref, new).mean()),
            "agreement": None,
            "accuracy": None,
        }
        if pred is not None:
            k = self.model.output_names.index(pred)
            top, top_ref = top1(outs[k]), top1(self.outputs[k])
            result["agreement"] = float((top == top_ref).mean())
            if self.data.y is not None:
                result["accuracy"] = float((top == self.data.y).mean())
        return result


def _outputs(model: Model, proto: onnx.ModelProto, data: DataSource, batch_size: int, device: str) -> list[np.ndarray]:
    return Runner.create(proto, device, derived=proto is not model.proto).run_over(model, data, batch_size=batch_size)


def timed_batch(model: Model, data: DataSource, batch: int, device: str) -> int:
    """The samples a latency run of ``batch`` really holds: no more than the data has, nor than a quarter of the
    machine's memory holds in one run (:func:`rows_per_run`: LYT-Net's attention at 640 x 360 takes 50 MB a head
    and sample, and a run of 16 was killed at 24 GB), one where the batch is fixed."""
    if not model.batch_dynamic:
        return 1
    return min(batch, len(data), rows_per_run(model, resolve_device(device)) or batch)


def latency_runs(model: Model, protos: list[onnx.ModelProto], data: DataSource, batch: int, device: str) -> list[dict]:
    """onnxruntime latency of one run of ``batch`` samples (:func:`timed_batch` of them; after a warm-up), in
    milliseconds, of each model in ``protos`` (the original and pruned ones of ``model``): ``{"median", "p25",
    "p75", "runs"}`` each, the quartiles saying how much it moved.

    The models take turns, one run each, for :data:`_LATENCY_SECONDS` per model: a machine whose speed drifts (a
    shared CPU, a clock that throttles) slows them alike, and the ratio of their medians holds where two timings
    one after the other would not."""
    runners = [Runner.create(p, device, derived=p is not model.proto) for p in protos]
    batch = timed_batch(model, data, batch, device)
    feeds = conform_feeds(data.arrays(0, batch), model.inputs, model.input_name, data.name)
    for runner in runners:
        runner.run(feeds)
    times: list[list[float]] = [[] for _ in runners]
    start, budget = time.perf_counter(), _LATENCY_SECONDS * len(runners)
    while len(times[0]) < 5 or (time.perf_counter() - start < budget and len(times[0]) < 1000):
        for runner, timed in zip(runners, times, strict=True):
            t0 = time.perf_counter()
            runner.run(feeds)
            timed.append(time.perf_counter() - t0)
    out = []
    for timed in times:
        p25, median, p75 = (1000.0 * float(q) for q in np.percentile(timed, [25, 50, 75]))
        out.append({"median": median, "p25": p25, "p75": p75, "runs": len(timed)})
    return out


# -- the command -----------------------------------------------------------------------------------------


@dataclass
class PruneResult:
    """A pruning and what it cost; ``proto`` is the pruned model (not in the JSON)."""

    model: str
    criterion: str | None
    scope: str | None
    compensation: str | None
    target: dict | None
    seed: int
    groups: list[dict]
    removed: list[dict]
    before: dict
    after: dict
    quality_before: dict
    quality_after: dict
    calibration_samples: int
    evaluation_samples: int
    notes: list[str] = field(default_factory=list)
    value_check: dict | None = None
    proto: onnx.ModelProto | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "criterion": self.criterion,
            "scope": self.scope,
            "compensation": self.compensation,
            "target": self.target,
            "seed": self.seed,
            "calibration_samples": self.calibration_samples,
            "evaluation_samples": self.evaluation_samples,
            "before": self.before,
            "after": self.after,
            "quality": {"before": self.quality_before, "after": self.quality_after},
            "plan": {"removed": self.removed, "groups": self.groups},
            "value_check": self.value_check,
            "notes": list(self.notes),
        }


#: calibration samples by default: half the data, at most this many (the other half measures)
DEFAULT_CALIBRATION = 1000


def default_calibration(samples: int) -> int:
    """The calibration samples when none are asked for: half of ``samples``, at most
    :data:`DEFAULT_CALIBRATION`, so that as many or more are left to measure on."""
    if samples < 2:
        raise OnnxRedundError(f"pruning needs 2 samples or more (to calibrate, to measure); the data has {samples}")
    return min(DEFAULT_CALIBRATION, samples // 2)


def split_data(
    data: DataSource, calibration: int | None, evaluation: int | None, *, spread: bool = True
) -> tuple[DataSource, DataSource]:
    """``calibration`` samples (default: :func:`default_calibration`) to calibrate on and up to ``evaluation``
    others (default: all the others) to measure on: never the same samples. ``spread``: the calibration samples
    are spread evenly over the data (an image folder lists its classes one after the other); else they are the
    first ones.
    """
    if calibration is None:
        calibration = default_calibration(len(data))
        log.info("calibrating on %d of the %d samples, measuring on the others", calibration, len(data))
    if calibration < 1 or len(data) <= calibration:
        raise OnnxRedundError(
            f"{data.name} has {len(data)} samples; `calibration` {calibration} leaves none to evaluate on"
        )
    picked = evenly_spaced(calibration, len(data)) if spread else list(range(calibration))
    taken = set(picked)
    rest = [i for i in range(len(data)) if i not in taken][:evaluation]
    how = "spread" if spread else "first"
    cal = data.subset(picked, f"{data.name} ({calibration} calibration samples, {how})")
    ev = data.subset(rest, f"{data.name} ({len(rest)} other samples)")
    return cal, ev


def _size(proto: onnx.ModelProto) -> int:
    return proto.ByteSize()


def run_prune(
    model: Model,
    data: DataSource,
    *,
    criterion: str | None = PRUNE_CRITERION,
    scope: str = PRUNE_SCOPE,
    target: Target | SpeedTarget | None = None,
    channels: dict[str, list[int]] | None = None,
    compensation: str | None = None,
    calibration: int | None = None,
    evaluation: int | None = None,
    seed: int = 0,
    shuffle_metric: str = SHUFFLE_METRIC,
    shuffle_samples: int = SHUFFLE_SAMPLES,
    batch_size: int = BATCH_SIZE,
    device: str = "auto",
    latency: bool = True,
    round_to: int = ROUND_TO,
) -> PruneResult:
    """Prune ``model`` by ``criterion`` to ``target`` (or remove the ``channels`` named), compensate, and measure.
    With a target, every group keeps a multiple of ``round_to`` channels (see :func:`select_channels`); a
    :class:`SpeedTarget` is met by the conv-MAC fraction :func:`macs_for_speedup` finds (latency is then
    measured whatever ``latency`` says).

    Raises:
        OnnxRedundError: bad options, a group that cannot be pruned named in ``channels``, a target that
            cannot be reached, data too small to split or without what the criterion needs.
    """
    if (target is None) == (channels is None):
        raise OnnxRedundError(
            "give a target (`target_macs`, `target_params` or `target_speedup`) or `channels`, not both"
        )
    target_info = {"kind": target.kind, "fraction": target.fraction} if isinstance(target, Target) else None
    if compensation is not None and compensation not in COMPENSATIONS:
        raise OnnxRedundError(f"no compensation {compensation!r}; choose one of {', '.join(COMPENSATIONS)}")
    groups = channel_groups(model)
    if not any(g.prunable for g in groups):
        reasons = "; ".join(f"{g.producers[0]}: {g.reason}" for g in groups[:3])
        raise OnnxRedundError(f"no channel group of {model.path} can be pruned ({reasons})")
    cal, ev = split_data(data, calibration, evaluation)
    cost = PruneCost.measure(model, groups)
    notes: list[str] = []
    needs_stats = compensation not in (None, "sequential") or criterion in NEEDS_STATS
    consumers = [c for g in groups if g.prunable for c in g.consumers]
    stats = (
        collect_statistics(
            model,
            consumers,
            cal,
            cross=compensation == "merge",
            gram=compensation == "lstsq",
            batch_size=batch_size,
            device=device,
            seed=seed,
        )
        if needs_stats
        else None
    )
    if stats is not None:
        notes += stats.notes
    if channels is not None:
        removed = explicit_removal(model, groups, channels)
        criterion = None
    else:
        scores = channel_importance(
            model,
            groups,
            criterion,
            data=cal.limit(shuffle_samples),
            stats=stats,
            seed=seed,
            shuffle_metric=shuffle_metric,
            batch_size=batch_size,
            device=device,
        )
        left = [g.producers[0] for g in groups if g.prunable and g.index not in scores]
        if left:
            notes.append(f"criterion {criterion} does not rank {', '.join(left)}: left as they are")
        if isinstance(target, SpeedTarget):
            speed = target
            fraction, measured, tried = macs_for_speedup(
                model, groups, scores, cost, speed, scope, criterion, round_to, ev, device
            )
            target = Target("macs", fraction)
            target_info = {
                "kind": "speedup",
                "speedup": speed.speedup,
                "batch": timed_batch(model, ev, speed.batch, device),  # what the timed runs held
                "macs_fraction": fraction,
                "measured_speedup": measured,
                "search": tried,
            }
            latency = True
        removed = select_channels(groups, scores, cost, target, scope, criterion, round_to)
    updates = None
    if compensation == "sequential":
        updates, refit_notes = compensate_sequential(
            model, groups, removed, cal, batch_size=batch_size, device=device, seed=seed
        )
        notes += refit_notes
    elif compensation:
        updates = compensate(model, groups, removed, compensation, stats)
    if compensation:
        notes += _uncompensated(model, groups, removed) + _dequantized(model, updates or {})
    pruned = remove_channels(model, groups, removed, updates=updates)
    check = _check(model, groups, removed, pruned, cal, updates)
    reference = Reference.measure(model, ev, batch_size=batch_size, device=device)
    before = {"params": cost.params_total, "conv_macs": cost.macs_total, "file_bytes": _size(model.proto)}
    after = {"params": cost.params(removed), "conv_macs": cost.macs(removed), "file_bytes": _size(pruned)}
    if latency:
        # keyed by the samples a run really holds (a batch of 256 on 16 samples times 16); the two models by turns
        sizes = sorted({timed_batch(model, ev, b, device) for b in (1, batch_size)})
        runs = {str(b): latency_runs(model, [model.proto, pruned], ev, b, device) for b in sizes}
        for i, d in enumerate((before, after)):
            d["latency_ms"] = {b: r[i]["median"] for b, r in runs.items()}
            d["latency_quartiles_ms"] = {b: [r[i]["p25"], r[i]["p75"]] for b, r in runs.items()}
            d["latency_runs"] = {b: r[i]["runs"] for b, r in runs.items()}
    return PruneResult(
        model=model.path,
        criterion=criterion,
        scope=scope if channels is None else None,
        compensation=compensation,
        target=None if target_info is None else {**target_info, "round_to": round_to},
        seed=seed,
        groups=[g.to_dict() for g in groups],
        removed=describe_removal(model, groups, removed),
        before=before,
        after=after,
        quality_before=reference.compare(),
        quality_after=reference.compare(pruned),
        calibration_samples=len(cal),
        evaluation_samples=len(ev),
        notes=notes,
        value_check=check,
        proto=pruned,
    )


#: calibration samples the pruned model is checked on, by values, before anything is written
CHECK_SAMPLES = 4


def _check(model: Model, groups, removed, pruned: onnx.ModelProto, cal: DataSource, updates) -> dict:
    """:func:`check_by_values` on the first calibration samples (raises where the cut is not exact)."""
    n = min(CHECK_SAMPLES, len(cal))
    feeds = conform_feeds(cal.arrays(0, n), model.inputs, model.input_name, cal.name)
    error, unrounded, amplified = check_by_values(model, groups, removed, pruned, feeds, updates=updates)
    check = {"samples": n, "max_relative_error": error, "tolerance": CHECK_TOLERANCE, "unrounded": unrounded}
    return check | ({"amplified_by": amplified} if amplified else {})
