"""Write results to an output folder: JSON, CSV, PNG figures and the HTML report, each atomically."""

from __future__ import annotations

from pathlib import Path

from onnxredund.analyses.audit import AuditResult
from onnxredund.analyses.impulse import ImpulseResult
from onnxredund.analyses.reproduce import ReproduceResult
from onnxredund.analyses.shuffle import ShuffleResult
from onnxredund.atomic import atomic_write, csv_text, write_json
from onnxredund.report.figures import (
    accuracy_figure,
    cascade_figure,
    cosine_figure,
    ncc_figure,
    response_grid_figure,
    shuffle_example_figure,
)
from onnxredund.report.html import Figure, Section, Table, render_html

__all__ = [
    "impulse_figures",
    "shuffle_figures",
    "write_audit",
    "write_impulse",
    "write_reproduce",
    "write_shuffle",
]


def impulse_figures(result: ImpulseResult, prefix: str = "") -> dict[str, Figure]:
    """File name -> figure: per layer a response grid (paper fig. 8) and an NCC heatmap (fig. 9)."""
    figs = {}
    for l in result.layers:
        figs[f"{prefix}impulse-{l.index}-responses.png"] = Figure(
            response_grid_figure(l.responses, f"{prefix}{l.name}: impulse responses ({result.mode})"),
            f"{prefix}{l.name}: impulse response of each output channel (input channel 0)",
        )
        figs[f"{prefix}impulse-{l.index}-ncc.png"] = Figure(
            ncc_figure(l.ncc, f"{prefix}{l.name}: NCC of impulse responses"),
            f"{prefix}{l.name}: one-vs-all normalized cross-correlation of the impulse responses",
        )
    return figs


def shuffle_figures(result: ShuffleResult, prefix: str = "") -> dict[str, Figure]:
    """File name -> figure: cosine per output channel (paper fig. 5) and accuracy per channel (fig. 6)."""
    tag = f"{prefix}shuffle-{result.layer_index}-{result.mode}"
    title = f"{prefix}{result.layer}: {result.mode} shuffling"
    figs = {
        f"{tag}-cosine.png": Figure(
            cosine_figure(result.channels, result.cosine, title),
            f"{title}: cosine similarity of A_i per output channel",
        )
    }
    values, label = (
        (result.accuracy, "top-1 accuracy") if result.accuracy is not None else (result.agreement, "agreement")
    )
    if values is not None:
        figs[f"{tag}-accuracy.png"] = Figure(
            accuracy_figure(result.channels, values, result.baseline_accuracy, title, label),
            f"{title}: {label} per perturbed channel; the line is the clean baseline",
        )
    return figs


def _write_figures(out: Path, figs: dict[str, Figure]) -> None:
    for name, fig in figs.items():
        atomic_write(out / name, fig.png)


def write_impulse(out: Path, result: ImpulseResult) -> None:
    write_json(out / "impulse.json", result.to_dict())
    atomic_write(out / "impulse.csv", result.to_csv())
    _write_figures(out, impulse_figures(result))


def write_shuffle(out: Path, result: ShuffleResult, figures: bool = True) -> None:
    write_json(out / f"shuffle-{result.mode}.json", result.to_dict())
    atomic_write(out / f"shuffle-{result.mode}.csv", result.to_csv())
    if figures:
        _write_figures(out, shuffle_figures(result))


def _summary_table(result: AuditResult) -> Table:
    def pct(v):
        return None if v is None else f"{100 * v:.1f} %"

    rows = [
        [
            s.name,
            f"{s.in_channels}->{s.out_channels}",
            pct(s.impulse_redundant_fraction),
            pct(s.channel_cheap_fraction),
            pct(s.pixel_cheap_fraction),
            None if s.worst_accuracy_drop is None else f"{100 * s.worst_accuracy_drop:.2f} pp",
            f"{s.redundancy_score:.3f}",
        ]
        for s in result.layers
    ]
    return Table(
        [
            "layer",
            "channels",
            "impulse: redundant out-channels",
            "channel shuffle: cheap in-channels",
            "pixel shuffle: cheap in-channels",
            "worst accuracy drop",
            "redundancy score",
        ],
        rows,
        f"cheap: shuffling costs at most {100 * result.cheap_drop:.2f} pp accuracy; redundant: NCC best match "
        f">= {result.impulse.threshold}",
    )


def _ranked_table(summary) -> Table:
    rows = [
        [r["channel"], f"{100 * r['cost']:.2f} pp", *(f"{v:.4f}" for v in r["mean_cosine"].values())]
        for r in summary.ranked_channels[:20]
    ]
    modes = list(summary.ranked_channels[0]["mean_cosine"]) if summary.ranked_channels else []
    return Table(
        ["input channel", "cost (worst mode)", *(f"mean cosine ({m})" for m in modes)],
        rows,
        f"{summary.name}: input channels whose perturbation costs least (first 20)",
    )


def write_audit(out: Path, result: AuditResult) -> None:
    """results.json, summary.csv, impulse.csv, shuffle CSVs, PNG figures and report.html."""
    write_json(out / "results.json", result.to_dict())
    header = ["layer", "in_channels", "out_channels", "impulse_redundant_fraction", "channel_cheap_fraction"]
    header += ["pixel_cheap_fraction", "worst_accuracy_drop", "redundancy_score"]
    rows = [
        [
            s.name,
            s.in_channels,
            s.out_channels,
            s.impulse_redundant_fraction,
            s.channel_cheap_fraction,
            s.pixel_cheap_fraction,
            s.worst_accuracy_drop,
            s.redundancy_score,
        ]
        for s in result.layers
    ]
    atomic_write(out / "summary.csv", csv_text(header, rows))
    atomic_write(out / "impulse.csv", result.impulse.to_csv())
    impulse_figs = impulse_figures(result.impulse)
    figs = dict(impulse_figs)
    sections = [Section("Summary", [_summary_table(result), *[f"note: {n}" for n in result.notes]])]
    for layer_name, modes in result.shuffles.items():
        blocks = []
        for r in modes.values():
            atomic_write(out / f"shuffle-{r.layer_index}-{r.mode}.csv", r.to_csv())
            sf = shuffle_figures(r)
            figs |= sf
            base = f"baseline accuracy {100 * r.baseline_accuracy:.2f} %" if r.baseline_accuracy is not None else ""
            blocks.append(f"{r.mode} shuffling: {r.samples_done} samples, seed {r.seed}, {r.route} path. {base}")
            blocks.extend(sf.values())
        summary = next(s for s in result.layers if s.name == layer_name)
        blocks.append(_ranked_table(summary))
        sections.append(Section(f"Shuffling at {layer_name}", blocks))
    imp_blocks = [f"mode {result.impulse.mode}; NCC {'maximised over lags' if result.impulse.lags else 'at lag 0'}"]
    imp_blocks += list(impulse_figs.values())
    sections.append(Section("Unit impulse responses", imp_blocks))
    _write_figures(out, figs)
    page = render_html(
        f"Redundancy audit: {Path(result.model).name}", f"data {result.data}, seed {result.seed}", sections
    )
    atomic_write(out / "report.html", page)


def _csv_number(v: float | None) -> str | None:
    return None if v is None else f"{v:.6f}"


def write_reproduce(out: Path, result: ReproduceResult) -> None:
    """The paper's figures 4-9 as PNGs, results.json, claims.csv and report.html."""
    write_json(out / "results.json", result.to_dict())
    rows = [[c.claim, _csv_number(c.lenet5), _csv_number(c.lenet5x10), _csv_number(c.value), int(c.passed)]
            for c in result.claims]  # fmt: skip
    atomic_write(out / "claims.csv", csv_text(["claim", "lenet5", "lenet5x10", "value", "passed"], rows))
    ex = result.example
    figs: dict[str, Figure] = {
        "fig4-shuffle-example.png": Figure(
            shuffle_example_figure(ex["clean"], ex["channel"], ex["pixel"], f"LeNet-5, A_1 channel {ex['index']}"),
            "Figure 4: one test sample's A_1 channel (input of conv2), channel-shuffled and pixel-shuffled",
        ),
    }
    for model, modes in result.shuffles.items():
        for mode, r in modes.items():
            title = f"{model} conv2, {mode} shuffling"
            figs[f"fig5-{model}-{mode}-cosine.png"] = Figure(
                cosine_figure(r.channels, r.cosine, title), f"Figure 5: {title}: cosine of A_2 per output channel"
            )
            figs[f"fig6-{model}-{mode}-accuracy.png"] = Figure(
                accuracy_figure(r.channels, r.accuracy, r.baseline_accuracy, title),
                f"Figure 6: {title}: accuracy per perturbed channel, the green line is the baseline",
            )
    figs["fig7-cascade.png"] = Figure(
        cascade_figure(result.cascade["responses"], result.cascade["ncc"]),
        "Figure 7: two cascaded convolutions with vertical and horizontal Gaussian kernels, in either order",
    )
    for model, imp in result.impulses.items():
        for l in imp.layers:
            figs[f"fig8-{model}-{l.name}-responses.png"] = Figure(
                response_grid_figure(l.responses, f"{model} {l.name}: impulse responses"),
                f"Figure 8: {model} {l.name}: impulse responses",
            )
            figs[f"fig9-{model}-{l.name}-ncc.png"] = Figure(
                ncc_figure(l.ncc, f"{model} {l.name}: NCC"), f"Figure 9: {model} {l.name}: NCC of impulse responses"
            )
    _write_figures(out, figs)
    claims = Table(
        ["claim", "LeNet-5", "LeNet-5x10", "value", "verdict"],
        [[c.claim, c.lenet5, c.lenet5x10, c.value, c.passed] for c in result.claims],
    )
    base = {m: r["channel"].baseline_accuracy for m, r in result.shuffles.items()}
    sections = [
        Section(
            "The paper's claims, checked",
            [claims, "baselines: " + ", ".join(f"{m} {100 * v:.2f} %" for m, v in base.items())],
        ),
        Section(
            "Channel and pixel shuffling (section 2)", [v for k, v in figs.items() if k[:4] in ("fig4", "fig5", "fig6")]
        ),
        Section("Unit impulse response (section 3)", [v for k, v in figs.items() if k[:4] in ("fig7", "fig8", "fig9")]),
    ]
    page = render_html(
        "Reproduction: redundancy in LeNet-5 and LeNet-5x10", f"data {result.data}, seed {result.seed}", sections
    )
    atomic_write(out / "report.html", page)
