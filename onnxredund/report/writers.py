"""Write results to an output folder: JSON, CSV, NPZ, PNG figures, each atomically.

JSON stays small enough to open: NCC matrices of layers with at most 256 channels; every full
matrix goes to ``impulse.npz`` (named in the JSON).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from onnxredund.analyses.impulse import ImpulseResult, LayerImpulse
from onnxredund.analyses.shuffle import ShuffleResult
from onnxredund.atomic import atomic_write, csv_text, write_json, write_npz
from onnxredund.report.figures import (
    accuracy_figure,
    cosine_figure,
    cost_interval_figure,
    ncc_figure,
    response_grid_figure,
)
from onnxredund.report.html import Figure
from onnxredund.report.schema import check_sweep

__all__ = [
    "IMPULSE_NPZ",
    "impulse_figures",
    "impulse_payload",
    "shuffle_figures",
    "write_figures",
    "write_impulse",
    "write_shuffle",
]

IMPULSE_NPZ = "impulse.npz"


#: per effect kind (:func:`~onnxredund.analyses.shuffle.effect_kind`), its words on a figure and in a file name
EFFECT_LABELS = {
    "accuracy": "top-1 accuracy",
    "agreement": "top-1 agreement with the clean model",
    "output cosine": "lowest output cosine",
}
COST_LABELS = {
    "accuracy": "accuracy drop",
    "agreement": "top-1 disagreement with the clean model",
    "output cosine": "1 - lowest output cosine",
}
EFFECT_FILES = {"accuracy": "accuracy", "agreement": "agreement", "output cosine": "output-cosine"}


def layer_impulse_figures(layer: LayerImpulse, label: str, captions: tuple[str, str], mode: str = ""):
    """A layer's response grid (paper fig. 8) and NCC heatmap (fig. 9), titled after ``label`` (and the
    impulse ``mode``), with their ``captions``."""
    responses = f"{label}: impulse responses" + (f" ({mode})" if mode else "")
    return (
        Figure(response_grid_figure(layer.responses, responses), captions[0]),
        Figure(ncc_figure(layer.ncc, f"{label}: NCC of impulse responses"), captions[1]),
    )


def impulse_figures(result: ImpulseResult, prefix: str = "") -> dict[str, Figure]:
    """File name -> figure: per layer a response grid (paper fig. 8) and an NCC heatmap (fig. 9)."""
    figs = {}
    for layer in result.layers:
        left_out = sum(layer.excluded.values())
        note = f" ({left_out} left out of the comparison: {layer.excluded})" if left_out else ""
        label = f"{prefix}{layer.name}"
        captions = (
            f"{label}: impulse response of each output channel (input channel 0){note}",
            f"{label}: one-vs-all normalized cross-correlation of the impulse responses",
        )
        pair = layer_impulse_figures(layer, label, captions, result.mode)
        files = (f"{prefix}impulse-{layer.index}-responses.png", f"{prefix}impulse-{layer.index}-ncc.png")
        figs |= dict(zip(files, pair, strict=True))
    return figs


def shuffle_figures(result: ShuffleResult, prefix: str = "") -> dict[str, Figure]:
    """File name -> figure: cosine per output channel (paper fig. 5) and the effect per channel (fig. 6)."""
    tag = f"{prefix}shuffle-{result.layer_index}-{result.mode}"
    title = f"{prefix}{result.layer}: {result.mode} shuffling, {sweep_size(result)}"
    figs = {
        f"{tag}-cosine.png": Figure(
            cosine_figure(result.channels, result.cosine, title),
            f"{title}: cosine similarity of A_i per output channel",
        )
    }
    values, kind = result.effect(), result.effect_kind
    label = EFFECT_LABELS[kind]
    if values is not None:
        baseline = result.baseline_accuracy if result.accuracy is not None else None
        figs[f"{tag}-{EFFECT_FILES[kind]}.png"] = Figure(
            accuracy_figure(result.channels, values, baseline, title, label),
            f"{title}: {label} per perturbed channel" + ("; the line is the clean baseline" if baseline else ""),
        )
    if result.decision is not None and values is not None:
        e = result.estimation
        how = "sequential, " if e.sequential else ""
        figs[f"{tag}-cost.png"] = Figure(
            cost_interval_figure(
                result.channels,
                result.cost(),
                result.cost_low,
                result.cost_high,
                result.decision,
                e.cheap_drop,
                title,
                COST_LABELS[kind],
            ),
            f"{title}: each channel's cost with its {100 * e.confidence:g} % interval ({how}decided against "
            f"{e.cheap_drop:g})",
        )
    return figs


def sweep_size(result: ShuffleResult) -> str:
    """What a sweep measured: "60 input channels, 2000 images" (or "1 of 32 input channels, 64 images")."""
    of = "" if result.layer_in_channels in (None, len(result.channels)) else f" of {result.layer_in_channels}"
    return f"{len(result.channels)}{of} input channels, {result.samples_done} images"


def write_figures(out: Path, figs: dict[str, Figure]) -> None:
    for name, fig in figs.items():
        atomic_write(out / name, fig.png)


def impulse_payload(result: ImpulseResult, npz: str | None = IMPULSE_NPZ) -> dict:
    """The impulse result's JSON (the float64 matrices of the layers it chose), naming the .npz that holds every
    full matrix."""
    d = result.to_dict()
    d["matrices_file"] = npz
    return d


def write_impulse(out: Path, result: ImpulseResult, *, figures: bool = True) -> None:
    """impulse.json (per-layer summaries, matrices up to 256 channels), impulse.npz (every matrix),
    impulse.csv (a row per channel) and the figures."""
    write_npz(out / IMPULSE_NPZ, result.arrays(), compressed=True)
    write_json(out / "impulse.json", impulse_payload(result))
    atomic_write(out / "impulse.csv", result.to_csv())
    if figures:
        write_figures(out, impulse_figures(result))


def outputs_csv(result: ShuffleResult) -> str:
    """One row per (graph output, perturbed channel): the output effects."""
    names = ["cosine", "relative_l2", "sqnr_db", "abs_error_p50", "abs_error_p99", "abs_error_max"]
    names += ["top1_agreement", "top5_agreement", "kl_divergence"]
    rows = []
    for output, effect in result.outputs.items():
        for i, k in enumerate(result.channels):
            values = [getattr(effect, n) for n in names]
            rows.append([output, k, *(None if v is None or not np.isfinite(v[i]) else f"{v[i]:.8g}" for v in values)])
    return csv_text(["output", "channel", *names], rows)


def write_shuffle(out: Path, result: ShuffleResult, figures: bool = True) -> None:
    """shuffle-MODE.json, shuffle-MODE.csv (A_i cosine per channel pair), shuffle-MODE-outputs.csv and figures."""
    payload = result.to_dict()
    check_sweep(payload)
    write_json(out / f"shuffle-{result.mode}.json", payload)
    atomic_write(out / f"shuffle-{result.mode}.csv", result.to_csv())
    atomic_write(out / f"shuffle-{result.mode}-outputs.csv", outputs_csv(result))
    atomic_write(out / f"shuffle-{result.mode}-decisions.csv", result.decisions_csv())
    if figures:
        write_figures(out, shuffle_figures(result))
