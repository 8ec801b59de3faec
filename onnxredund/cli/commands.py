"""The commands: each parses its options, calls one library function, and renders the result."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import click

from onnxredund.atomic import check_writable, prepare_out_dir, write_json
from onnxredund.choices import (
    COMPENSATIONS,
    CRITERIA,
    MODES,
    NCC_THRESHOLD,
    PRUNE_CRITERION,
    PRUNE_SCOPE,
    ROUND_TO,
    SCOPES,
    SHUFFLE_METRIC,
    SHUFFLE_METRICS,
    SHUFFLE_SAMPLES,
)
from onnxredund.cli import console, options
from onnxredund.cli.app import command_logging
from onnxredund.cli.groups import BackendArgs, DataArgs, EstimationArgs, ModelArgs, OptionGroup
from onnxredund.cli.params import CHANNEL_LIST, GATE, LAYER_CHANNELS
from onnxredund.errors import OnnxRedundError
from onnxredund.interrupts import deferred, exit_status, signal_behind, stop_status

if TYPE_CHECKING:
    from onnxredund.analyses.prune import SpeedTarget, Target
    from onnxredund.model import Model

__all__ = ["COMMANDS", "audit", "evaluate", "impulse", "layers", "prune", "reproduce", "shuffle"]

log = logging.getLogger("onnxredund")

_HTML_SECONDS = 1.0  # of an audit's budget, kept for writing report.html after the last figure


def _take(values: dict, *groups: type[OptionGroup]) -> list:
    """The option groups from a command's keyword arguments, which they must use up."""
    taken = [group.take(values) for group in groups]
    if values:
        raise RuntimeError(f"options {sorted(values)} belong to no group of the command (a bug of onnxredund)")
    return taken


def _layer_list(spec: str | None, model: Model):
    return None if spec is None else model.pick_layers(spec.split(","))


def _echo_json(payload) -> None:
    click.echo(json.dumps(payload, indent=2, sort_keys=True))


def _interrupted(out_dir: Path | None, bars) -> None:
    """After Ctrl-C or SIGTERM with nothing measured in part to show: say what was kept, and stop with status 130
    or 143."""
    bars.close()
    where = f"; the finished units are kept in {out_dir}/units (continue with --resume)" if out_dir else ""
    click.echo(f"onnxredund: interrupted{where}", err=True)
    sys.exit(stop_status())


@contextmanager
def _keeping(out_dir: Path | None, what: str, bars: console.StepBars) -> Iterator[None]:
    """An error in a long run says what finished and where it is kept: a user error found mid-run (an image
    that does not decode) stays one line; any other is a bug, and keeps its traceback after the line."""
    try:
        yield
    except OnnxRedundError as e:
        bars.close()
        if out_dir is None:
            raise
        raise OnnxRedundError(f"{e} ({what} is kept in {out_dir}/)") from None
    except Exception as e:
        bars.close()
        stop = signal_behind(e)  # a library's cleanup that failed as the signal passed through it
        where = f"; {what} is kept in {out_dir}/" if out_dir is not None else ""
        if stop is not None:
            click.echo(f"onnxredund: interrupted{where}", err=True)
            sys.exit(exit_status(stop))
        if out_dir is not None:
            click.echo(f"onnxredund: an unexpected error stopped the run{where}", err=True)
        raise


@click.command()
@ModelArgs.options
@options.as_json
@options.verbosity
@click.pass_context
def layers(ctx, as_json: bool, verbose: int, quiet: bool, **groups) -> None:
    """List the conv layers of MODEL: channels, kernel, shapes, the activation tensor A_i, MACs."""
    command_logging(ctx, verbose, quiet)
    (model_args,) = _take(groups, ModelArgs)
    m = model_args.load()
    if as_json:
        _echo_json(console.layers_payload(m))
    else:
        click.echo("\n".join(console.layer_table(m)))


@click.command()
@ModelArgs.options
@DataArgs.options
@options.batch_size
@options.device
@options.seed
@options.as_json
@options.verbosity
@click.pass_context
def evaluate(ctx, batch_size, device, seed, as_json, verbose, quiet, **groups) -> None:
    """Top-1 accuracy of MODEL's classifier output on labelled data."""
    from onnxredund.analyses.evaluate import evaluate as evaluate_model

    command_logging(ctx, verbose, quiet)
    model_args, data_args = _take(groups, ModelArgs, DataArgs)
    m = model_args.load()
    result = evaluate_model(m, data_args.load(m, seed), batch_size=batch_size, device=device)
    if as_json:
        _echo_json(result)
    else:
        click.echo(
            f"{result['model']}: top-1 accuracy {100 * result['accuracy']:.2f} % "
            f"on {result['num_samples']} samples of {result['data']}"
        )


@click.command()
@ModelArgs.options
@click.option("--layer", required=True, help="Target conv: name or index (see `onnxredund layers`).")
@click.option("--mode", "--modes", "mode", type=options.shuffle_modes, default="channel", show_default=True)
@click.option("--channels", type=CHANNEL_LIST, help="Input channels to perturb, e.g. 0,3,5-9 [default: all].")
@DataArgs.options
@options.batch_size
@click.option("--repeats", type=click.IntRange(min=1), default=1, show_default=True, help="Seeds to average over.")
@options.seed
@options.device
@click.option("--exact-path", is_flag=True, help="One full run per channel instead of the fast linear path.")
@click.option("--chunk", type=click.IntRange(min=1), help="Channels per run on the fast path.")
@options.out
@options.overwrite
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out with the same permutations.")
@click.option(
    "--sequential",
    is_flag=True,
    help="Decide each channel cheap or costly as its images arrive (in a seeded random order) and stop measuring "
    "it once decided; the sweep ends when all are.",
)
@EstimationArgs.options
@BackendArgs.options
@options.as_json
@options.verbosity
@click.pass_context
def shuffle(
    ctx,
    layer,
    mode,
    channels,
    batch_size,
    repeats,
    seed,
    device,
    exact_path,
    chunk,
    out,
    overwrite,
    resume,
    sequential,
    as_json,
    verbose,
    quiet,
    **groups,
):
    """Shuffle each input channel of a conv layer (across samples, or its pixels) and measure the
    cosine similarity of the layer's output per channel and the effect at the model's outputs."""
    from onnxredund.analyses.distributed import clear_units, job_for, run_sweeps
    from onnxredund.analyses.evaluate import one_class_note
    from onnxredund.analyses.shuffle import SweepOptions
    from onnxredund.report.schema import check_sweep
    from onnxredund.report.writers import write_shuffle

    quiet = command_logging(ctx, verbose, quiet)
    out_dir = prepare_out_dir(out, overwrite=overwrite, resume=resume) if out else None
    model_args, data_args, estimation_args, backend_args = _take(
        groups, ModelArgs, DataArgs, EstimationArgs, BackendArgs
    )
    m = model_args.load()
    target = m.layer(layer)
    data = data_args.load(m, seed)
    backend = backend_args.load(device)
    bars = console.StepBars(quiet or as_json)
    modes = MODES if mode == "both" else (mode,)
    picked = list(range(target.in_channels)) if channels is None else channels
    sweep = SweepOptions(batch_size, repeats, seed, device, exact_path, chunk, estimation_args.load(sequential))

    def write(result) -> None:
        with deferred():  # a sweep's JSON and CSVs are written together
            write_shuffle(out_dir, result)

    on_result = write if out_dir else None

    with _keeping(out_dir, "what finished (continue with --resume)", bars):
        job = job_for(m, data, [(target, md, picked) for md in modes], sweep)
        done, complete = run_sweeps(
            job,
            [(target, md) for md in modes],
            backend,
            checkpoint_dir=out_dir,
            resume=resume,
            progress=bars,
            on_result=on_result,
        )
    results = {r.mode: r for r in done}
    if not complete and all(r.complete for r in done):  # nothing measured in part to show
        _interrupted(out_dir, bars)
    if complete and out_dir:
        clear_units(out_dir)  # the sweeps' files hold every number
    bars.close()
    complete = complete and all(r.complete for r in results.values())
    one_class = one_class_note(m, data, batch_size=batch_size, device=device) if complete else None
    if one_class:
        log.warning(one_class)
    if as_json:
        payload = {k: v.to_dict() for k, v in results.items()}
        for sweep in payload.values():
            check_sweep(sweep)
        _echo_json(payload if mode == "both" else payload[mode])
    else:
        for r in results.values():
            click.echo("\n".join(console.shuffle_lines(r)))
        if out_dir:
            click.echo(f"results in {out_dir}/")
    if not complete:
        where = f"; --resume --out {out_dir} continues" if out_dir else ""
        click.echo(f"onnxredund: interrupted: the numbers above are of the batches that finished{where}", err=True)
        sys.exit(stop_status())


@click.command()
@ModelArgs.options
@click.option("--layers", "layer_spec", help="Conv layers by name or index, comma separated [default: all].")
@click.option("--mode", type=options.impulse_modes, default="network", show_default=True)
@click.option(
    "--threshold", type=float, default=NCC_THRESHOLD, show_default=True, help="NCC at which channels count as alike."
)
@click.option("--zero-lag", is_flag=True, help="NCC at lag zero instead of the maximum over spatial lags.")
@click.option("--position", callback=options.parse_position, help="ROW,COL of the impulse [default: the centre].")
@options.impulse_at
@click.option(
    "--budget",
    type=click.FloatRange(min=1),
    help="Seconds: past them, each layer is compared within itself only, not with the earlier layers (said in "
    "the notes) [default: no limit].",
)
@options.device
@options.out
@options.overwrite
@options.as_json
@options.verbosity
@click.pass_context
def impulse(
    ctx,
    layer_spec,
    mode,
    threshold,
    zero_lag,
    position,
    impulse_at,
    budget,
    device,
    out,
    overwrite,
    as_json,
    verbose,
    quiet,
    **groups,
):
    """Unit impulse responses of every conv layer, compared by normalized cross-correlation within
    and across layers."""
    from onnxredund.analyses.impulse import run_impulse
    from onnxredund.report.writers import impulse_payload, write_impulse

    quiet = command_logging(ctx, verbose, quiet)
    out_dir = prepare_out_dir(out, overwrite=overwrite) if out else None
    (model_args,) = _take(groups, ModelArgs)
    m = model_args.load()
    bars = console.StepBars(quiet or as_json)
    result = run_impulse(
        m,
        layers=_layer_list(layer_spec, m),
        mode=mode,
        threshold=threshold,
        lags=not zero_lag,
        position=position,
        device=device,
        progress=bars,
        max_seconds=budget,
        at=impulse_at,
    )
    bars.close()
    if out_dir:
        with deferred():  # its files are written whole, together
            write_impulse(out_dir, result)
    if as_json:
        _echo_json(impulse_payload(result, "impulse.npz" if out_dir else None))
    else:
        click.echo("\n".join(console.impulse_lines(result)))
        if out_dir:
            click.echo(f"results in {out_dir}/")


@click.command()
@ModelArgs.options
@DataArgs.options
@click.option("--layers", "layer_spec", help="Conv layers to audit [default: every conv the image input reaches].")
@click.option("--budget", type=click.FloatRange(min=1), help="Seconds for the whole audit; what does not fit is cut.")
@click.option("--modes", "--mode", "modes", type=options.shuffle_modes, default="both", show_default=True)
@options.batch_size
@click.option(
    "--threshold", type=float, default=NCC_THRESHOLD, show_default=True, help="NCC at which channels count as alike."
)
@options.impulse_at
@click.option(
    "--fail-if",
    "gates",
    type=GATE,
    multiple=True,
    help="Gate, e.g. 'redundant_fraction>0.5', 'accuracy_drop>0.02', 'output_sqnr<20': exit 1 when a layer trips it.",
)
@options.seed
@options.device
@BackendArgs.options
@click.option(
    "--resume", is_flag=True, help="Continue an interrupted audit in --out (its finished sweeps, batches or units)."
)
@click.option(
    "--exhaustive/--sequential",
    "exhaustive",
    default=None,
    help="Measure every image for every channel, or decide each channel as its images arrive and stop measuring "
    "it once decided [default: sequential with --budget, else exhaustive].",
)
@EstimationArgs.options
@click.option("--dry-run", is_flag=True, help="List the sweeps and their units with a time estimate; run nothing.")
@options.out
@options.overwrite
@options.as_json
@options.verbosity
@click.pass_context
def audit(
    ctx,
    layer_spec,
    budget,
    modes,
    batch_size,
    threshold,
    impulse_at,
    gates,
    seed,
    device,
    resume,
    exhaustive,
    dry_run,
    out,
    overwrite,
    as_json,
    verbose,
    quiet,
    **groups,
) -> None:
    """Impulse analysis and shuffling of the chosen layers, combined per layer into a redundancy summary;
    writes report.html, results.json, CSV tables and figures into --out."""
    from onnxredund.analyses.audit import audit_estimate, check_gate_applies, check_gates, run_audit
    from onnxredund.analyses.distributed import clear_units
    from onnxredund.model import classifier_output
    from onnxredund.report.audit_report import (
        report_seconds,
        write_audit,
        write_audit_impulse,
        write_audit_sweep,
    )

    started = time.perf_counter()
    quiet = command_logging(ctx, verbose, quiet)
    model_args, data_args, backend_args, estimation_args = _take(
        groups, ModelArgs, DataArgs, BackendArgs, EstimationArgs
    )
    m = model_args.load()
    data = data_args.load(m, seed)
    backend = backend_args.load(device)
    modes = MODES if modes == "both" else (modes,)
    layers = _layer_list(layer_spec, m)
    if dry_run:
        workers = 1 if backend is None else backend.workers
        estimate = audit_estimate(
            m,
            data,
            layers=layers or m.layers,
            modes=modes,
            budget=budget,
            workers=workers,
            batch_size=batch_size,
            device=device,
            estimation=estimation_args.load(budget is not None if exhaustive is None else not exhaustive),
        )
        if as_json:
            _echo_json(estimate)
        else:
            click.echo("\n".join(console.estimate_lines(estimate, backend)))
        return
    out_dir = prepare_out_dir(out or "onnxredund-audit", overwrite=overwrite, resume=resume)
    for gate in gates:
        check_gate_applies(gate, labelled=data.y is not None, classifier=classifier_output(m) is not None)
    bars = console.StepBars(quiet or as_json)
    with _keeping(out_dir, "what finished (impulse.json, the finished sweeps; continue with --resume)", bars):
        result = run_audit(
            m,
            data,
            layers=layers,
            modes=modes,
            started=started,
            progress=bars,
            on_impulse=lambda r: write_audit_impulse(out_dir, r),
            on_sweep=lambda r: write_audit_sweep(out_dir, r),
            write_seconds=report_seconds,
            backend=backend,
            checkpoint_dir=out_dir,
            resume=resume,
            sequential=None if exhaustive is None else not exhaustive,
            budget=budget,
            seed=seed,
            batch_size=batch_size,
            threshold=threshold,
            cheap_drop=estimation_args.cheap_drop,
            confidence=estimation_args.confidence,
            device=device,
            impulse_at=impulse_at,
        )
    bars.close()
    with deferred():  # the report and its results are written whole, or an earlier signal stops before them
        write_audit(out_dir, result, parts=False, deadline=None if budget is None else started + budget - _HTML_SECONDS)
        if result.complete:
            clear_units(out_dir)
    if as_json:
        _echo_json(result.to_dict())
    else:
        click.echo(f"redundancy audit of {m.path} on {data.name}:")
        click.echo("\n".join(console.redundancy_lines(result)))
        click.echo(f"report: {out_dir / 'report.html'}")
    if not result.complete:
        click.echo(f"onnxredund: interrupted: the report is incomplete; --resume --out {out_dir} continues", err=True)
        sys.exit(stop_status())
    _report_gates(check_gates(result.layers, list(gates)))


def _report_gates(outcomes) -> None:
    failures = [o for o in outcomes if o.failed]
    for o in outcomes:
        if not o.failed and o.not_evaluated:
            click.echo(f"onnxredund: {o.line()}", err=True)
    if failures:
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        click.echo(f"onnxredund: {failures[0].line()}{more}", err=True)
        sys.exit(1)


@click.command()
@click.option("--data", help="An MNIST folder, or 'mnist' [default: mnist].")
@click.option("--limit", type=click.IntRange(min=1), help="Use only the first N samples.")
@click.option(
    "--models",
    "models_dir",
    type=click.Path(path_type=Path),
    help="Folder with lenet5.onnx and lenet5x10.onnx [default: ./models, else the copy installed with onnxredund].",
)
@click.option("--no-prune-study", "skip_prune", is_flag=True, help="Leave out the pruning study (several minutes).")
@options.batch_size
@options.seed
@options.device
@options.out
@options.overwrite
@options.as_json
@options.verbosity
@click.pass_context
def reproduce(
    ctx, data, limit, models_dir, skip_prune, batch_size, seed, device, out, overwrite, as_json, verbose, quiet
) -> None:
    """The paper's experiments on the shipped LeNet-5 and LeNet-5x10: figures 4-9 and a table that
    checks each of its claims with numbers; then the pruning study on both and a residual network."""
    from onnxredund.analyses.reproduce import run_reproduce, shipped_models, with_prune_study
    from onnxredund.data import load_dataset
    from onnxredund.report.reproduce_report import write_reproduce

    quiet = command_logging(ctx, verbose, quiet)
    models_dir = shipped_models(models_dir)
    out_dir = prepare_out_dir(out or "onnxredund-reproduce", overwrite=overwrite)
    dataset = load_dataset(data, seed=seed).limit(limit)
    bars = console.StepBars(quiet or as_json)
    run = {"batch_size": batch_size, "seed": seed, "device": device}
    result = run_reproduce(models_dir, dataset, progress=bars, prune_study=False, **run)
    with deferred():
        write_reproduce(out_dir, result)  # kept, whatever happens to the study
    if not skip_prune:
        try:
            with _keeping(out_dir, "the paper's claims and figures", bars):
                result = with_prune_study(result, models_dir, dataset, device=device, progress=bars)
        except KeyboardInterrupt as e:
            bars.close()
            with deferred():
                write_reproduce(out_dir, dataclasses.replace(result, complete=False))
            click.echo(
                f"onnxredund: interrupted during the pruning study; {out_dir}/ holds the paper's experiments, "
                "marked incomplete",
                err=True,
            )
            sys.exit(exit_status(e))
        with deferred():
            write_reproduce(out_dir, result)
    bars.close()
    if as_json:
        _echo_json(result.to_dict())
    else:
        click.echo("\n".join(console.claims_lines(result)))
        click.echo(f"report: {out_dir / 'report.html'}")


@click.command()
@ModelArgs.options
@DataArgs.options
@click.option(
    "--criterion",
    type=click.Choice(CRITERIA),
    default=PRUNE_CRITERION,
    show_default=True,
    help="How channels are ranked (see the README's Pruning section).",
)
@click.option(
    "--scope",
    type=click.Choice(SCOPES),
    default=PRUNE_SCOPE,
    show_default=True,
    help="layer: the same fraction of every group; global: one ranking, by importance per MAC saved.",
)
@click.option("--target-macs", type=float, help="Fraction of the conv MACs to remove, e.g. 0.5.")
@click.option("--target-params", type=float, help="Fraction of the parameters to remove.")
@click.option(
    "--target-speedup",
    type=float,
    help="Remove channels until onnxruntime runs the model this many times as fast on this machine, at "
    "--batch-size (the conv-MAC fraction is searched, each step timed).",
)
@click.option(
    "--channels",
    "channel_specs",
    type=LAYER_CHANNELS,
    multiple=True,
    help="Remove these channels instead: LAYER:CHANNELS, e.g. conv2:3,7 (repeatable).",
)
@click.option(
    "--compensate",
    type=click.Choice(["none", *COMPENSATIONS]),
    default="none",
    show_default=True,
    help="Make up for what the removed channels carried: their mean into the consumers' bias, a merge "
    "into the best-fitting kept channel, a least-squares refit of the consumers (lstsq), or the refit made layer "
    "by layer on the inputs of the network pruned so far (sequential).",
)
@click.option(
    "--calibration",
    type=click.IntRange(min=1),
    help="N samples (spread over the data) calibrate (statistics, criteria); the others measure "
    "[default: half the samples, at most 1000].",
)
@click.option("--eval-samples", type=click.IntRange(min=1), help="Measure on at most N samples after those.")
@click.option(
    "--shuffle-metric",
    type=click.Choice(SHUFFLE_METRICS),
    default=SHUFFLE_METRIC,
    show_default=True,
    help="Criterion shuffle: the cost measured at the outputs.",
)
@click.option(
    "--shuffle-samples",
    type=click.IntRange(min=2),
    default=SHUFFLE_SAMPLES,
    show_default=True,
    help="Criterion shuffle: calibration samples it shuffles over.",
)
@click.option(
    "--round-to",
    type=click.IntRange(min=1),
    default=ROUND_TO,
    show_default=True,
    help="With a target: every group keeps a multiple of N channels (fast kernels work on blocks of 8 or 16; "
    "1: remove channels one by one).",
)
@click.option(
    "--plan", "plan_only", is_flag=True, help="Only list the channel groups (what prunes together, and why not)."
)
@click.option(
    "--out", type=click.Path(path_type=Path), help="The pruned model (.onnx); its plan goes beside it (.json)."
)
@click.option("--overwrite", is_flag=True, help="Replace an existing --out model and its plan.")
@options.batch_size
@options.seed
@options.device
@options.as_json
@options.verbosity
@click.pass_context
def prune(
    ctx,
    criterion,
    scope,
    target_macs,
    target_params,
    target_speedup,
    channel_specs,
    compensate,
    calibration,
    eval_samples,
    shuffle_metric,
    shuffle_samples,
    round_to,
    plan_only,
    out,
    overwrite,
    batch_size,
    seed,
    device,
    as_json,
    verbose,
    quiet,
    **groups,
) -> None:
    """Remove channels from MODEL (a new, smaller ONNX file in --out), then measure both models: parameters,
    conv MACs, file size, accuracy, agreement, output drift, onnxruntime latency."""
    from onnxredund.analyses.prune import run_prune
    from onnxredund.engine.channel_groups import channel_groups
    from onnxredund.engine.pruning import save_pruned

    command_logging(ctx, verbose, quiet)
    model_args, data_args = _take(groups, ModelArgs, DataArgs)
    m = model_args.load()
    if plan_only:
        groups = channel_groups(m)
        if as_json:
            _echo_json([g.to_dict() for g in groups])
        else:
            click.echo("\n".join(console.group_lines(m, groups)))
        return
    target = _prune_target(target_macs, target_params, target_speedup, channel_specs, batch_size)
    out_path = _pruned_path(out, model_args.model, overwrite)
    data = data_args.load(m, seed)
    result = run_prune(
        m,
        data,
        criterion=criterion,
        scope=scope,
        target=target,
        channels=_channels_by_layer(channel_specs) if channel_specs else None,
        compensation=None if compensate == "none" else compensate,
        calibration=calibration,
        evaluation=eval_samples,
        seed=seed,
        shuffle_metric=shuffle_metric,
        shuffle_samples=shuffle_samples,
        batch_size=batch_size,
        device=device,
        round_to=round_to,
    )
    plan_path = out_path.with_suffix(".json")
    with deferred():  # the pruned model and its plan are written together
        save_pruned(result.proto, out_path)
        write_json(plan_path, {**result.to_dict(), "pruned_model": str(out_path)})
    if as_json:
        _echo_json(result.to_dict())
    else:
        click.echo("\n".join(console.prune_lines(result)))
        click.echo(f"pruned model: {out_path}  plan: {plan_path}")


def _channels_by_layer(specs) -> dict[str, list[int]]:
    """The (layer, channels) pairs of ``--channels``, merged per layer (each channel once)."""
    out: dict[str, list[int]] = {}
    for layer, channels in specs:
        picked = out.setdefault(layer, [])
        picked += [c for c in channels if c not in picked]
    return out


def _prune_target(
    macs: float | None, params: float | None, speedup: float | None, channels, batch: int
) -> Target | SpeedTarget | None:
    from onnxredund.analyses.prune import SpeedTarget, Target

    given = [x for x in (macs, params, speedup) if x is not None]
    if len(given) + bool(channels) != 1:
        which = "only one" if given or channels else "one"
        raise OnnxRedundError(f"give {which} of --target-macs, --target-params, --target-speedup or --channels")
    if channels:
        return None
    if speedup is not None:
        return SpeedTarget(speedup, batch)
    return Target("macs", macs) if macs is not None else Target("params", params)


def _pruned_path(out: Path | None, model: Path, overwrite: bool) -> Path:
    """Where the pruned model goes: never over the input model, over another file only with --overwrite."""
    if out is None:
        raise OnnxRedundError("pass --out FILE.onnx for the pruned model (or --plan to list the groups)")
    if out.suffix.lower() != ".onnx":
        raise OnnxRedundError(f"--out {out}: name the pruned model FILE.onnx")
    if out.exists() and out.resolve() == Path(model).resolve():
        raise OnnxRedundError(f"--out {out} is the input model; the input is never overwritten")
    for path in (out, out.with_suffix(".json")):
        if path.exists() and not overwrite:
            raise OnnxRedundError(f"{path} exists; pass --overwrite to replace it")
    if not out.parent.is_dir():
        raise OnnxRedundError(f"--out {out}: no folder {out.parent}")
    check_writable(out.parent)
    return out


#: every command, for the group to register (:func:`onnxredund.cli.run`)
COMMANDS = (layers, evaluate, shuffle, impulse, audit, reproduce, prune)
