"""The pruning study: accuracy against conv MACs removed, without fine-tuning, per criterion, layer-wise and
global, with and without compensation; and what it says about the paper's claim that layer-wise pruning
strategies are ineffective at removing redundancy.

Per model, everything that does not depend on the budget is computed once: the channel groups, the
calibration statistics (first ``calibration`` samples), the original's outputs on the evaluation samples
(the rest), each criterion's importances (``random`` once per seed). Then for every criterion, scope and
budget the channels are selected, and for every compensation the pruned model is built and measured.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from onnxredund.analyses.prune import (
    SCOPES,
    Reference,
    Target,
    channel_importance,
    select_channels,
    split_data,
)
from onnxredund.choices import SHUFFLE_SAMPLES
from onnxredund.data import DataSource
from onnxredund.engine.calibration import collect_statistics
from onnxredund.engine.channel_groups import channel_groups
from onnxredund.engine.pruning import PruneCost, compensate, remove_channels
from onnxredund.errors import OnnxRedundError
from onnxredund.model import Model

__all__ = ["STUDY_BUDGETS", "STUDY_COMPENSATIONS", "STUDY_CRITERIA", "PruneStudy", "StudyRow", "run_prune_study"]

log = logging.getLogger(__name__)

STUDY_BUDGETS = (0.25, 0.5, 0.75, 0.85, 0.9, 0.95)
#: what ``reproduce`` runs: the full grid (models/STUDY.md) less ``variance`` (it ranks like ``activation``) and
#: ``mean`` compensation (behind merge and lstsq on all three models there), to keep the main job short
STUDY_CRITERIA = ("random", "l1", "bn", "activation", "shuffle", "impulse")
STUDY_COMPENSATIONS = ("none", "merge", "lstsq")
RANDOM_SEEDS = (0, 1, 2)


@dataclass(frozen=True)
class StudyRow:
    """One pruned model: what was asked, what it removed, how it does on the evaluation samples."""

    model: str
    criterion: str
    seed: int
    scope: str
    compensation: str
    budget: float
    macs_removed: float | None
    params_removed: float | None
    accuracy: float | None
    agreement: float | None
    output_drift: float | None
    error: str | None = None


@dataclass
class PruneStudy:
    """Every row, the baselines, and the verdict on the paper's claim per model."""

    rows: list[StudyRow]
    baselines: dict[str, float | None]
    calibration_samples: int
    evaluation_samples: int
    verdicts: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> list[dict]:
        """Rows averaged over random seeds: accuracy mean and std per model, criterion, scope, compensation, budget."""
        cells: dict[tuple, list[StudyRow]] = {}
        for r in self.rows:
            cells.setdefault((r.model, r.criterion, r.scope, r.compensation, r.budget), []).append(r)
        out = []
        for (model, criterion, scope, comp, budget), rows in cells.items():
            acc = [r.accuracy for r in rows if r.accuracy is not None]
            out.append(
                {
                    "model": model,
                    "criterion": criterion,
                    "scope": scope,
                    "compensation": comp,
                    "budget": budget,
                    "accuracy": float(np.mean(acc)) if acc else None,
                    "accuracy_std": float(np.std(acc)) if len(acc) > 1 else None,
                    "runs": len(rows),
                    "error": next((r.error for r in rows if r.error), None),
                }
            )
        return out

    def best(self, model: str, budget: float, *, scope: str | None = None, criteria=None, compensation=None):
        """The summary cell with the highest accuracy among those matching."""
        cells = [
            c
            for c in self.summary()
            if c["model"] == model
            and c["budget"] == budget
            and c["accuracy"] is not None
            and (scope is None or c["scope"] == scope)
            and (criteria is None or c["criterion"] in criteria)
            and (compensation is None or c["compensation"] == compensation)
        ]
        return max(cells, key=lambda c: c["accuracy"], default=None)

    def to_dict(self) -> dict:
        return {
            "baselines": self.baselines,
            "calibration_samples": self.calibration_samples,
            "evaluation_samples": self.evaluation_samples,
            "budgets": list(STUDY_BUDGETS),
            "rows": [asdict(r) for r in self.rows],
            "summary": self.summary(),
            "verdicts": self.verdicts,
            "notes": self.notes,
            "seconds": round(self.seconds, 1),
        }


def _scores(model, groups, criterion, seed, cal, stats, shuffle_samples, device):
    return channel_importance(
        model, groups, criterion, data=cal.limit(shuffle_samples), stats=stats, seed=seed, device=device
    )


def run_prune_study(
    models: dict[str, Model],
    data: DataSource,
    *,
    calibration: int = 2000,
    evaluation: int | None = None,
    budgets: tuple[float, ...] = STUDY_BUDGETS,
    criteria: tuple[str, ...] = STUDY_CRITERIA,
    compensations: tuple[str, ...] = STUDY_COMPENSATIONS,
    seeds: tuple[int, ...] = RANDOM_SEEDS,
    shuffle_samples: int = SHUFFLE_SAMPLES,
    device: str = "auto",
    progress: Callable[[str, int, int], Callable[[int], None]] | None = None,
) -> PruneStudy:
    """The study on ``models`` (name -> model) with labelled ``data`` (see the module docstring)."""
    t0 = time.perf_counter()
    cal, ev = split_data(data, calibration, evaluation, spread=False)  # the protocol: the first samples
    study = PruneStudy([], {}, len(cal), len(ev))
    for name, model in models.items():
        groups = channel_groups(model)
        cost = PruneCost.measure(model, groups)
        consumers = [c for g in groups if g.prunable for c in g.consumers]
        stats = collect_statistics(model, consumers, cal, cross=True, gram=True, device=device)
        study.notes += [f"{name}: {n}" for n in stats.notes]
        reference = Reference.measure(model, ev, device=device)
        study.baselines[name] = reference.compare()["accuracy"]
        runs = []
        for criterion in criteria:
            for seed in seeds if criterion == "random" else seeds[:1]:
                try:
                    scores = _scores(model, groups, criterion, seed, cal, stats, shuffle_samples, device)
                except OnnxRedundError as e:
                    study.notes.append(f"{name}: criterion {criterion} left out: {e}")
                    break
                runs.append((criterion, seed, scores))
        bar = progress(f"prune study {name}", len(runs) * len(SCOPES) * len(budgets), 0) if progress else None
        for criterion, seed, scores in runs:
            for scope in SCOPES:
                for budget in budgets:
                    study.rows += _measure(
                        name,
                        model,
                        groups,
                        cost,
                        stats,
                        reference,
                        scores,
                        (criterion, seed, scope, budget),
                        compensations,
                    )
                    if bar:
                        bar(1)  # a progress callback takes what finished since its last call
        study.verdicts[name] = verdict(study, name, budgets)
    study.seconds = time.perf_counter() - t0
    return study


def _measure(name, model, groups, cost, stats, reference, scores, cell, compensations) -> list[StudyRow]:
    criterion, seed, scope, budget = cell
    try:
        removal = select_channels(groups, scores, cost, Target("macs", budget), scope, criterion)
    except OnnxRedundError as e:
        return [
            StudyRow(name, criterion, seed, scope, c, budget, None, None, None, None, None, str(e))
            for c in compensations
        ]
    macs = 1.0 - cost.macs(removal) / cost.macs_total
    params = 1.0 - cost.params(removal) / cost.params_total
    rows = []
    for comp in compensations:
        updates = None if comp == "none" else compensate(model, groups, removal, comp, stats)
        q = reference.compare(remove_channels(model, groups, removal, updates=updates))
        rows.append(
            StudyRow(
                name,
                criterion,
                seed,
                scope,
                comp,
                budget,
                macs,
                params,
                q["accuracy"],
                q["agreement"],
                q["output_drift"],
            )
        )
    return rows


_ACROSS = ("impulse", "shuffle")  # criteria whose measure reaches past the layer: NCC across layers, output cost
_LOCAL = ("l1", "bn", "activation", "variance")  # criteria that read one layer's weights or activations


def _compare(a: dict | None, b: dict | None, samples: int) -> int:
    """+1 where ``a`` is more accurate than ``b`` by more than two standard errors of the difference, -1 where
    it is less, 0 for a tie (or where either is missing)."""
    if not a or not b:
        return 0
    p, q = a["accuracy"], b["accuracy"]
    se = np.sqrt((p * (1 - p) + q * (1 - q)) / max(samples, 1))
    return 0 if abs(p - q) <= 2 * se else (1 if p > q else -1)


def _tally(results: list[int]) -> str:
    counts = [
        (results.count(1), "win", "wins"),
        (results.count(0), "tie", "ties"),
        (results.count(-1), "loss", "losses"),
    ]
    return ", ".join(f"{n} {one if n == 1 else many}" for n, one, many in counts)


def verdict(study: PruneStudy, model: str, budgets) -> str:
    """Plain words on the paper's claim for one model: do layer-wise strategies remove redundancy less well
    than those that look across depth? Two comparisons per budget from 75 % of conv MACs on, each side at its
    best criterion and compensation, ties within two standard errors: a global ranking against the same
    fraction per layer, and criteria that look past the layer (impulse NCC across layers, the output cost of
    shuffling) against those that read one layer (l1, bn, activation, variance)."""
    high = [b for b in budgets if b >= 0.75 and study.best(model, b) is not None]
    if not high:
        return "cannot be judged: no budget from 75 % of conv MACs on was reached"
    n = study.evaluation_samples
    scope = [_compare(study.best(model, b, scope="global"), study.best(model, b, scope="layer"), n) for b in high]
    local = [c for c in _LOCAL if any(r.criterion == c and r.model == model for r in study.rows)]
    across = [_compare(study.best(model, b, criteria=_ACROSS), study.best(model, b, criteria=local), n) for b in high]
    gains = []
    for b in high:
        fitted, plain = study.best(model, b, compensation="lstsq"), study.best(model, b, compensation="none")
        if fitted and plain:
            gains.append(fitted["accuracy"] - plain["accuracy"])
    majority = len(high) / 2
    wins = (scope.count(1) > majority, across.count(1) > majority)
    word = "holds" if all(wins) else "holds in part" if any(wins) else "does not hold"
    gain = f"; least-squares compensation adds {100 * np.mean(gains):+.2f} pp to the best accuracy there"
    return (
        f"{word}: from 75 % of conv MACs removed on ({len(high)} budgets), a global ranking against the same fraction "
        f"per layer: {_tally(scope)}; criteria that look past the layer (impulse, shuffle) against layer-local ones "
        f"({', '.join(local)}): {_tally(across)}{gain if gains else ''}"
    )
