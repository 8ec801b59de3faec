"""Statistics of the tensors that consumer layers read, over calibration data: what pruning criteria and
compensation need.

One pass over the data, with the consumers' inputs exposed as outputs, gathers per tensor: each
channel's (conv maps) or feature's (dense inputs) sum and sum of squares; on request the channels'
cross products (for merging a channel into its best-fitting twin) and, per consumer, the Gram matrix of
what it multiplies by its weights (the input patches of a conv, the features of a dense layer) with a
constant 1 appended (for the least-squares refit). Sums are float64.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import scipy.linalg

from onnxredund.choices import BATCH_SIZE
from onnxredund.data import DataSource, conform_feeds, iter_batches
from onnxredund.engine.analysis_models import im2col_index
from onnxredund.engine.channel_groups import Consumer, ConsumerKind
from onnxredund.engine.runtime import Runner
from onnxredund.engine.surgery import expose_outputs
from onnxredund.model import Model

__all__ = [
    "MAX_GRAM_FEATURES",
    "REFIT_RIDGE",
    "CalibrationStats",
    "collect_statistics",
    "cross_grams",
    "solve_refit",
]

#: the largest Gram matrix gathered for a least-squares refit (features + 1 on a side)
MAX_GRAM_FEATURES = 8192
#: the least-squares refit's pull towards the original weights, relative to the mean input energy
REFIT_RIDGE = 1e-2
_PATCH_POSITIONS = 32  # output positions per image a conv consumer's patch Gram samples


@dataclass
class _TensorSums:
    """Per channel (maps) or feature (dense inputs) of one tensor."""

    sum: np.ndarray
    sq: np.ndarray
    count: int = 0  # values per channel (samples x positions) or per feature (samples)
    cross: np.ndarray | None = None


@dataclass
class CalibrationStats:
    """What :func:`collect_statistics` gathered; queried per consumer and group channel."""

    model: Model
    samples: int
    tensors: dict[str, _TensorSums] = field(default_factory=dict)
    grams: dict[int, np.ndarray] = field(default_factory=dict)  # consumer node -> (F+1, F+1) mean of z z^T
    notes: list[str] = field(default_factory=list)

    def _index(self, consumer: Consumer, channel: int) -> np.ndarray:
        """The tensor entries (channels of a map, features of a dense input) of group channel ``channel``."""
        return consumer.indices([channel])

    def moments(self, consumer: Consumer, channel: int) -> tuple[float, float]:
        """Mean and mean square of group channel ``channel`` as ``consumer`` reads it (over positions too)."""
        t = self.tensors[consumer.tensor]
        i = self._index(consumer, channel)
        return float(t.sum[i].sum() / (t.count * len(i))), float(t.sq[i].sum() / (t.count * len(i)))

    def mean(self, consumer: Consumer, channel: int, columns: int) -> np.ndarray:
        """The mean of what the weight columns of ``channel`` multiply (per position for a dense consumer)."""
        t = self.tensors[consumer.tensor]
        i = self._index(consumer, channel)
        means = t.sum[i] / t.count
        return np.full(columns, means[0]) if consumer.kind == ConsumerKind.conv else means

    def best_fit(self, consumer: Consumer, channel: int, kept: list[int], columns: int):
        """The kept channel t whose activation fits ``channel``'s best as ``alpha * t + beta`` (least squares
        over samples and positions), alpha, and beta per weight column. Without cross products or a
        varying kept channel: (first kept, 0, the mean), which is mean compensation."""
        t = self.tensors[consumer.tensor]
        mine = self._index(consumer, channel)
        mean_r = t.sum[mine] / t.count
        fallback = (kept[0], 0.0, self.mean(consumer, channel, columns))
        if t.cross is None or not kept:
            return fallback
        best, best_r2, best_alpha = None, 0.0, 0.0
        n = t.count * len(mine)
        m_r = t.sum[mine].sum() / n
        var_r = t.sq[mine].sum() / n - m_r**2
        for k in kept:
            other = self._index(consumer, k)
            m_t = t.sum[other].sum() / n
            var_t = t.sq[other].sum() / n - m_t**2
            cov = t.cross[mine, other].sum() / n - m_r * m_t
            if var_t <= 1e-12 * max(var_r, 1e-30) or var_r <= 0:
                continue
            r2 = cov * cov / (var_r * var_t)
            if r2 > best_r2:
                best, best_r2, best_alpha = k, r2, cov / var_t
        if best is None:
            return fallback
        mean_t = t.sum[self._index(consumer, best)] / t.count
        beta = mean_r - best_alpha * mean_t
        return best, float(best_alpha), (np.full(columns, beta[0]) if consumer.kind == ConsumerKind.conv else beta)

    def refit(
        self, consumer: Consumer, rows: np.ndarray, bias: np.ndarray, removed: np.ndarray, ridge: float = REFIT_RIDGE
    ):
        """Least-squares weights on the kept columns (and bias) that reproduce the consumer's output with all
        columns, pulled towards the original weights: minimises ``E|z_K W'_K - z W|^2 + lam |W'_K - W_K|^2`` over
        the calibration data (``lam`` = ``ridge`` x the mean diagonal of the Gram matrix), which stays sound
        when there are fewer samples than weights. Without a Gram matrix (too many features), mean compensation.
        """
        gram = self.grams.get(consumer.node)
        if gram is None:
            means = self._column_means(consumer, rows.shape[1])
            return np.where(np.isin(np.arange(rows.shape[1]), removed), 0.0, rows), bias + rows[:, removed] @ means[
                removed
            ]
        return solve_refit(gram, gram, rows, bias, removed, ridge)

    def _column_means(self, consumer: Consumer, columns: int) -> np.ndarray:
        t = self.tensors[consumer.tensor]
        means = t.sum / t.count
        return np.repeat(means, columns // len(means)) if consumer.kind == ConsumerKind.conv else means


def solve_refit(
    gram: np.ndarray, cross: np.ndarray, rows: np.ndarray, bias: np.ndarray, removed: np.ndarray, ridge: float
) -> tuple[np.ndarray, np.ndarray]:
    """Weights on the kept columns (and bias) minimising ``E|z'_K W'_K - z W|^2 + lam |W'_K - W_K|^2``, where
    ``gram`` is E[z' z'^T] of the inputs the new weights will see and ``cross`` E[z' z^T] with those the
    original weights saw (both with a constant 1 appended; the same matrix when they are the same inputs);
    ``lam`` = ``ridge`` x the mean diagonal of the kept block. Returns (O, F) rows and (O,) bias."""
    f = rows.shape[1]
    kept = np.setdiff1d(np.arange(f + 1), removed)  # the last index is the constant 1
    full = np.concatenate([rows, bias[:, None]], axis=1).T  # (F+1, O)
    a = gram[np.ix_(kept, kept)].copy()
    lam = ridge * max(float(np.trace(a)) / len(kept), 1e-12)
    rhs = cross[kept] @ full + lam * full[kept]
    a[np.diag_indices_from(a)] += lam
    try:
        solution = scipy.linalg.solve(a, rhs, assume_a="pos")  # (|K|, O)
    except np.linalg.LinAlgError:  # not numerically positive definite (tiny ridge, float32 sums): least squares
        solution = np.linalg.lstsq(a, rhs, rcond=None)[0]
    new = np.zeros((f + 1, rows.shape[0]))
    new[kept] = solution
    return new[:f].T.copy(), new[f].copy()


def cross_grams(
    model: Model,
    original: onnx.ModelProto,
    current: onnx.ModelProto,
    consumer: Consumer,
    data: DataSource,
    *,
    batch_size: int = BATCH_SIZE,
    device: str = "auto",
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray] | None:
    """E[z' z'^T] and E[z' z^T] over ``data`` of what ``consumer`` multiplies by its weights (conv patches at
    the same sampled positions, or dense features), ``z`` read in ``original`` and ``z'`` in ``current`` (the
    network as pruned and refitted so far), each with a constant 1 appended; None where the consumer has more
    than :data:`MAX_GRAM_FEATURES` inputs."""
    width, index = _gram_inputs(model, consumer)
    if width + 1 > MAX_GRAM_FEATURES:
        return None
    runners = [Runner.create(expose_outputs(p, [consumer.tensor]), device, derived=True) for p in (original, current)]
    gram, cross, samples = np.zeros((width + 1, width + 1)), np.zeros((width + 1, width + 1)), 0
    for b, (_, arrays, _) in enumerate(iter_batches(data, batch_size)):
        feeds = conform_feeds(arrays, model.inputs, model.input_name, data.name)
        z, z_new = (np.asarray(r.runs(model)(feeds, [consumer.tensor])[0], np.float32) for r in runners)
        if index is not None:  # the same positions in both
            z, z_new = (_patches(x, index, np.random.default_rng([seed, b])) for x in (z, z_new))
        else:
            z, z_new = _augment(z), _augment(z_new)
        gram += (z_new.T @ z_new).astype(np.float64)
        cross += (z_new.T @ z).astype(np.float64)
        samples += len(z)
    return gram / samples, cross / samples


def _gram_inputs(model: Model, consumer: Consumer) -> tuple[int, np.ndarray | None]:
    """How many values a consumer multiplies by its weights per output (a conv's input patch, a dense layer's
    features) and, for a conv, the im2col index of its patches (None for a dense layer)."""
    if consumer.kind != ConsumerKind.conv:
        return model.shapes[consumer.tensor][0], None
    layer = next(conv for conv in model.layers if conv.node_index == consumer.node)
    index = im2col_index(layer, model.proto.graph.node[consumer.node])
    return layer.in_channels * int(np.prod(layer.kernel)), index


def _patches(x: np.ndarray, index: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rows of what a conv multiplies by its weights: (samples x positions, C x taps + 1), the last column 1."""
    n, c = x.shape[:2]
    flat = np.concatenate([x.reshape(n, c, -1), np.zeros((n, c, 1), x.dtype)], axis=2)
    positions = index.shape[1]
    pick = np.sort(rng.choice(positions, min(positions, _PATCH_POSITIONS), replace=False))
    cols = flat[:, :, index[:, pick]]  # (N, C, T, P)
    rows = cols.transpose(0, 3, 1, 2).reshape(n * len(pick), -1)
    return np.concatenate([rows, np.ones((len(rows), 1), rows.dtype)], axis=1)


def collect_statistics(
    model: Model,
    consumers: list[Consumer],
    data: DataSource,
    *,
    cross: bool = False,
    gram: bool = False,
    batch_size: int = BATCH_SIZE,
    device: str = "auto",
    seed: int = 0,
) -> CalibrationStats:
    """One pass over ``data`` gathering the statistics of every consumer's input (see the module docstring).

    Args:
        cross: gather channel cross products (merge compensation).
        gram: gather each consumer's Gram matrix (least-squares refit), up to :data:`MAX_GRAM_FEATURES`.
    """
    tensors = list(dict.fromkeys(c.tensor for c in consumers))
    stats = CalibrationStats(model, 0)
    graph = model.proto.graph
    patch_index: dict[int, np.ndarray] = {}
    if gram:
        for c in {c.node: c for c in consumers if c.kind in (ConsumerKind.conv, ConsumerKind.dense)}.values():
            width, index = _gram_inputs(model, c)
            if width + 1 > MAX_GRAM_FEATURES:
                stats.notes.append(
                    f"{graph.node[c.node].name or c.node}: {width} inputs, too many for a refit; mean used"
                )
                continue
            if index is not None:
                patch_index[c.node] = index
            stats.grams[c.node] = np.zeros((width + 1, width + 1))
    runner = Runner.create(expose_outputs(model.proto, tensors), device, derived=True)
    run = runner.runs(model)
    rng = np.random.default_rng(seed)
    node_of = {c.node: c for c in consumers}
    for _, arrays, _ in iter_batches(data, batch_size):
        feeds = conform_feeds(arrays, model.inputs, model.input_name, data.name)
        values = dict(zip(tensors, run(feeds, tensors), strict=True))
        stats.samples += len(next(iter(values.values())))
        for name, x in values.items():
            _accumulate(stats, name, np.asarray(x, np.float32), cross)
        for node in stats.grams:
            x = values[node_of[node].tensor]
            z = _patches(x, patch_index[node], rng) if node in patch_index else _augment(x)
            stats.grams[node] += (z.T @ z).astype(np.float64)
    for node in stats.grams:
        stats.grams[node] /= stats.samples * (
            min(patch_index[node].shape[1], _PATCH_POSITIONS) if node in patch_index else 1
        )
    return stats


def _augment(x: np.ndarray) -> np.ndarray:
    return np.concatenate([x.reshape(len(x), -1), np.ones((len(x), 1), x.dtype)], axis=1)


def _accumulate(stats: CalibrationStats, name: str, x: np.ndarray, cross: bool) -> None:
    """Add one batch of tensor ``name`` (N, C, *spatial) or (N, F) to its sums."""
    n = len(x)
    per = x.reshape(n, x.shape[1], -1).transpose(1, 0, 2).reshape(x.shape[1], -1)  # (C, N x positions)
    t = stats.tensors.get(name)
    if t is None:
        t = stats.tensors[name] = _TensorSums(np.zeros(per.shape[0]), np.zeros(per.shape[0]))
        if cross:
            t.cross = np.zeros((per.shape[0], per.shape[0]))
    t.sum += per.sum(axis=1, dtype=np.float64)
    t.sq += np.square(per, dtype=np.float64).sum(axis=1)
    t.count += per.shape[1]
    if cross:
        t.cross += (per @ per.T).astype(np.float64)
