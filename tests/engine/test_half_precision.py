"""Models converted to half precision with float32 inputs and outputs (what onnxconverter-common's
``convert_float_to_float16(keep_io_types=True)`` writes, and model zoos ship as ``*_fp16.onnx``): float16
weights and tensors between a Cast in and a Cast out. The fast path's float32 maps and the float32 masks of
the value check and the shuffle criterion broke them (onnxruntime refused the analysis models); known answers
on a channel conv2 never reads."""

from __future__ import annotations

import numpy as np
import onnx
from builders import small_cnn
from onnx import TensorProto, helper, numpy_helper

from onnxredund.analyses.prune import Target, run_prune
from onnxredund.analyses.shuffle import run_shuffle
from onnxredund.data import Dataset
from onnxredund.engine.loading import load_model_proto
from onnxredund.engine.runtime import Runner

DEAD = 2  # conv1's output channel that conv2's weights ignore


def half(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``proto`` in float16 between a Cast of its input and a Cast of its output."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    graph = out.graph
    for k, t in enumerate(graph.initializer):
        a = numpy_helper.to_array(t)
        if a.dtype == np.float32:
            graph.initializer[k].CopyFrom(numpy_helper.from_array(a.astype(np.float16), t.name))
    x, y = graph.input[0].name, graph.output[0].name
    for node in graph.node:
        node.input[:] = [f"{x}_half" if t == x else t for t in node.input]
        node.output[:] = [f"{y}_half" if t == y else t for t in node.output]
    graph.node.insert(0, helper.make_node("Cast", [x], [f"{x}_half"], to=TensorProto.FLOAT16))
    graph.node.append(helper.make_node("Cast", [f"{y}_half"], [y], to=TensorProto.FLOAT))
    onnx.checker.check_model(out)
    return out


def _setup():
    proto = half(small_cnn(c_mid=5, zero_channel=DEAD, seed=4)[0])
    rng = np.random.default_rng(0)
    data = Dataset(rng.normal(size=(96, 3, 6, 6)).astype(np.float32), rng.integers(0, 4, 96), "noise")
    return proto, load_model_proto(proto), data


def test_a_half_precision_conv_is_swept_on_the_direct_path_and_a_channel_it_never_reads_costs_nothing():
    _, model, data = _setup()
    result = run_shuffle(model, "conv2", data, batch_size=32, device="cpu")
    assert result.route == "direct"  # the fast path's linear maps are float32
    assert np.allclose(result.cosine[DEAD], 1.0, atol=1e-6) and result.agreement[DEAD] == 1.0
    assert result.mean_cosine().min() < 0.99  # the other channels do matter


def test_pruning_a_half_precision_model_removes_an_unread_channel_without_changing_an_output():
    proto, model, data = _setup()
    options = {"device": "cpu", "latency": False, "batch_size": 32}
    result = run_prune(model, data, channels={"conv1": [DEAD]}, **options)
    assert result.value_check["max_relative_error"] == 0.0
    assert [t.data_type for t in result.proto.graph.initializer if len(t.dims) == 4] == [TensorProto.FLOAT16] * 2
    assert result.removed == [{"group": 0, "producers": ["conv1"], "channels": 5, "kept": 4, "removed": [DEAD]}]
    x = data.x[:8]
    np.testing.assert_array_equal(
        Runner.create(result.proto, "cpu").run({"x": x})[0], Runner.create(proto, "cpu").run({"x": x})[0]
    )


def test_the_shuffle_criterion_on_a_half_precision_model_removes_the_channel_it_never_reads_first():
    _, model, data = _setup()
    options = {"scope": "layer", "round_to": 1, "device": "cpu", "latency": False}
    result = run_prune(model, data, criterion="shuffle", target=Target("macs", 0.2), **options)
    conv1 = next(g for g in result.removed if g["producers"] == ["conv1"])
    assert conv1["removed"] == [DEAD]  # of the five, the one whose shuffling changes nothing
