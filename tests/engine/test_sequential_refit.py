"""The layer-by-layer refit (``--compensate sequential``): its statistics read both networks on the same
samples and positions, its first consumer is the plain least-squares refit, and through depth it leaves less
error than refitting every consumer on the original network's inputs."""

from __future__ import annotations

import numpy as np
from builders import make_model
from onnx import helper
from prunable import flat_head, group_of, inputs, run

from onnxredund.data import Dataset
from onnxredund.engine.calibration import collect_statistics, cross_grams
from onnxredund.engine.channel_groups import channel_groups
from onnxredund.engine.loading import load_model_proto
from onnxredund.engine.pruning import compensate, compensate_sequential, remove_channels, zeroed_at_consumers
from onnxredund.engine.runtime import Runner
from onnxredund.engine.surgery import expose_outputs


def test_cross_grams_of_a_network_with_itself_are_the_mean_outer_products_of_its_features():
    m = load_model_proto(flat_head())
    consumer = channel_groups(m)[0].consumers[0]  # the MatMul reads the flattened features "f"
    x = inputs(24)
    gram, cross = cross_grams(m, m.proto, m.proto, consumer, Dataset(x, None, "x"), batch_size=7, device="cpu")
    f = Runner.create(expose_outputs(m.proto, ["f"]), "cpu").run({"x": x}, ["f"])[0].astype(np.float64)
    z = np.concatenate([f, np.ones((len(f), 1))], axis=1)
    np.testing.assert_allclose(gram, z.T @ z / len(z), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(gram, cross)


def test_the_first_consumer_of_a_sequential_refit_is_the_plain_least_squares_refit():
    m = load_model_proto(flat_head())
    groups = channel_groups(m)
    removal = {0: [1]}
    data = Dataset(inputs(40), None, "x")
    stats = collect_statistics(m, groups[0].consumers, data, gram=True, device="cpu")
    plain = compensate(m, groups, removal, "lstsq", stats)
    sequential, notes = compensate_sequential(m, groups, removal, data, device="cpu")
    assert not notes and plain.keys() == sequential.keys()
    for node, update in plain.items():
        np.testing.assert_allclose(sequential[node].weight, update.weight, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(sequential[node].bias, update.bias, rtol=1e-4, atol=1e-6)


def _chain(seed: int = 0):
    """x -> conv1 (8) -> Relu -> conv2 (8) -> Relu -> conv3 (8) -> Relu -> conv4 (3): three consumers in a row."""
    rng = np.random.default_rng(seed)
    nodes, inits, source = [], {}, "x"
    for k, (c_in, c_out) in enumerate([(2, 8), (8, 8), (8, 8), (8, 3)], start=1):
        inits[f"w{k}"] = rng.normal(size=(c_out, c_in, 3, 3)) / np.sqrt(9 * c_in)
        nodes.append(helper.make_node("Conv", [source, f"w{k}"], [f"c{k}"], name=f"conv{k}", pads=[1, 1, 1, 1]))
        if k < 4:
            nodes.append(helper.make_node("Relu", [f"c{k}"], [f"a{k}"]))
            source = f"a{k}"
    return make_model(nodes, [("x", ["N", 2, 6, 6])], [("c4", ["N", 3, 6, 6])], inits)


def test_refitting_layer_by_layer_leaves_less_error_through_depth_than_refitting_on_the_original_inputs():
    proto = _chain()
    m = load_model_proto(proto)
    groups = channel_groups(m)
    removal = {group_of(groups, f"conv{k}").index: [0, 3, 5] for k in (1, 2, 3)}
    data = Dataset(inputs(64, seed=3), None, "x")
    held_back = inputs(64, seed=4)
    want = run(proto, held_back)
    stats = collect_statistics(m, [c for g in groups for c in g.consumers], data, gram=True, device="cpu")

    def error(updates) -> float:
        pruned = remove_channels(m, groups, removal, updates=updates)
        np.testing.assert_allclose(
            run(pruned, held_back),
            run(zeroed_at_consumers(m, groups, removal, updates=updates), held_back),
            rtol=1e-4,
            atol=1e-5,
        )
        return float(np.square(run(pruned, held_back) - want).mean())

    sequential, _ = compensate_sequential(m, groups, removal, data, device="cpu")
    plain = compensate(m, groups, removal, "lstsq", stats)
    assert error(sequential) < 0.9 * error(plain) < 0.9 * error(None)
