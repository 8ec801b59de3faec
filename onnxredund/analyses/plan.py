"""Cost before work: how long each shuffle sweep of an audit will take, and how many images and channels fit a
time budget.

The estimate comes from a short probe: one clean forward pass of the model on a few images gives the
seconds per image ``t``. A sweep of layer L on n images and K channels reruns the part of the network
from L on once per perturbed channel, so it costs about ``n * t * (1 + g * K * f_L) + s``: ``f_L`` the
share of the model's work from L on (conv MACs, and the elements every other node writes), ``g`` the
cost of one perturbed pass relative to a plain one (the median of what the sweeps so far showed), ``s``
the setup of its sessions.

A budget is met by measuring fewer images (the same evenly spaced images for every sweep, at least
:data:`MIN_IMAGES`), then fewer channels per layer (evenly spaced), never by leaving a layer out while
one channel of it still fits.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from onnxredund.choices import MIN_IMAGES
from onnxredund.data import DataSource, conform_feeds
from onnxredund.engine.runtime import Runner
from onnxredund.model import ConvLayer, Model, downstream

__all__ = ["MIN_IMAGES", "SweepPlan", "evenly_spaced", "plan_sweeps", "probe_seconds_per_image", "suffix_share"]

SETUP_SECONDS = 0.3  # building one sweep's models and sessions
PASS_COST = 1.0  # a perturbed pass relative to a plain one, before any sweep has been measured (seen: 0.6-1.6)
_PROBE_IMAGES = 16


@dataclass(frozen=True)
class SweepPlan:
    """One sweep as planned: its layer and mode, the images and input channels it measures, the share of the
    network a perturbed pass reruns, its estimate."""

    layer: ConvLayer
    mode: str
    images: int
    channels: list[int]
    share: float
    seconds: float

    @property
    def sampled(self) -> bool:
        return self.channels != list(range(self.layer.in_channels))

    def to_dict(self) -> dict:
        return {
            "layer": self.layer.name,
            "mode": self.mode,
            "images": self.images,
            "channels": len(self.channels),
            "of_channels": self.layer.in_channels,
            "estimate_seconds": round(self.seconds, 3),
        }


def evenly_spaced(count: int, total: int) -> list[int]:
    """``count`` indices spread evenly over ``range(total)``, first and last included."""
    if count >= total:
        return list(range(total))
    return sorted(set(np.round(np.linspace(0, total - 1, max(1, count))).astype(int).tolist()))


def _node_costs(model: Model) -> list[float]:
    """Per node, a cost in multiply-adds: a conv's MACs, else the elements it writes (elementwise traffic, which
    dominates squeeze-excitation blocks and detector heads)."""
    convs = {layer.node_index: layer.macs for layer in model.layers}
    costs = []
    for i, node in enumerate(model.proto.graph.node):
        if i in convs:
            costs.append(float(convs[i]))
        else:
            costs.append(float(sum(np.prod(model.shapes.get(o, (1,))) for o in node.output if o)))
    return costs


def suffix_share(model: Model, layer: ConvLayer) -> float:
    """The share of the model's work in ``layer`` and the nodes after it (what a perturbed pass reruns)."""
    costs = _node_costs(model)
    after = downstream(model.proto.graph, layer.output) | {layer.node_index}
    return sum(costs[i] for i in after) / (sum(costs) or 1.0)


def probe_seconds_per_image(model: Model, data: DataSource, device: str, batch_size: int) -> float:
    """Seconds per image of a clean forward pass, timed on a few images after one warm-up run."""
    n = min(_PROBE_IMAGES, batch_size, len(data))
    feeds = conform_feeds(data.arrays(0, n), model.inputs, model.input_name, data.name)
    runner = Runner.create(model.proto, device)
    run = runner.runs(model)
    run(feeds)
    t0 = time.perf_counter()
    run(feeds)
    return max(time.perf_counter() - t0, 1e-6) / n


def _cost(images: int, channels: int, share: float, t: float, g: float) -> float:
    return images * t * (1 + g * channels * share) + SETUP_SECONDS


def plan_sweeps(
    model: Model,
    sweeps: list[tuple[ConvLayer, str]],
    *,
    samples: int,
    seconds: float | None,
    seconds_per_image: float,
    pass_cost: float = PASS_COST,
    images: int | None = None,
) -> list[SweepPlan]:
    """The sweeps with the images and channels that fit ``seconds`` (all of them without a budget).

    Args:
        images: the images every sweep measures, where an earlier plan fixed them (sweeps stay comparable).

    Returns:
        One plan per sweep that fits, in order; sweeps left out (not even one channel of each fits) are
        the last ones.
    """
    shares = [suffix_share(model, layer) for layer, _ in sweeps]
    full = [layer.in_channels for layer, _ in sweeps]
    t, g = seconds_per_image, pass_cost
    if seconds is None:
        return [_plan(layer, m, samples, k, s, t, g) for (layer, m), k, s in zip(sweeps, full, shares, strict=True)]
    if images is None:
        room = seconds - SETUP_SECONDS * len(sweeps)
        per_image = sum(t * (1 + g * k * s) for k, s in zip(full, shares, strict=True))
        images = int(min(samples, room / per_image)) if per_image > 0 else samples
        images = max(images, min(MIN_IMAGES, samples))
    counts = _fitting_counts(full, shares, images, seconds, t, g)
    if counts is None:
        return _one_channel_each(sweeps, shares, images, seconds, t, g)
    return [_plan(layer, m, images, k, s, t, g) for (layer, m), k, s in zip(sweeps, counts, shares, strict=True)]


def _fitting_counts(full, shares, images, seconds, t, g) -> list[int] | None:
    """Channels per sweep, the same fraction of each layer's (at least one), as many as fit; None if one each
    does not fit."""

    def counts(scale: float) -> list[int]:
        return [max(1, int(scale * k)) for k in full]

    def total(cs: list[int]) -> float:
        return sum(_cost(images, c, s, t, g) for c, s in zip(cs, shares, strict=True))

    if total(counts(0.0)) > seconds:
        return None
    if total(full) <= seconds:
        return list(full)
    lo, hi = 0.0, 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if total(counts(mid)) <= seconds else (lo, mid)
    return counts(lo)


def _one_channel_each(sweeps, shares, images, seconds, t, g) -> list[SweepPlan]:
    """As many sweeps as fit with one channel each, in order."""
    plans, used = [], 0.0
    for (layer, mode), share in zip(sweeps, shares, strict=True):
        cost = _cost(images, 1, share, t, g)
        if used + cost > seconds:
            break
        used += cost
        plans.append(_plan(layer, mode, images, 1, share, t, g))
    return plans


def _plan(layer: ConvLayer, mode: str, images: int, channels: int, share: float, t: float, g: float) -> SweepPlan:
    picked = evenly_spaced(max(1, min(channels, layer.in_channels)), layer.in_channels)
    return SweepPlan(layer, mode, images, picked, share, _cost(images, len(picked), share, t, g))
