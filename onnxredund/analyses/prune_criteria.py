"""Pruning criteria: how important each channel of each prunable channel group is (higher: keep).

Criteria (each gives every channel of a prunable group an importance):

- ``random``: uniform draws from the seed.
- ``l1``: mean absolute weight of the channel's kernels (Li et al., 2017), averaged over the group's producers.
- ``bn``: |scale| of the BatchNormalization after each producer (Network Slimming); groups without one are left.
- ``activation``: root mean square of the channel where its consumers read it (calibration data).
- ``variance``: its standard deviation there (what mean compensation cannot fold away).
- ``shuffle``: what channel-shuffling it across the samples of each mini-batch, at every consumer's input,
  costs at the model's outputs (the paper's measure of redundancy): relative output drift (default),
  lost agreement with the unperturbed top-1, or lost accuracy.
- ``impulse``: 1 - its best impulse-response NCC with another channel, in its layer or an earlier one.

Importances on a layer's own scale (l1, activation, variance) are divided by their group's mean before a
global ranking; the others (output-level costs, NCC, BN scales, random draws) are compared as they are.
"""

from __future__ import annotations

import numpy as np

from onnxredund.analyses.impulse import run_impulse
from onnxredund.choices import BATCH_SIZE, CRITERIA, NCC_THRESHOLD, SHUFFLE_METRIC, SHUFFLE_METRICS
from onnxredund.data import DataSource, conform_feeds, iter_batches
from onnxredund.engine.calibration import CalibrationStats
from onnxredund.engine.channel_groups import ChannelGroup, Role, Slicing
from onnxredund.engine.group_shuffle import GroupShuffle
from onnxredund.engine.permutations import batch_generator, channel_permutation
from onnxredund.errors import OnnxRedundError
from onnxredund.metrics import relative_l2_per_sample, top1
from onnxredund.model import Model, classifier_output

__all__ = [
    "CRITERIA",
    "IMPULSE_THRESHOLD",
    "NEEDS_STATS",
    "OWN_SCALE",
    "SHUFFLE_METRICS",
    "channel_importance",
    "one_of_each_pair",
]

OWN_SCALE = {"l1", "activation", "variance"}  # importances on a layer's own scale
NEEDS_STATS = {"activation", "variance"}  # criteria that read calibration statistics
IMPULSE_THRESHOLD = NCC_THRESHOLD  # NCC at which two channels count as duplicates (the paper's)


def _averaged(group: ChannelGroup, parts: list[tuple[Slicing, np.ndarray]]) -> np.ndarray:
    """Per group channel, the mean of the values that the cuts ``parts`` give it (a value per index along the cut:
    channel c reads index ``offset + c - first``). A channel of a group tied in part (half of it after a Split)
    has fewer producers than another: it gets the mean of those it has."""
    total, count = np.zeros(group.channels), np.zeros(group.channels)
    for s, values in parts:
        span = np.arange(s.length)
        total[s.first + span] += values[s.offset + span]
        count[s.first + span] += 1
    return total / np.maximum(count, 1)


def _l1(model: Model, group: ChannelGroup) -> np.ndarray:
    graph = model.proto.graph
    parts = []
    for s in group.slicings:
        if s.role == Role.producer:
            w = np.abs(np.asarray(model.constant(graph.node[s.node].input[1]), np.float64))
            w = np.moveaxis(w, s.axis, 0)  # a transposed conv's output channels are its weight's axis 1
            parts.append((s, w.reshape(w.shape[0], -1).mean(axis=1)))
    return _averaged(group, parts)


def _bn(model: Model, group: ChannelGroup) -> np.ndarray | None:
    graph = model.proto.graph
    scales = [s for s in group.slicings if s.role == Role.norm and s.name == graph.node[s.node].input[1]]
    if not scales:
        return None
    return _averaged(group, [(s, np.abs(np.asarray(model.constant(s.name), np.float64))) for s in scales])


def _moments(stats: CalibrationStats, group: ChannelGroup, which: str) -> np.ndarray | None:
    readers = [next((c for c in group.consumers if c.reads(k)), None) for k in range(group.channels)]
    if None in readers:
        return None
    m = np.array([stats.moments(c, k) for k, c in enumerate(readers)])
    return (
        np.sqrt(np.maximum(m[:, 1], 0.0)) if which == "activation" else np.sqrt(np.maximum(m[:, 1] - m[:, 0] ** 2, 0.0))
    )


def _impulse(model: Model, groups: list[ChannelGroup], device: str) -> dict[int, np.ndarray]:
    convs = {layer.name for layer in model.layers}
    producers = [p for g in groups if g.prunable for p in g.producers if p in convs]  # not transposed convs
    result = run_impulse(model, layers=model.pick_layers(producers), threshold=IMPULSE_THRESHOLD, device=device)
    best = {layer.index: one_of_each_pair(layer) for layer in result.layers}
    by_node = {layer.node_index: layer.index for layer in model.layers}
    scores = {}
    for g in groups:
        parts = [
            (s, best[by_node[s.node]]) for s in g.slicings if s.role == Role.producer and by_node.get(s.node) in best
        ]
        if g.prunable and parts:
            scores[g.index] = _averaged(g, parts)
    return scores


def one_of_each_pair(layer, threshold: float = IMPULSE_THRESHOLD) -> np.ndarray:
    """1 - the best NCC match of each channel (in its layer or an earlier one). Of two channels of a layer that
    match each other (NCC >= ``threshold``), the better matched one met first is removable and its twin is kept
    (importance + 1), so that a pair of duplicates loses one channel, not both; a channel whose twin is already
    removable protects nothing."""
    within = np.nan_to_num(np.asarray(layer.best_value, np.float64), nan=0.0)
    across = np.nan_to_num(np.asarray(layer.across_best_value, np.float64), nan=0.0)
    importance = 1.0 - np.maximum(within, across)
    protected = np.zeros(len(within), bool)
    removable = np.zeros(len(within), bool)
    for c in np.argsort(-within, kind="stable"):
        twin = int(layer.best_match[c])
        if protected[c] or twin < 0 or within[c] < threshold or removable[twin]:
            continue
        removable[c], protected[twin] = True, True
    importance[protected] += 1.0
    return importance


def _shuffle_costs(
    model: Model, group: ChannelGroup, data: DataSource, metric: str, seed: int, batch_size: int, device: str
) -> np.ndarray:
    """Per channel of ``group``: the output cost of shuffling it across samples at every consumer."""
    shuffle = GroupShuffle(model, group, device)
    pred = classifier_output(model)
    cost = np.zeros(group.channels)
    samples = 0
    for bi, arrays, labels in iter_batches(data, batch_size):
        feeds = conform_feeds(arrays, model.inputs, model.input_name, data.name)
        n = len(next(iter(feeds.values())))
        clean, start = shuffle.run_clean(feeds)
        flat_clean = np.concatenate([o.reshape(n, -1) for o in clean], axis=1).astype(np.float64)
        top = None if pred is None else top1(clean[model.output_names.index(pred)])
        for c in range(group.channels):
            perm = channel_permutation(batch_generator(seed, 0, c, bi), n)
            out = shuffle.outputs(clean, start, c, perm)
            if metric == "drift":
                flat = np.concatenate([o.reshape(n, -1) for o in out], axis=1)
                cost[c] += relative_l2_per_sample(flat_clean, flat).sum()
            else:
                new = top1(out[model.output_names.index(pred)])
                cost[c] += (
                    (top != new).sum() if metric == "agreement" else ((top == labels).sum() - (new == labels).sum())
                )
        samples += n
    return cost / max(samples, 1)


def channel_importance(
    model: Model,
    groups: list[ChannelGroup],
    criterion: str,
    *,
    data: DataSource | None = None,
    stats: CalibrationStats | None = None,
    seed: int = 0,
    shuffle_metric: str = SHUFFLE_METRIC,
    batch_size: int = BATCH_SIZE,
    device: str = "auto",
) -> dict[int, np.ndarray]:
    """Importance of every channel of every prunable group the criterion can rank (higher: keep).

    Raises:
        OnnxRedundError: the criterion cannot rank any group of this model, or needs what the data lacks.
    """
    if criterion not in CRITERIA:
        raise OnnxRedundError(f"no criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
    prunable = [g for g in groups if g.prunable]
    if criterion == "random":
        rng = np.random.default_rng(seed)
        return {g.index: rng.random(g.channels) for g in prunable}
    if criterion == "l1":
        return {g.index: _l1(model, g) for g in prunable}
    if criterion == "bn":
        scores = {g.index: _bn(model, g) for g in prunable}
        scores = {k: v for k, v in scores.items() if v is not None}
        if not scores:
            raise OnnxRedundError("criterion bn needs BatchNormalization after the convs; this model has none")
        return scores
    if criterion == "impulse":
        return _impulse(model, groups, device)
    if criterion in NEEDS_STATS:
        if stats is None:
            raise ValueError("activation criteria need calibration statistics")
        scores = {g.index: _moments(stats, g, criterion) for g in prunable}
        return {k: v for k, v in scores.items() if v is not None}
    # shuffle
    if shuffle_metric not in SHUFFLE_METRICS:
        raise OnnxRedundError(f"no shuffle metric {shuffle_metric!r}; choose one of {', '.join(SHUFFLE_METRICS)}")
    if not model.batch_dynamic:
        raise OnnxRedundError("criterion shuffle permutes samples within a batch; this model fixes its batch to 1")
    if shuffle_metric != "drift" and classifier_output(model) is None:
        raise OnnxRedundError(f"`shuffle_metric` {shuffle_metric} needs a classifier output; use drift")
    if shuffle_metric == "accuracy" and (data is None or data.y is None):
        raise OnnxRedundError("`shuffle_metric` accuracy needs labelled data; use drift or agreement, or pass labels")
    if data is None:
        raise ValueError("criterion shuffle needs data")
    return {
        g.index: _shuffle_costs(model, g, data, shuffle_metric, seed, batch_size, device)
        for g in prunable
        if g.consumers
    }
