"""The reproduction's outputs: the paper's figures 4-9 as PNGs, results.json, claims.csv and report.html."""

from __future__ import annotations

from pathlib import Path

from onnxredund.analyses.reproduce import ReproduceResult
from onnxredund.atomic import atomic_write, csv_text, write_json
from onnxredund.report.figures import (
    accuracy_figure,
    cascade_figure,
    cosine_figure,
    prune_curves_figure,
    shuffle_example_figure,
)
from onnxredund.report.html import Figure, Section, Table, render_html
from onnxredund.report.writers import layer_impulse_figures, write_figures

__all__ = ["write_reproduce"]


def _csv_number(v: float | None) -> str | None:
    return None if v is None else f"{v:.6f}"


def write_reproduce(out: Path, result: ReproduceResult) -> None:
    """The paper's figures 4-9 as PNGs, results.json, claims.csv and report.html."""
    write_json(out / "results.json", result.to_dict())
    rows = [
        [c.claim, _csv_number(c.lenet5), _csv_number(c.lenet5x10), _csv_number(c.value), int(c.passed)]
        for c in result.claims
    ]
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
        for layer in imp.layers:
            label = f"{model} {layer.name}"
            captions = (f"Figure 8: {label}: impulse responses", f"Figure 9: {label}: NCC of impulse responses")
            files = (f"fig8-{model}-{layer.name}-responses.png", f"fig9-{model}-{layer.name}-ncc.png")
            figs |= dict(zip(files, layer_impulse_figures(layer, label, captions), strict=True))
    prune_blocks = _prune_section(out, result, figs) if result.prune is not None else []
    write_figures(out, figs)
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
    if prune_blocks:
        sections.append(Section("Pruning without fine-tuning: is layer-wise pruning ineffective?", prune_blocks))
    if not result.complete:
        sections.insert(
            0,
            Section(
                "INCOMPLETE",
                [
                    "The pruning study was interrupted: this report holds the paper's experiments only (whole); run "
                    "`onnxredund reproduce` again for the study."
                ],
            ),
        )
    page = render_html(
        "Reproduction: redundancy in LeNet-5 and LeNet-5x10", f"data {result.data}, seed {result.seed}", sections
    )
    atomic_write(out / "report.html", page)


_KEY_BUDGETS = (0.75, 0.85, 0.9, 0.95)


def _prune_section(out: Path, result: ReproduceResult, figs: dict[str, Figure]) -> list:
    """The study's CSV (every pruned model), its figures (added to ``figs``) and the blocks of its report section."""
    study = result.prune
    fields = [
        "model",
        "criterion",
        "seed",
        "scope",
        "compensation",
        "budget",
        "macs_removed",
        "params_removed",
        "accuracy",
        "agreement",
        "output_drift",
        "error",
    ]
    rows = [[getattr(r, f) for f in fields] for r in study.rows]
    atomic_write(out / "prune_study.csv", csv_text(fields, rows))
    compensations = list(dict.fromkeys(r.compensation for r in study.rows))
    blocks: list = [
        f"Calibration on the first {study.calibration_samples} samples, accuracy on the other "
        f"{study.evaluation_samples}; every pruned model is in prune_study.csv ({len(study.rows)} rows)."
    ]
    for model, baseline in study.baselines.items():
        name = f"prune-{model}.png"
        figs[name] = Figure(
            prune_curves_figure(study.summary(), model, baseline, compensations),
            f"{model}: top-1 error against conv MACs removed, per criterion (random: mean of seeds, band: spread)",
        )
        blocks.append(figs[name])
        table = []
        for budget in _KEY_BUDGETS:
            cells = {
                "best layer-wise": study.best(model, budget, scope="layer", compensation="none"),
                "best global": study.best(model, budget, scope="global", compensation="none"),
                "l1 layer-wise": study.best(model, budget, scope="layer", criteria=["l1"], compensation="none"),
                "best with compensation": study.best(model, budget),
            }
            for what, c in cells.items():
                if c is not None:
                    table.append(
                        [
                            f"{100 * budget:.0f} %",
                            what,
                            c["criterion"],
                            c["scope"],
                            c["compensation"],
                            100 * c["accuracy"],
                        ]
                    )
        blocks.append(
            Table(
                ["MACs removed", "selection", "criterion", "scope", "compensation", "accuracy %"],
                table,
                f"{model}: unpruned {100 * baseline:.2f} %",
            )
        )
        blocks.append(f"{model}: the claim {study.verdicts[model]}.")
    blocks += [f"note: {n}" for n in study.notes]
    return blocks
