"""A residual network on MNIST for the pruning study: torchvision's ResNet-18 layout adapted to 28 x 28.

Stem: conv 3x3 stride 2 (1 -> w) + BN + ReLU (28 -> 14); four stages of two basic blocks (conv 3x3 + BN +
ReLU, conv 3x3 + BN, residual Add, ReLU) with w, 2w, 4w, 8w channels, the first block of stages 2-4 strided
with a 1x1 conv + BN shortcut (14 -> 7 -> 4 -> 2); global average pool; fc 10. 20 convs, as ResNet-18
(its 7x7 stem and max-pool give way to one strided 3x3 conv on a 28 x 28 image).

Exported with BatchNormalization kept as nodes (not folded into the convs), as Paddle and TensorFlow
exports have them, so that the ``bn`` pruning criterion has scales to read.

    python -m exporters.resnet --data DIR --out models [--width 8] [--epochs 3] [--seed 0]
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import time
from pathlib import Path

import onnx
import torch
from torch import nn

from exporters.lenet import TrainConfig, export_classifier, train
from onnxredund.data import load_mnist

__all__ = ["BasicBlock", "Bottleneck", "ResNet50", "ResNetMnist", "export_resnet"]


class BasicBlock(nn.Module):
    """conv 3x3 + BN + ReLU, conv 3x3 + BN, plus the shortcut (1x1 conv + BN where the shape changes), ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNetMnist(nn.Module):
    """ResNet-18's layout for 1 x 28 x 28 inputs (see the module docstring)."""

    def __init__(self, width: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        blocks, c_in = [], width
        for stage, mult in enumerate((1, 2, 4, 8)):
            c_out = width * mult
            blocks += [BasicBlock(c_in, c_out, 1 if stage == 0 else 2), BasicBlock(c_out, c_out, 1)]
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(c_in, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.fc(x.mean(dim=(2, 3)))


class Bottleneck(nn.Module):
    """torchvision's ResNet-50 block (v1.5: the stride on the 3x3 conv): 1x1, 3x3, 1x1 (x4), BN after each."""

    def __init__(self, c_in: int, width: int, stride: int) -> None:
        super().__init__()
        c_out = 4 * width
        self.body = nn.Sequential(
            nn.Conv2d(c_in, width, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, stride, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class ResNet50(nn.Module):
    """torchvision's ResNet-50 architecture (7x7 stride-2 stem, max-pool, 3-4-6-3 bottlenecks, 1000 classes):
    53 convs, 25.6 M parameters. For benchmarks: random weights, 3 x 224 x 224 inputs."""

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)
        )
        blocks, c_in = [], 64
        for stage, (width, count) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3))):
            for i in range(count):
                blocks.append(Bottleneck(c_in, width, 2 if stage and i == 0 else 1))
                c_in = 4 * width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(c_in, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(self.stem(x)).mean(dim=(2, 3)))


def export_resnet(
    model: nn.Module, path: str, *, shape: tuple[int, ...] = (1, 28, 28), keep_bn: bool = True
) -> onnx.ModelProto:
    """Export with BN kept as nodes (the default, for the ``bn`` criterion) or folded into the convs; see
    :func:`exporters.lenet.export_classifier`."""
    return export_classifier(model, path, shape, keep_bn=keep_bn)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="folder with the four MNIST IDX files")
    p.add_argument("--out", default="models")
    p.add_argument("--width", type=int, default=8, help="channels of the first stage")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=0, help="train on the first N images only (smoke tests)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    train_set, test_set = load_mnist(args.data, "train"), load_mnist(args.data, "test")
    x, y = train_set.x, train_set.y
    if args.limit:
        x, y = x[: args.limit], y[: args.limit]
    torch.manual_seed(args.seed)
    model = ResNetMnist(args.width)
    cfg = TrainConfig(epochs=args.epochs, max_lr=0.1, seed=args.seed)
    t0 = time.time()
    train(model, x, y, cfg)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "resnet18_mnist.onnx"
    export_resnet(model, str(path))
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(torch.from_numpy(test_set.x[s : s + 1000])).argmax(1) for s in range(0, 10000, 1000)])
    acc = float((pred.numpy() == test_set.y).mean())
    params = sum(q.numel() for q in model.parameters())
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    logging.info(
        "%s: %d parameters, test accuracy %.4f (torch), %.0f s, sha256 %s", path, params, acc, time.time() - t0, digest
    )
    logging.info("recipe: %s", cfg.describe())


if __name__ == "__main__":
    main()
