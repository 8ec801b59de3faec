"""Deployment gates on an audit: ``METRIC>VALUE`` (also ``>=``, ``<``, ``<=``), checked per layer.

A gate fails at the first layer whose value trips it. A layer where the metric was not measured
(not shuffled, no labels, no classifier output) does not pass it: the gate is *not evaluated* there,
and a gate evaluated on no layer at all fails with that reason.

Per-layer values: the impulse's ``redundant_fraction``, the ``redundancy_score``, the larger
``cheap_fraction`` of the two modes; and the worst, over both modes, every perturbed channel and every
output, of the output effects: ``accuracy_drop``, ``agreement_drop`` (1 - top-1 agreement),
``top1_agreement``, ``top5_agreement``, ``kl_divergence``, ``output_cosine``, ``output_relative_l2``,
``output_sqnr`` (dB), ``output_abs_error_p99`` and ``output_abs_error_max``.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

from onnxredund.errors import OnnxRedundError
from onnxredund.words import counted

__all__ = ["GATE_METRICS", "Gate", "GateOutcome", "check_gate_applies", "check_gates"]

_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}

#: gate metric -> the LayerSummary field that holds its per-layer value
GATE_FIELDS = {
    "redundant_fraction": "impulse_redundant_fraction",
    "redundancy_score": "redundancy_score",
    "cheap_fraction": "cheap_fraction",
    "accuracy_drop": "worst_accuracy_drop",
    "agreement_drop": "worst_agreement_drop",
    "top1_agreement": "worst_top1_agreement",
    "top5_agreement": "worst_top5_agreement",
    "kl_divergence": "worst_kl_divergence",
    "output_cosine": "worst_output_cosine",
    "output_relative_l2": "worst_output_relative_l2",
    "output_sqnr": "worst_output_sqnr",
    "output_abs_error_p99": "worst_output_abs_error_p99",
    "output_abs_error_max": "worst_output_abs_error_max",
}
GATE_METRICS = tuple(GATE_FIELDS)


@dataclass(frozen=True)
class Gate:
    metric: str
    op: str
    limit: float

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.limit:g}"


@dataclass(frozen=True)
class GateOutcome:
    """How a gate went: "failed" at a layer, "passed" everywhere it was evaluated, or "not evaluated" anywhere.

    Attributes:
        not_evaluated: the layers where the metric was not measured.
    """

    gate: Gate
    status: str
    layer: str | None = None
    value: float | None = None
    not_evaluated: tuple[str, ...] = ()

    def line(self) -> str:
        if self.status == "failed":
            return f"gate {self.gate} failed at {self.layer}: {self.gate.metric} = {self.value:.4f}"
        if self.status == "not evaluated":
            return f"gate {self.gate} not evaluated: no layer measured {self.gate.metric}"
        skipped = f" (not evaluated at {counted(len(self.not_evaluated), 'layer')})" if self.not_evaluated else ""
        return f"gate {self.gate} passed{skipped}"

    @property
    def failed(self) -> bool:
        return self.status in ("failed", "not evaluated")


def check_gate_applies(gate: Gate, *, labelled: bool = True, classifier: bool = True) -> None:
    """Refuse a gate whose metric the data or the model cannot give.

    Raises:
        OnnxRedundError: accuracy without labels, or a classifier's metric without a classifier output.
    """
    if gate.metric not in GATE_METRICS:
        raise OnnxRedundError(f"gate {gate}: unknown metric; use one of {', '.join(GATE_METRICS)}")
    if gate.metric == "accuracy_drop" and not labelled:
        raise OnnxRedundError(
            f"gate {gate}: the data has no labels, so there is no accuracy; use agreement_drop "
            "(agreement with the unperturbed model)"
        )
    needs_classifier = ("agreement_drop", "top1_agreement", "top5_agreement", "kl_divergence", "accuracy_drop")
    if gate.metric in needs_classifier and not classifier:
        raise OnnxRedundError(
            f"gate {gate}: the model has no classifier output (N, classes); use output_cosine, output_sqnr "
            "or output_relative_l2 (or name one with `classifier`)"
        )


def check_gates(summaries, gates: list[Gate]) -> list[GateOutcome]:
    """Each gate's outcome over the layer summaries (in layer order)."""
    outcomes = []
    for gate in gates:
        field_name = GATE_FIELDS[gate.metric]
        missing, evaluated, outcome = [], 0, None
        for s in summaries:
            value = getattr(s, field_name)
            if value is None:
                missing.append(s.name)
                continue
            evaluated += 1
            if outcome is None and _OPS[gate.op](value, gate.limit):
                outcome = GateOutcome(gate, "failed", s.name, float(value))
        if outcome is None:
            outcome = GateOutcome(gate, "passed" if evaluated else "not evaluated")
        outcomes.append(GateOutcome(outcome.gate, outcome.status, outcome.layer, outcome.value, tuple(missing)))
    return outcomes
