"""Options shared by several commands, and the small parsers behind them.

Choices come from the library's own constants, so a new mode or device shows up here by itself.
"""

from __future__ import annotations

from pathlib import Path

import click

from onnxredund.analyses.impulse import IMPULSE_MODES
from onnxredund.engine.permutations import MODES
from onnxredund.engine.runtime import DEVICES

__all__ = [
    "as_json",
    "batch_size",
    "data",
    "device",
    "impulse_modes",
    "input_shape",
    "limit",
    "model_arg",
    "out",
    "overwrite",
    "parse_position",
    "seed",
    "shuffle_modes",
]


def _parse_shape(_ctx, _param, value: str | None):
    if value is None:
        return None
    parts = value.lower().replace(",", "x").split("x")
    if len(parts) != 3 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise click.BadParameter(f"{value!r}: use three sizes like 3x48x192")
    return tuple(int(p) for p in parts)


def parse_position(_ctx, _param, value: str | None):
    if value is None:
        return None
    parts = value.split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise click.BadParameter(f"{value!r}: use ROW,COL like 14,14")
    return int(parts[0]), int(parts[1])


model_arg = click.argument("model", type=click.Path(dir_okay=True, path_type=Path))
input_shape = click.option("--input-shape", callback=_parse_shape, help="CxHxW for models with free input sizes.")
device = click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
data = click.option("--data", help="MNIST folder, .npz (x, y), 'mnist' or 'synthetic[:N]' [default: mnist].")
limit = click.option("--limit", type=click.IntRange(min=1), help="Use only the first N samples.")
seed = click.option("--seed", type=int, default=0, show_default=True, help="Seed of every random choice.")
as_json = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
out = click.option("--out", type=click.Path(path_type=Path), help="Folder for results and figures.")
overwrite = click.option("--overwrite", is_flag=True, help="Replace results in a non-empty --out folder.")
batch_size = click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
shuffle_modes = click.Choice([*MODES, "both"])
impulse_modes = click.Choice(IMPULSE_MODES)
