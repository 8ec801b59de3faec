"""The audit: impulse analysis of the chosen conv layers plus channel and pixel shuffling of those with more
than one input channel, combined per layer into one redundancy summary, with deployment gates
(:mod:`.gates`).

Per layer i, the signals:

- ``impulse_redundant_fraction``: fraction of conv i's compared output channels whose impulse response
  has a match >= the NCC threshold in the same layer (None when no channel could be compared);
- ``channel_cheap_fraction`` / ``pixel_cheap_fraction``: fraction of conv i's input channels whose
  shuffling costs at most ``cheap_drop``: the accuracy drop where there are labels, else the top-1
  disagreement with the clean model where there is a classifier output, else 1 - the lowest output
  cosine;
- ``redundancy_score``: the mean of the fractions above that were measured, for shuffled layers only
  (None otherwise: an impulse fraction alone is not a score). The fractions count different channels
  (the impulse one counts conv i's output channels, the shuffle ones its input channels), so the score
  is not a fraction of any one set of channels: it summarises how many of the layer's channels, on
  either side of the conv, some signal calls removable, for ranking layers and for gates, not as a
  pruning ratio;
- the worst effect at the outputs over both modes and every perturbed channel (``worst_*``).

``budget`` covers the whole audit: the impulse analysis leaves its comparisons with earlier layers
out past half of it, the sweeps share what is left, and whatever is cut short or skipped is said in
``notes``.

Interrupted (Ctrl-C, SIGTERM) during the sweeps, the audit stops at once: the result holds the impulse
analysis and the sweeps that finished, is marked incomplete (``complete`` False, a note naming what was not
measured), and the sweep in progress keeps what it measured (:mod:`~onnxredund.analyses.distributed`: every
batch in this process, finished units on a backend, in ``<checkpoint_dir>/units``) for ``resume``, which ends
with the numbers of an uninterrupted audit.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from onnxredund import __version__
from onnxredund.analyses.distributed import SweepJob, job_for, plan_units, run_sweeps
from onnxredund.analyses.evaluate import one_class_note
from onnxredund.analyses.gates import GATE_METRICS, check_gate_applies, check_gates
from onnxredund.analyses.impulse import ImpulseResult, run_impulse
from onnxredund.analyses.plan import (
    PASS_COST,
    SETUP_SECONDS,
    SweepPlan,
    evenly_spaced,
    plan_sweeps,
    probe_seconds_per_image,
)
from onnxredund.analyses.sequential import EXHAUSTIVE, Estimation, first_look, images_to_clear
from onnxredund.analyses.shuffle import (
    ShuffleResult,
    SweepOptions,
    effect_kind,
)
from onnxredund.choices import BATCH_SIZE, CHEAP_DROP, CONFIDENCE, NCC_THRESHOLD
from onnxredund.data import DataSource
from onnxredund.engine.backends import Backend, LocalBackend
from onnxredund.interrupts import Interrupted, deferred, stop_status
from onnxredund.model import ConvLayer, Model, classifier_output
from onnxredund.words import NOT_MEASURED, ONE_CHANNEL_NOTE, RESUMED_NOTE, UNDECIDED_NOTE

__all__ = [
    "GATE_METRICS",
    "SCHEMA_VERSION",
    "AuditResult",
    "LayerSummary",
    "audit_estimate",
    "check_gate_applies",
    "check_gates",
    "run_audit",
]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3
_IMPULSE_SHARE = 0.3  # of the budget, after which the impulse analysis leaves out comparisons with earlier layers
_WRITE_RESERVE = 5.0  # seconds kept for writing the report, results and figures at the end
_PLAN_MARGIN = 0.85  # of the time left that the sweeps are planned to fill (estimates are estimates)


@dataclass(frozen=True)
class LayerSummary:
    """One conv layer's combined redundancy signals (None where the signal was not measured)."""

    name: str
    index: int
    in_channels: int
    out_channels: int
    impulse_redundant_fraction: float | None
    impulse_compared: int | None
    impulse_excluded: dict | None
    channel_cheap_fraction: float | None
    pixel_cheap_fraction: float | None
    channel_mean_cosine: float | None
    pixel_mean_cosine: float | None
    samples: dict[str, int]
    worst_accuracy_drop: float | None
    worst_agreement_drop: float | None
    worst_top1_agreement: float | None
    worst_top5_agreement: float | None
    worst_kl_divergence: float | None
    worst_output_cosine: float | None
    worst_output_relative_l2: float | None
    worst_output_sqnr: float | None
    worst_output_abs_error_p99: float | None
    worst_output_abs_error_max: float | None
    redundancy_score: float | None
    ranked_channels: list[dict] = field(default_factory=list)
    decisions: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def cheap_fraction(self) -> float | None:
        fractions = [f for f in (self.channel_cheap_fraction, self.pixel_cheap_fraction) if f is not None]
        return max(fractions) if fractions else None

    def to_dict(self) -> dict:
        return {k: _json_value(getattr(self, k)) for k in self.__dataclass_fields__}


def _json_value(v):
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


@dataclass(frozen=True)
class AuditResult:
    """Everything an audit measured; ``to_dict`` follows ``schema/results.schema.json``.

    Attributes:
        labelled: whether the data has labels (accuracy) or not (agreement only).
        classifier: the classifier output that accuracy and agreement are of, or None.
    """

    model: str
    data: str
    data_info: dict
    seed: int
    budget: float | None
    cheap_drop: float
    estimation: Estimation
    labelled: bool
    classifier: str | None
    impulse: ImpulseResult
    shuffles: dict[str, dict[str, ShuffleResult]]
    layers: list[LayerSummary]
    notes: list[str]
    complete: bool = True

    @property
    def effect_kind(self) -> str:
        """What the audit's costs are measured in (:func:`~onnxredund.analyses.shuffle.effect_kind`)."""
        return effect_kind(self.labelled, self.classifier is not None)

    def to_dict(self) -> dict:
        return {
            "schema_version": SCHEMA_VERSION,
            "complete": self.complete,
            "tool": f"onnxredund {__version__}",
            "model": self.model,
            "data": self.data,
            "data_info": self.data_info,
            "seed": self.seed,
            "budget_seconds": self.budget,
            "cheap_drop": self.cheap_drop,
            "estimation": self.estimation.to_dict(),
            "labelled": self.labelled,
            "classifier_output": self.classifier,
            "notes": list(self.notes),
            "summary": [s.to_dict() for s in self.layers],
            "impulse": self.impulse.to_dict(),
            "shuffle": {name: {m: r.to_dict() for m, r in modes.items()} for name, modes in self.shuffles.items()},
        }


def _ranked(modes: dict[str, ShuffleResult]) -> list[dict]:
    """Every input channel measured in some mode, cheapest first: its worst cost over the modes that measured
    it (a budget can sample other channels in each mode), then its lowest mean cosine; with, per mode, its cost's
    interval, its decision and the images it was measured on."""
    costs: dict[int, dict[str, float]] = {}
    cosines: dict[int, dict[str, float]] = {}
    extra: dict[int, dict[str, dict]] = {}
    for mode, r in modes.items():
        cost, mean = r.cost(), r.mean_cosine()
        for i, k in enumerate(r.channels):
            costs.setdefault(k, {})[mode] = float(cost[i])
            cosines.setdefault(k, {})[mode] = float(mean[i])
            if r.decision is not None:
                extra.setdefault(k, {}).setdefault("decision", {})[mode] = r.decision[i]
                interval = [float(r.cost_low[i]), float(r.cost_high[i])]
                extra[k].setdefault("interval", {})[mode] = interval
                extra[k].setdefault("images", {})[mode] = int(r.images[i])
    rows = [
        {"channel": k, "cost": max(costs[k].values()), "cost_by_mode": costs[k], "mean_cosine": cosines[k]}
        | extra.get(k, {})
        for k in costs
    ]
    rows.sort(key=lambda r: (r["cost"], -min(r["mean_cosine"].values()), r["channel"]))
    return rows


def _worst(values: list, pick) -> float | None:
    present = [np.asarray(v, np.float64) for v in values if v is not None]
    finite = [v[np.isfinite(v)] for v in present]
    finite = [v for v in finite if v.size]
    return float(pick([pick(v) for v in finite])) if finite else None


def _output_worsts(modes: dict[str, ShuffleResult]) -> dict:
    effects = [e for r in modes.values() for e in r.outputs.values()]
    drops = [r.baseline_accuracy - r.accuracy for r in modes.values() if r.accuracy is not None]
    agreements = [r.agreement for r in modes.values() if r.agreement is not None]
    return {
        "worst_accuracy_drop": _worst(drops, np.max),
        "worst_agreement_drop": None if not agreements else 1.0 - _worst(agreements, np.min),
        "worst_top1_agreement": _worst([e.top1_agreement for e in effects], np.min),
        "worst_top5_agreement": _worst([e.top5_agreement for e in effects], np.min),
        "worst_kl_divergence": _worst([e.kl_divergence for e in effects], np.max),
        "worst_output_cosine": _worst([e.cosine for e in effects], np.min),
        "worst_output_relative_l2": _worst([e.relative_l2 for e in effects], np.max),
        "worst_output_sqnr": _worst([e.sqnr_db for e in effects], np.min),
        "worst_output_abs_error_p99": _worst([e.abs_error_p99 for e in effects], np.max),
        "worst_output_abs_error_max": _worst([e.abs_error_max for e in effects], np.max),
    }


def summarize_layer(
    layer: ConvLayer, impulse: ImpulseResult, modes: dict[str, ShuffleResult], estimation: Estimation
) -> LayerSummary:
    """Combine the impulse and shuffle signals of one layer. A sweep's cheap fraction is that of the channels
    decided cheap, sequential (the undecided count as not cheap), else of those whose cost is at or under the
    threshold."""
    imp = next((conv for conv in impulse.layers if conv.name == layer.name), None)
    if estimation.sequential:
        cheap = {m: r.decision_counts()["cheap"] / len(r.channels) for m, r in modes.items()}
    else:
        cheap = {m: float((r.cost() <= estimation.cheap_drop).mean()) for m, r in modes.items()}
    cosine = {m: float(r.cosine.mean()) for m, r in modes.items()}
    fraction = None if imp is None else imp.redundant_fraction
    signals = [s for s in (fraction, *cheap.values()) if s is not None]
    return LayerSummary(
        name=layer.name,
        index=layer.index,
        in_channels=layer.in_channels,
        out_channels=layer.out_channels,
        impulse_redundant_fraction=fraction,
        impulse_compared=None if imp is None else imp.compared_count,
        impulse_excluded=None if imp is None else dict(imp.excluded),
        channel_cheap_fraction=cheap.get("channel"),
        pixel_cheap_fraction=cheap.get("pixel"),
        channel_mean_cosine=cosine.get("channel"),
        pixel_mean_cosine=cosine.get("pixel"),
        samples={m: r.samples_done for m, r in modes.items()},
        redundancy_score=float(np.mean(signals)) if modes and signals else None,
        ranked_channels=_ranked(modes) if modes else [],
        decisions={m: r.decision_counts() for m, r in modes.items()},
        **_output_worsts(modes),
    )


def default_shuffle_layers(layers: list[ConvLayer]) -> list[ConvLayer]:
    """Every conv whose input has more than one channel."""
    return [layer for layer in layers if layer.in_channels > 1]


def run_audit(
    model: Model,
    data: DataSource,
    *,
    layers: list[ConvLayer] | None = None,
    modes: tuple[str, ...] = ("channel", "pixel"),
    budget: float | None = None,
    started: float | None = None,
    seed: int = 0,
    batch_size: int = BATCH_SIZE,
    threshold: float = NCC_THRESHOLD,
    cheap_drop: float = CHEAP_DROP,
    device: str = "auto",
    progress: Callable[[str, int, int], Callable[[int], None]] | None = None,
    on_impulse: Callable[[ImpulseResult], None] | None = None,
    on_sweep: Callable[[ShuffleResult], None] | None = None,
    write_seconds: Callable[[int, int], float] | None = None,
    backend: Backend | None = None,
    checkpoint_dir=None,
    resume: bool = False,
    impulse_at: str | None = None,
    sequential: bool | None = None,
    confidence: float = CONFIDENCE,
) -> AuditResult:
    """The impulse analysis of ``layers`` and shuffling of those with more than one input channel, within
    ``budget`` seconds.

    Args:
        layers: the layers to audit (default: every conv the image input reaches).
        budget: seconds for the whole audit, counted from ``started`` (a ``time.perf_counter()`` value;
            default: now). The sweeps measure fewer images, then fewer channels, to fit
            (:mod:`onnxredund.analyses.plan`); what was sampled or left out is said in ``notes``.
        progress: ``progress(label, total, done)`` returns a callback taking units finished.
        on_impulse, on_sweep: called with each result as soon as it is there (to keep it on disk).
        write_seconds: ``write_seconds(layers, sweeps)``: what writing the outputs will take, kept aside from
            the budget (default 5 s).
        backend: where the sweeps run as units (:mod:`onnxredund.analyses.distributed`), planned up front for
            its workers; None: in this process, each sweep planned from what the ones before it cost.
        impulse_at: a tensor to put the impulses at instead of the image input (see :func:`run_impulse`).
        checkpoint_dir, resume: where the sweeps keep their progress (each batch in this process, finished
            units on a backend), and whether to continue from what is there.
        sequential: decide each channel as its images arrive and stop measuring it once decided
            (:mod:`onnxredund.analyses.sequential`): every channel of every sweep is measured on at least its
            first look (:data:`~onnxredund.choices.MIN_IMAGES` images, in whole batches), the undecided on more
            as the budget allows (a sweep whose first look does not fit is skipped); False measures every image
            for every channel (a budget measures fewer images, then fewer channels); None (default): sequential
            when there is a budget that covers a first look at every channel of every sweep, else False (said
            in ``notes``).
        confidence: of each channel's cost interval.

    Raises:
        KeyboardInterrupt: a signal during the impulse analysis (nothing finished; a signal during the sweeps
            returns an incomplete result instead).
    """
    clock = _Clock(time.perf_counter() if started is None else started, budget)
    chosen = sequential is not None
    estimation = Estimation(budget is not None if sequential is None else sequential, cheap_drop, confidence)
    impulse = run_impulse(
        model,
        layers=layers,
        threshold=threshold,
        device=device,
        progress=progress,
        max_seconds=clock.share(_IMPULSE_SHARE),
        at=impulse_at,
    )
    if on_impulse is not None:
        on_impulse(impulse)
    audited = [model.layer(conv.name) for conv in impulse.layers] if layers is None else layers
    notes = list(impulse.notes)
    sweeps = [(layer, m) for layer in default_shuffle_layers(audited) for m in modes]
    if write_seconds is not None:
        clock.reserve = write_seconds(len(audited), len(sweeps))
    shuffles: dict[str, dict[str, ShuffleResult]] = {}
    complete = True
    if sweeps and estimation.sequential and not chosen and clock.budget is not None:
        workers = 1 if backend is None else backend.workers
        estimation = _within_budget(model, data, sweeps, clock, estimation, batch_size, device, workers, notes)
    if sweeps:
        options = SweepOptions(batch_size=batch_size, seed=seed, device=device, estimation=estimation)
        kept = None if checkpoint_dir is None else Path(checkpoint_dir)
        backend = backend or LocalBackend()
        results = _run_sweeps(model, data, sweeps, clock, options, progress, notes, kept, resume, backend)
        try:
            for result in results:
                shuffles.setdefault(result.layer, {})[result.mode] = result
                if on_sweep is not None:
                    with deferred():  # a sweep's files are written whole
                        on_sweep(result)
        except KeyboardInterrupt:
            complete = False
            missing = [f"{layer.name} {m}" for layer, m in sweeps if m not in shuffles.get(layer.name, {})]
            notes.append(
                f"interrupted: {len(sweeps) - len(missing)} of {len(sweeps)} sweeps finished{NOT_MEASURED}"
                f"{', '.join(missing)}{RESUMED_NOTE}"
            )
            log.warning("interrupted: %d of %d sweeps finished", len(sweeps) - len(missing), len(sweeps))
    notes += _word_notes(model, data)
    one_class = one_class_note(model, data, batch_size=batch_size, device=device) if sweeps and complete else None
    notes += [one_class] if one_class else []
    notes += [f"{layer.name} {ONE_CHANNEL_NOTE}" for layer in audited if layer.in_channels == 1]
    summaries = [summarize_layer(layer, impulse, shuffles.get(layer.name, {}), estimation) for layer in audited]
    return AuditResult(
        model=model.path,
        data=data.name,
        data_info=data.describe(),
        seed=seed,
        budget=budget,
        cheap_drop=cheap_drop,
        estimation=estimation,
        labelled=data.y is not None and classifier_output(model) is not None,
        classifier=classifier_output(model),
        impulse=impulse,
        shuffles=shuffles,
        layers=summaries,
        notes=notes,
        complete=complete,
    )


@dataclass
class _Clock:
    """The audit's time: its start, its budget, and what writing the outputs will need at the end."""

    start: float
    budget: float | None
    reserve: float = _WRITE_RESERVE

    def left(self) -> float | None:
        return None if self.budget is None else self.budget - self.reserve - (time.perf_counter() - self.start)

    def share(self, fraction: float) -> float | None:
        return None if self.budget is None else max(0.0, fraction * self.budget - (time.perf_counter() - self.start))


@dataclass(frozen=True)
class _Step:
    """Sweeps to run together: their plans and their job (the data they measure, the seconds after which a unit
    stops), and the sweeps the budget left out before them."""

    plans: list[SweepPlan]
    job: SweepJob | None
    skipped: list[tuple[ConvLayer, str]]


class _EachInTurn:
    """The budget's plan in this process: each sweep planned afresh from the time left and what the sweeps before
    it cost (their median pass cost); every sweep measures the images the first plan chose."""

    def __init__(self, model, data, options: SweepOptions, clock: _Clock) -> None:
        self.model, self.data, self.options, self.clock = model, data, options, clock
        self.seconds_per_image = probe_seconds_per_image(model, data, options.device, options.batch_size)
        self.seen: list[float] = []  # the pass costs the sweeps so far showed
        self.images: int | None = None

    def steps(self, sweeps) -> Iterator[_Step]:
        o, data = self.options, self.data
        for i, (layer, mode) in enumerate(sweeps):
            pass_cost = float(np.median(self.seen)) if self.seen else PASS_COST
            left = self.clock.left()
            if o.estimation.sequential:
                first = first_look(o.estimation, o.batch_size, len(data))
                plan, max_seconds = _sequential_plan(
                    self.model, sweeps[i:], first, len(data), left, self.seconds_per_image, pass_cost
                )
            else:
                plans = plan_sweeps(
                    self.model,
                    sweeps[i:],
                    samples=len(data),
                    seconds=None if left is None else _PLAN_MARGIN * left,
                    seconds_per_image=self.seconds_per_image,
                    pass_cost=pass_cost,
                    images=self.images,
                )
                plan = plans[0] if plans else None
                max_seconds = None if plan is None or self.clock.budget is None else max(1.0, 2 * plan.seconds)
            if plan is None:
                yield _Step([], None, [(layer, mode)])
                continue
            self.images = plan.images
            sweep = [(plan.layer, plan.mode, plan.channels)]
            job = job_for(self.model, _sampled(data, plan.images), sweep, o, unit_seconds=max_seconds)
            yield _Step([plan], job, [])

    def observe(self, plan: SweepPlan, result: ShuffleResult, took: float) -> None:
        log.debug(
            "%s %s: planned %d images x %d channels, %.2f s; took %.2f s; %.1f s left",
            plan.layer.name,
            plan.mode,
            plan.images,
            len(plan.channels),
            plan.seconds,
            took,
            self.clock.left() or 0.0,
        )
        observed = _observed_pass_cost(plan, took, self.seconds_per_image, int(np.sum(result.images)))
        if observed is not None:
            self.seen.append(observed)


class _AllAhead:
    """The budget's plan for a backend's workers: every sweep planned up front, run at once; sequential units share
    the time left evenly, each stopping past its share once its channels have their minimum."""

    def __init__(self, model, data, options: SweepOptions, clock: _Clock, workers: int) -> None:
        self.model, self.data, self.options, self.clock, self.workers = model, data, options, clock, workers

    def steps(self, sweeps) -> Iterator[_Step]:
        o, left = self.options, self.clock.left()
        plans, subset, _ = _plan_all(self.model, self.data, sweeps, left, o, self.workers)
        planned = {(p.layer.name, p.mode) for p in plans}
        skipped = [(layer, m) for layer, m in sweeps if (layer.name, m) not in planned]
        job = job_for(self.model, subset, [(p.layer, p.mode, p.channels) for p in plans], o)
        if o.estimation.sequential and left is not None:
            units = len(plan_units(job, [(p.layer, p.mode) for p in plans]))
            job = dataclasses.replace(job, unit_seconds=max(1.0, _PLAN_MARGIN * left * self.workers / max(units, 1)))
        yield _Step(plans, job, skipped)

    def observe(self, plan: SweepPlan, result: ShuffleResult, took: float) -> None:
        pass


def _plan_all(model, data, sweeps, seconds: float | None, options: SweepOptions, workers: int):
    """Every sweep planned up front for ``workers`` workers (a budget of ``seconds`` each); the data they measure.
    Sequential sweeps are planned on every image and channel (their units stop early)."""
    seconds_per_image = probe_seconds_per_image(model, data, options.device, options.batch_size)
    sequential = options.estimation.sequential
    plans = plan_sweeps(
        model,
        sweeps,
        samples=len(data),
        seconds=None if seconds is None or sequential else _PLAN_MARGIN * seconds * workers,
        seconds_per_image=seconds_per_image,
        pass_cost=PASS_COST,
    )
    return plans, _sampled(data, plans[0].images if plans else len(data)), seconds_per_image


def _sampled(data: DataSource, images: int) -> DataSource:
    return data if images >= len(data) else data.subset(evenly_spaced(images, len(data)), "sampled")


def _run_sweeps(
    model, data, sweeps, clock: _Clock, options: SweepOptions, progress, notes: list[str], kept, resume, backend
):
    """Run the sweeps on ``backend`` as its plan says (each in turn in this process, all at once on workers),
    their units kept in ``kept`` (None: nowhere), continued from there with ``resume``; yields each finished
    sweep's result, and raises :class:`Interrupted` where a signal stopped one."""
    workers = backend.workers
    policy = (
        _EachInTurn(model, data, options, clock)
        if backend.in_process
        else _AllAhead(model, data, options, clock, workers)
    )
    done = 0
    for step in policy.steps(sweeps):
        notes += [f"{layer.name} {m} shuffling skipped: time budget spent" for layer, m in step.skipped]
        done += len(step.skipped)
        if not step.plans:
            continue
        pairs = [(p.layer, p.mode) for p in step.plans]
        t0 = time.perf_counter()
        results, complete = run_sweeps(
            step.job,
            pairs,
            backend,
            checkpoint_dir=kept,
            resume=resume,
            strict=False,
            progress=_numbered(progress, done + 1, len(sweeps)) if progress and len(pairs) == 1 else progress,
        )
        took = time.perf_counter() - t0
        done += len(pairs)
        if workers > 1 and clock.budget is not None:
            notes.append(f"sweeps planned for {workers} workers on {backend.name}")
        by_sweep = {(r.layer, r.mode): r for r in results if r.stopped != "interrupted"}
        for plan in step.plans:
            result = by_sweep.get((plan.layer.name, plan.mode))
            if result is not None:
                policy.observe(plan, result, took)
                notes += _sampling_notes(plan, result, len(data))
                yield result
        if not complete:
            raise Interrupted(stop_status() - 128)


def _numbered(progress, i: int, n: int):
    """``progress`` with each bar's label numbered "(i/n)"."""
    return lambda label, total, done: progress(f"{label} ({i}/{n})", total, done)


def audit_estimate(
    model: Model,
    data: DataSource,
    *,
    layers: list[ConvLayer],
    modes: tuple[str, ...],
    budget: float | None,
    workers: int,
    batch_size: int = BATCH_SIZE,
    device: str = "auto",
    estimation: Estimation = EXHAUSTIVE,
) -> dict:
    """What an audit would run, before running it: per sweep the images, channels and units it takes and its
    estimated time, from a timing probe of the model on this machine; the total divided over ``workers``.

    A sequential audit's time depends on what it finds; ``sequential`` gives its range: every channel decided at
    its first look (``least_seconds``), and every channel cheap, each needing the images a channel that never
    changes a decision needs to be called cheap (``clear_images``; ``most_seconds``), against the exhaustive
    estimate."""
    sweeps = [(layer, m) for layer in default_shuffle_layers(layers) for m in modes]
    options = SweepOptions(batch_size=batch_size, device=device, estimation=estimation)
    plans, subset, seconds_per_image = _plan_all(model, data, sweeps, budget, options, workers)
    job = job_for(model, subset, [(p.layer, p.mode, p.channels) for p in plans], options)
    units = plan_units(job, [(p.layer, p.mode) for p in plans])
    rows = [
        {**p.to_dict(), "units": sum(1 for u in units if (u.layer, u.mode) == (p.layer.name, p.mode))} for p in plans
    ]
    total = sum(p.seconds for p in plans)
    estimate = {
        "seconds_per_image": seconds_per_image,
        "sweeps": rows,
        "skipped": [
            f"{conv.name} {m}" for conv, m in sweeps if (conv.name, m) not in {(p.layer.name, p.mode) for p in plans}
        ],
        "units": len(units),
        "workers": workers,
        "estimate_seconds": total / max(workers, 1),
        "sequential": None,
    }
    if estimation.sequential and plans:
        kind = effect_kind(data.y is not None, classifier_output(model) is not None)
        first = first_look(estimation, batch_size, len(data))
        clear = images_to_clear(estimation, kind, batch_size, len(data))

        def seconds(images: int) -> float:  # every sweep's channels measured on ``images`` each
            return sum(_sequential_cost(p, images) for p in plans) / max(workers, 1)

        estimate["sequential"] = {
            "cost_kind": kind,
            "first_look_images": first,
            "clear_images": clear,
            "least_seconds": seconds(first),
            "most_seconds": seconds(clear),
            # where the first looks alone do not fit, an audit the budget made sequential samples instead
            "first_looks_fit": budget is None or seconds(first) <= _PLAN_MARGIN * budget,
        }
    return estimate


def _sequential_cost(plan: SweepPlan, images: int) -> float:
    """A sweep's estimate with every channel measured on ``images``: its exhaustive estimate, less the setup,
    scaled from the plan's images."""
    return SETUP_SECONDS + (plan.seconds - SETUP_SECONDS) * min(images, plan.images) / max(plan.images, 1)


def _observed_pass_cost(plan: SweepPlan, seconds: float, seconds_per_image: float, measured: int) -> float | None:
    """The pass cost a sweep's real time shows (between 0.1 and 100), or None when it shows nothing; ``measured``:
    the images its channels were measured on, all together."""
    work = measured * seconds_per_image * plan.share
    if work <= 0:
        return None
    return float(np.clip((seconds - SETUP_SECONDS - plan.images * seconds_per_image) / work, 0.1, 100.0))


def _within_budget(model, data, sweeps, clock: _Clock, estimation: Estimation, batch_size, device, workers, notes):
    """A sequential audit that a budget chose, where the first look at every channel of every sweep fits the time
    left; else the exhaustive plan, which measures fewer images, then fewer channels (said in ``notes``)."""
    first = first_look(estimation, batch_size, len(data))
    seconds_per_image = probe_seconds_per_image(model, data, device, batch_size)
    full = plan_sweeps(model, sweeps, samples=len(data), seconds=None, seconds_per_image=seconds_per_image)
    need, room = sum(_sequential_cost(p, first) for p in full) / workers, _PLAN_MARGIN * (clock.left() or 0.0)
    if need <= room:
        return estimation
    notes.append(
        f"the time budget does not cover a first look at every channel ({first} images each, about {need:.0f} s "
        f"against {max(room, 0):.0f} s left): the sweeps measure fewer images, then fewer channels, as "
        "an exhaustive audit plans them, and each channel is decided on the images it saw"
    )
    return dataclasses.replace(estimation, sequential=False)


def _sequential_plan(model, sweeps, first: int, samples: int, left: float | None, seconds_per_image: float, pass_cost):
    """The first of ``sweeps`` planned sequentially: every image and channel, and the seconds after which it stops
    (once every channel has had its first look, at ``first`` images; None: no budget): its share of the time left,
    in proportion to its exhaustive cost, less what the first looks of the sweeps after it need. None where not
    even its own first look fits the time left."""
    full = plan_sweeps(
        model, sweeps, samples=samples, seconds=None, seconds_per_image=seconds_per_image, pass_cost=pass_cost
    )
    if left is None:
        return full[0], None
    least = [_sequential_cost(p, first) for p in full]
    room = _PLAN_MARGIN * left
    if room < least[0]:
        return None, None
    share = room * full[0].seconds / max(sum(p.seconds for p in full), 1e-9)
    return full[0], max(1.0, min(share, room - sum(least[1:])))


def _sampling_notes(plan: SweepPlan, result: ShuffleResult, samples: int) -> list[str]:
    parts = []
    if plan.images < samples:
        parts.append(f"{plan.images} of {samples} images (evenly spaced)")
    if plan.sampled:
        parts.append(f"{len(plan.channels)} of {plan.layer.in_channels} input channels (evenly spaced)")
    if result.stopped == "time budget":
        parts.append(f"stopped after {result.samples_done} images")
    notes = [f"{result.layer} {result.mode} shuffling measured {', '.join(parts)} (time budget)"] if parts else []
    undecided = result.decision_counts()["undecided"]
    if result.estimation.sequential and undecided:
        why = "the time budget" if result.stopped == "time budget" else "the data"
        notes.append(
            f"{result.layer} {result.mode} shuffling: at the end of {why} ({result.samples_done} images), "
            f"{undecided} of {len(result.channels)} channels {UNDECIDED_NOTE}"
        )
    return notes


def _word_notes(model: Model, data: DataSource) -> list[str]:
    if classifier_output(model) is None:
        return [
            "agreement and accuracy do not apply: the model has no classifier output (N, classes); "
            "shuffling is measured as output drift (cosine, relative L2, SQNR)"
        ]
    if data.y is None:
        return ["the data has no labels: the effect of shuffling is agreement with the unperturbed model"]
    return []
