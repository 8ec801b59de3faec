"""The commands: each parses its options, calls one library function, and renders the result."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from onnxredund.analyses.audit import check_gates, parse_gate, run_audit
from onnxredund.analyses.evaluate import evaluate as evaluate_model
from onnxredund.analyses.impulse import run_impulse
from onnxredund.analyses.reproduce import run_reproduce
from onnxredund.analyses.shuffle import parse_channels, run_shuffle_modes
from onnxredund.atomic import prepare_out_dir
from onnxredund.cli import console, options
from onnxredund.cli.app import main
from onnxredund.data import Dataset, load_dataset
from onnxredund.engine.loading import load_model
from onnxredund.engine.permutations import MODES
from onnxredund.model import Model
from onnxredund.report.writers import write_audit, write_impulse, write_reproduce, write_shuffle

__all__ = ["audit", "evaluate", "impulse", "layers", "reproduce", "shuffle"]


def _dataset(spec: str | None, model: Model | None, seed: int, limit: int | None) -> Dataset:
    """The --data spec loaded (synthetic data shaped like ``model``'s input) and cut to --limit."""
    return load_dataset(spec, seed=seed, sample_shape=None if model is None else model.sample_shape).limit(limit)


def _layer_list(spec: str | None, model: Model):
    return None if spec is None else model.pick_layers(spec.split(","))


def _echo_json(payload) -> None:
    click.echo(json.dumps(payload, indent=2, sort_keys=True))


@main.command()
@options.model_arg
@options.input_shape
@options.as_json
def layers(model: Path, input_shape, as_json: bool) -> None:
    """List the conv layers of MODEL: channels, kernel, shapes, the activation tensor A_i, MACs."""
    m = load_model(model, input_shape=input_shape)
    if as_json:
        click.echo(json.dumps([layer.to_dict() for layer in m.layers], indent=2))
    else:
        click.echo("\n".join(console.layer_table(m)))


@main.command()
@options.model_arg
@options.data
@options.limit
@options.batch_size
@options.device
@options.seed
@options.input_shape
@options.as_json
def evaluate(model: Path, data, limit, batch_size, device, seed, input_shape, as_json) -> None:
    """Top-1 accuracy of MODEL's first output on labelled data."""
    m = load_model(model, input_shape=input_shape)
    result = evaluate_model(m, _dataset(data, m, seed, limit), batch_size=batch_size, device=device)
    if as_json:
        _echo_json(result)
    else:
        click.echo(
            f"{result['model']}: top-1 accuracy {100 * result['accuracy']:.2f} % "
            f"on {result['num_samples']} samples of {result['data']}"
        )


@main.command()
@options.model_arg
@click.option("--layer", required=True, help="Target conv: name or index (see `onnxredund layers`).")
@click.option("--mode", type=options.shuffle_modes, default="channel", show_default=True)
@click.option("--channels", help="Input channels to perturb, e.g. 0,3,5-9 [default: all].")
@options.data
@options.limit
@options.batch_size
@click.option("--repeats", type=click.IntRange(min=1), default=1, show_default=True, help="Seeds to average over.")
@options.seed
@options.device
@click.option("--exact-path", is_flag=True, help="One full run per channel instead of the fast linear path.")
@click.option("--chunk", type=click.IntRange(min=1), help="Channels per run on the fast path.")
@options.out
@options.overwrite
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out with the same permutations.")
@options.input_shape
@options.as_json
@click.pass_context
def shuffle(ctx, model: Path, layer, mode, channels, data, limit, out, overwrite, resume, input_shape, as_json, **run):
    """Shuffle each input channel of a conv layer (across samples, or its pixels) and measure the
    cosine similarity of the layer's output per channel, accuracy and agreement."""
    out_dir = prepare_out_dir(out, overwrite=overwrite, resume=resume) if out else None
    m = load_model(model, input_shape=input_shape)
    target = m.layer(layer)
    bars = console.StepBars(ctx.obj["quiet"] or as_json)
    results = run_shuffle_modes(
        m,
        target,
        _dataset(data, m, run["seed"], limit),
        modes=MODES if mode == "both" else (mode,),
        channels=parse_channels(channels, target.in_channels),
        checkpoint_dir=out_dir,
        resume=resume,
        progress=bars,
        on_result=(lambda r: write_shuffle(out_dir, r)) if out_dir else None,
        **run,
    )
    bars.close()
    if as_json:
        payload = {k: v.to_dict() for k, v in results.items()}
        _echo_json(payload if mode == "both" else payload[mode])
    else:
        for r in results.values():
            click.echo("\n".join(console.shuffle_lines(r)))
        if out_dir:
            click.echo(f"results in {out_dir}/")
    if not all(r.complete for r in results.values()):
        sys.exit(130)


@main.command()
@options.model_arg
@click.option("--layers", "layer_spec", help="Conv layers by name or index, comma separated [default: all].")
@click.option("--mode", type=options.impulse_modes, default="network", show_default=True)
@click.option("--threshold", type=float, default=0.9, show_default=True, help="NCC at which channels count as alike.")
@click.option("--zero-lag", is_flag=True, help="NCC at lag zero instead of the maximum over spatial lags.")
@click.option("--position", callback=options.parse_position, help="ROW,COL of the impulse [default: the centre].")
@options.device
@options.out
@options.overwrite
@options.input_shape
@options.as_json
def impulse(model: Path, layer_spec, mode, threshold, zero_lag, position, device, out, overwrite, input_shape, as_json):
    """Unit impulse responses of every conv layer, compared by normalized cross-correlation within
    and across layers."""
    out_dir = prepare_out_dir(out, overwrite=overwrite) if out else None
    m = load_model(model, input_shape=input_shape)
    result = run_impulse(
        m,
        layers=_layer_list(layer_spec, m),
        mode=mode,
        threshold=threshold,
        lags=not zero_lag,
        position=position,
        device=device,
    )
    if out_dir:
        write_impulse(out_dir, result)
    if as_json:
        _echo_json(result.to_dict())
    else:
        click.echo("\n".join(console.impulse_lines(result)))
        if out_dir:
            click.echo(f"results in {out_dir}/")


@main.command()
@options.model_arg
@options.data
@options.limit
@click.option("--layers", "layer_spec", help="Conv layers to shuffle [default: every conv with >1 input channel].")
@click.option("--budget", type=click.FloatRange(min=1), help="Seconds for the shuffle sweeps; sweeps share it.")
@click.option("--modes", type=options.shuffle_modes, default="both", show_default=True)
@options.batch_size
@click.option("--threshold", type=float, default=0.9, show_default=True, help="NCC at which channels count as alike.")
@click.option(
    "--cheap-drop",
    type=click.FloatRange(0, 1),
    default=0.005,
    show_default=True,
    help="Accuracy drop at or under which a shuffled channel counts as cheap.",
)
@click.option(
    "--fail-if",
    "gates",
    multiple=True,
    help="Gate, e.g. 'redundant_fraction>0.5' or 'accuracy_drop>0.02': exit 1 when a layer trips it.",
)
@options.seed
@options.device
@options.out
@options.overwrite
@options.input_shape
@options.as_json
@click.pass_context
def audit(ctx, model, data, limit, layer_spec, modes, gates, out, overwrite, input_shape, as_json, **run) -> None:
    """Impulse analysis of every conv and shuffling of the chosen layers, combined per layer into a
    redundancy summary; writes report.html, results.json, CSV tables and figures into --out."""
    for g in gates:
        parse_gate(g)  # fail early on a malformed gate
    out_dir = prepare_out_dir(out or "onnxredund-audit", overwrite=overwrite)
    m = load_model(model, input_shape=input_shape)
    dataset = _dataset(data, m, run["seed"], limit)
    bars = console.StepBars(ctx.obj["quiet"] or as_json)
    result = run_audit(
        m,
        dataset,
        layers=_layer_list(layer_spec, m),
        modes=MODES if modes == "both" else (modes,),
        progress=bars,
        **run,
    )
    bars.close()
    write_audit(out_dir, result)
    failures = check_gates(result, list(gates))
    if as_json:
        _echo_json(result.to_dict())
    else:
        click.echo(f"redundancy audit of {m.path} on {dataset.name}:")
        click.echo("\n".join(console.redundancy_lines(result)))
        click.echo(f"report: {out_dir / 'report.html'}")
    if failures:
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        click.echo(f"onnxredund: {failures[0]}{more}", err=True)
        sys.exit(1)


@main.command()
@options.data
@options.limit
@click.option(
    "--models",
    "models_dir",
    type=click.Path(path_type=Path),
    default="models",
    show_default=True,
    help="Folder with lenet5.onnx and lenet5x10.onnx.",
)
@options.batch_size
@options.seed
@options.device
@options.out
@options.overwrite
@options.as_json
@click.pass_context
def reproduce(ctx, data, limit, models_dir, out, overwrite, as_json, **run) -> None:
    """The paper's experiments on the shipped LeNet-5 and LeNet-5x10: figures 4-9 and a table that
    checks each of its claims with numbers."""
    out_dir = prepare_out_dir(out or "onnxredund-reproduce", overwrite=overwrite)
    dataset = _dataset(data, None, run["seed"], limit)
    bars = console.StepBars(ctx.obj["quiet"] or as_json)
    result = run_reproduce(models_dir, dataset, progress=bars, **run)
    bars.close()
    write_reproduce(out_dir, result)
    if as_json:
        _echo_json(result.to_dict())
    else:
        click.echo("\n".join(console.claims_lines(result)))
        click.echo(f"report: {out_dir / 'report.html'}")
