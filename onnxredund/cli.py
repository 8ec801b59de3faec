"""The ``onnxredund`` command line: thin commands that parse, call the library and render.

User mistakes (:class:`OnnxRedundError`, bad flags) print one line and exit with status 2.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import sys
from pathlib import Path

import click
import numpy as np

from onnxredund import __version__
from onnxredund.errors import OnnxRedundError

log = logging.getLogger("onnxredund")


class _Group(click.Group):
    """Turns user mistakes into one line on stderr and exit status 2, never a traceback."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except OnnxRedundError as e:
            click.echo(f"onnxredund: error: {e}", err=True)
            sys.exit(2)
        except click.exceptions.NoArgsIsHelpError as e:
            click.echo(e.ctx.get_help())
            sys.exit(2)
        except click.ClickException as e:
            click.echo(f"onnxredund: error: {e.format_message()}", err=True)
            sys.exit(e.exit_code)
        except click.exceptions.Abort:
            click.echo("onnxredund: aborted", err=True)
            sys.exit(130)
        except click.exceptions.Exit as e:
            sys.exit(e.exit_code)
        except BrokenPipeError:
            sys.exit(1)


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = (
        logging.ERROR
        if quiet
        else (logging.INFO if verbose == 1 else logging.DEBUG if verbose > 1 else logging.WARNING)
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("onnxredund: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="onnxredund")
@click.option("-v", "--verbose", count=True, help="More log lines (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors; no progress bars.")
@click.pass_context
def main(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """Find redundancy in a convolutional network from its ONNX file.

    Channel and pixel shuffling at any conv layer, unit impulse responses compared by
    normalized cross-correlation, and a report that puts them together.
    """
    _setup_logging(verbose, quiet)
    ctx.obj = {"quiet": quiet}


def _parse_shape(_ctx, _param, value: str | None):
    if value is None:
        return None
    parts = value.lower().replace(",", "x").split("x")
    if len(parts) != 3 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise click.BadParameter(f"{value!r}: use three sizes like 3x48x192")
    return tuple(int(p) for p in parts)


_model_arg = click.argument("model", type=click.Path(dir_okay=True, path_type=Path))
_input_shape = click.option("--input-shape", callback=_parse_shape, help="CxHxW for models with free input sizes.")
_device = click.option("--device", type=click.Choice(["auto", "cuda", "cpu"]), default="auto", show_default=True)
_data = click.option("--data", help="MNIST folder, .npz (x, y), 'mnist' or 'synthetic[:N]' [default: mnist].")
_limit = click.option("--limit", type=click.IntRange(min=1), help="Use only the first N samples.")
_seed = click.option("--seed", type=int, default=0, show_default=True, help="Seed of every random choice.")
_json = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
_out = click.option("--out", type=click.Path(path_type=Path), help="Folder for results and figures.")
_overwrite = click.option("--overwrite", is_flag=True, help="Replace results in a non-empty --out folder.")


def _load(model: Path, input_shape):
    from onnxredund.model import load_model

    return load_model(model, input_shape=input_shape)


def _dataset(spec, model, seed, limit):
    """The --data spec loaded (synthetic data shaped like ``model``'s input, if a model is given) and cut to --limit."""
    from onnxredund.data import Dataset, load_dataset

    data = load_dataset(spec, seed=seed, sample_shape=None if model is None else model.sample_shape)
    if limit:
        data = Dataset(data.x[:limit], None if data.y is None else data.y[:limit], f"{data.name}[:{limit}]")
    return data


def _fmt(t) -> str:
    return "x".join(str(v) for v in t)


@main.command()
@_model_arg
@_input_shape
@_json
def layers(model: Path, input_shape, as_json: bool) -> None:
    """List the conv layers of MODEL: channels, kernel, shapes, the activation tensor A_i, MACs."""
    m = _load(model, input_shape)
    if as_json:
        click.echo(json.dumps([layer.to_dict() for layer in m.layers], indent=2))
        return
    rows = [["#", "name", "op", "channels", "kernel", "stride", "groups", "input", "output", "A_i", "MACs"]]
    for l in m.layers:
        rows.append(
            [
                str(l.index),
                l.name,
                l.op,
                f"{l.in_channels}->{l.out_channels}",
                _fmt(l.kernel),
                _fmt(l.stride),
                str(l.groups),
                _fmt(l.input_shape),
                _fmt(l.output_shape),
                l.activation + (f" ({'+'.join(l.chain)})" if l.chain else ""),
                f"{l.macs:,}",
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    click.echo(f"{m.path}: input {m.input_name} N x {_fmt(m.sample_shape)} ({m.layout}), {len(m.layers)} conv layers")
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


@main.command()
@_model_arg
@_data
@_limit
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@_device
@_seed
@_input_shape
@_json
def evaluate(model: Path, data, limit, batch_size, device, seed, input_shape, as_json) -> None:
    """Top-1 accuracy of MODEL's first output on labelled data."""
    from onnxredund.evaluate import evaluate as run_eval

    m = _load(model, input_shape)
    result = run_eval(m, _dataset(data, m, seed, limit), batch_size=batch_size, device=device)
    if as_json:
        click.echo(json.dumps(result, indent=2, sort_keys=True))
    else:
        click.echo(
            f"{result['model']}: top-1 accuracy {100 * result['accuracy']:.2f} % "
            f"on {result['num_samples']} samples of {result['data']}"
        )


def _model_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _checkpoint_key(args: dict) -> str:
    return json.dumps(args, sort_keys=True)


def _load_checkpoint(path: Path, key: str):
    from onnxredund.shuffle import SweepState

    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) != key:
                raise OnnxRedundError(f"{path} is from a run with other arguments; rerun without --resume")
            return SweepState(
                int(z["batches_done"]),
                int(z["samples_done"]),
                int(z["baseline_correct"]),
                z["cos_sum"],
                z["correct"],
                z["agree"],
                float(z["seconds"]),
            )
    except (OSError, KeyError, ValueError) as e:
        raise OnnxRedundError(f"cannot resume from {path}: {e}") from None


def _save_checkpoint(path: Path, key: str, state) -> None:
    from onnxredund.outputs import atomic_write

    buf = io.BytesIO()
    np.savez(
        buf,
        key=np.array(key),
        batches_done=state.batches_done,
        samples_done=state.samples_done,
        baseline_correct=state.baseline_correct,
        cos_sum=state.cos_sum,
        correct=state.correct,
        agree=state.agree,
        seconds=state.seconds,
    )
    atomic_write(path, buf.getvalue())


def _summary(result) -> list[str]:
    mean = result.mean_cosine()
    order = np.argsort(-mean)
    lines = [
        f"{result.mode} shuffling at {result.layer} ({result.path} path, {result.device}): "
        f"{result.samples_done} samples, {len(result.channels)} channels, seed {result.seed}"
    ]
    top = ", ".join(f"{result.channels[i]} ({mean[i]:.3f})" for i in order[:3])
    bottom = ", ".join(f"{result.channels[i]} ({mean[i]:.3f})" for i in order[::-1][:3])
    lines.append(f"  most redundant (highest mean cosine): {top}")
    lines.append(f"  least redundant (lowest mean cosine): {bottom}")
    if result.accuracy is not None:
        worst = int(np.argmin(result.accuracy))
        lines.append(
            f"  accuracy: baseline {100 * result.baseline_accuracy:.2f} %, worst {100 * result.accuracy[worst]:.2f} % "
            f"(channel {result.channels[worst]}), mean {100 * result.accuracy.mean():.2f} %"
        )
    if result.agreement is not None:
        lines.append(
            f"  agreement with the clean model: min {100 * result.agreement.min():.2f} %, "
            f"mean {100 * result.agreement.mean():.2f} %"
        )
    if not result.complete:
        lines.append("  INTERRUPTED: partial results; rerun with --resume to finish")
    return lines


@main.command()
@_model_arg
@click.option("--layer", required=True, help="Target conv: name or index (see `onnxredund layers`).")
@click.option("--mode", type=click.Choice(["channel", "pixel", "both"]), default="channel", show_default=True)
@click.option("--channels", help="Input channels to perturb, e.g. 0,3,5-9 [default: all].")
@_data
@_limit
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=1, show_default=True, help="Seeds to average over.")
@_seed
@_device
@click.option("--exact-path", is_flag=True, help="One full run per channel instead of the fast linear path.")
@click.option("--chunk", type=click.IntRange(min=1), help="Channels per run on the fast path.")
@_out
@_overwrite
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out with the same permutations.")
@_input_shape
@_json
@click.pass_context
def shuffle(
    ctx,
    model: Path,
    layer,
    mode,
    channels,
    data,
    limit,
    batch_size,
    repeats,
    seed,
    device,
    exact_path,
    chunk,
    out,
    overwrite,
    resume,
    input_shape,
    as_json,
) -> None:
    """Shuffle each input channel of a conv layer (across samples, or its pixels) and measure the
    cosine similarity of the layer's output per channel, accuracy and agreement."""
    from onnxredund.outputs import prepare_out_dir
    from onnxredund.shuffle import parse_channels, run_shuffle
    from onnxredund.writers import write_shuffle

    if resume and out is None:
        raise OnnxRedundError("--resume needs the --out folder of the interrupted run")
    out_dir = prepare_out_dir(out, overwrite=overwrite, resume=resume) if out else None
    m = _load(model, input_shape)
    target = m.layer(layer)
    ks = parse_channels(channels, target.in_channels)
    dataset = _dataset(data, m, seed, limit)
    modes = ["channel", "pixel"] if mode == "both" else [mode]
    results = {}
    interrupted = False
    for md in modes:
        key = _checkpoint_key(
            {
                "model": _model_sha256(model),
                "layer": target.name,
                "mode": md,
                "channels": ks,
                "data": dataset.name,
                "n": len(dataset),
                "batch": batch_size,
                "repeats": repeats,
                "seed": seed,
                "exact": exact_path,
            }
        )
        ckpt = out_dir / f"shuffle-{md}.checkpoint.npz" if out_dir else None
        state = _load_checkpoint(ckpt, key) if (resume and ckpt) else None
        if resume and state is None:
            raise OnnxRedundError(
                f"nothing to resume in {out_dir} for {md} mode (no checkpoint); pass --overwrite to start again"
            )
        quiet = ctx.obj["quiet"] or as_json or not sys.stderr.isatty()
        with click.progressbar(
            length=len(dataset), label=f"{md} shuffle", file=sys.stderr, hidden=quiet, show_eta=True
        ) as bar:
            if state is not None:
                bar.update(state.samples_done)
            result = run_shuffle(
                m,
                target,
                dataset,
                mode=md,
                channels=ks,
                batch_size=batch_size,
                repeats=repeats,
                seed=seed,
                device=device,
                exact_path=exact_path,
                chunk=chunk,
                progress=bar.update,
                state=state,
                on_batch=(lambda s, c=ckpt, k=key: _save_checkpoint(c, k, s)) if ckpt else None,
            )
        results[md] = result
        if out_dir:
            write_shuffle(out_dir, result)
            if result.complete and ckpt.exists():
                ckpt.unlink()
        if not result.complete:
            interrupted = True
            break
    if as_json:
        payload = results[modes[0]].to_dict() if len(modes) == 1 else {k: v.to_dict() for k, v in results.items()}
        click.echo(json.dumps(payload, indent=2, sort_keys=True))
    else:
        for r in results.values():
            click.echo("\n".join(_summary(r)))
        if out_dir:
            click.echo(f"results in {out_dir}/")
    if interrupted:
        sys.exit(130)


def _parse_position(_ctx, _param, value: str | None):
    if value is None:
        return None
    parts = value.split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise click.BadParameter(f"{value!r}: use ROW,COL like 14,14")
    return int(parts[0]), int(parts[1])


def _parse_layers(spec: str | None, model) -> list:
    if spec is None:
        return list(model.layers)
    return list({model.layer(part.strip()).index: model.layer(part.strip()) for part in spec.split(",")}.values())


def _impulse_summary(result) -> list[str]:
    lines = [
        f"impulse responses ({result.mode} mode, NCC {'max over lags' if result.lags else 'at zero lag'}, "
        f"threshold {result.threshold}):"
    ]
    for l in result.layers:
        line = (
            f"  {l.name}: {l.redundant_count}/{len(l.best_match)} channels ({100 * l.redundant_fraction:.1f} %) "
            f"have a match >= {result.threshold}"
        )
        finite = l.across_best_value[~np.isnan(l.across_best_value)]
        if finite.size:
            line += f"; {int((finite >= result.threshold).sum())} match an earlier layer"
        lines.append(line)
    lines += [f"  note: {n}" for n in result.notes]
    return lines


@main.command()
@_model_arg
@click.option("--layers", "layer_spec", help="Conv layers by name or index, comma separated [default: all].")
@click.option("--mode", type=click.Choice(["network", "linear"]), default="network", show_default=True)
@click.option("--threshold", type=float, default=0.9, show_default=True, help="NCC at which channels count as alike.")
@click.option("--zero-lag", is_flag=True, help="NCC at lag zero instead of the maximum over spatial lags.")
@click.option("--position", callback=_parse_position, help="ROW,COL of the impulse [default: the centre].")
@_device
@_out
@_overwrite
@_input_shape
@_json
def impulse(
    model: Path, layer_spec, mode, threshold, zero_lag, position, device, out, overwrite, input_shape, as_json
) -> None:
    """Unit impulse responses of every conv layer, compared by normalized cross-correlation within
    and across layers."""
    from onnxredund.impulse import run_impulse
    from onnxredund.outputs import prepare_out_dir

    out_dir = prepare_out_dir(out, overwrite=overwrite) if out else None
    m = _load(model, input_shape)
    result = run_impulse(
        m,
        layers=_parse_layers(layer_spec, m),
        mode=mode,
        threshold=threshold,
        lags=not zero_lag,
        position=position,
        device=device,
    )
    if out_dir:
        from onnxredund.writers import write_impulse

        write_impulse(out_dir, result)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2, sort_keys=True))
    else:
        click.echo("\n".join(_impulse_summary(result)))
        if out_dir:
            click.echo(f"results in {out_dir}/")


class _StepBars:
    """Progress for multi-step library calls: one click bar per step, on stderr, only on a terminal."""

    def __init__(self, quiet: bool) -> None:
        self.hidden = quiet or not sys.stderr.isatty()
        self.bar = None

    def __call__(self, label: str, total: int):
        if self.bar is not None:
            self.bar.render_finish()
        self.bar = click.progressbar(length=total, label=label, file=sys.stderr, show_eta=True, hidden=self.hidden)
        return self.bar.update


@main.command()
@_model_arg
@_data
@_limit
@click.option("--layers", "layer_spec", help="Conv layers to shuffle [default: every conv with >1 input channel].")
@click.option("--budget", type=click.FloatRange(min=1), help="Seconds for the shuffle sweeps; sweeps share it.")
@click.option("--modes", type=click.Choice(["both", "channel", "pixel"]), default="both", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
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
@_seed
@_device
@_out
@_overwrite
@_input_shape
@_json
@click.pass_context
def audit(
    ctx,
    model,
    data,
    limit,
    layer_spec,
    budget,
    modes,
    batch_size,
    threshold,
    cheap_drop,
    gates,
    seed,
    device,
    out,
    overwrite,
    input_shape,
    as_json,
) -> None:
    """Impulse analysis of every conv and shuffling of the chosen layers, combined per layer into a
    redundancy summary; writes report.html, results.json, CSV tables and figures into --out."""
    from onnxredund.audit import check_gates, parse_gate, run_audit
    from onnxredund.outputs import prepare_out_dir
    from onnxredund.writers import redundancy_lines, write_audit

    for g in gates:
        parse_gate(g)  # fail early on a malformed gate
    out_dir = prepare_out_dir(out or "onnxredund-audit", overwrite=overwrite)
    m = _load(model, input_shape)
    layers = None if layer_spec is None else _parse_layers(layer_spec, m)
    dataset = _dataset(data, m, seed, limit)
    result = run_audit(
        m,
        dataset,
        layers=layers,
        modes=("channel", "pixel") if modes == "both" else (modes,),
        budget=budget,
        seed=seed,
        batch_size=batch_size,
        threshold=threshold,
        cheap_drop=cheap_drop,
        device=device,
        progress=_StepBars(ctx.obj["quiet"] or as_json),
    )
    write_audit(out_dir, result)
    failures = check_gates(result, list(gates))
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2, sort_keys=True))
    else:
        click.echo(f"redundancy audit of {m.path} on {dataset.name}:")
        click.echo("\n".join(redundancy_lines(result)))
        click.echo(f"report: {out_dir / 'report.html'}")
    if failures:
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        click.echo(f"onnxredund: {failures[0]}{more}", err=True)
        sys.exit(1)


@main.command()
@_data
@_limit
@click.option(
    "--models",
    "models_dir",
    type=click.Path(path_type=Path),
    default="models",
    show_default=True,
    help="Folder with lenet5.onnx and lenet5x10.onnx.",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@_seed
@_device
@_out
@_overwrite
@_json
@click.pass_context
def reproduce(ctx, data, limit, models_dir, batch_size, seed, device, out, overwrite, as_json) -> None:
    """The paper's experiments on the shipped LeNet-5 and LeNet-5x10: figures 4-9 and a table that
    checks each of its claims with numbers."""
    from onnxredund.outputs import prepare_out_dir
    from onnxredund.reproduce import claims_lines, run_reproduce
    from onnxredund.writers import write_reproduce

    out_dir = prepare_out_dir(out or "onnxredund-reproduce", overwrite=overwrite)
    dataset = _dataset(data, None, seed, limit)
    result = run_reproduce(
        models_dir,
        dataset,
        seed=seed,
        batch_size=batch_size,
        device=device,
        progress=_StepBars(ctx.obj["quiet"] or as_json),
    )
    write_reproduce(out_dir, result)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2, sort_keys=True))
    else:
        click.echo("\n".join(claims_lines(result)))
        click.echo(f"report: {out_dir / 'report.html'}")


if __name__ == "__main__":
    main()
