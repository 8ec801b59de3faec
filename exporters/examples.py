"""Small models beyond 2-D single-input image classifiers, trained for a few seconds on synthetic tasks and
exported to ONNX with torch (torch only):

- ``signal1d``: a 1-D CNN on two-channel signals (N, 2, 128): which of 4 frequencies the signal holds;
- ``two_inputs``: an image (N, 3, 32, 32) and a metadata vector (N, 8): the class is the brightest image
  quadrant, shifted by the metadata's sign;
- ``video3d``: a 3-D CNN on clips (N, 1, 8, 16, 16): which way a bright square moves.

    python -m exporters.examples --out DIR [--seed 0] [--steps 300]
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from exporters.lenet import ONNX_OPSET, finish_export

__all__ = ["EXAMPLES", "SignalNet", "TwoInputNet", "VideoNet", "build", "export"]


class SignalNet(nn.Module):
    """conv1d 2 -> 16 (k 7) -> ReLU -> conv1d 16 -> 32 (k 5, stride 2) -> ReLU -> mean -> fc 4."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(2, 16, 7, padding=3)
        self.conv2 = nn.Conv1d(16, 32, 5, stride=2, padding=2)
        self.fc = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(x.mean(dim=2))


class TwoInputNet(nn.Module):
    """image: conv 3 -> 16 -> ReLU -> conv 16 -> 32 (stride 2) -> ReLU -> mean; meta: fc 8 -> 32; sum -> fc 5."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.meta = nn.Linear(8, 32)
        self.fc = nn.Linear(32, 5)

    def forward(self, image: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(image)))).mean(dim=(2, 3))
        return self.fc(torch.relu(x + self.meta(meta)))


class VideoNet(nn.Module):
    """conv3d 1 -> 8 (k 3) -> ReLU -> conv3d 8 -> 8 (k 3, stride 2) -> ReLU -> mean -> fc 4."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv3d(8, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv2(torch.relu(self.conv1(x)))).mean(dim=(2, 3, 4)))


def _signals(rng: np.random.Generator, n: int) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    y = rng.integers(0, 4, n)
    t = np.arange(128) / 128
    phase = rng.uniform(0, 2 * np.pi, (n, 2, 1))
    x = np.sin(2 * np.pi * (3 + 4 * y)[:, None, None] * t + phase) + 0.3 * rng.normal(size=(n, 2, 128))
    return (x.astype(np.float32),), y


def _images_and_meta(rng: np.random.Generator, n: int) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    image = rng.random((n, 3, 32, 32), dtype=np.float32) * 0.5
    quadrant = rng.integers(0, 4, n)
    for i, q in enumerate(quadrant):
        r, c = divmod(int(q), 2)
        image[i, :, 16 * r : 16 * r + 16, 16 * c : 16 * c + 16] += 0.5
    meta = rng.normal(size=(n, 8)).astype(np.float32)
    y = np.where(meta[:, 0] > 0, quadrant, 4)
    return (image, meta), y


def _clips(rng: np.random.Generator, n: int) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    y = rng.integers(0, 4, n)
    x = rng.random((n, 1, 8, 16, 16), dtype=np.float32) * 0.2
    steps = {0: (0, 1), 1: (0, -1), 2: (1, 0), 3: (-1, 0)}
    for i, label in enumerate(y):
        dy, dx = steps[int(label)]
        r, c = rng.integers(4, 9, 2)
        for f in range(8):
            x[i, 0, f, r + dy * f // 2 : r + dy * f // 2 + 3, c + dx * f // 2 : c + dx * f // 2 + 3] = 1.0
    return (x,), y


EXAMPLES = {
    "signal1d": (SignalNet, _signals, ["signal"]),
    "two_inputs": (TwoInputNet, _images_and_meta, ["image", "meta"]),
    "video3d": (VideoNet, _clips, ["clip"]),
}


def build(name: str, *, seed: int = 0, steps: int = 300) -> tuple[nn.Module, tuple[np.ndarray, ...], np.ndarray]:
    """Train example ``name`` on its synthetic task (deterministic on CPU); returns it and 256 test samples."""
    torch.manual_seed(seed)
    make, sample, _ = EXAMPLES[name]
    model = make()
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        inputs, y = sample(rng, 64)
        loss = nn.functional.cross_entropy(model(*map(torch.from_numpy, inputs)), torch.from_numpy(y))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    inputs, y = sample(np.random.default_rng(seed + 1), 256)
    return model, inputs, y


def export(model: nn.Module, samples: tuple[np.ndarray, ...], names: list[str], path: str) -> onnx.ModelProto:
    """Export to ONNX (opset 17, IR 8): inputs ``names`` with a free batch, output ``logits``, convs named
    ``conv1``, ``conv2``, ..."""
    dummies = tuple(torch.from_numpy(s[:1]) for s in samples)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            dummies,
            path,
            input_names=names,
            output_names=["logits"],
            dynamic_axes={**{n: {0: "N"} for n in names}, "logits": {0: "N"}},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    return finish_export(path)


def main() -> None:
    parser = argparse.ArgumentParser(description="Train and export the example models.")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, (_, _, names) in EXAMPLES.items():
        model, inputs, y = build(name, seed=args.seed, steps=args.steps)
        export(model, inputs, names, str(args.out / f"{name}.onnx"))
        arrays = dict(zip(names, inputs, strict=True)) if len(names) > 1 else {"x": inputs[0]}
        np.savez(args.out / f"{name}-test.npz", **arrays, y=y)
        print(f"{args.out / name}.onnx and {name}-test.npz")


if __name__ == "__main__":
    main()
