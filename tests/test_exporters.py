"""Exporter smoke test: a few hundred images, where torch is installed."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from exporters.lenet import LeNet5, TrainConfig, export_onnx, train  # noqa: E402
from onnxredund.data import load_mnist  # noqa: E402
from onnxredund.model import load_model  # noqa: E402
from onnxredund.runtime import Runner  # noqa: E402


def test_train_and_export_is_deterministic_and_matches_torch(mnist_dir, tmp_path):
    ds = load_mnist(mnist_dir, "test")
    x, y = ds.x[:300], ds.y[:300]
    cfg = TrainConfig(epochs=1, batch_size=64, seed=3)
    paths = []
    for i in range(2):
        torch.manual_seed(cfg.seed)
        model = train(LeNet5(), x, y, cfg)
        paths.append(tmp_path / f"m{i}.onnx")
        export_onnx(model, str(paths[-1]))
    assert paths[0].read_bytes() == paths[1].read_bytes()  # same seed, same file
    proto = onnx.load(str(paths[0]))
    assert proto.ir_version <= 13 and proto.opset_import[0].version == 17
    assert [n.name for n in proto.graph.node if n.op_type == "Conv"] == ["conv1", "conv2"]
    m = load_model(paths[0])
    assert m.input_name == "input" and m.output_names == ["logits"] and m.sample_shape == (1, 28, 28)
    with torch.no_grad():
        expected = model(torch.from_numpy(x[:50])).numpy()
    got = Runner.create(m.proto, "cpu").run({"input": x[:50]})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
