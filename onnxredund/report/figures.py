"""Figures (matplotlib, imported only here and only when a figure is drawn).

Every function returns PNG bytes, so callers write them atomically and reports can embed them.
"""

from __future__ import annotations

import io
import math

import numpy as np

__all__ = [
    "accuracy_figure",
    "cascade_figure",
    "cosine_figure",
    "ncc_figure",
    "overview_figure",
    "prune_curves_figure",
    "response_grid_figure",
    "shuffle_example_figure",
]

_MAX_TILES = 256


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    _plt().close(fig)
    return buf.getvalue()


def _tile(responses: np.ndarray, i: int) -> np.ndarray:
    """Channel i's response to input channel 0 as something to draw: a line (1-D), a map (2-D), or the
    middle slice along the first axis (3-D)."""
    tile = responses[i, 0]
    return tile[tile.shape[0] // 2] if tile.ndim == 3 else tile


def _mosaic(responses: np.ndarray, cols: int) -> np.ndarray:
    """Every channel's tile (input channel 0), each scaled to [-1, 1], in one array with a gap of one pixel."""
    tiles = [_tile(responses, i) for i in range(len(responses))]
    h, w = tiles[0].shape
    rows = math.ceil(len(tiles) / cols)
    out = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1), np.nan)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        out[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = tile / (float(np.abs(tile).max()) or 1.0)
    return out


def response_grid_figure(responses: np.ndarray, title: str) -> bytes:
    """Impulse responses (C, M, *S) as one mosaic of C tiles (input channel 0, row by row), each on its own
    scale: maps for 2-D convs, the middle slice for 3-D, curves for 1-D."""
    plt = _plt()
    c = min(responses.shape[0], _MAX_TILES)
    cols = math.ceil(math.sqrt(c))
    more = f" (first {c} of {responses.shape[0]})" if c < responses.shape[0] else ""
    if responses.ndim == 3:  # 1-D: curves, one axis each
        rows = math.ceil(c / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(1.2 * cols, 1.0 * rows + 0.4), squeeze=False)
        for i, ax in enumerate(axes.flat):
            ax.axis("off")
            if i < c:
                tile = responses[i, 0]
                ax.plot(tile, lw=0.8)
                lim = float(np.abs(tile).max()) or 1.0
                ax.set_ylim(-lim, lim)
        fig.suptitle(title + more, fontsize=9)
        return _png(fig)
    mosaic = _mosaic(responses[:c], cols)
    aspect = mosaic.shape[0] / max(1, mosaic.shape[1])
    fig, ax = plt.subplots(figsize=(6, max(1.5, min(12.0, 6 * aspect)) + 0.4))
    ax.imshow(mosaic, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    ax.axis("off")
    ax.set_title(f"{title}{more}: channels row by row", fontsize=9)
    return _png(fig)


def ncc_figure(ncc: np.ndarray, title: str, xlabel: str = "channel", ylabel: str = "channel") -> bytes:
    """An NCC matrix as a heatmap on [-1, 1]."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4.4))
    im = ax.imshow(ncc, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="NCC")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    return _png(fig)


def cosine_figure(channels: list[int], cosine: np.ndarray, title: str) -> bytes:
    """Figure 5: cosine similarity per output channel (x) for each perturbed channel (lines), and their mean."""
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [3, 2]})
    im = ax1.imshow(
        cosine, aspect="auto", cmap="viridis", vmin=min(0.0, float(cosine.min())), vmax=1.0, interpolation="nearest"
    )
    fig.colorbar(im, ax=ax1, label="cosine")
    ax1.set_xlabel("output channel c")
    ax1.set_ylabel("perturbed input channel k")
    if len(channels) <= 20:
        ax1.set_yticks(range(len(channels)), [str(k) for k in channels], fontsize=7)
    ax2.bar(channels, cosine.mean(axis=1), color="tab:blue", width=_bar_width(channels))
    ax2.set_ylim(min(0.0, float(cosine.mean(axis=1).min())), 1.0)
    _channel_axis(ax2, channels)
    ax2.set_ylabel("mean cosine over c")
    fig.suptitle(title, fontsize=9)
    return _png(fig)


def _bar_width(channels: list[int]) -> float:
    """Bars as wide as the gaps between the channels drawn (evenly spaced when sampled) allow."""
    gaps = np.diff(sorted(channels))
    return 0.8 * float(gaps.min()) if len(gaps) else 0.8


def _channel_axis(ax, channels: list[int]) -> None:
    """The x axis in the layer's own input-channel indices, spanning at least channel 0 to the last drawn, with
    the channels themselves as ticks where there are few (a sampled sweep's one channel reads as its index)."""
    ax.set_xlim(-0.5 * _bar_width(channels) / 0.8 - 0.5, max(channels) + 0.5 * _bar_width(channels) / 0.8 + 0.5)
    if len(channels) <= 12:
        ax.set_xticks(channels, [str(k) for k in channels], fontsize=7)
    ax.set_xlabel("perturbed input channel k of the layer")


def accuracy_figure(
    channels: list[int], accuracy: np.ndarray, baseline: float | None, title: str, ylabel: str = "top-1 accuracy"
) -> bytes:
    """Figure 6: accuracy per perturbed channel, the clean baseline as a horizontal line."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    contiguous = list(channels) == list(range(channels[0], channels[0] + len(channels)))
    ax.plot(channels, accuracy, "o-" if contiguous else "o", ms=3, label="shuffled")
    if baseline is not None:
        ax.axhline(baseline, color="tab:green", label=f"baseline {100 * baseline:.2f} %")
    _channel_axis(ax, channels)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    return _png(fig)


_DECISION_COLOURS = {"cheap": "tab:green", "costly": "tab:red", "undecided": "tab:gray"}


def cost_interval_figure(
    channels: list[int], cost, low, high, decision: list[str], threshold: float, title: str, ylabel: str
) -> bytes:
    """Each perturbed channel's cost with its confidence interval, coloured by its decision, against the cheap
    threshold (a dashed line); the channels in the layer's order."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    x, cost = np.asarray(channels), np.asarray(cost, np.float64)
    below, above = cost - np.asarray(low, np.float64), np.asarray(high, np.float64) - cost
    for word, colour in _DECISION_COLOURS.items():
        pick = np.array([d == word for d in decision], bool)
        if pick.any():
            ax.errorbar(
                x[pick],
                cost[pick],
                yerr=[np.maximum(below[pick], 0), np.maximum(above[pick], 0)],
                fmt="o",
                ms=3,
                lw=1,
                color=colour,
                label=f"{word} ({int(pick.sum())})",
            )
    ax.axhline(threshold, color="black", ls="--", lw=1, label=f"cheap at or under {threshold:g}")
    _channel_axis(ax, channels)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    return _png(fig)


def shuffle_example_figure(
    clean: np.ndarray, channel_shuffled: np.ndarray, pixel_shuffled: np.ndarray, title: str
) -> bytes:
    """Figure 4: one sample's input channel clean, channel-shuffled and pixel-shuffled (H, W) each."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.8))
    for ax, img, name in zip(
        axes, (clean, channel_shuffled, pixel_shuffled), ("clean", "channel shuffled", "pixel shuffled"), strict=True
    ):
        ax.imshow(img, cmap="gray", interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    return _png(fig)


def cascade_figure(responses: np.ndarray, ncc: float) -> bytes:
    """Figure 7: impulse responses of vertical->horizontal and horizontal->vertical Gaussian cascades."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(6, 3))
    for ax, img, name in zip(axes, responses, ("vertical then horizontal", "horizontal then vertical"), strict=True):
        ax.imshow(img, cmap="viridis", interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.suptitle(f"cascaded Gaussian kernels commute: NCC = {ncc:.6f}", fontsize=9)
    return _png(fig)


def overview_figure(summaries) -> bytes:
    """Per layer (x): the impulse's redundant fraction and the channel and pixel cheap fractions, as bars."""
    plt = _plt()
    names = [s.name for s in summaries]
    # wide enough for every layer's three bars to read at the report's width (1100 px: 11 in at 100 dpi)
    fig, ax = plt.subplots(figsize=(min(11.0, max(6.0, 0.3 * len(names) + 2)), 3.6))
    x = np.arange(len(names))
    series = [
        ("impulse: redundant", [s.impulse_redundant_fraction for s in summaries]),
        ("channel shuffle: cheap", [s.channel_cheap_fraction for s in summaries]),
        ("pixel shuffle: cheap", [s.pixel_cheap_fraction for s in summaries]),
    ]
    for j, (label, values) in enumerate(series):
        at = x + (j - 1) * 0.27
        bars = ax.bar(at, [np.nan if v is None else v for v in values], width=0.27, label=label)
        zero = [i for i, v in enumerate(values) if v == 0]  # measured, and none: a mark (no bar: not measured)
        color = bars.patches[0].get_facecolor()
        ax.plot(at[zero], np.full(len(zero), 0.012), "_", ms=6, mew=2, color=color)
    ax.set_xticks(x, names, rotation=90, fontsize=6 if len(names) > 30 else 8)
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_ylim(0, 1)
    ax.set_ylabel("fraction of channels")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=3, loc="lower left", bbox_to_anchor=(0, 1.01), frameon=False)  # above the bars
    return _png(fig)


_CRITERION_STYLE = {
    "random": ("tab:gray", "--"),
    "l1": ("tab:blue", "-"),
    "bn": ("tab:purple", "-"),
    "activation": ("tab:green", "-"),
    "variance": ("tab:olive", "-"),
    "shuffle": ("tab:red", "-"),
    "impulse": ("tab:orange", "-"),
}


def prune_curves_figure(summary: list[dict], model: str, baseline: float | None, compensations: list[str]) -> bytes:
    """Top-1 error (log scale) against conv MACs removed, one line per criterion (random: mean over seeds with its
    spread), one panel per scope (rows) and compensation (columns)."""
    plt = _plt()
    scopes = ["layer", "global"]
    fig, axes = plt.subplots(
        2, len(compensations), figsize=(3.2 * len(compensations), 5.6), sharex=True, sharey=True, squeeze=False
    )
    cells = [c for c in summary if c["model"] == model and c["accuracy"] is not None]
    for i, scope in enumerate(scopes):
        for j, comp in enumerate(compensations):
            ax = axes[i][j]
            for criterion, (color, style) in _CRITERION_STYLE.items():
                mine = [c for c in cells if (c["scope"], c["compensation"], c["criterion"]) == (scope, comp, criterion)]
                pts = sorted((c["budget"], c["accuracy"], c["accuracy_std"] or 0.0) for c in mine)
                if not pts:
                    continue
                x = np.array([100 * p[0] for p in pts])
                err = np.maximum(100 * (1 - np.array([p[1] for p in pts])), 1e-2)
                ax.plot(x, err, style, color=color, marker="o", ms=3, label=criterion)
                spread = np.array([100 * p[2] for p in pts])
                if spread.any():
                    ax.fill_between(x, np.maximum(err - spread, 1e-2), err + spread, color=color, alpha=0.15)
            if baseline is not None:
                ax.axhline(100 * (1 - baseline), color="black", lw=0.8, label="unpruned")
            ax.set_yscale("log")
            ax.set_title(f"{'layer-wise' if scope == 'layer' else 'global ranking'}, compensation {comp}", fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
            if i == 1:
                ax.set_xlabel("conv MACs removed (%)")
            if j == 0:
                ax.set_ylabel("top-1 error (%)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{model}: pruning without fine-tuning", fontsize=10)
    fig.tight_layout()
    return _png(fig)
