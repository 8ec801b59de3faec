"""Shuffling one channel of a group at every consumer input: the identity permutation changes nothing, a dense
consumer's result equals numpy's shuffle of the features, a channel that is always zero costs nothing."""

from __future__ import annotations

import numpy as np
import onnx
from prunable import flat_head, group_of, inputs, zoo

from onnxredund.engine.channel_groups import channel_groups
from onnxredund.engine.group_shuffle import GroupShuffle
from onnxredund.engine.loading import load_model_proto
from onnxredund.engine.runtime import Runner
from onnxredund.model import copy_model


def test_the_identity_permutation_gives_the_clean_outputs():
    m = load_model_proto(zoo(seed=1))
    g = group_of(channel_groups(m), "convA")  # read by three consumers, one through the depthwise copy
    shuffle = GroupShuffle(m, g, "cpu")
    x = inputs(8)
    clean, start = shuffle.run_clean({"x": x})
    for c in range(g.channels):
        np.testing.assert_array_equal(shuffle.outputs(clean, start, c, np.arange(8))[0], clean[0])


def test_a_dense_consumer_sees_the_channels_features_taken_from_other_samples():
    m = load_model_proto(flat_head(seed=3))
    g = channel_groups(m)[0]
    shuffle = GroupShuffle(m, g, "cpu")
    x = inputs(6, seed=4)
    perm = np.array([2, 0, 1, 5, 3, 4])
    clean, start = shuffle.run_clean({"x": x})
    got = shuffle.outputs(clean, start, 1, perm)[0]
    exposed = copy_model(m.proto)
    exposed.graph.output.append(onnx.helper.make_tensor_value_info("f", onnx.TensorProto.FLOAT, None))
    features = Runner.create(exposed, "cpu").run({"x": x})[1]
    features[:, 16:32] = features[perm, 16:32]  # channel 1: features 16..31 (a 4 x 4 map)
    fc = next(onnx.numpy_helper.to_array(t) for t in m.proto.graph.initializer if t.name == "fc")
    np.testing.assert_allclose(got, features @ fc, rtol=1e-5, atol=1e-5)


def test_shuffling_a_channel_that_is_always_zero_changes_nothing():
    m = load_model_proto(zoo(dead_b=1))
    g = group_of(channel_groups(m), "convB")
    shuffle = GroupShuffle(m, g, "cpu")
    x = inputs(8)
    clean, start = shuffle.run_clean({"x": x})
    perm = np.roll(np.arange(8), 1)
    np.testing.assert_allclose(shuffle.outputs(clean, start, 1, perm)[0], clean[0], atol=1e-6)
    assert not np.allclose(shuffle.outputs(clean, start, 0, perm)[0], clean[0], atol=1e-3)
