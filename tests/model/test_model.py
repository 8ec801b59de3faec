"""The Model record's lookups and the input queries, without running anything."""

from __future__ import annotations

import pytest
from conftest import make_model, small_cnn
from onnx import helper

from onnxredund.engine import load_model_proto
from onnxredund.errors import OnnxRedundError
from onnxredund.model import classifier_output, detect_layout, select_input


def test_pick_layers_by_name_or_index_each_once_in_the_order_named():
    m = load_model_proto(small_cnn()[0])
    assert [l.name for l in m.pick_layers(["conv2", " 0", "1"])] == ["conv2", "conv1"]
    with pytest.raises(OnnxRedundError, match="valid layers: 0=conv1, 1=conv2"):
        m.pick_layers(["conv3"])


def test_classifier_output_is_the_first_output_when_it_is_n_by_classes():
    m = load_model_proto(small_cnn()[0])
    assert classifier_output(m) == "logits"
    nodes = [helper.make_node("Conv", ["x", "w"], ["z"], name="c")]
    w = small_cnn()[1]["w1"]
    conv = load_model_proto(make_model(nodes, [("x", ["N", 3, 6, 6])], [("z", ["N", 4, 4, 4])], {"w": w}))
    assert classifier_output(conv) is None


def test_select_input_takes_input_shape_for_free_sizes_and_refuses_contradictions(tmp_path):
    nodes = [helper.make_node("Conv", ["x", "w"], ["z"], name="c")]
    w = small_cnn()[1]["w1"]
    proto = make_model(nodes, [("x", ["N", 3, "H", "W"])], [("z", ["N", 4, "h", "w"])], {"w": w})
    assert select_input(proto, tmp_path, (3, 9, 11)) == ("x", ["N", 3, 9, 11])
    with pytest.raises(OnnxRedundError, match="contradicts the model's fixed input"):
        select_input(proto, tmp_path, (1, 9, 11))


def test_layout_is_nhwc_only_behind_a_transpose_to_nchw():
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2])]
    assert detect_layout(helper.make_graph(nodes, "g", [], []), "x") == "NHWC"
    other = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1])]
    assert detect_layout(helper.make_graph(other, "g", [], []), "x") == "NCHW"
