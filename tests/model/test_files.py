"""Reading files: every tensor found (for the external-data check), hashes read in blocks."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxredund.model import all_tensors, file_sha256


def test_all_tensors_reaches_tensor_lists_sparse_values_and_subgraphs():
    t = numpy_helper.from_array(np.ones(2, np.float32), "a")
    listed = [numpy_helper.from_array(np.zeros(1, np.float32), f"l{i}") for i in range(2)]
    then = helper.make_graph(
        [helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.ones(1, np.float32), "inner"))],
        "then",
        [],
        [helper.make_tensor_value_info("k", onnx.TensorProto.FLOAT, [1])],
    )
    node = helper.make_node("Custom", [], ["y"], t=t, ts=listed, g=then, domain="x.y")
    sparse = helper.make_sparse_tensor(
        numpy_helper.from_array(np.ones(1, np.float32), "sv"), numpy_helper.from_array(np.zeros(1, np.int64), "si"), [3]
    )
    graph = helper.make_graph([node], "g", [], [helper.make_tensor_value_info("y", 1, None)])
    graph.sparse_initializer.append(sparse)
    assert sorted(x.name for x in all_tensors(graph)) == ["a", "inner", "l0", "l1", "sv"]


def test_file_sha256_matches_hashlib(tmp_path):
    path = tmp_path / "m.onnx"
    data = bytes(range(256)) * 9000  # more than one read block
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
