"""Freeing a fixed batch: what rebatch rewrites, and when make_batch_dynamic keeps the original."""

from __future__ import annotations

import numpy as np
import onnx
from builders import make_model
from onnx import TensorProto, helper

from onnxredund.engine.batching import check_feeds, make_batch_dynamic, rebatch
from onnxredund.engine.runtime import Runner
from onnxredund.model import ConstantTable

W = np.random.default_rng(0).normal(size=(4, 3, 3, 3)).astype(np.float32)


def reshaped(shape, allowzero: int = 0, batch: int = 1) -> onnx.ModelProto:
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["z"], name="c"),
        helper.make_node("Reshape", ["z", "shape"], ["y"], allowzero=allowzero),
    ]
    return make_model(nodes, [("x", [batch, 3, 5, 5])], [("y", shape)], {"w": W, "shape": shape}, opset=14)


def test_rebatch_frees_the_input_and_output_and_zeroes_a_leading_batch_in_reshape_constants():
    out = rebatch(reshaped([1, 36]), ["x"], 1)
    assert out.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    assert out.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "N"
    node = next(n for n in out.graph.node if n.op_type == "Reshape")
    assert ConstantTable(out.graph)[node.input[1]].tolist() == [0, 36]  # 0: copy the input's batch


def test_rebatch_leaves_allowzero_reshapes_and_the_original_alone():
    original = reshaped([1, 36], allowzero=1)
    out = rebatch(original, ["x"], 1)
    node = next(n for n in out.graph.node if n.op_type == "Reshape")
    assert node.input[1] == "shape"  # with allowzero a 0 would mean a zero-sized dimension
    assert original.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1


def test_make_batch_dynamic_checks_against_per_sample_runs():
    freed, dynamic = make_batch_dynamic(reshaped([1, 36]), {"x": [1, 3, 5, 5]})
    assert dynamic
    x = np.random.default_rng(1).random((3, 3, 5, 5), dtype=np.float32)
    together = Runner.create(freed, "cpu").run({"x": x})[0]
    apart = np.concatenate([Runner.create(reshaped([1, 36]), "cpu").run({"x": x[i : i + 1]})[0] for i in range(3)])
    np.testing.assert_allclose(together, apart, rtol=1e-6)


def test_make_batch_dynamic_keeps_a_model_whose_batch_cannot_be_freed():
    # the whole output is one fixed (36, 1) column: a batch of two cannot fit it
    original = reshaped([36, 1])
    kept, dynamic = make_batch_dynamic(original, {"x": [1, 3, 5, 5]})
    assert not dynamic and kept is original


def test_a_free_batch_is_left_as_it_is():
    model = reshaped([1, 36])
    same, dynamic = make_batch_dynamic(model, {"x": ["N", 3, 5, 5]})
    assert dynamic and same is model


def channel_shuffle_model() -> onnx.ModelProto:
    """A free batch declared, a batch of one baked in (yolo5face's ShuffleNet blocks): x (N, 4, 6, 6) -> conv1 (4)
    -> Reshape [1, 2, 2, 6, 6] -> Transpose (the two halves' channels interleaved) -> Reshape [1, -1, 6, 6] ->
    conv2 (5) -> Relu -> mean -> Gemm -> logits (N, 3)."""
    rng = np.random.default_rng(7)
    inits = {
        "w1": rng.normal(size=(4, 4, 3, 3)),
        "w2": rng.normal(size=(5, 4, 3, 3)),
        "fc": rng.normal(size=(5, 3)),
        "split": np.array([1, 2, 2, 6, 6]),
        "merged": np.array([1, -1, 6, 6]),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["z1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Reshape", ["z1", "split"], ["s"]),
        helper.make_node("Transpose", ["s"], ["t"], perm=[0, 2, 1, 3, 4]),
        helper.make_node("Reshape", ["t", "merged"], ["u"]),
        helper.make_node("Conv", ["u", "w2"], ["z2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["z2"], ["a2"]),
        helper.make_node("GlobalAveragePool", ["a2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["logits"]),
    ]
    return make_model(nodes, [("x", ["N", 4, 6, 6])], [("logits", ["N", 3])], inits.items())


def test_a_free_batch_that_the_constants_fix_to_one_is_freed_and_checked():
    # yolo5face declares 'batch' and reshapes to [1, 2, 32, 40, 40]: every batched run failed in onnxruntime
    from onnxredund.analyses.shuffle import run_shuffle
    from onnxredund.data import Dataset
    from onnxredund.engine import load_model_proto

    proto = channel_shuffle_model()
    model = load_model_proto(proto)
    assert model.batch_dynamic  # the leading 1s made 0: a batch of two checked against one-sample runs
    x = np.random.default_rng(0).normal(size=(3, 4, 6, 6)).astype(np.float32)
    one_at_a_time = np.concatenate([Runner.create(proto, "cpu").run({"x": x[i : i + 1]})[0] for i in range(3)])
    np.testing.assert_allclose(Runner.create(model.proto, "cpu").run({"x": x})[0], one_at_a_time, rtol=1e-5)
    data = Dataset(np.random.default_rng(1).normal(size=(12, 4, 6, 6)).astype(np.float32), None, "toy")
    for layer in ("conv1", "conv2"):
        fast = run_shuffle(model, layer, data, batch_size=4, device="cpu")
        direct = run_shuffle(model, layer, data, batch_size=4, device="cpu", exact_path=True)
        assert fast.route == "fast"
        np.testing.assert_allclose(fast.cosine, direct.cosine, atol=1e-6)
        np.testing.assert_allclose(fast.outputs["logits"].cosine, direct.outputs["logits"].cosine, atol=1e-6)


def _conv_to_output(batch) -> onnx.ModelProto:
    """One conv whose output is the graph's output, as PyTorch's old exporter wrote its single-layer tests."""
    w = np.random.default_rng(3).normal(size=(4, 3, 3, 2))
    node = helper.make_node("Conv", ["x", "w"], ["z"], name="conv")
    return make_model([node], [("x", [batch, 3, 7, 5])], [("z", [batch, 4, 5, 4])], {"w": w})


def test_a_fixed_batch_of_two_read_by_the_output_itself_is_the_batch_not_part_of_the_sample():
    # PyTorch's Conv2d test export at batch 2: the output [2, 4, 5, 4] was read as a sample of that shape, and
    # impulse and shuffle ended in tracebacks (an index past the response's axes, a broadcast of im2col's taps)
    from onnxredund.analyses.impulse import run_impulse
    from onnxredund.analyses.shuffle import run_shuffle
    from onnxredund.data import Dataset
    from onnxredund.engine import load_model_proto

    fixed, free = load_model_proto(_conv_to_output(2)), load_model_proto(_conv_to_output("N"))
    assert fixed.batch_dynamic and fixed.layers[0].output_shape == free.layers[0].output_shape == (4, 5, 4)
    a, b = run_impulse(fixed, device="cpu").layers[0], run_impulse(free, device="cpu").layers[0]
    np.testing.assert_array_equal(a.responses, b.responses)
    data = Dataset(np.random.default_rng(1).normal(size=(8, 3, 7, 5)).astype(np.float32), None, "toy")
    for exact in (False, True):
        got = run_shuffle(fixed, "conv", data, batch_size=4, device="cpu", exact_path=exact)
        want = run_shuffle(free, "conv", data, batch_size=4, device="cpu", exact_path=exact)
        np.testing.assert_allclose(got.cosine, want.cosine, atol=1e-7)


def test_check_feeds_take_the_batch_an_input_fixes_and_one_for_paddles_minus_one():
    """Paddle declares a free batch as -1: the QOperator check read it as the batch and died in a traceback
    ("negative dimensions are not allowed") on PaddleOCR's quantized classifier."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 4])
    proto = helper.make_model(helper.make_graph([], "g", [x], []))
    assert check_feeds(proto, {"x": [-1, 3, 4]})["x"].shape == (1, 3, 4)
    assert check_feeds(proto, {"x": ["N", 3, 4]})["x"].shape == (1, 3, 4)
    assert check_feeds(proto, {"x": [2, 3, 4]})["x"].shape == (2, 3, 4)
    assert check_feeds(proto, {"x": [2, 3, 4]}, 5)["x"].shape == (5, 3, 4)
