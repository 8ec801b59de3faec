"""Everything the commands print: tables, summaries and progress bars (on stderr, only on a terminal)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import click
import numpy as np

from onnxredund.cli.app import bar_shown
from onnxredund.words import (
    NOT_MEASURED,
    ONE_CHANNEL_NOTE,
    RESUMED_NOTE,
    UNDECIDED_NOTE,
    counted,
    decided,
    images_each,
    name_list,
    short_name,
    short_names_in,
)

if TYPE_CHECKING:  # the results it prints; imported when a command runs, not for --help
    from onnxredund.analyses.audit import AuditResult
    from onnxredund.analyses.impulse import ImpulseResult
    from onnxredund.analyses.prune import PruneResult
    from onnxredund.analyses.reproduce import ReproduceResult
    from onnxredund.analyses.shuffle import ShuffleResult
    from onnxredund.engine.channel_groups import ChannelGroup
    from onnxredund.model import Model

__all__ = [
    "StepBars",
    "claims_lines",
    "estimate_lines",
    "group_lines",
    "impulse_lines",
    "layer_table",
    "prune_lines",
    "redundancy_lines",
    "shuffle_lines",
]


def _fmt(t) -> str:
    return "x".join(str(v) for v in t)


def layer_table(model: Model) -> list[str]:
    """The model's inputs and a table of its conv layers."""
    rows = [["#", "name", "op", "channels", "kernel", "stride", "groups", "input", "output", "A_i", "MACs"]]
    for layer in model.layers:
        rows.append(
            [
                str(layer.index),
                short_name(layer.name),
                layer.op,
                f"{layer.in_channels}->{layer.out_channels}",
                _fmt(layer.kernel),
                _fmt(layer.stride),
                str(layer.groups),
                _fmt(layer.input_shape),
                _fmt(layer.output_shape),
                short_name(layer.activation, 32) + (f" ({'+'.join(layer.chain)})" if layer.chain else ""),
                f"{layer.macs:,}",
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    inputs = ", ".join(
        f"{i.name} {'N x ' if i.batched else ''}{_fmt(i.sample_shape) or 'scalar'} ({i.layout or i.dtype})"
        + (" [impulse]" if i.name == model.input_name and len(model.inputs) > 1 else "")
        for i in model.inputs
    )
    head = f"{model.path}: input {inputs}, {counted(len(model.layers), 'conv layer')}"
    lines = [head] + ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    if model.given_inputs:
        values = "; ".join(f"{n} = {np.array2string(v.ravel(), threshold=8)}" for n, v in model.given_inputs.items())
        lines.append(f"inputs given one value for every sample (--input-value): {values}")
    classifiers = ", ".join(model.classifiers) or "none (effects are measured as output drift)"
    lines.append(f"classifier output: {classifiers}")
    if model.batch_outputs:
        lines.append(f"left out (no value per sample, a statistic over the batch): {', '.join(model.batch_outputs)}")
    for name, measured in model.shaped_outputs.items():
        instead = f"; measured in its place: {', '.join(measured)}" if measured else ""
        lines.append(f"left out (its size depends on its values, as after a NonMaxSuppression): {name}{instead}")
    if model.contrib_ops:
        read = {"FusedConv": "FusedConv (read as Conv + its activation)", "QuickGelu": "QuickGelu (x * sigmoid(ax))"}
        named = ", ".join(read.get(op, op) for op in model.contrib_ops)
        lines.append(f"onnxruntime contrib ops (com.microsoft, run natively): {named}")
    if model.decided_ifs:
        taken = ", ".join(model.decided_ifs)
        lines.append(f"If nodes decided by the input's sizes, analysed as the branch taken: {taken}")
    if model.folded_ops:
        lines.append(
            f"conv weights computed in the graph from constants ({', '.join(model.folded_ops)}): folded to constants"
        )
    return lines


def layers_payload(model: Model) -> dict:
    """What `layers` shows, as JSON: the inputs (the image input marked), the classifier outputs (the prediction
    first) and the conv layers."""
    return {
        "model": model.path,
        "inputs": [
            {
                "name": i.name,
                "dtype": i.dtype,
                "sample_shape": list(i.sample_shape),
                "layout": i.layout or None,
                "batched": i.batched,
                "image": i.name == model.input_name,
            }
            for i in model.inputs
        ],
        "given_inputs": {name: v.tolist() for name, v in model.given_inputs.items()},
        "outputs": model.output_names,
        "classifier_outputs": list(model.classifiers),
        "contrib_ops": list(model.contrib_ops),
        "folded_ops": list(model.folded_ops),
        "decided_ifs": list(model.decided_ifs),
        "batch_outputs": list(model.batch_outputs),
        "shaped_outputs": {name: list(measured) for name, measured in model.shaped_outputs.items()},
        "layers": [layer.to_dict() for layer in model.layers],
    }


def shuffle_lines(result: ShuffleResult) -> list[str]:
    """A sweep's summary: most and least redundant channels, and the effect at the outputs in words that fit
    the data (accuracy only with labels)."""
    mean = result.mean_cosine()
    measured = np.flatnonzero(np.isfinite(mean))  # a sweep stopped before its first batch measured none
    order = measured[np.argsort(-mean[measured])]
    done = (
        f"{result.samples_done} samples"
        if result.complete
        else (f"INCOMPLETE ({result.stopped}): {result.samples_done} of {result.num_samples} samples")
    )
    lines = [
        f"{result.mode} shuffling at {short_name(result.layer)} ({result.route} path, {result.device}): "
        f"{done}, {counted(len(result.channels), 'channel')}, seed {result.seed}"
    ]
    if not len(measured):
        lines.append("  no channel measured: no batch finished")
    else:
        lines += _measured_lines(result, mean, order)
    lines.append("  " + decision_words(result))
    if not result.complete:
        lines.append("  INTERRUPTED: partial results; rerun with --resume to finish")
    return lines


def _measured_lines(result: ShuffleResult, mean: np.ndarray, order: np.ndarray) -> list[str]:
    """The ranking and the effects at the outputs, over the channels measured (``order``: by mean cosine)."""
    top = ", ".join(f"{result.channels[i]} ({mean[i]:.3f})" for i in order[:3])
    bottom = ", ".join(f"{result.channels[i]} ({mean[i]:.3f})" for i in order[::-1][:3])
    lines = [
        f"  most redundant (highest mean cosine): {top}",
        f"  least redundant (lowest mean cosine): {bottom}",
    ]
    if result.accuracy is not None:
        worst = int(np.nanargmin(result.accuracy))
        lines.append(
            f"  accuracy: baseline {100 * result.baseline_accuracy:.2f} %, worst {100 * result.accuracy[worst]:.2f} % "
            f"(channel {result.channels[worst]}), mean {100 * np.nanmean(result.accuracy):.2f} %"
        )
    if result.agreement is not None:
        lines.append(
            f"  top-1 agreement with the clean model ({result.classifier}): "
            f"min {100 * np.nanmin(result.agreement):.2f} %, mean {100 * np.nanmean(result.agreement):.2f} %"
        )
    for name, effect in result.outputs.items():
        if effect.classifier:
            continue
        worst = int(np.nanargmin(effect.cosine))
        sqnr = effect.sqnr_db[np.isfinite(effect.sqnr_db)]
        lines.append(
            f"  output {name}: lowest cosine {effect.cosine[worst]:.4f} (channel {result.channels[worst]}), "
            + (f"lowest SQNR {sqnr.min():.1f} dB" if sqnr.size else "SQNR undefined (a zero output)")
        )
    return lines


def decision_words(result: ShuffleResult) -> str:
    """'decided: 51 cheap, 3 costly, 6 undecided (cost <= 0.005 at 95 %, sequential: 256-5000 images each)'."""
    e = result.estimation
    how = f"cost <= {e.cheap_drop:g} at {100 * e.confidence:g} %"
    if e.sequential and result.images is not None and len(result.images):
        how += f", sequential: {images_each(result.images)}"
    stopped = len(result.stopped_undecided or [])
    why = f" ({stopped} stopped early: the rest of the data would not decide them)" if stopped else ""
    return f"decided: {decided(result.decision_counts())}{why} ({how})"


def impulse_lines(result: ImpulseResult) -> list[str]:
    """Per layer: compared channels with a near-duplicate within the layer and in earlier layers."""
    lines = [
        f"impulse responses ({result.mode} mode, NCC {'max over lags' if result.lags else 'at zero lag'}, "
        f"threshold {result.threshold}, {result.seconds:.1f} s):"
    ]
    for layer in result.layers:
        c = len(layer.best_match)
        if layer.redundant_fraction is None:
            line = f"  {short_name(layer.name)}: no channel compared ({_left_out(layer.excluded)})"
        else:
            line = (
                f"  {short_name(layer.name)}: {layer.redundant_count}/{layer.compared_count} compared channels "
                f"({100 * layer.redundant_fraction:.1f} %) have a match >= {result.threshold}"
            )
            if layer.compared_count < c:
                line += f" ({_left_out(layer.excluded)})"
        finite = layer.across_best_value[~np.isnan(layer.across_best_value)]
        if finite.size:
            line += f"; {int((finite >= result.threshold).sum())} match an earlier layer"
        lines.append(line)
    lines += [f"  note: {n}" for n in result.notes]
    return lines


def _left_out(excluded: dict[str, int]) -> str:
    parts = []
    if excluded.get("support"):
        parts.append(f"{excluded['support']} left out: support too small to compare")
    if excluded.get("constant"):
        parts.append(f"{excluded['constant']} left out: no response")
    return "; ".join(parts)


def redundancy_lines(result: AuditResult) -> list[str]:
    """The audit's per-layer summary, in words that fit the data."""
    lines = [] if result.complete else ["  INCOMPLETE: interrupted; the sweeps that had not finished are not in it"]
    for s in result.layers:
        parts = []
        if s.impulse_redundant_fraction is not None:
            parts.append(f"impulse {100 * s.impulse_redundant_fraction:.1f} % of {s.impulse_compared}")
        elif s.impulse_compared is not None:
            parts.append("impulse: no channel compared")
        for mode, fraction in (("channel", s.channel_cheap_fraction), ("pixel", s.pixel_cheap_fraction)):
            if fraction is not None:
                parts.append(f"{mode}-cheap {100 * fraction:.1f} %{_measured(result, s, mode)}")
        if s.worst_accuracy_drop is not None:
            parts.append(f"worst accuracy drop {100 * s.worst_accuracy_drop:.2f} pp")
        elif s.worst_agreement_drop is not None:
            parts.append(f"worst agreement drop {100 * s.worst_agreement_drop:.2f} pp")
        elif s.worst_output_cosine is not None:
            parts.append(f"lowest output cosine {s.worst_output_cosine:.4f}")
        if not s.samples:
            parts.append("not shuffled")
        score = "no score (not shuffled)" if s.redundancy_score is None else f"score {s.redundancy_score:.2f}"
        lines.append(f"  {short_name(s.name)} ({s.in_channels}->{s.out_channels}): {score}; " + ", ".join(parts))
    return lines + [f"  note: {n}" for n in _grouped_notes(result.notes)]


def _measured(result: AuditResult, s, mode: str) -> str:
    """The words ' (K of C measured)' where a budget shuffled only K of the layer's C input channels; with the
    undecided channels of a sequential audit: ' (U undecided)'."""
    sweep = result.shuffles.get(s.name, {}).get(mode)
    k = 0 if sweep is None else len(sweep.channels)
    words = [f"{k} of {s.in_channels} measured"] if 0 < k < s.in_channels else []
    undecided = s.decisions.get(mode, {}).get("undecided", 0)
    if result.estimation.sequential and undecided:
        words.append(f"{undecided} undecided")
    return f" ({', '.join(words)})" if words else ""


def _grouped_notes(notes: list[str]) -> list[str]:
    """The notes, with the per-sweep budget notes and the layers of one input channel counted in one line each
    (all of them are in the report), names shortened."""
    sampled = [n for n in notes if "measured" in n and n.endswith("(time budget)")]
    skipped = [n for n in notes if n.endswith("skipped: time budget spent")]
    undecided = [n for n in notes if n.endswith(UNDECIDED_NOTE)]
    single = [n for n in notes if n.endswith(f" {ONE_CHANNEL_NOTE}")]
    out = [
        _short_sweeps(n) if NOT_MEASURED in n and n.endswith(RESUMED_NOTE) else n
        for n in notes
        if n not in sampled and n not in skipped and n not in undecided and n not in single
    ]
    names = [short_name(n[: -len(ONE_CHANNEL_NOTE) - 1]) for n in single]
    if len(names) > 1:  # basic-pitch's 25 filter convs of the raw signal: one line, not 25 of 300 characters
        listed = _some(names)
        out.append(
            f"{len(single)} layers are not shuffled ({listed}): each reads one input channel, and perturbing "
            "that perturbs the whole input"
        )
    elif names:
        out.append(f"{names[0]} {ONE_CHANNEL_NOTE}")
    if sampled:
        out.append(f"{_sweeps(sampled)} measured fewer images or channels to fit the time budget (see the report)")
    if skipped:
        out.append(f"{_sweeps(skipped)} skipped: the time budget was spent (see the report)")
    if undecided:
        out.append(f"{_sweeps(undecided)} left channels undecided, counted as not cheap (see the report)")
    return out


def _some(names: list[str]) -> str:
    return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")


def _short_sweeps(note: str) -> str:
    """An interrupted audit's note with the sweeps not measured as a few short names ("LAYER MODE" each)."""
    head, listed = note[: -len(RESUMED_NOTE)].split(NOT_MEASURED, 1)
    pairs = (s.rpartition(" ") for s in listed.split(", "))
    sweeps = [f"{short_name(layer)} {mode}".strip() for layer, _, mode in pairs]
    return f"{head}{NOT_MEASURED}{_some(sweeps)}{RESUMED_NOTE}"


def _sweeps(notes: list[str]) -> str:
    return f"{len(notes)} sweep" + ("s" if len(notes) > 1 else "")


def _number(v: float | None) -> str:
    return "" if v is None else f"{v:.4f}"


def claims_lines(result: ReproduceResult) -> list[str]:
    """The paper's claims as a markdown table."""
    lines = ["| claim | LeNet-5 | LeNet-5x10 | value | verdict |", "|---|---|---|---|---|"]
    for c in result.claims:
        verdict = "PASS" if c.passed else "FAIL"
        lines.append(f"| {c.claim} | {_number(c.lenet5)} | {_number(c.lenet5x10)} | {_number(c.value)} | {verdict} |")
    study = result.prune
    if study is not None:
        lines.append("")
        lines.append("pruning without fine-tuning: is layer-wise pruning ineffective at removing redundancy?")
        for model, baseline in study.baselines.items():
            lines.append(f"  {model} (unpruned {_pct(baseline)}): the claim {study.verdicts[model]}")
            for budget in (0.75, 0.9):
                l1 = study.best(model, budget, scope="layer", criteria=["l1"], compensation="none")
                best = study.best(model, budget)
                if l1 and best:
                    lines.append(
                        f"    {100 * budget:.0f} % of conv MACs removed: l1 layer-wise {_pct(l1['accuracy'])}; best "
                        f"{best['criterion']} {_scope(best['scope'])} with {best['compensation']} compensation "
                        f"{_pct(best['accuracy'])}"
                    )
    return lines


class StepBars:
    """Progress for multi-step library calls: one click bar per step on a terminal; where stderr is not one
    (a log, CI), a line at most every :data:`LOG_EVERY` seconds (the step, done/total, elapsed, ETA).

    Called as ``bars(label, total, done=0)``, it returns the callback that takes samples finished.
    """

    def __init__(self, quiet: bool) -> None:
        self.hidden = quiet or not sys.stderr.isatty()
        self.lines = None if quiet or not self.hidden else _ProgressLines()
        self.bar = None

    def __call__(self, label: str, total: int, done: int = 0) -> Callable[[int], None]:
        self.close()
        if self.lines is not None:
            return self.lines.step(label, total, done)
        self.bar = click.progressbar(length=total, label=label, file=sys.stderr, show_eta=True, hidden=self.hidden)
        bar_shown(not self.hidden)
        if done:
            self.bar.update(done)
        return self.bar.update

    def close(self) -> None:
        """Finish the current bar's line."""
        if self.bar is not None:
            self.bar.render_finish()
            self.bar = None
            bar_shown(False)


LOG_EVERY = 30.0  # seconds between two progress lines where stderr is not a terminal


class _ProgressLines:
    """Progress as log lines, throttled: a long run in CI says where it is without flooding the log."""

    def __init__(self, every: float = LOG_EVERY) -> None:
        self.every = every
        self.started = self.last = time.perf_counter()

    def step(self, label: str, total: int, done: int) -> Callable[[int], None]:
        state = {"done": done, "t0": time.perf_counter(), "first": done}

        def update(n: int) -> None:
            state["done"] += n
            now = time.perf_counter()
            if now - self.last < self.every:
                return
            self.last = now
            rate = (state["done"] - state["first"]) / max(now - state["t0"], 1e-9)
            eta = f", step ETA {(total - state['done']) / rate:.0f} s" if rate > 0 and total > state["done"] else ""
            click.echo(
                f"onnxredund: progress: {label}: {state['done']}/{total}, {now - self.started:.0f} s elapsed{eta}",
                err=True,
            )

        return update


def group_lines(model: Model, groups: list[ChannelGroup]) -> list[str]:
    """The channel groups: which convs' output channels prune together, who reads them, or why they cannot go."""
    prunable = sum(g.prunable for g in groups)
    lines = [f"{model.path}: {len(groups)} channel groups, {prunable} prunable"]
    rows = [["#", "producers", "channels", "consumers", "prunable"]]
    for g in groups:
        rows.append(
            [
                str(g.index),
                name_list(g.producers),
                str(g.channels),
                name_list(g.consumer_names) or "-",
                "yes" if g.prunable else f"no: {short_names_in(g.reason)}",
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4] for r in rows]
    return lines


def _scope(scope: str) -> str:
    return "layer-wise" if scope == "layer" else "global ranking"


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f} %"


def _latency(side: dict, batch: str) -> str:
    low, high = side["latency_quartiles_ms"][batch]
    return f"{side['latency_ms'][batch]:.3f} [{low:.3f}-{high:.3f}]"


def prune_lines(result: PruneResult) -> list[str]:
    """What was removed, and both models' size, speed and quality."""
    how = "channels named" if result.criterion is None else f"criterion {result.criterion}, {_scope(result.scope)}"
    comp = result.compensation or "no"
    rounded = (result.target or {}).get("round_to", 1)
    how += f", channels kept in multiples of {rounded}" if rounded > 1 else ""
    lines = [f"pruned {result.model} ({how}, {comp} compensation):"]
    target = result.target or {}
    if target.get("kind") == "speedup":
        lines.append(
            f"  speed-up target {target['speedup']:g}x at batch {target['batch']}: "
            f"{target['macs_fraction']:.3f} of the conv MACs removed, {target['measured_speedup']:.2f}x when searched "
            f"({len(target['search'])} pruned models timed)"
        )
    for r in result.removed:
        lines.append(f"  {', '.join(map(short_name, r['producers']))}: {r['channels']} -> {r['kept']} channels")
    b, a = result.before, result.after
    qb, qa = result.quality_before, result.quality_after
    for label, key in (("parameters", "params"), ("conv MACs", "conv_macs")):
        fewer = 100 * (1 - a[key] / b[key])
        lines.append(f"  {label:<11} {b[key]:,} -> {a[key]:,} ({fewer:.1f} % fewer)")
    lines.append(f"  file        {b['file_bytes']:,} -> {a['file_bytes']:,} bytes")
    if "latency_ms" in a:
        for batch in a["latency_ms"]:
            lines.append(
                f"  latency     {_latency(b, batch)} -> {_latency(a, batch)} ms per run of {batch} "
                f"(onnxruntime; median, quartiles over {b['latency_runs'][batch]} and {a['latency_runs'][batch]} runs)"
            )
    lines.append(
        f"  calibrated on {result.calibration_samples}, measured on {result.evaluation_samples} held-back samples: "
        f"accuracy {_pct(qb['accuracy'])} -> "
        f"{_pct(qa['accuracy'])}, agreement {_pct(qa['agreement'])}, output drift {_drift(qa)}, "
        f"output cosine {qa['output_cosine']:.4f}"
    )
    if result.value_check is not None:
        check = result.value_check
        lines.append(
            f"  checked by values on {check['samples']} calibration samples against the original with the channels "
            f"zeroed where read: largest output difference {check['max_relative_error']:.2g} (relative)"
            + (
                f", the rounding of {counted(check['unrounded'], 'quantized activation')} left out on both sides"
                if check.get("unrounded")
                else ""
            )
            + (
                f", only past {check['amplified_by']}, which reads no removed channel: every tensor before it agrees "
                "within the tolerance, and it amplifies their last bits or decides on them"
                if check.get("amplified_by")
                else ""
            )
        )
    lines += [f"  note: {n}" for n in result.notes]
    return lines


def _drift(quality: dict) -> str:
    """A pruned model's output drift, and the samples it leaves out (an all-zero original output has no scale)."""
    drift = "n/a" if quality["output_drift"] is None else f"{quality['output_drift']:.4f}"
    unscaled = quality.get("output_drift_unscaled", 0)
    return drift + (f" ({counted(unscaled, 'sample')} with an all-zero original output left out)" if unscaled else "")


def estimate_lines(estimate: dict, backend) -> list[str]:
    """An audit's dry run: its sweeps, their units and the time they should take."""
    where = "this process" if backend is None else f"{backend.name} ({estimate['workers']} workers)"
    lines = [
        f"audit plan on {where}: {len(estimate['sweeps'])} sweeps, {estimate['units']} units; a clean pass takes "
        f"{1000 * estimate['seconds_per_image']:.3f} ms per image here",
        "layer  mode  images  channels  units  estimate s",
    ]
    for s in estimate["sweeps"]:
        lines.append(
            f"{s['layer']}  {s['mode']}  {s['images']}  {s['channels']}/{s['of_channels']}  {s['units']}  "
            f"{s['estimate_seconds']:.1f}"
        )
    lines += [f"skipped (over the budget): {', '.join(estimate['skipped'])}"] if estimate["skipped"] else []
    seq = estimate.get("sequential")
    if seq is None:
        lines.append(f"estimated time: {estimate['estimate_seconds']:.1f} s (the sweeps' total over the workers)")
        return lines
    lines.append(f"exhaustive, every image for every channel: {estimate['estimate_seconds']:.1f} s")
    lines.append(
        f"sequential: {seq['least_seconds']:.1f} s if every channel is decided at its first look "
        f"({seq['first_look_images']} images), up to {seq['most_seconds']:.1f} s if every channel is cheap "
        f"(a channel that never changes the {seq['cost_kind']} needs {seq['clear_images']} images to be called "
        "cheap); the sweeps' total over the workers"
    )
    if not seq["first_looks_fit"]:
        lines.append(
            "the budget does not cover the first looks: unless --sequential is passed, the audit samples images "
            "and channels as --exhaustive does"
        )
    return lines
