"""The audit: impulse analysis of every conv layer plus channel and pixel shuffling of chosen layers,
combined per layer into one redundancy summary, with deployment gates.

Per shuffled layer i, the three signals:

- ``impulse_redundant_fraction``: fraction of conv i's output channels whose impulse response has a
  match >= the NCC threshold in the same layer;
- ``channel_cheap_fraction`` / ``pixel_cheap_fraction``: fraction of conv i's input channels whose
  shuffling costs at most ``cheap_drop`` top-1 accuracy (or agreement, without labels);
- ``redundancy_score``: the mean of the fractions above that were measured for the layer, in [0, 1].
  The fractions count different channels (the impulse one counts conv i's output channels, the
  shuffle ones its input channels), so the score is not a fraction of any one set of channels: it
  is a summary of how many of the layer's channels, on either side of the conv, some signal calls
  removable, meant for ranking layers and for gates, not as a pruning ratio.

The ranked list orders the input channels by what perturbing them costs: the largest accuracy drop
over the two modes (or disagreement), then the lowest mean cosine.
"""

from __future__ import annotations

import logging
import operator
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from onnxredund import __version__
from onnxredund.analyses.impulse import ImpulseResult, run_impulse
from onnxredund.analyses.shuffle import ShuffleResult, run_shuffle
from onnxredund.data import Dataset
from onnxredund.errors import OnnxRedundError
from onnxredund.model import ConvLayer, Model

__all__ = ["GATE_METRICS", "SCHEMA_VERSION", "AuditResult", "LayerSummary", "check_gates", "parse_gate", "run_audit"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}


@dataclass(frozen=True)
class LayerSummary:
    """One conv layer's combined redundancy signals (None where the signal was not measured)."""

    name: str
    index: int
    in_channels: int
    out_channels: int
    impulse_redundant_fraction: float
    channel_cheap_fraction: float | None
    pixel_cheap_fraction: float | None
    channel_mean_cosine: float | None
    pixel_mean_cosine: float | None
    worst_accuracy_drop: float | None
    redundancy_score: float
    ranked_channels: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class AuditResult:
    """Everything an audit measured; ``to_dict`` follows ``schema/results.schema.json``."""

    model: str
    data: str
    seed: int
    budget: float | None
    cheap_drop: float
    impulse: ImpulseResult
    shuffles: dict[str, dict[str, ShuffleResult]]
    layers: list[LayerSummary]
    notes: list[str]

    def to_dict(self) -> dict:
        return {
            "schema_version": SCHEMA_VERSION,
            "tool": f"onnxredund {__version__}",
            "model": self.model,
            "data": self.data,
            "seed": self.seed,
            "budget_seconds": self.budget,
            "cheap_drop": self.cheap_drop,
            "notes": list(self.notes),
            "summary": [s.to_dict() for s in self.layers],
            "impulse": self.impulse.to_dict(),
            "shuffle": {name: {m: r.to_dict() for m, r in modes.items()} for name, modes in self.shuffles.items()},
        }


def _cost(result: ShuffleResult) -> np.ndarray:
    """Per perturbed channel: accuracy drop against the baseline, or disagreement without labels."""
    if result.accuracy is not None and result.baseline_accuracy is not None:
        return result.baseline_accuracy - result.accuracy
    if result.agreement is not None:
        return 1.0 - result.agreement
    return 1.0 - result.mean_cosine()


def _ranked(modes: dict[str, ShuffleResult]) -> list[dict]:
    first = next(iter(modes.values()))
    rows = []
    for i, k in enumerate(first.channels):
        costs = {m: float(_cost(r)[i]) for m, r in modes.items()}
        cos = {m: float(r.mean_cosine()[i]) for m, r in modes.items()}
        rows.append({"channel": k, "cost": max(costs.values()), "cost_by_mode": costs, "mean_cosine": cos})
    rows.sort(key=lambda r: (r["cost"], -min(r["mean_cosine"].values()), r["channel"]))
    return rows


def summarize_layer(
    layer: ConvLayer, impulse: ImpulseResult, modes: dict[str, ShuffleResult], cheap_drop: float
) -> LayerSummary:
    """Combine the impulse and shuffle signals of one layer."""
    imp = next(l for l in impulse.layers if l.name == layer.name)
    cheap = {m: float((_cost(r) <= cheap_drop).mean()) for m, r in modes.items()}
    cosine = {m: float(r.cosine.mean()) for m, r in modes.items()}
    drops = [float(_cost(r).max()) for r in modes.values()]
    signals = [imp.redundant_fraction, *cheap.values()]
    return LayerSummary(
        name=layer.name,
        index=layer.index,
        in_channels=layer.in_channels,
        out_channels=layer.out_channels,
        impulse_redundant_fraction=imp.redundant_fraction,
        channel_cheap_fraction=cheap.get("channel"),
        pixel_cheap_fraction=cheap.get("pixel"),
        channel_mean_cosine=cosine.get("channel"),
        pixel_mean_cosine=cosine.get("pixel"),
        worst_accuracy_drop=max(drops) if drops else None,
        redundancy_score=float(np.mean(signals)),
        ranked_channels=_ranked(modes) if modes else [],
    )


def default_shuffle_layers(model: Model) -> list[ConvLayer]:
    """Every conv whose input has more than one channel."""
    return [l for l in model.layers if l.in_channels > 1]


def run_audit(
    model: Model,
    data: Dataset,
    *,
    layers: list[ConvLayer] | None = None,
    modes: tuple[str, ...] = ("channel", "pixel"),
    budget: float | None = None,
    seed: int = 0,
    batch_size: int = 256,
    threshold: float = 0.9,
    cheap_drop: float = 0.005,
    device: str = "auto",
    progress: Callable[[str, int], Callable[[int], None]] | None = None,
) -> AuditResult:
    """Run the impulse analysis on every conv and shuffling on ``layers`` within ``budget`` seconds.

    Args:
        layers: layers to shuffle (default: every conv whose input has more than one channel).
        budget: seconds for the shuffle sweeps, shared out evenly over the sweeps still to run; a
            sweep that runs out measures fewer samples and says so in ``notes``.
        progress: ``progress(label, total samples)`` returns a callback taking samples finished.
    """
    start = time.perf_counter()
    impulse = run_impulse(model, threshold=threshold, device=device)
    targets = default_shuffle_layers(model) if layers is None else layers
    notes = list(impulse.notes)
    shuffles: dict[str, dict[str, ShuffleResult]] = {}
    sweeps = [(l, m) for l in targets for m in modes]
    for i, (layer, mode) in enumerate(sweeps):
        share = None
        if budget is not None:
            share = (budget - (time.perf_counter() - start)) / (len(sweeps) - i)
            if share <= 0:
                notes.append(f"{layer.name} {mode} shuffling skipped: time budget spent")
                continue
        cb = progress(f"{layer.name} {mode} ({i + 1}/{len(sweeps)})", len(data)) if progress else None
        result = run_shuffle(
            model,
            layer,
            data,
            mode=mode,
            batch_size=batch_size,
            seed=seed,
            device=device,
            progress=cb,
            max_seconds=share,
        )
        if not result.complete:
            notes.append(
                f"{layer.name} {mode} shuffling measured {result.samples_done} of {result.num_samples} samples "
                "(time budget)"
            )
        shuffles.setdefault(layer.name, {})[mode] = result
    summaries = [summarize_layer(l, impulse, shuffles.get(l.name, {}), cheap_drop) for l in model.layers]
    return AuditResult(
        model=model.path,
        data=data.name,
        seed=seed,
        budget=budget,
        cheap_drop=cheap_drop,
        impulse=impulse,
        shuffles=shuffles,
        layers=summaries,
        notes=notes,
    )


def parse_gate(spec: str) -> tuple[str, str, float]:
    """'redundant_fraction>0.5' -> ('redundant_fraction', '>', 0.5)."""
    m = re.fullmatch(r"\s*([a-z_]+)\s*(>=|<=|>|<)\s*([-+0-9.eE]+)\s*", spec)
    if not m or m.group(1) not in GATE_METRICS:
        raise OnnxRedundError(f"bad gate {spec!r}; use METRIC>VALUE with METRIC one of {', '.join(GATE_METRICS)}")
    try:
        return m.group(1), m.group(2), float(m.group(3))
    except ValueError:
        raise OnnxRedundError(f"bad gate value in {spec!r}") from None


def _cheap_fraction(summary: LayerSummary) -> float | None:
    """The larger of the channel and pixel cheap fractions that were measured."""
    fractions = [f for f in (summary.channel_cheap_fraction, summary.pixel_cheap_fraction) if f is not None]
    return max(fractions) if fractions else None


_GATE_VALUES: dict[str, Callable[[LayerSummary], float | None]] = {
    "redundant_fraction": lambda s: s.impulse_redundant_fraction,
    "accuracy_drop": lambda s: s.worst_accuracy_drop,
    "redundancy_score": lambda s: s.redundancy_score,
    "cheap_fraction": _cheap_fraction,
}
GATE_METRICS = tuple(_GATE_VALUES)


def _gate_value(summary: LayerSummary, metric: str) -> float | None:
    return _GATE_VALUES[metric](summary)


def check_gates(result: AuditResult, gates: list[str]) -> list[str]:
    """The gates that fail: one reason per gate, naming the first layer that trips it."""
    failures = []
    for spec in gates:
        metric, op, limit = parse_gate(spec)
        for s in result.layers:
            value = _gate_value(s, metric)
            if value is not None and _OPS[op](value, limit):
                failures.append(f"gate {metric}{op}{limit:g} failed at {s.name}: {metric} = {value:.4f}")
                break
    return failures
