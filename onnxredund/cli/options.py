"""Options shared by several commands, as option groups, and the small parsers behind them.

Choices come from the library's own constants, so a new mode or device shows up here by itself.
"""

from __future__ import annotations

import math
from pathlib import Path

import click

from onnxredund.choices import (
    BACKENDS,
    BATCH_SIZE,
    CHEAP_DROP,
    CONFIDENCE,
    DEVICES,
    IMPULSE_MODES,
    LAYOUT_CHOICES,
    MODES,
    PREPROCESS_KEYS,
)

__all__ = [
    "as_json",
    "backend_options",
    "batch_size",
    "compose",
    "data_options",
    "device",
    "impulse_at",
    "impulse_modes",
    "model_options",
    "out",
    "overwrite",
    "parse_position",
    "seed",
    "shuffle_modes",
    "verbosity",
]


def _sizes(text: str) -> tuple[int, ...] | None:
    parts = text.lower().replace(",", "x").split("x")
    if not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        return None
    return tuple(int(p) for p in parts)


def _parse_shapes(_ctx, _param, values: tuple[str, ...]):
    """``--input-shape 3x48x192`` (the image input) or ``--input-shape NAME=8x16`` (any input), repeatable."""
    if not values:
        return None
    shapes = {}
    for value in values:
        name, sep, sizes = value.rpartition("=")
        parsed = _sizes(sizes)
        if parsed is None:
            raise click.BadParameter(f"{value!r}: use sizes like 3x48x192, or NAME=3x48x192 for one input")
        shapes[name if sep else None] = parsed
    return shapes


def _parse_values(_ctx, _param, values: tuple[str, ...]):
    """``--input-value NAME=1.5`` or ``NAME=0.2,0.3,0.5``, repeatable."""
    if not values:
        return None
    given = {}
    for value in values:
        name, sep, numbers = value.rpartition("=")  # a name may hold "=", numbers never do
        try:
            given[name] = tuple(float(v) for v in numbers.replace("/", ",").split(","))
            if not sep or not name or not all(math.isfinite(v) for v in given[name]):
                raise ValueError
        except ValueError:
            raise click.BadParameter(f"{value!r}: use NAME=1.5, or NAME=0.2,0.3,0.5 for several values") from None
    return given


def parse_position(_ctx, _param, value: str | None):
    if value is None:
        return None
    parts = value.split(",")
    if not all(p.strip().isdigit() for p in parts):
        raise click.BadParameter(f"{value!r}: use coordinates like 14,14 (ROW,COL) or 40 for a 1-D input")
    return tuple(int(p) for p in parts)


def compose(*decorators):
    def apply(f):
        for d in reversed(decorators):
            f = d(f)
        return f

    return apply


model_options = compose(
    click.argument("model", type=click.Path(dir_okay=True, path_type=Path)),
    click.option(
        "--input-shape",
        multiple=True,
        callback=_parse_shapes,
        help="Sizes after the batch for inputs with free dimensions, in the input's own order (CxHxW or HxWxC; "
        "the other order is taken where only it fits the model's fixed sizes, and said), or NAME=SIZES.",
    ),
    click.option("--impulse-input", help="The image input (impulses go there) [default: the only image input]."),
    click.option(
        "--layout",
        type=click.Choice(LAYOUT_CHOICES),
        help="Channels first or last, for an image input whose graph does not show it.",
    ),
    click.option(
        "--classifier-output",
        help="The output holding class scores, or 'none' [default: a Softmax output, else the first (N, classes)].",
    ),
    click.option(
        "--input-value",
        multiple=True,
        callback=_parse_values,
        help="NAME=VALUE[,VALUE...]: an input that is one value for every sample (a filter's strength, a "
        "threshold), fed that value in every run; a pruned file still asks for it. Repeatable.",
    ),
)
data_options = compose(
    click.option(
        "--data",
        help="An image folder (png/jpg/bmp/webp, one subfolder per class for labels), an MNIST folder, a .npz "
        "(x or one array per input, optional y), 'mnist' or 'synthetic[:N]' [default: mnist].",
    ),
    click.option("--limit", type=click.IntRange(min=1), help="Use only the first N samples."),
    click.option(
        "--preprocess",
        help=f"Image folders: keys {', '.join(PREPROCESS_KEYS)}, e.g. "
        "'resize=256,crop=224,scale=1/255,mean=0.485/0.456/0.406,std=0.229/0.224/0.225,channels=rgb'.",
    ),
    click.option("--labels", type=click.Path(path_type=Path), help="Image folders: a CSV of file,label rows."),
    click.option(
        "--skip-bad-images",
        is_flag=True,
        help="Image folders: decode every image up front and leave out (and count) those that do not decode, "
        "instead of stopping at the first.",
    ),
    click.option(
        "--data-loader-script",
        help="FILE.py[:FUNC] (FUNC defaults to load_data) returning feed dicts {input: array} (optionally "
        "'labels'). The script runs as your own code, with your rights.",
    ),
)
backend_options = compose(
    click.option(
        "--backend",
        type=click.Choice(BACKENDS),
        default="local",
        show_default=True,
        help="Where the shuffle sweeps run: this process, or a Ray cluster (pip install 'onnxredund[ray]').",
    ),
    click.option(
        "--ray-address",
        help="The Ray cluster (e.g. ray://head:10001 or auto) [default: $RAY_ADDRESS, else a Ray on this machine].",
    ),
    click.option("--workers", type=click.IntRange(min=1), help="Ray workers [default: one per GPU, else per CPU]."),
)
verbosity = compose(
    click.option("-v", "--verbose", count=True, help="More log lines (-vv for debug)."),
    click.option("-q", "--quiet", is_flag=True, help="Only errors; no progress bars."),
)
device = click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
seed = click.option("--seed", type=int, default=0, show_default=True, help="Seed of every random choice.")
as_json = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
out = click.option("--out", type=click.Path(path_type=Path), help="Folder for results and figures.")
impulse_at = click.option(
    "--impulse-at",
    metavar="TENSOR",
    help="Put the impulses at this tensor (a conv's input) instead of the image input: past a preprocessing "
    "the model does in its graph [default: the image input; the first conv's input where an all-zero input "
    "breaks the preprocessing].",
)
overwrite = click.option("--overwrite", is_flag=True, help="Replace results in a non-empty --out folder.")
batch_size = click.option("--batch-size", type=click.IntRange(min=1), default=BATCH_SIZE, show_default=True)
shuffle_modes = click.Choice([*MODES, "both"])
cheap_drop = click.option(
    "--cheap-drop",
    type=click.FloatRange(0, 1),
    default=CHEAP_DROP,
    show_default=True,
    help="Cost (accuracy or agreement drop; 1 - output cosine) at or under which a shuffled channel counts as cheap.",
)
confidence = click.option(
    "--confidence",
    type=click.FloatRange(0.5, 1, max_open=True),
    default=CONFIDENCE,
    show_default=True,
    help="Of each shuffled channel's cost interval (under optional stopping when sequential).",
)
impulse_modes = click.Choice(IMPULSE_MODES)
