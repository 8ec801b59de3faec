"""How a shuffle sweep's time grows with input channels and images (default path, channel mode).

    python benchmarks/scaling.py --data DIR_WITH_MNIST [--device cpu|cuda] [--images 10000] [--resnet 256]

Rows: LeNet-5 conv2, LeNet-5x10 conv2 on MNIST test images, and, where torchvision imports, a
ResNet-18 with random weights (exported here to ONNX) at layer2.0.conv2 on synthetic 224 x 224 inputs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnxredund.analyses.shuffle import run_shuffle  # noqa: E402
from onnxredund.data import Dataset, load_mnist  # noqa: E402
from onnxredund.engine import load_model  # noqa: E402


def resnet18_onnx(folder: Path) -> Path | None:
    """ResNet-18 with random weights as ONNX, or None without torchvision."""
    try:
        import torch
        import torchvision
    except Exception:
        return None
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval()
    path = folder / "resnet18.onnx"
    torch.onnx.export(
        net,
        (torch.zeros(1, 3, 224, 224),),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        opset_version=17,
        dynamo=False,
    )
    return path


def sweep_time(model, layer, data, channels, device) -> float:
    t0 = time.perf_counter()
    run_shuffle(model, layer, data, channels=channels, device=device)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--images", type=int, default=10000)
    p.add_argument("--resnet", type=int, default=256, help="synthetic images for the ResNet-18 row (0: skip)")
    args = p.parse_args()
    test = load_mnist(args.data, "test")
    cases = []
    for name in ("lenet5", "lenet5x10"):
        data = Dataset(test.x[: args.images], test.y[: args.images], "mnist")
        cases.append((name, load_model(ROOT / "models" / f"{name}.onnx"), "conv2", data))
    tmp = Path(tempfile.mkdtemp())
    if args.resnet and (path := resnet18_onnx(tmp)) is not None:
        model = load_model(path)
        layer = next(conv for conv in model.layers if "layer2.0/conv2" in conv.name or "layer2.0.conv2" in conv.name)
        x = np.random.default_rng(0).random((args.resnet, 3, 224, 224), dtype=np.float32)
        cases.append(("resnet18 (random)", model, layer.name, Dataset(x, None, "synthetic")))
    print(f"# sweep time (s), default path, channel mode, device {args.device}")
    print("| model | layer | C_in | images | 1/4 of C_in | 1/2 of C_in | all C_in |")
    print("|---|---|---|---|---|---|---|")
    for label, model, layer_name, data in cases:
        layer = model.layer(layer_name)
        c = layer.in_channels
        for frac in (4, 2, 1):
            n = len(data) // frac
            sub = Dataset(data.x[:n], None if data.y is None else data.y[:n], data.name)
            times = [sweep_time(model, layer, sub, list(range(max(1, c // cf))), args.device) for cf in (4, 2, 1)]
            print(f"| {label} | {layer.name} | {c} | {n} | " + " | ".join(f"{t:.2f}" for t in times) + " |", flush=True)


if __name__ == "__main__":
    main()
