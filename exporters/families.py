"""Architectures of families no pretrained export here has, built in torch (seeded, untrained: what is checked is
that every command goes through them and the rewrites are right, not what they learned):

- ``decoder``: an image-to-image encoder-decoder (segmentation, enhancement, edges): two strided convs down, two
  transposed convs up with a skip connection, a sigmoid map out; input (N, 3, H, W) with free H and W;
- ``minmax``: a classifier that min-max normalises its input inside the graph (ReduceMin/ReduceMax/Sub/Div before
  the first conv), so an all-zero input is 0/0;
- ``rawaudio``: raw audio (N, samples, 1), channels last, reshaped into 1 x K 2-D convs (a 1 x 256 kernel at
  stride 64 as the first), as some TensorFlow audio models are.

    python -m exporters.families --out DIR
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from exporters.lenet import ONNX_OPSET, finish_export

__all__ = ["FAMILIES", "DecoderNet", "MinMaxNet", "RawAudioNet", "export_family"]


class DecoderNet(nn.Module):
    """conv 3 -> 16 (s2) -> conv 16 -> 32 (s2) -> convT 32 -> 16 (s2) (+ skip) -> convT 16 -> 8 (s2) -> conv 8 -> 1."""

    def __init__(self) -> None:
        super().__init__()
        self.down1 = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.down2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.up1 = nn.ConvTranspose2d(32, 16, 4, stride=2, padding=1)
        self.up2 = nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1)
        self.head = nn.Conv2d(8, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d1 = torch.relu(self.down1(x))
        u1 = torch.relu(self.up1(torch.relu(self.down2(d1)))) + d1
        return torch.sigmoid(self.head(torch.relu(self.up2(u1))))


class MinMaxNet(nn.Module):
    """(x - min) / (max - min) per sample, then conv 3 -> 8 -> ReLU -> conv 8 -> 16 (s2) -> ReLU -> mean -> fc 5."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = x.amin(dim=(1, 2, 3), keepdim=True)
        x = (x - low) / (x.amax(dim=(1, 2, 3), keepdim=True) - low)
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(x.mean(dim=(2, 3)))


class RawAudioNet(nn.Module):
    """(N, samples, 1) -> (N, 1, 1, samples) -> conv 1 x 256 (s 64) 1 -> 16 -> ReLU -> conv 1 x 5 16 -> 32 -> ReLU
    -> mean -> fc 4."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, (1, 256), stride=(1, 64))
        self.conv2 = nn.Conv2d(16, 32, (1, 5), padding=(0, 2))
        self.fc = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 1).unsqueeze(1)  # (N, 1, 1, samples)
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(x.mean(dim=(2, 3)))


#: name -> (module class, a sample's shape at export, free axes after the batch {axis: name}, output name)
FAMILIES = {
    "decoder": (DecoderNet, (3, 64, 64), {2: "H", 3: "W"}, "mask"),
    "minmax": (MinMaxNet, (3, 32, 32), {}, "logits"),
    "rawaudio": (RawAudioNet, (4096, 1), {}, "logits"),
}


def export_family(name: str, path: str | Path, seed: int = 0) -> onnx.ModelProto:
    """Export family ``name`` (seeded weights) to ``path``: input ``input`` with a free batch, opset 17, IR 8."""
    cls, shape, free, output = FAMILIES[name]
    torch.manual_seed(seed)
    model = cls().eval()
    axes = {"input": {0: "N", **free}, output: {0: "N", **free} if name == "decoder" else {0: "N"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (torch.rand(1, *shape),),
            str(path),
            input_names=["input"],
            output_names=[output],
            dynamic_axes=axes,
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    return finish_export(str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description="Export the families no pretrained model here has.")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name in FAMILIES:
        export_family(name, args.out / f"{name}.onnx")
        print(args.out / f"{name}.onnx")


if __name__ == "__main__":
    main()
