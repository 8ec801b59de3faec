"""Tiny models for the pruning tests: a residual Add, a Concat, a depthwise conv, BatchNormalization and
Flatten -> Gemm in one graph (:func:`zoo`), and a conv read by a MatMul after a Flatten (:func:`flat_head`)."""

from __future__ import annotations

import numpy as np
import onnx
from builders import make_model
from onnx import helper

from onnxredund.engine.channel_groups import channel_groups
from onnxredund.engine.loading import load_model_proto
from onnxredund.engine.pruning import check_by_values, remove_channels, zeroed_at_consumers
from onnxredund.engine.runtime import Runner

SIZE = 6


def zoo(seed: int = 0, *, dead_b: int | None = None, dead_a: int | None = None, twin_b: tuple[int, int] | None = None):
    """x (N,2,6,6) -> convA (4) -> BN -> Relu = a;  a -> convB (3) -> Relu = b;  a -> depthwise (4) -> Relu = d;
    concat(b, d) (7) -> convC (4) -> Relu = c;  r = c + a (residual);  r -> Flatten -> Gemm (3) = out.

    dead_b: convB's channel that is always 0 after its Relu; dead_a: the residual group's channel that is 0
    everywhere (a, d and c); twin_b: (i, j) makes convB's channel j a copy of channel i.
    """
    rng = np.random.default_rng(seed)
    w = {
        "wa": rng.normal(size=(4, 2, 3, 3)),
        "ba": rng.normal(size=4) * 0.1,
        "g": rng.uniform(0.5, 2, 4),
        "beta": rng.normal(size=4) * 0.1,
        "mu": rng.normal(size=4) * 0.1,
        "var": rng.uniform(0.5, 2, 4),
        "wb": rng.normal(size=(3, 4, 3, 3)),
        "bb": rng.normal(size=3) * 0.1,
        "wd": rng.normal(size=(4, 1, 3, 3)),
        "bd": rng.normal(size=4) * 0.1,
        "wc": rng.normal(size=(4, 7, 3, 3)) * 0.3,
        "bc": rng.normal(size=4) * 0.1,
        "fc": rng.normal(size=(3, 4 * SIZE * SIZE)) * 0.1,
        "fcb": rng.normal(size=3) * 0.1,
    }
    if dead_b is not None:
        w["wb"][dead_b], w["bb"][dead_b] = 0.0, -1.0
    if dead_a is not None:
        w["wa"][dead_a], w["ba"][dead_a], w["beta"][dead_a], w["mu"][dead_a] = 0.0, 0.0, -5.0, 0.0
        w["bd"][dead_a] = -1.0
        w["wc"][dead_a], w["bc"][dead_a] = 0.0, -1.0
    if twin_b is not None:
        i, j = twin_b
        w["wb"][j], w["bb"][j] = w["wb"][i], w["bb"][i]
    pad = {"pads": [1, 1, 1, 1]}
    nodes = [
        helper.make_node("Conv", ["x", "wa", "ba"], ["za"], name="convA", **pad),
        helper.make_node("BatchNormalization", ["za", "g", "beta", "mu", "var"], ["na"], name="bnA"),
        helper.make_node("Relu", ["na"], ["a"], name="reluA"),
        helper.make_node("Conv", ["a", "wb", "bb"], ["zb"], name="convB", **pad),
        helper.make_node("Relu", ["zb"], ["b"], name="reluB"),
        helper.make_node("Conv", ["a", "wd", "bd"], ["zd"], name="dw", group=4, **pad),
        helper.make_node("Relu", ["zd"], ["d"], name="reluD"),
        helper.make_node("Concat", ["b", "d"], ["cat"], name="cat", axis=1),
        helper.make_node("Conv", ["cat", "wc", "bc"], ["zc"], name="convC", **pad),
        helper.make_node("Relu", ["zc"], ["c"], name="reluC"),
        helper.make_node("Add", ["c", "a"], ["r"], name="residual"),
        helper.make_node("Flatten", ["r"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc", "fcb"], ["out"], name="fc", transB=1),
    ]
    return make_model(nodes, [("x", ["N", 2, SIZE, SIZE])], [("out", ["N", 3])], w)


def inputs(n: int = 16, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 2, SIZE, SIZE)).astype(np.float32)


def run(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return Runner.create(proto, "cpu").run({"x": x})[0]


def group_of(groups, producer: str):
    return next(g for g in groups if producer in g.producers)


def flat_head(seed: int = 0):
    """x -> conv (3 channels) -> Relu -> Flatten -> MatMul -> out: the consumer reads every position."""
    rng = np.random.default_rng(seed)
    w = {"w": rng.normal(size=(3, 2, 3, 3)), "b": rng.normal(size=3), "fc": rng.normal(size=(3 * 16, 5))}
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["z"], name="conv"),
        helper.make_node("Relu", ["z"], ["a"]),
        helper.make_node("Flatten", ["a"], ["f"]),
        helper.make_node("MatMul", ["f", "fc"], ["out"], name="fc"),
    ]
    return make_model(nodes, [("x", ["N", 2, SIZE, SIZE])], [("out", ["N", 5])], w)


def prune_and_compare(proto: onnx.ModelProto, producer: str, channels: list[int], x: np.ndarray, **load) -> None:
    """Remove ``channels`` of ``producer``'s group: the file passes onnx's full check, and its outputs equal the
    original's with those channels zeroed where they are read, which differ from the unpruned outputs."""
    m = load_model_proto(proto, **load)
    groups = channel_groups(m)
    g = group_of(groups, producer)
    assert g.prunable, g.reason
    pruned = remove_channels(m, groups, {g.index: channels})
    onnx.checker.check_model(pruned, full_check=True)
    want = run(zeroed_at_consumers(m, groups, {g.index: channels}), x)
    np.testing.assert_allclose(run(pruned, x), want, rtol=1e-4, atol=1e-5)
    assert not np.allclose(want, run(proto, x), atol=1e-3)  # the channel mattered: the comparison can fail
    assert check_by_values(m, groups, {g.index: channels}, pruned, {"x": x})[0] < 1e-4
