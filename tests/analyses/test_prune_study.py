"""The pruning study on a tiny model: one row per criterion, seed, scope, budget and compensation; random
averaged over seeds; unreachable budgets recorded as such; a verdict in words; its figure draws."""

from __future__ import annotations

import numpy as np
import pytest
from prunable import inputs, zoo

from onnxredund.analyses.prune_study import _tally, run_prune_study
from onnxredund.data import Dataset
from onnxredund.engine.loading import load_model_proto
from onnxredund.report.figures import prune_curves_figure


def test_the_study_measures_every_cell_and_says_what_it_found():
    m = load_model_proto(zoo())
    data = Dataset(inputs(60), np.arange(60) % 3, "tiny")
    ticks = []

    def progress(label, total, done):
        ticks.append(total)
        return ticks.append  # takes what finished since its last call

    study = run_prune_study(
        {"zoo": m},
        data,
        calibration=20,
        budgets=(0.3, 0.8, 0.99),
        criteria=("random", "l1", "bn"),
        compensations=("none", "lstsq"),
        seeds=(0, 1),
        device="cpu",
        progress=progress,
    )
    assert (study.calibration_samples, study.evaluation_samples) == (20, 40)
    assert ticks[0] == sum(ticks[1:]) == 4 * 2 * 3  # the bar ends at its total, not past it
    # random x 2 seeds + l1 + bn = 4 runs, x 2 scopes x 3 budgets x 2 compensations
    assert len(study.rows) == 4 * 2 * 3 * 2
    reached = [r for r in study.rows if r.budget < 0.9]
    assert all(r.error is None and r.macs_removed >= r.budget and 0 <= r.accuracy <= 1 for r in reached)
    assert all(r.error and "cannot be reached" in r.error for r in study.rows if r.budget == 0.99)
    cell = next(c for c in study.summary() if c["criterion"] == "random" and c["budget"] == 0.3)
    assert cell["runs"] == 2 and cell["accuracy_std"] is not None
    assert study.verdicts["zoo"].startswith(("holds", "does not hold"))
    png = prune_curves_figure(study.summary(), "zoo", study.baselines["zoo"], ["none", "lstsq"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("results", "words"),
    [
        ([1, 1, -1], "2 wins, 0 ties, 1 loss"),
        ([0], "0 wins, 1 tie, 0 losses"),
        ([1, -1, -1], "1 win, 0 ties, 2 losses"),
    ],
)
def test_a_tally_counts_in_words(results, words):
    assert _tally(results) == words
