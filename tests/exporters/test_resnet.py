"""The pruning study's residual network as exported: ResNet-18's layout (20 convs, residual Adds, a strided stem),
BatchNormalization kept as nodes, every channel group prunable; and the shipped file is that network."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from builders import MODELS  # noqa: E402

from exporters.resnet import ResNetMnist, export_resnet  # noqa: E402
from onnxredund.engine.channel_groups import channel_groups  # noqa: E402
from onnxredund.engine.loading import load_model, load_model_proto  # noqa: E402
from onnxredund.engine.runtime import Runner  # noqa: E402


def test_the_export_keeps_batchnorm_and_runs_like_torch(tmp_path):
    torch.manual_seed(0)
    net = ResNetMnist(width=4).eval()
    proto = export_resnet(net, str(tmp_path / "r.onnx"))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("Conv") == 20 and ops.count("BatchNormalization") == 20 and ops.count("Add") == 8
    stem = next(n for n in proto.graph.node if n.op_type == "Conv")
    assert next(a.ints for a in stem.attribute if a.name == "strides") == [2, 2]
    x = np.random.default_rng(0).random((3, 1, 28, 28), np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(Runner.create(proto, "cpu").run({"input": x})[0], want, rtol=1e-4, atol=1e-5)
    m = load_model_proto(proto)
    groups = channel_groups(m)
    assert all(g.prunable for g in groups), [g.reason for g in groups]
    assert sum(len(g.producers) > 1 for g in groups) == 4  # one residual stream per stage


def test_the_shipped_residual_network_is_this_layout():
    m = load_model(MODELS / "resnet18_mnist.onnx")
    assert len(m.layers) == 20 and m.layers[0].stride == (2, 2)
    assert sum(n.op_type == "BatchNormalization" for n in m.proto.graph.node) == 20
    assert onnx.load(str(MODELS / "resnet18_mnist.onnx")).ir_version <= 13
