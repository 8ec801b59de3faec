"""The audit's outputs: results.json, impulse.npz, summary.csv, impulse and shuffle CSVs, figures and a
self-contained report.html that says what data it saw and what was sampled or left out."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path

from onnxredund.analyses.audit import AuditResult, LayerSummary
from onnxredund.analyses.impulse import MIN_SUPPORT, ImpulseResult
from onnxredund.analyses.shuffle import ShuffleResult
from onnxredund.atomic import atomic_write, csv_text, write_json
from onnxredund.report.figures import overview_figure
from onnxredund.report.html import Figure, Section, Table, render_html
from onnxredund.report.schema import check_results, check_sweep
from onnxredund.report.writers import (
    IMPULSE_NPZ,
    impulse_figures,
    outputs_csv,
    shuffle_figures,
    write_figures,
    write_impulse,
)
from onnxredund.words import UNDECIDED_NOTE, decided, images_each

__all__ = [
    "FIGURE_LAYERS",
    "SUMMARY_COLUMNS",
    "report_seconds",
    "write_audit",
    "write_audit_impulse",
    "write_audit_sweep",
]

FIGURE_LAYERS = 16  # layers drawn in the report (those with the most redundancy)
INCOMPLETE_LINE = (
    "INCOMPLETE: this audit was interrupted. It holds the impulse analysis and the sweeps that finished; the "
    "layers whose sweeps had not finished show no shuffling numbers (the notes name them). `onnxredund audit "
    "--resume` with the same --out continues it."
)
_SECONDS_PER_FIGURE = 0.2  # measured on 2 cores: cosine 0.29 s, NCC 0.17, accuracy 0.10, response grid 0.07

SUMMARY_COLUMNS = [
    "name",
    "in_channels",
    "out_channels",
    "impulse_redundant_fraction",
    "impulse_compared",
    "channel_cheap_fraction",
    "pixel_cheap_fraction",
    "channel_undecided",
    "pixel_undecided",
    "worst_accuracy_drop",
    "worst_agreement_drop",
    "worst_output_cosine",
    "worst_output_sqnr",
    "redundancy_score",
]


def _summary_value(s: LayerSummary, column: str):
    if column.endswith("_undecided"):  # the channels a sweep left undecided (None: not shuffled in that mode)
        counts = s.decisions.get(column.removesuffix("_undecided"))
        return None if counts is None else counts["undecided"]
    return getattr(s, column)


def write_audit_impulse(out: Path, impulse: ImpulseResult) -> None:
    """The impulse part as soon as it is there (its files, the figures later with the report's): kept on disk
    whatever happens to the sweeps after it."""
    write_impulse(out, impulse, figures=False)


def write_audit_sweep(out: Path, result: ShuffleResult) -> None:
    """One sweep as soon as it ends."""
    tag = f"shuffle-{result.layer_index}-{result.mode}"
    payload = result.to_dict()
    check_sweep(payload)
    write_json(out / f"{tag}.json", payload)
    atomic_write(out / f"{tag}.csv", result.to_csv())
    atomic_write(out / f"{tag}-outputs.csv", outputs_csv(result))
    atomic_write(out / f"{tag}-decisions.csv", result.decisions_csv())


def _pct(v: float | None) -> str | None:
    return None if v is None else f"{100 * v:.1f} %"


def _impulse_cell(s: LayerSummary) -> str | None:
    if s.impulse_compared is None:
        return None
    words = {"support": "over too few positions"}
    why = ", ".join(f"{n} {words.get(r, r)}" for r, n in (s.impulse_excluded or {}).items() if n)
    if not s.impulse_compared:
        return f"not compared ({why})" if why else "not compared"
    return f"{_pct(s.impulse_redundant_fraction)} of {s.impulse_compared}" + (f" ({why} left out)" if why else "")


def _cost_cell(s: LayerSummary, word: str) -> str | None:
    if word == "accuracy":
        return None if s.worst_accuracy_drop is None else f"{100 * s.worst_accuracy_drop:.2f} pp"
    if word == "agreement":
        return None if s.worst_agreement_drop is None else f"{100 * s.worst_agreement_drop:.2f} pp"
    return None if s.worst_output_cosine is None else f"{s.worst_output_cosine:.4f}"


def _cheap_cell(result: AuditResult, s: LayerSummary, mode: str) -> str | None:
    """A cheap fraction with what it is of: "98.3 % of 60 (2000 images; at 95.0 %: 50 cheap, 1 costly, 9
    undecided)", "100.0 % of 1 measured of 32 (64 images; ...)"; sequential: "85.0 % of 60 (51 cheap, 0 costly,
    9 undecided; 256-5000 images each)"."""
    sweep = result.shuffles.get(s.name, {}).get(mode)
    fraction = s.channel_cheap_fraction if mode == "channel" else s.pixel_cheap_fraction
    if sweep is None or fraction is None:
        return None
    k = len(sweep.channels)
    of = f"{k}" if k == s.in_channels else f"{k} measured of {s.in_channels}"
    counts = decided(sweep.decision_counts())
    if not sweep.estimation.sequential:  # the fraction is of the estimates; the decisions are of the intervals
        return (
            f"{_pct(fraction)} of {of} ({sweep.samples_done} images; at {_pct(sweep.estimation.confidence)}: {counts})"
        )
    return f"{_pct(fraction)} of {of} ({counts}; {images_each(sweep.images)})"


_SAMPLED = " shuffling measured "  # the words of the audit's sampling notes (analyses.audit._sampling_notes)
_SKIPPED = " shuffling skipped: time budget spent"


def _note_blocks(notes: list[str]) -> list:
    """The notes for the report: what the time budget cut, per sweep, as one table and one line (a model of
    100 convs has 200 such notes), then the others, each on its line."""
    sampled = [n for n in notes if _SAMPLED in n and n.endswith(" (time budget)")]
    skipped = [n.removesuffix(_SKIPPED) for n in notes if n.endswith(_SKIPPED)]
    undecided = [n for n in notes if n.endswith(UNDECIDED_NOTE)]
    grouped = {*sampled, *undecided}
    blocks: list = [f"note: {n}" for n in notes if n not in grouped and not n.endswith(_SKIPPED)]
    if sampled:
        rows = [n.removesuffix(" (time budget)").split(_SAMPLED, 1) for n in sampled]
        blocks.append(Table(["sweep", "measured (to fit the time budget)"], rows, f"{len(rows)} sweeps sampled"))
    if undecided:
        rows = [n.removesuffix(f" {UNDECIDED_NOTE}").split(" shuffling: ", 1) for n in undecided]
        caption = f"{len(rows)} sweeps left channels undecided (counted as not cheap)"
        blocks.append(Table(["sweep", "undecided channels"], rows, caption))
    if skipped:
        blocks.append(f"note: {len(skipped)} sweeps skipped, the time budget spent: {', '.join(skipped)}")
    return blocks


def _summary_table(result: AuditResult) -> Table:
    word = result.effect_kind
    worst = {"accuracy": "worst accuracy drop", "agreement": "worst agreement drop"}.get(word, "lowest output cosine")
    rows = [
        [
            s.name,
            f"{s.in_channels}->{s.out_channels}",
            _impulse_cell(s),
            _cheap_cell(result, s, "channel"),
            _cheap_cell(result, s, "pixel"),
            _cost_cell(s, word),
            None if s.redundancy_score is None else f"{s.redundancy_score:.3f}",
        ]
        for s in result.layers
    ]
    cheap = f"{100 * result.cheap_drop:.2f} pp {word}" if word != "output cosine" else f"{result.cheap_drop} cosine"
    return Table(
        [
            "layer",
            "channels",
            "impulse: redundant out-channels",
            "channel shuffle: cheap in-channels",
            "pixel shuffle: cheap in-channels",
            worst,
            "redundancy score",
        ],
        rows,
        f"cheap: shuffling costs at most {cheap}; redundant: NCC best match >= {result.impulse.threshold} among "
        f"the compared channels (responses over fewer than {MIN_SUPPORT} positions, or "
        "constant, are left out); empty: not measured",
    )


def _data_lines(result: AuditResult) -> list[str]:
    info = result.data_info
    facts = ", ".join(f"{k} {v}" for k, v in info.items() if k not in ("name",) and v not in (None, "", []))
    return [f"data: {result.data} ({facts})"]


def _cos(v: float | None) -> str | None:
    return None if v is None else f"{v:.4f}"


def _ranked_table(summary: LayerSummary, word: str) -> Table:
    unit = " pp" if word in ("accuracy", "agreement") else ""
    scale = 100 if unit else 1
    modes = sorted({m for r in summary.ranked_channels for m in r["mean_cosine"]})

    def interval(r: dict, m: str) -> str | None:
        low, high = r.get("interval", {}).get(m, (None, None))
        if low is None:
            return None
        words = f"[{scale * low:.2f}, {scale * high:.2f}]{unit} {r['decision'][m]}"
        return f"{words}, {r['images'][m]} images"

    rows = [
        [
            r["channel"],
            f"{scale * r['cost']:.2f}{unit}",
            *(interval(r, m) for m in modes),
            *(_cos(r["mean_cosine"].get(m)) for m in modes),
        ]
        for r in summary.ranked_channels[:20]
    ]
    return Table(
        [
            "input channel",
            f"cost in {word} (worst mode)",
            *(f"interval, decision ({m})" for m in modes),
            *(f"mean cosine ({m})" for m in modes),
        ],
        rows,
        f"{summary.name}: input channels whose perturbation costs least (first 20)",
    )


def _shuffle_section(
    layer_name: str, modes: dict[str, ShuffleResult], summary: LayerSummary, word: str, figures: dict[str, Figure]
) -> Section:
    blocks = []
    for r in modes.values():
        base = f" Baseline accuracy {100 * r.baseline_accuracy:.2f} %." if r.baseline_accuracy is not None else ""
        sampled = "" if r.complete else f" (stopped after {r.samples_done} of {r.num_samples}: time budget)"
        channels = (
            "" if len(r.channels) == summary.in_channels else f", {len(r.channels)} of {summary.in_channels} channels"
        )
        blocks.append(
            f"{r.mode} shuffling: {r.samples_done} samples of {r.data}{sampled}{channels}, seed {r.seed}, "
            f"{r.route} path.{base}"
        )
        tag = f"shuffle-{r.layer_index}-{r.mode}-"
        blocks.extend(f for name, f in figures.items() if name.startswith(tag))
    blocks.append(_ranked_table(summary, word))
    return Section(f"Shuffling at {layer_name}", blocks)


def _most_redundant(names: list[str], score: dict[str, float | None]) -> list[str]:
    """The :data:`FIGURE_LAYERS` names with the highest score, highest first (unscored last, then graph order)."""
    order = sorted(range(len(names)), key=lambda i: (-(score.get(names[i]) or -1.0), i))
    return [names[i] for i in order[:FIGURE_LAYERS]]


class _Drawer:
    """Draws figures, most telling first, until a deadline (a ``time.perf_counter()`` value); names what it
    left out."""

    def __init__(self, deadline: float | None) -> None:
        self.deadline = deadline
        self.left_out: list[str] = []

    def __call__(self, what: str, draw: Callable[[], dict[str, Figure]]) -> dict[str, Figure]:
        if self.deadline is not None and time.perf_counter() >= self.deadline:
            self.left_out.append(what)
            return {}
        return draw()


def _overview_figures(layers: list[LayerSummary]) -> dict[str, Figure]:
    return {"overview.png": Figure(overview_figure(layers), "Redundancy per layer: the three signals")}


def _sweep_figures(modes: dict[str, ShuffleResult]) -> dict[str, Figure]:
    return {name: f for r in modes.values() for name, f in shuffle_figures(r).items()}


def report_seconds(layers: int, sweeps: int) -> float:
    """About how long writing an audit's outputs takes (figures dominate), for budgets to keep aside."""
    figures = 2 * min(layers, FIGURE_LAYERS) + 3 * min(sweeps, 2 * FIGURE_LAYERS) + 1  # cosine, effect, cost
    return 3.0 + _SECONDS_PER_FIGURE * figures


def write_audit(out: Path, result: AuditResult, *, parts: bool = True, deadline: float | None = None) -> None:
    """Every output of the audit (see the module docstring). Figures are drawn for the :data:`FIGURE_LAYERS`
    layers with the most redundancy; every number of every layer is in results.json and the CSVs.

    Args:
        parts: also write the impulse and sweep files (False where they were written as each finished).
        deadline: a ``time.perf_counter()`` value (the end of a time budget): figures not drawn by then are
            left out, most telling first (the overview, then the layers with the most redundancy), and the
            report names them.
    """
    if parts:
        write_audit_impulse(out, result.impulse)
        for modes in result.shuffles.values():
            for r in modes.values():
                write_audit_sweep(out, r)
    payload = {**result.to_dict(), "matrices_file": IMPULSE_NPZ}
    check_results(payload)
    write_json(out / "results.json", payload)
    rows = [[_summary_value(s, c) for c in SUMMARY_COLUMNS] for s in result.layers]
    atomic_write(out / "summary.csv", csv_text(["layer", *SUMMARY_COLUMNS[1:]], rows))
    imp = result.impulse
    # what to draw, most telling first: the overview, then the shuffling and the impulse figures of the layers
    # with the most redundancy, taking turns
    by_name = {layer.name: layer for layer in imp.layers}
    shown = _most_redundant(list(result.shuffles), {s.name: s.redundancy_score for s in result.layers})
    drawn = _most_redundant(
        [layer.name for layer in imp.layers], {layer.name: layer.redundant_fraction for layer in imp.layers}
    )
    jobs = [("the overview", ("overview", ""), partial(_overview_figures, result.layers))]
    for i in range(max(len(shown), len(drawn))):
        if i < len(shown):
            jobs.append(
                (f"{shown[i]} shuffling", ("shuffle", shown[i]), partial(_sweep_figures, result.shuffles[shown[i]]))
            )
        if i < len(drawn):
            layer = replace(imp, layers=[by_name[drawn[i]]])
            jobs.append((f"{drawn[i]} impulse responses", ("impulse", drawn[i]), partial(impulse_figures, layer)))
    draw = _Drawer(deadline)
    done = {key: draw(what, make) for what, key, make in jobs}
    figs = done[("overview", "")]
    sweep_figs = {name: done[("shuffle", name)] for name in shown}
    impulse_figs = {name: done[("impulse", name)] for name in drawn}
    word = result.effect_kind
    overview = [] if result.complete else [INCOMPLETE_LINE]
    overview += [_summary_table(result), *figs.values(), *_data_lines(result)]
    overview += _note_blocks(result.notes)
    if len(imp.layers) > FIGURE_LAYERS or len(result.shuffles) > FIGURE_LAYERS:
        overview.append(
            f"figures are drawn for the {FIGURE_LAYERS} layers with the most redundancy; every layer's numbers are "
            "in results.json, summary.csv, the shuffle CSVs and impulse.npz"
        )
    if draw.left_out:
        overview.append(
            f"figures left out to keep the time budget: {', '.join(draw.left_out)}; their numbers are in "
            "results.json, summary.csv, the shuffle CSVs and impulse.npz"
        )
    sections = [Section("Summary", overview)]
    for layer_name, modes in result.shuffles.items():
        summary = next(s for s in result.layers if s.name == layer_name)
        sections.append(_shuffle_section(layer_name, modes, summary, word, sweep_figs.get(layer_name, {})))
    imp_blocks = [
        f"mode {imp.mode}; NCC {'maximised over lags' if imp.lags else 'at lag 0'}; impulse at {imp.position}"
    ]
    ordered = [impulse_figs[layer.name] for layer in imp.layers if layer.name in impulse_figs]  # graph order
    imp_blocks += [f for layer_figs in ordered for f in layer_figs.values()]
    sections.append(Section("Unit impulse responses", imp_blocks))
    write_figures(out, {name: f for group in done.values() for name, f in group.items()})
    meta = f"data {result.data}, seed {result.seed}" + (f", budget {result.budget:g} s" if result.budget else "")
    title = f"Redundancy audit: {Path(result.model).name}" + ("" if result.complete else " (INCOMPLETE)")
    page = render_html(title, meta, sections)
    atomic_write(out / "report.html", page)
