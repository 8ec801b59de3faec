"""Model reading on tiny models, one per real-export pattern."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import make_model, save, small_cnn
from onnx import helper, numpy_helper

from onnxredund.engine import load_model, load_model_proto
from onnxredund.engine.runtime import Runner
from onnxredund.errors import OnnxRedundError

RNG = np.random.default_rng(0)
W = RNG.normal(size=(4, 3, 3, 3)).astype(np.float32)


def test_plain_conv_relu_layer_record():
    m = load_model_proto(small_cnn()[0])
    assert [layer.name for layer in m.layers] == ["conv1", "conv2"]
    conv = m.layers[0]
    assert (conv.in_channels, conv.out_channels, conv.kernel, conv.groups) == (3, 4, (3, 3), 1)
    assert (conv.input, conv.output, conv.activation, conv.chain) == ("x", "z1", "a1", ("Relu",))
    assert conv.input_shape == (3, 6, 6) and conv.output_shape == (4, 6, 6)
    assert conv.macs == 4 * 6 * 6 * 3 * 9
    assert m.batch_dynamic and m.layout == "NCHW"


def test_conv_with_separate_bias_add():  # CNTK
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["z"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["z", "b"], ["zb"]),
        helper.make_node("Relu", ["zb"], ["y"]),
    ]
    m = load_model_proto(
        make_model(nodes, [("x", ["N", 3, 5, 5])], [("y", ["N", 4, 5, 5])], {"w": W, "b": np.ones((1, 4, 1, 1))})
    )
    conv = m.layers[0]
    assert conv.chain == ("Add", "Relu") and conv.activation == "y" and conv.bias is None
    assert conv.name == "Conv_0"  # stable generated name for an unnamed node


def test_conv_bn_relu_unfolded():
    m = load_model_proto(small_cnn(bn=True)[0])
    assert m.layers[0].chain == ("BatchNormalization", "Relu") and m.layers[0].activation == "a1"


def test_nhwc_input_behind_transpose():  # TF / Keras
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["xt", "w"], ["z"], name="c"),
    ]
    m = load_model_proto(make_model(nodes, [("x", ["N", 7, 7, 3])], [("z", ["N", 4, 5, 5])], {"w": W}))
    assert m.layout == "NHWC" and m.sample_shape == (7, 7, 3)
    assert m.layers[0].in_channels == 3 and m.layers[0].input_shape == (3, 7, 7)


def test_constant_node_weights():  # Paddle
    nodes = [
        helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(W, "wc")),
        helper.make_node("Conv", ["x", "w"], ["z"], name="c"),
    ]
    m = load_model_proto(make_model(nodes, [("x", ["N", 3, 5, 5])], [("z", ["N", 4, 3, 3])]))
    assert m.layers[0].in_channels == 3 and m.constant("w").shape == (4, 3, 3, 3)


def test_initializer_listed_as_input():  # old exporters
    model = make_model(
        [helper.make_node("Conv", ["x", "w"], ["z"])], [("x", ["N", 3, 5, 5])], [("z", ["N", 4, 3, 3])], {"w": W}
    )
    model.graph.input.append(helper.make_tensor_value_info("w", onnx.TensorProto.FLOAT, [4, 3, 3, 3]))
    m = load_model_proto(model)
    assert m.input_name == "x" and m.layers[0].weight == "w"


def test_batch_fixed_with_reshape_constant_is_freed():
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["z"], name="c"),
        helper.make_node("Reshape", ["z", "shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "fc"], ["y"]),
    ]
    inits = {"w": W, "fc": RNG.normal(size=(36, 2)), "shape": [1, 36]}
    model = make_model(nodes, [("x", [1, 3, 5, 5])], [("y", [1, 2])], inits)
    m = load_model_proto(model)
    assert m.batch_dynamic
    x = RNG.normal(size=(5, 3, 5, 5)).astype(np.float32)
    together = Runner.create(m.proto, "cpu").run({"x": x})[0]
    orig = Runner.create(model, "cpu")
    apart = np.concatenate([orig.run({"x": x[i : i + 1]})[0] for i in range(5)])
    np.testing.assert_allclose(together, apart, rtol=1e-5)


def test_batch_that_cannot_be_freed_runs_per_sample():
    # Reshape to a fixed total size (36 elements = one sample) through a shape computed at run time
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["z"], name="c"),
        helper.make_node("Reshape", ["z", "shape"], ["flat"]),
        helper.make_node("Slice", ["flat", "s0", "s1", "ax"], ["y"]),
    ]
    inits = {"w": W, "shape": [36, 1], "s0": [0], "s1": [2], "ax": [0]}
    model = make_model(nodes, [("x", [1, 3, 5, 5])], [("y", [2, 1])], inits)
    m = load_model_proto(model)
    assert not m.batch_dynamic


def test_depthwise_conv():
    w = RNG.normal(size=(3, 1, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["z"], name="dw", group=3)]
    m = load_model_proto(make_model(nodes, [("x", ["N", 3, 5, 5])], [("z", ["N", 3, 3, 3])], {"w": w}))
    conv = m.layers[0]
    assert (conv.in_channels, conv.out_channels, conv.groups, conv.macs) == (3, 3, 3, 3 * 9 * 9)


def test_residual_add_reading_conv_input_ends_no_chain_early():
    m = load_model_proto(small_cnn(residual=True, c_out=4)[0])
    conv2 = m.layers[1]
    assert conv2.activation == "a2" and conv2.input == "a1"  # a1 is read by conv2 and the residual Add


def test_layer_lookup_by_name_or_index_and_listing_on_miss():
    m = load_model_proto(small_cnn()[0])
    assert m.layer("conv2") is m.layer(1) is m.layer("1")
    with pytest.raises(OnnxRedundError, match="valid layers: 0=conv1, 1=conv2"):
        m.layer("conv3")
    with pytest.raises(OnnxRedundError, match="valid layers"):
        m.layer(5)


def test_free_spatial_dims_need_input_shape(tmp_path):
    nodes = [helper.make_node("Conv", ["x", "w"], ["z"], name="c")]
    path = save(make_model(nodes, [("x", ["N", 3, "H", "W"])], [("z", ["N", 4, "h", "w"])], {"w": W}), tmp_path)
    with pytest.raises(OnnxRedundError, match="`input_shape`"):
        load_model(path)
    m = load_model(path, input_shape=(3, 12, 20))
    assert m.layers[0].output_shape == (4, 10, 18)


def test_old_opset_and_new_ir_are_read():
    model = small_cnn()[0]
    model.opset_import[0].version = 9
    m = load_model_proto(model)
    assert m.layers[1].in_channels == 4
    newer = small_cnn()[0]
    newer.ir_version = 14
    assert load_model_proto(newer).proto.ir_version <= 13


def test_shapes_come_from_a_run_where_inference_fails(monkeypatch):
    from onnxredund.engine import loading

    expected = load_model_proto(small_cnn()[0]).layers
    monkeypatch.setattr(loading, "infer_shapes", lambda proto: proto)  # as if shape inference knew nothing
    probed = load_model_proto(small_cnn()[0]).layers
    assert [(layer.input_shape, layer.output_shape, layer.macs) for layer in probed] == [
        (layer.input_shape, layer.output_shape, layer.macs) for layer in expected
    ]


def test_an_output_that_squeezed_the_batch_is_measured_whole_and_never_taken_for_a_classifier():
    from onnxredund.analyses.shuffle import run_shuffle
    from onnxredund.data import Dataset

    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["z"], name="c1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["z"], ["a"]),
        helper.make_node("Conv", ["a", "w2"], ["z2"], name="c2", pads=[1, 1, 1, 1]),
        helper.make_node("Reshape", ["z2", "shape"], ["y"]),  # a fixed-batch export's [1, 6, 4, 4] -> [6, 16]
    ]
    inits = {"w": rng.normal(size=(5, 3, 3, 3)), "w2": rng.normal(size=(6, 5, 3, 3)), "shape": np.array([6, 16])}
    model = load_model_proto(make_model(nodes, [("x", [1, 3, 4, 4])], [("y", [6, 16])], inits))
    assert model.shapes["y"] == (6, 16) and model.classifiers == []  # not 6 samples of 16 classes
    x = rng.random((8, 3, 4, 4), dtype=np.float32)
    result = run_shuffle(model, "c2", Dataset(x, None, "t"), batch_size=4, device="cpu")  # crashed in top_k_hits
    assert result.agreement is None and result.outputs["y"].cosine.shape == (5,)
    assert result.effect_kind == "output cosine" and (result.cost() >= 0).all()
