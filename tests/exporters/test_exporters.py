"""Exporter smoke test: a few hundred images, where torch is installed."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from builders import MODELS  # noqa: E402

from exporters.lenet import LeNet5, TrainConfig, export_onnx, train  # noqa: E402
from onnxredund.data import load_mnist  # noqa: E402
from onnxredund.engine import load_model  # noqa: E402
from onnxredund.engine.runtime import Runner  # noqa: E402


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


def test_recipe_study_reads_the_shipped_pair(tmp_path):
    import shutil

    from exporters.recipe_study import analyse, card_recipe, card_seed, chance

    folder = tmp_path / "shipped"
    folder.mkdir()
    for name in ("lenet5.onnx", "lenet5x10.onnx", "README.md"):
        shutil.copy(MODELS / name, folder / name)
    assert card_recipe(folder / "README.md").startswith("SGD") and card_seed(folder / "README.md") == 0
    row = analyse(folder, None, 0.9)
    assert row["lenet5 conv1"].startswith("0/6 ") and row["lenet5x10 conv2"].split("/")[1].startswith("160 ")
    assert 0.0 < float(row["lenet5x10 conv1 vs its start"]) < 1.0  # trained, from the same seed's start
    best, count = chance(channels=6, draws=3)
    assert 0.0 < best < 1.0 and count >= 0.0
