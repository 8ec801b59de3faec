"""Each shuffled channel's cost with a confidence interval, and a decision: cheap, costly or undecided.

The cost is the one the cheap threshold applies to (:meth:`~onnxredund.analyses.shuffle.ShuffleResult.cost`),
a mean over images, estimated per perturbed channel k from the sweep's sums:

- the accuracy drop, P(clean right, perturbed wrong) - P(clean wrong, perturbed right): two proportions, each
  with Wilson's score interval at half the error; the drop's interval is [lo(lost) - hi(gained),
  hi(lost) - lo(gained)];
- the top-1 disagreement with the clean model: one proportion, Wilson's interval;
- 1 - the output cosine: per output, a mean of per-image values in [0, 2], with the normal interval of its
  sample variance, each output at 1/outputs of the error; the cost and its bounds are the largest over outputs.

Wilson's interval rather than an empirical-Bernstein bound: the cheap threshold (0.005 by default) is far below
the range of one image's cost (1 or 2), and a bound that pays for the range (Bernstein's ``7 R log(1/d) / 3n``
term) cannot call a channel cheap before thousands of images; Wilson's interval, a normal approximation that
stays honest at zero counts (a channel that flipped no decision in n images gets the upper bound
z^2 / (n + z^2), not 0), calls it at a few hundred, and a cosine cost of 1e-4 with a spread of 1e-4 is called
after the minimum of images.

**Optional stopping.** In a sequential sweep a channel is looked at after every batch once it has
``min_images``, and it stops receiving images once decided. The error d = 1 - confidence is spent over the
looks: look j of a channel uses d_j = d / (j (j + 1)), which sum to d, so (a union bound) the chance that any of
a channel's intervals misses its cost is at most d however many looks the data allows, up to the normal
approximation. There is no correction over channels: each channel's decision errs with probability at most d.
An exhaustive sweep looks once, at the end.

The images are taken in a seeded random order (:func:`in_random_order`), so that the images a channel saw are
a random sample of the data, and the cost estimated is the exhaustive sweep's. In channel mode an image's
perturbation comes from another image of its batch: the images are not quite independent draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import ndtri

from onnxredund.choices import CHEAP_DROP, CONFIDENCE, MIN_IMAGES
from onnxredund.data import DataSource
from onnxredund.errors import OnnxRedundError

__all__ = [
    "CHEAP",
    "COSTLY",
    "DECISIONS",
    "UNDECIDED",
    "Estimation",
    "cost_bounds",
    "decide",
    "first_look",
    "images_to_clear",
    "in_random_order",
    "wilson",
    "z_score",
]

UNDECIDED, CHEAP, COSTLY = 0, 1, 2
DECISIONS = ("undecided", "cheap", "costly")  # by code


@dataclass(frozen=True)
class Estimation:
    """How a sweep's channels are decided.

    Attributes:
        sequential: stop measuring a channel once it is decided (else every channel sees every image and is
            decided at the end).
        cheap_drop: a channel is cheap when its cost's interval lies at or under this, costly when above.
        confidence: of each channel's interval (under optional stopping, for a sequential sweep).
        min_images: images a channel sees before its first look (sequential sweeps).
    """

    sequential: bool = False
    cheap_drop: float = CHEAP_DROP
    confidence: float = CONFIDENCE
    min_images: int = MIN_IMAGES

    def __post_init__(self) -> None:
        if not 0.5 <= self.confidence < 1:
            raise OnnxRedundError(f"confidence must be in [0.5, 1), not {self.confidence}")
        if self.min_images < 1:
            raise OnnxRedundError(f"the minimum of images must be at least 1, not {self.min_images}")

    def to_dict(self) -> dict:
        d = {"sequential": self.sequential, "cheap_drop": self.cheap_drop, "confidence": self.confidence}
        return d | ({"min_images": self.min_images} if self.sequential else {})


def z_score(confidence: float, looks, tests: int = 1) -> np.ndarray:
    """The normal quantile of a two-sided interval at look ``looks`` (1, 2, ...; an array is fine) of ``tests``
    intervals that share the error: d_j = (1 - confidence) / (j (j + 1) tests)."""
    j = np.maximum(np.asarray(looks, np.float64), 1.0)
    delta = (1.0 - confidence) / (j * (j + 1) * tests)
    return ndtri(1.0 - delta / 2)


def wilson(hits, n, z) -> tuple[np.ndarray, np.ndarray]:
    """Wilson's score interval of a proportion: ``hits`` of ``n`` (arrays), at the normal quantile ``z``."""
    n = np.maximum(np.asarray(n, np.float64), 1.0)
    p = np.clip(np.asarray(hits, np.float64) / n, 0.0, 1.0)
    z2 = np.square(z)
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)


def _mean_interval(total, total_sq, n, z) -> tuple[np.ndarray, np.ndarray]:
    """The normal interval of a mean from the sum and the sum of squares of ``n`` values."""
    n = np.maximum(np.asarray(n, np.float64), 1.0)
    mean = total / n
    variance = np.maximum(total_sq / n - np.square(mean), 0.0) * n / np.maximum(n - 1, 1.0)
    half = z * np.sqrt(variance / n)
    return mean - half, mean + half


def cost_bounds(kind: str, sums: dict, keys: dict[str, list[str]], looks, confidence: float) -> tuple:
    """Each channel's cost interval (lower, upper), (K,) each, from a sweep's sums (pooled over repeats).

    Args:
        kind: what the cost is measured in: "accuracy", "agreement" or "output cosine".
        keys: the sums to read: ``{"top1": [key]}`` for agreement (the prediction's), ``{"cos": [...],
            "cos_sq": [...]}`` for the outputs' cosines.
        looks: per channel, the look this is (1 for an exhaustive sweep's one look).
    """
    n = sums["seen"].sum(axis=0)
    if kind == "accuracy":
        z = z_score(confidence, looks, 2)
        lost = sums["lost"].sum(axis=0)
        gained = lost + sums["correct"].sum(axis=0) - sums["baseline_correct"].sum(axis=0)
        lost_lo, lost_hi = wilson(lost, n, z)
        gained_lo, gained_hi = wilson(gained, n, z)
        return lost_lo - gained_hi, lost_hi - gained_lo
    if kind == "agreement":
        misses = n - sums[keys["top1"][0]].sum(axis=0)
        return wilson(misses, n, z_score(confidence, looks))
    z = z_score(confidence, looks, len(keys["cos"]))
    bounds = [
        _mean_interval(sums[c].sum(axis=0), sums[q].sum(axis=0), n, z)
        for c, q in zip(keys["cos"], keys["cos_sq"], strict=True)
    ]  # of the cosine: the cost 1 - cosine turns them round
    lower = np.max([1.0 - hi for _, hi in bounds], axis=0)
    upper = np.max([1.0 - lo for lo, _ in bounds], axis=0)
    return np.clip(lower, 0.0, 2.0), np.clip(upper, 0.0, 2.0)


def decide(lower: np.ndarray, upper: np.ndarray, cheap_drop: float) -> np.ndarray:
    """Per channel: CHEAP when its whole interval is at or under ``cheap_drop``, COSTLY when above, else
    UNDECIDED."""
    return np.where(upper <= cheap_drop, CHEAP, np.where(lower > cheap_drop, COSTLY, UNDECIDED)).astype(np.int8)


def in_random_order(data: DataSource, seed: int) -> DataSource:
    """``data`` in a seeded random order: any first n images are a random sample of it."""
    order = np.random.default_rng([seed, 0x5E0]).permutation(len(data))
    return data.subset(order.tolist(), f"random order, seed {seed}")


def first_look(estimation: Estimation, batch_size: int, samples: int) -> int:
    """The images a channel of a sequential sweep has at its first look: its minimum, rounded up to whole
    batches (at most the data)."""
    return min(samples, -(-estimation.min_images // batch_size) * batch_size)


def images_to_clear(estimation: Estimation, kind: str, batch_size: int, samples: int) -> int:
    """The images a channel that never changes a decision (no answer lost or flipped) needs to be called cheap
    in a sequential sweep, looked at after every batch from its first look: the first n where the upper bound
    of Wilson's interval of 0 of n, at that look, is at or under the threshold (``samples`` where no n of the
    data is enough). A channel whose cost is not 0 needs more; a costly one is called at its first look where
    its cost is well above the threshold. For "output cosine" costs a spread of 0 is decided at the first look."""
    n = first_look(estimation, batch_size, samples)
    if kind == "output cosine":
        return n
    tests = 2 if kind == "accuracy" else 1
    look = 1
    while n < samples and wilson(0, n, z_score(estimation.confidence, look, tests))[1] > estimation.cheap_drop:
        n, look = min(samples, n + batch_size), look + 1
    return n
