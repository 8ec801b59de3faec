"""What perturbing one input channel does at the model's outputs, for any model.

Per graph output o and perturbed channel k, over all samples (clean y, perturbed y~):

- ``cosine``: mean over samples of the cosine of the flattened y and y~ (eq. 1's edge cases);
- ``relative_l2``: sqrt(sum (y~ - y)^2 / sum y^2) over every sample and element (None when y is all 0);
- ``sqnr_db``: 10 log10(sum y^2 / sum (y~ - y)^2), capped at :data:`SQNR_CAP_DB` (identical outputs);
- ``abs_error_p50``, ``abs_error_p99``: percentiles of |y~ - y| over every element, from a histogram
  on fixed log-spaced bins (within 12 % above the exact value); ``abs_error_max``: exact;

and for classifier outputs (N, classes): ``top1_agreement`` (perturbed top-1 equals the clean top-1),
``top5_agreement`` (the clean top-1 is among the perturbed top 5) and ``kl_divergence`` (mean over
samples of KL(clean softmax || perturbed softmax), nats); ``accuracy`` against labels for the first
classifier output where labels exist.

Everything is a sum over batches (the maximum merges by max), so batches and channel runs can be
measured in any order, anywhere, and merged: :class:`EffectMeter` keeps the sums in a dict of arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np

from onnxredund.analyses.sequential import cost_bounds, undecidable
from onnxredund.metrics import (
    ERROR_EDGES,
    bin_counts,
    error_bins,
    flat_cosine,
    histogram_quantile,
    kl_divergence,
    log_softmax,
    top1,
    top_k_hits,
)

__all__ = [
    "SQNR_CAP_DB",
    "EffectMeter",
    "OutputEffect",
    "effect_kind",
    "merge_sums",
    "nan_to_none",
    "per_sample_effects",
    "unmeasured",
]

SQNR_CAP_DB = 300.0


def effect_kind(labelled: bool, classifier: bool) -> str:
    """What the effect of a perturbation is measured in, the one definition: "accuracy" with labels (and a
    classifier output), else "agreement" (top-1, with the clean model) with a classifier output, else
    "output cosine" (the lowest over the outputs)."""
    if labelled and classifier:
        return "accuracy"
    return "agreement" if classifier else "output cosine"


def nan_to_none(values) -> list | None:
    """A list for JSON, rounded to 10 digits, with None for NaN and infinities."""
    if values is None:
        return None
    return [None if not np.isfinite(v) else round(float(v), 10) for v in np.asarray(values, np.float64)]


def unmeasured(values: np.ndarray | None, unseen: np.ndarray, axis: int = 0) -> np.ndarray | None:
    """``values`` as floats with NaN for the channels ``unseen`` flags along ``axis`` (no image reached them);
    None stays None, and so does an array where every channel was measured."""
    if values is None or not unseen.any():
        return values
    values = np.array(values, np.float64)
    np.moveaxis(values, axis, 0)[unseen] = np.nan
    return values


@dataclass(frozen=True)
class OutputEffect:
    """The effect on one graph output of perturbing each channel k: arrays (K,), means over repeats."""

    name: str
    classifier: bool
    cosine: np.ndarray
    relative_l2: np.ndarray
    sqnr_db: np.ndarray
    abs_error_p50: np.ndarray
    abs_error_p99: np.ndarray
    abs_error_max: np.ndarray
    top1_agreement: np.ndarray | None = None
    top5_agreement: np.ndarray | None = None
    kl_divergence: np.ndarray | None = None

    def unmeasured(self, unseen: np.ndarray) -> OutputEffect:
        """This effect with NaN for the channels ``unseen`` (K,) flags: no image reached them."""
        if not unseen.any():
            return self
        arrays = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(self, **{k: unmeasured(v, unseen) for k, v in arrays.items() if isinstance(v, np.ndarray)})

    def to_dict(self) -> dict:
        return {
            "classifier": self.classifier,
            "cosine": nan_to_none(self.cosine),
            "relative_l2": nan_to_none(self.relative_l2),
            "sqnr_db": nan_to_none(self.sqnr_db),
            "abs_error_p50": nan_to_none(self.abs_error_p50),
            "abs_error_p99": nan_to_none(self.abs_error_p99),
            "abs_error_max": nan_to_none(self.abs_error_max),
            "top1_agreement": nan_to_none(self.top1_agreement),
            "top5_agreement": nan_to_none(self.top5_agreement),
            "kl_divergence": nan_to_none(self.kl_divergence),
        }


def merge_sums(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``a`` + ``b`` array by array (maxima, the keys ending in ``.max``, by maximum)."""
    return {k: np.maximum(a[k], b[k]) if k.endswith(".max") else a[k] + b[k] for k in a}


def per_sample_effects(roles: dict[str, tuple[str | None, bool]], perturbed: dict, clean: dict) -> dict:
    """The per-sample effects of each output in ``roles`` (name -> (classifier kind or None, is the prediction)):
    ``{(name, what): array}`` with arrays (K, B) for cos, err_sq, max and, for classifiers, top1, top5, kl
    (argmax too for the prediction); ``bins`` (K, elements of B samples) are the absolute errors' bins. The fast
    model computes the same on the device (:func:`onnxredund.engine.analysis_models.build_fast_model`)."""
    effects = {}
    for name, (kind, prediction) in roles.items():
        y, ref = perturbed[name], clean[name]
        k, b = y.shape[:2]
        flat = np.ascontiguousarray(y).reshape(k, b, -1)
        diff = np.abs(flat.astype(np.float64) - ref.reshape(1, b, -1))
        reference = np.broadcast_to(ref.reshape(b, -1), flat.shape).reshape(k * b, -1)
        effects[name, "cos"] = flat_cosine(flat.reshape(k * b, -1), reference).reshape(k, b)
        effects[name, "err_sq"] = np.square(diff).sum(axis=2)
        effects[name, "max"] = diff.max(axis=2, initial=0.0)
        effects[name, "bins"] = error_bins(diff.reshape(k, -1))
        if kind is None:
            continue
        scores = flat.reshape(k * b, -1)  # (classes, 1, 1) scores as (classes,)
        clean_top = np.tile(top1(ref), k)
        effects[name, "top1"] = top_k_hits(scores, clean_top, 1).reshape(k, b)
        effects[name, "top5"] = top_k_hits(scores, clean_top, 5).reshape(k, b)
        effects[name, "kl"] = kl_divergence(log_softmax(ref.reshape(b, -1), kind)[None], log_softmax(flat, kind))
        if prediction:
            effects[name, "argmax"] = flat.argmax(axis=-1)
    return effects


class EffectMeter:
    """Accumulates output effects in a dict of arrays (the sweep's sums).

    Args:
        outputs: every graph output; classifiers: those holding class scores (the first is the prediction);
        roles: per output, (its classifier kind: "logits", "probabilities" or "log_probabilities", or None;
            whether it is the prediction), as :func:`~onnxredund.engine.analysis_models.output_role` gives them;
        repeats, channels: R and K.
        labelled: whether the data has labels (accuracy of the first classifier).
    """

    def __init__(self, outputs, classifiers, roles, repeats: int, channels: int, labelled: bool) -> None:
        self.outputs, self.classifiers, self.roles = list(outputs), list(classifiers), dict(roles)
        self.repeats, self.channels = repeats, channels
        self.labelled = labelled and bool(self.classifiers)

    @property
    def kind(self) -> str:
        """What a channel's cost is measured in (:func:`effect_kind`)."""
        return effect_kind(self.labelled, bool(self.classifiers))

    def cost_bounds(self, sums: dict, looks, estimation) -> tuple[np.ndarray, np.ndarray]:
        """Each channel's cost interval from the sums (:func:`~onnxredund.analyses.sequential.cost_bounds`)."""
        return cost_bounds(self.kind, sums, self._cost_keys(), looks, estimation)

    def undecidable(self, sums: dict, looks, estimation, remaining, batch_size: int) -> np.ndarray:
        """Per channel, whether the rest of the data would not decide it
        (:func:`~onnxredund.analyses.sequential.undecidable`)."""
        return undecidable(self.kind, sums, self._cost_keys(), looks, estimation, remaining, batch_size)

    def _cost_keys(self) -> dict[str, list[str]]:
        """The sums a channel's cost is read from."""
        if self.kind == "agreement":
            return {"top1": [self.key(self.classifiers[0], "top1")]}
        return {what: [self.key(name, what) for name in self.outputs] for what in ("cos", "cos_sq")}

    def key(self, name: str, what: str) -> str:
        """The name of the sum ``what`` of output ``name`` in the sums dict."""
        return f"out{self.outputs.index(name)}.{what}"

    def new_sums(self) -> dict[str, np.ndarray]:
        """Zeroed sums, every one (R, K, ...): each channel's own images (``seen``) and the clean values of
        those images (``baseline_correct``, ``ref_sq``), so that channels may measure different images."""
        rk = (self.repeats, self.channels)
        sums = {"seen": np.zeros(rk, np.int64), "baseline_correct": np.zeros(rk, np.int64)}
        if self.labelled:
            sums["correct"] = np.zeros(rk, np.int64)
            sums["lost"] = np.zeros(rk, np.int64)  # correct clean, wrong perturbed
        for name in self.outputs:
            sums[self.key(name, "ref_sq")] = np.zeros(rk)
            sums[self.key(name, "cos")] = np.zeros(rk)
            sums[self.key(name, "cos_sq")] = np.zeros(rk)
            sums[self.key(name, "err_sq")] = np.zeros(rk)
            sums[self.key(name, "hist")] = np.zeros((*rk, len(ERROR_EDGES) - 1), np.int64)
            sums[self.key(name, "max")] = np.zeros(rk)
            if name in self.classifiers:
                for what in ("top1", "top5"):
                    sums[self.key(name, what)] = np.zeros(rk, np.int64)
                sums[self.key(name, "kl")] = np.zeros(rk)
        return sums

    def clean_sums(self, clean: dict[str, np.ndarray], labels: np.ndarray | None) -> dict:
        """A batch's clean numbers, which :meth:`add_per_sample` adds to each channel measured on the batch: its size,
        each output's energy, and where there are labels, which samples the clean model gets right."""
        batch = {"size": len(next(iter(clean.values())))}
        for name in self.outputs:
            batch[name] = np.square(clean[name], dtype=np.float64).sum()
        if self.labelled and labels is not None:
            batch["right"] = top1(clean[self.classifiers[0]]) == labels
        return batch

    def per_sample(self, perturbed: dict, clean: dict) -> dict:
        """The per-sample effects (:func:`per_sample_effects`) of the perturbed outputs (K', B, ...) of a direct run."""
        return per_sample_effects(self._roles(perturbed), perturbed, clean)

    def add_per_sample(self, sums: dict, r: int, at, effects: dict, clean: dict, batch: dict, labels) -> None:
        """One run's per-sample effects (:func:`per_sample_effects`, or the fast model's on the device) for the channels
        at positions ``at`` (an index array, or a slice) of repeat ``r``, with the batch's clean numbers
        (:meth:`clean_sums`); outputs missing from ``effects`` count as their clean values."""
        count = len(np.arange(self.channels)[at])
        if not count:
            return
        missing = {name: clean[name] for name in self.outputs if (name, "cos") not in effects}
        if missing:
            unchanged = {name: np.broadcast_to(ref, (count, *ref.shape)) for name, ref in missing.items()}
            effects = effects | per_sample_effects(self._roles(unchanged), unchanged, clean)
        at = (r, at)
        sums["seen"][at] += batch["size"]
        for name in self.outputs:
            sums[self.key(name, "ref_sq")][at] += batch[name]
            sums[self.key(name, "cos")][at] += effects[name, "cos"].sum(axis=1)
            sums[self.key(name, "cos_sq")][at] += np.square(effects[name, "cos"], dtype=np.float64).sum(axis=1)
            sums[self.key(name, "err_sq")][at] += effects[name, "err_sq"].sum(axis=1)
            sums[self.key(name, "hist")][at] += bin_counts(effects[name, "bins"])
            top = sums[self.key(name, "max")]
            top[at] = np.maximum(top[at], effects[name, "max"].max(axis=1, initial=0.0))
            if name in self.classifiers:
                for what in ("top1", "top5", "kl"):
                    sums[self.key(name, what)][at] += effects[name, what].sum(axis=1)
        if self.labelled and labels is not None:
            right = batch["right"]
            hits = effects[self.classifiers[0], "argmax"] == labels
            sums["baseline_correct"][at] += int(right.sum())
            sums["correct"][at] += hits.sum(axis=1)
            sums["lost"][at] += (right & ~hits).sum(axis=1)

    def _roles(self, outputs: dict) -> dict[str, tuple[str | None, bool]]:
        return {name: self.roles[name] for name in outputs}

    def effects(self, sums: dict) -> dict[str, OutputEffect]:
        """Per output, the effects (K,) as means over repeats, each channel's over the images it saw."""
        n = np.maximum(sums["seen"], 1)
        return {name: self._effect(sums, name, n) for name in self.outputs}

    def _effect(self, sums: dict, name: str, n: np.ndarray) -> OutputEffect:
        def mean(what: str) -> np.ndarray:
            return (sums[self.key(name, what)] / n).mean(axis=0)

        err, ref = sums[self.key(name, "err_sq")], sums[self.key(name, "ref_sq")]
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(ref > 0, np.sqrt(err / ref), np.where(err == 0, 0.0, np.nan))
            sqnr = np.where(ref > 0, np.where(err > 0, 10 * np.log10(ref / err), SQNR_CAP_DB), np.nan)
        hist, top = sums[self.key(name, "hist")], sums[self.key(name, "max")]
        quantile = np.vectorize(histogram_quantile, signature="(b),(),()->()")
        classifier = name in self.classifiers
        return OutputEffect(
            name=name,
            classifier=classifier,
            cosine=mean("cos"),
            relative_l2=rel.mean(axis=0),
            sqnr_db=np.minimum(sqnr, SQNR_CAP_DB).mean(axis=0),
            abs_error_p50=quantile(hist, 0.5, top).mean(axis=0),
            abs_error_p99=quantile(hist, 0.99, top).mean(axis=0),
            abs_error_max=top.max(axis=0),
            top1_agreement=mean("top1") if classifier else None,
            top5_agreement=mean("top5") if classifier else None,
            kl_divergence=mean("kl") if classifier else None,
        )
