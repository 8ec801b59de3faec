"""Graph queries and the one helper for attributes, constants and shape inference."""

from __future__ import annotations

import logging

import numpy as np
import onnx
from builders import make_model, small_cnn
from onnx import helper, numpy_helper

from onnxredund.errors import first_line
from onnxredund.model import (
    ConstantTable,
    attribute,
    consumers_of,
    data_dependent,
    data_inputs,
    default_opset,
    downstream,
    infer_shapes,
    producers_of,
)


def test_attribute_reads_values_decodes_strings_and_falls_back():
    node = helper.make_node("Conv", ["x", "w"], ["z"], auto_pad="SAME_UPPER", strides=[2, 1], group=3)
    assert attribute(node, "auto_pad") == "SAME_UPPER"
    assert attribute(node, "strides") == [2, 1] and attribute(node, "group") == 3
    assert attribute(node, "dilations", [1, 1]) == [1, 1]


def test_constant_table_finds_initializers_constant_nodes_and_identities_of_them():
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    nodes = [
        helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(w, "cv")),
        helper.make_node("Constant", [], ["ints"], value_ints=[1, 2]),
        helper.make_node("Identity", ["init"], ["alias"]),
        helper.make_node("Add", ["x", "c"], ["y"]),
    ]
    model = make_model(nodes, [("x", ["N", 3])], [("y", ["N", 3])], {"init": [7.0, 8.0]})
    table = ConstantTable(model.graph)
    assert set(table) == {"init", "c", "ints", "alias"} and "x" not in table
    np.testing.assert_array_equal(table["c"], w)
    assert table["ints"].tolist() == [1, 2] and table["alias"].tolist() == [7.0, 8.0]
    assert table.tensor("c").dims == [2, 3] and table.tensor("ints") is None


def test_who_reads_and_writes_what():
    graph = small_cnn()[0].graph
    conv2 = next(i for i, n in enumerate(graph.node) if n.name == "conv2")
    assert consumers_of(graph)["a1"] == [conv2]
    assert producers_of(graph)["z2"] == conv2
    assert {graph.node[i].name for i in downstream(graph, "a2")} == {"gap", "flatten", "fc"}
    dependent = data_dependent(graph)
    assert {"x", "z1", "logits"} <= dependent and "w1" not in dependent
    assert [i.name for i in data_inputs(graph)] == ["x"] and default_opset(small_cnn()[0]) == 17


def test_failed_shape_inference_is_logged_and_leaves_the_model(caplog, monkeypatch):
    def fail(*_a, **_k):
        raise onnx.shape_inference.InferenceError("[ShapeInferenceError] incompatible dimensions")

    model = small_cnn()[0]
    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", fail)
    with caplog.at_level(logging.DEBUG, logger="onnxredund"):
        out = infer_shapes(model)
    assert out is model and "shape inference failed ([ShapeInferenceError] incompatible dimensions)" in caplog.text


def test_first_line_of_an_exception():
    assert first_line(ValueError("\n  bad thing  \nmore detail")) == "bad thing"
    assert first_line(KeyError()) == "KeyError"
    assert first_line(RuntimeError("x" * 500), 10) == "x" * 10
