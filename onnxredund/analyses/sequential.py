"""Each shuffled channel's cost with a confidence interval, and a decision: cheap, costly or undecided.

The cost is the one the cheap threshold applies to (:meth:`~onnxredund.analyses.shuffle.ShuffleResult.cost`),
a mean over images, estimated per perturbed channel k from the sweep's sums:

- the accuracy drop, P(clean right, perturbed wrong) - P(clean wrong, perturbed right): two proportions, each
  with its interval at half the error; the drop's interval is [lo(lost) - hi(gained), hi(lost) - lo(gained)];
- the top-1 disagreement with the clean model: one proportion;
- 1 - the output cosine: per output, a mean of per-image values in [0, 2], with the normal interval of its
  sample variance, each output at 1/outputs of the error; the cost and its bounds are the largest over outputs.

**Proportions: a confidence sequence.** A proportion's interval is the beta-binomial mixture confidence
sequence (Howard, Ramdas, McAuliffe, Sekhon 2021, "Time-uniform, nonparametric, nonasymptotic confidence
sequences", section 3): after n images with S hits, every p with

    M_n(p) = B(a + S, b + n - S) / B(a, b) / (p^S (1 - p)^(n - S))  <  1 / d,      d = 1 - confidence,

M_n being, under p, a nonnegative martingale (a mixture of likelihood ratios), so by Ville's inequality the
chance that p ever leaves the set, at any of the looks, however many and whenever they are taken, is at most d:
valid under optional stopping with no union over looks and no normal approximation. The mixing prior is a
third each of: a point mass at 0 (a channel that changes nothing: the many a pruning audit looks for; with no
hit its likelihood ratio is (1 - p)^-n, so no hit in n images rules out every p above 1 - (3d)^(1/n)), Beta(1,
1 / cheap_drop - 1), its mean at the threshold, where the decisions are made, and Beta(1, 1), so that costs far
from it still get a narrow interval (for which B(a + S, b + n - S) / B(a, b) above is the priors' average). A
channel that never changes a decision is called cheap at 0.5 pp after about 780 to 1,020 images (1,100 to 1,300
with the two Beta halves alone; Wilson's interval with the error spent over looks after every batch needed
2,800 to 4,100, and an empirical-Bernstein bound, which pays ``7 R log(1/d) / 3n`` for the range R of one
image's cost, many thousands); any mixing prior keeps the guarantee, this one trades log(3/2) of evidence
against the other channels for it. An exhaustive sweep, which looks once, gets the same set.

**Means: the normal interval, the error spent over looks.** 1 - cosine is not a proportion; its interval is
the normal one with the sample variance, a channel's j-th look at d_j = d / (j (j + 1)) (which sum to d, a union
bound), so that a cost of 1e-4 with a spread of 1e-4 is called at the first look. It is a normal
approximation.

In a sequential sweep a channel is looked at after every batch once it has ``min_images``, and it stops
receiving images once decided. There is no correction over channels: each channel's decision errs with
probability at most d. The images are taken in a seeded random order (:func:`in_random_order`), so that the
images a channel saw are a random sample of the data, and the cost estimated is the exhaustive sweep's. In
channel mode an image's perturbation comes from another image of its batch: the images are not quite
independent draws.

**Stopping for futility.** A channel whose cost sits at the threshold is not decided by any amount of data a
user has, and measuring it to the end of the data keeps the network's clean run of every batch going for it
alone (:func:`undecidable`). After each look an undecided channel stops receiving images, and stays undecided,
when the rest of the data would decide it with a chance under ``futility`` were its cost what its images so far
say (stochastic curtailment, Lan, Simon and Halperin 1982): its sums are projected to the end of the data at their
current means, the interval is computed there, and it is moved towards each decision in turn by ``z``
predictive standard deviations of the final mean, sqrt(v R / (N n)) for a per-image variance v, n images seen,
R left and N = n + R (the final mean's spread under the current estimate's own uncertainty and the R images'
noise), z the normal quantile of 1 - ``futility``; a channel that could be decided either way after that
shift goes on. The rule only ever stops measuring: it decides nothing, so each decision's error stays at most
d (a non-binding futility rule); what it costs is the few channels that the rest of the data would have
decided: simulated on 4,096 images looked at every 256, at 0.05 it halves the images of channels at the
threshold and gives up on 3 % of those at 0.4 of it that the whole data would have decided (more than 5 %:
the chance is computed at the estimate, which is unluckily high in the channels it stops).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import betaln, ndtri

from onnxredund.choices import CHEAP_DROP, CONFIDENCE, FUTILITY, MIN_IMAGES
from onnxredund.data import DataSource
from onnxredund.errors import OnnxRedundError

__all__ = [
    "CHEAP",
    "COSTLY",
    "DECISIONS",
    "EXHAUSTIVE",
    "STOPPED",
    "UNDECIDED",
    "Estimation",
    "cost_bounds",
    "decide",
    "first_look",
    "images_to_clear",
    "in_random_order",
    "proportion_bounds",
    "undecidable",
    "z_score",
]

UNDECIDED, CHEAP, COSTLY = 0, 1, 2
STOPPED = 3  # undecided, no longer measured: the rest of the data would not decide it (:func:`undecidable`)
DECISIONS = ("undecided", "cheap", "costly")  # by code; STOPPED reads "undecided"


@dataclass(frozen=True)
class Estimation:
    """How a sweep's channels are decided.

    Attributes:
        sequential: stop measuring a channel once it is decided (else every channel sees every image and is
            decided at the end).
        cheap_drop: a channel is cheap when its cost's interval lies at or under this, costly when above.
        confidence: of each channel's interval (under optional stopping, for a sequential sweep).
        min_images: images a channel sees before its first look (sequential sweeps).
        futility: an undecided channel stops receiving images once the rest of the data would decide it with a
            chance under this (:func:`undecidable`; sequential sweeps; 0: never).
    """

    sequential: bool = False
    cheap_drop: float = CHEAP_DROP
    confidence: float = CONFIDENCE
    min_images: int = MIN_IMAGES
    futility: float = FUTILITY

    def __post_init__(self) -> None:
        if not 0.5 <= self.confidence < 1:
            raise OnnxRedundError(f"confidence must be in [0.5, 1), not {self.confidence}")
        if self.min_images < 1:
            raise OnnxRedundError(f"the minimum of images must be at least 1, not {self.min_images}")
        if not 0 <= self.futility < 0.5:
            raise OnnxRedundError(f"futility must be in [0, 0.5), not {self.futility}")

    def to_dict(self) -> dict:
        d = {"sequential": self.sequential, "cheap_drop": self.cheap_drop, "confidence": self.confidence}
        return d | ({"min_images": self.min_images, "futility": self.futility} if self.sequential else {})


EXHAUSTIVE = Estimation()  # every image for every channel, decided at the end


def z_score(confidence: float, looks, tests: int = 1) -> np.ndarray:
    """The normal quantile of a two-sided interval at look ``looks`` (1, 2, ...; an array is fine) of ``tests``
    intervals that share the error: d_j = (1 - confidence) / (j (j + 1) tests)."""
    j = np.maximum(np.asarray(looks, np.float64), 1.0)
    delta = (1.0 - confidence) / (j * (j + 1) * tests)
    return ndtri(1.0 - delta / 2)


def proportion_bounds(hits, n, error: float, prior_mean: float) -> tuple[np.ndarray, np.ndarray]:
    """The beta-binomial confidence sequence of a proportion, ``hits`` of ``n`` (arrays): every p whose mixture
    likelihood ratio is under 1 / ``error``; the mixture is a third each: a point mass at 0, Beta(1, b) with its
    mean at ``prior_mean`` and Beta(1, 1)."""
    hits, n = np.broadcast_arrays(np.asarray(hits, np.float64), np.maximum(np.asarray(n, np.float64), 0.0))
    b = 1.0 / float(np.clip(prior_mean, 1e-4, 0.5)) - 1.0
    # log of the data's likelihood under the mixture, the same for every p: at q = 0 it is 1 with no hit, else 0
    spike = np.where(hits == 0, 0.0, -np.inf)
    slabs = np.logaddexp(betaln(1 + hits, b + n - hits) - betaln(1, b), betaln(1 + hits, 1 + n - hits))
    marginal = np.logaddexp(spike, slabs) - np.log(3)
    level = np.log(1.0 / error)

    def inside(p):  # log M_n(p) < log(1 / d)
        return marginal - hits * np.log(p) - (n - hits) * np.log1p(-p) < level

    centre = np.where(n > 0, hits / np.maximum(n, 1.0), 0.5)
    # M_n falls from p -> 0 to its least at S / n and rises to p -> 1: bisect each side for where it meets 1 / d
    tiny = 1e-15
    lo_a, lo_b = np.full_like(centre, tiny), np.maximum(centre, tiny)
    hi_a, hi_b = np.minimum(centre, 1 - tiny), np.full_like(centre, 1 - tiny)
    for _ in range(50):
        mid = (lo_a + lo_b) / 2
        keep = inside(mid)
        lo_a, lo_b = np.where(keep, lo_a, mid), np.where(keep, mid, lo_b)
        mid = (hi_a + hi_b) / 2
        keep = inside(mid)
        hi_a, hi_b = np.where(keep, mid, hi_a), np.where(keep, hi_b, mid)
    lower = np.where(inside(np.full_like(centre, tiny)), 0.0, lo_b)
    upper = np.where(inside(np.full_like(centre, 1 - tiny)), 1.0, hi_a)
    return np.clip(lower, 0.0, 1.0), np.clip(upper, 0.0, 1.0)


def _mean_interval(total, total_sq, n, z) -> tuple[np.ndarray, np.ndarray]:
    """The normal interval of a mean from the sum and the sum of squares of ``n`` values."""
    n = np.maximum(np.asarray(n, np.float64), 1.0)
    mean = total / n
    variance = np.maximum(total_sq / n - np.square(mean), 0.0) * n / np.maximum(n - 1, 1.0)
    half = z * np.sqrt(variance / n)
    return mean - half, mean + half


def cost_bounds(kind: str, sums: dict, keys: dict[str, list[str]], looks, estimation: Estimation) -> tuple:
    """Each channel's cost interval (lower, upper), (K,) each, from a sweep's sums (pooled over repeats).

    Args:
        kind: what the cost is measured in: "accuracy", "agreement" or "output cosine".
        keys: the sums to read: ``{"top1": [key]}`` for agreement (the prediction's), ``{"cos": [...],
            "cos_sq": [...]}`` for the outputs' cosines.
        looks: per channel, the look this is (1 for an exhaustive sweep's one look; proportions need no count).
        estimation: the threshold (the prior's mean) and the confidence.
    """
    n = sums["seen"].sum(axis=0)
    error, prior = 1.0 - estimation.confidence, estimation.cheap_drop
    if kind == "accuracy":
        lost, gained = _lost_gained(sums)
        lost_lo, lost_hi = proportion_bounds(lost, n, error / 2, prior)
        gained_lo, gained_hi = proportion_bounds(gained, n, error / 2, prior)
        return lost_lo - gained_hi, lost_hi - gained_lo
    if kind == "agreement":
        return proportion_bounds(n - sums[keys["top1"][0]].sum(axis=0), n, error, prior)
    z = z_score(estimation.confidence, looks, len(keys["cos"]))
    bounds = [
        _mean_interval(sums[c].sum(axis=0), sums[q].sum(axis=0), n, z)
        for c, q in zip(keys["cos"], keys["cos_sq"], strict=True)
    ]  # of the cosine: the cost 1 - cosine turns them round
    lower = np.max([1.0 - hi for _, hi in bounds], axis=0)
    upper = np.max([1.0 - lo for lo, _ in bounds], axis=0)
    return np.clip(lower, 0.0, 2.0), np.clip(upper, 0.0, 2.0)


def _lost_gained(sums: dict) -> tuple[np.ndarray, np.ndarray]:
    """Per channel, the images a perturbation made wrong and those it made right."""
    lost = sums["lost"].sum(axis=0)
    return lost, lost + sums["correct"].sum(axis=0) - sums["baseline_correct"].sum(axis=0)


def _variance(kind: str, sums: dict, keys: dict[str, list[str]]) -> np.ndarray:
    """Per channel, the variance of one image's cost (the largest over the outputs for cosines)."""
    n = np.maximum(sums["seen"].sum(axis=0).astype(np.float64), 1.0)
    if kind == "accuracy":  # one image's drop is 1 (lost), -1 (gained) or 0
        lost, gained = (v / n for v in _lost_gained(sums))
        return np.maximum(lost + gained - np.square(lost - gained), 0.0)
    if kind == "agreement":
        p = (n - sums[keys["top1"][0]].sum(axis=0)) / n
        return p * (1.0 - p)
    means = [sums[c].sum(axis=0) / n for c in keys["cos"]]
    return np.max(
        [np.maximum(sums[q].sum(axis=0) / n - np.square(m), 0.0) for m, q in zip(means, keys["cos_sq"], strict=True)],
        axis=0,
    )


def undecidable(
    kind: str, sums: dict, keys: dict[str, list[str]], looks, estimation: Estimation, remaining, batch_size: int
) -> np.ndarray:
    """Per channel (K,): whether the rest of the data, ``remaining`` images (K,), would decide it with a chance
    under ``estimation.futility``, were its cost what its images so far say (see the module's text): its interval
    at the end of the data, with its sums at their current means, moved by z predictive standard deviations
    of the final mean towards either decision, still holds the threshold. ``looks`` and ``batch_size`` give the
    looks there (a mean's interval widens with them); the other arguments are :func:`cost_bounds`'s."""
    n = sums["seen"].sum(axis=0).astype(np.float64)
    remaining = np.broadcast_to(np.maximum(np.asarray(remaining, np.float64), 0.0), n.shape)
    if estimation.futility <= 0:
        return np.zeros(n.shape, bool)
    total = n + remaining
    scale = total / np.maximum(n, 1.0)
    names = ("seen", "lost", "correct", "baseline_correct", *(k for v in keys.values() for k in v))
    at_end = {k: sums[k] * scale for k in dict.fromkeys(names) if k in sums}
    low, high = cost_bounds(kind, at_end, keys, np.asarray(looks) + np.ceil(remaining / batch_size), estimation)
    z = ndtri(1.0 - estimation.futility)
    spread = z * np.sqrt(_variance(kind, sums, keys) * remaining / (np.maximum(total, 1.0) * np.maximum(n, 1.0)))
    could_be_cheap = high - spread <= estimation.cheap_drop
    could_be_costly = low + spread > estimation.cheap_drop
    return (n > 0) & (remaining > 0) & ~could_be_cheap & ~could_be_costly


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
    in a sequential sweep, looked at after every batch from its first look: the first such n where the upper
    bound of its interval is at or under the threshold (``samples`` where no n of the data is enough). A channel
    whose cost is not 0 needs more; a costly one is called at its first look where its cost is well above the
    threshold. For "output cosine" costs a spread of 0 is decided at the first look."""
    n = first_look(estimation, batch_size, samples)
    if kind == "output cosine":
        return n
    error = 1.0 - estimation.confidence
    if kind == "accuracy":  # two proportions, none lost and none gained: hi(lost) - lo(gained) = hi(lost)
        error /= 2

    def upper(n: int) -> float:
        return float(proportion_bounds(0, n, error, estimation.cheap_drop)[1])

    while n < samples and upper(n) > estimation.cheap_drop:
        n = min(samples, n + batch_size)
    return n
