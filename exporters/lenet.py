"""The LeNet-5 family on MNIST: model, training, ONNX export (torch only).

LeNet-5: conv1 (1 -> 6, 5x5, pad 2) -> ReLU -> max-pool 2 -> conv2 (6 -> 16, 5x5) -> ReLU -> max-pool 2
-> fc 400 -> 120 -> ReLU -> 84 -> ReLU -> 10. ``width`` multiplies the conv channels (LeNet-5x10:
60 and 160), ``fc_width`` the hidden fully connected widths.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from torch import nn

__all__ = ["OPTIMIZERS", "LeNet5", "TrainConfig", "export_onnx", "train"]

log = logging.getLogger(__name__)

ONNX_OPSET = 17
ONNX_IR_VERSION = 8  # the IR version that goes with opset 17; onnxruntime-gpu 1.31 reads <= 13


class LeNet5(nn.Module):
    """LeNet-5 with a width multiplier on the conv channels and one on the hidden fc widths."""

    def __init__(self, width: int = 1, fc_width: int = 1) -> None:
        super().__init__()
        c1, c2 = 6 * width, 16 * width
        self.conv1 = nn.Conv2d(1, c1, 5, padding=2)
        self.conv2 = nn.Conv2d(c1, c2, 5)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(c2 * 5 * 5, 120 * fc_width)
        self.fc2 = nn.Linear(120 * fc_width, 84 * fc_width)
        self.fc3 = nn.Linear(84 * fc_width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True)
class TrainConfig:
    """Training recipe: SGD with Nesterov momentum 0.9 (or Adam) and weight decay, a one-cycle
    learning rate, optional random shifts. The defaults are the shipped models' recipe."""

    epochs: int = 30
    batch_size: int = 128
    optimizer: str = "sgd"
    max_lr: float = 0.05
    weight_decay: float = 5e-4
    max_shift: int = 0
    seed: int = 0

    def describe(self) -> str:
        opt = "Adam" if self.optimizer == "adam" else "SGD (Nesterov momentum 0.9)"
        shift = f"random shifts of up to {self.max_shift} px (one per batch)" if self.max_shift else "no augmentation"
        return (
            f"{opt} with a one-cycle schedule to a peak learning rate of {self.max_lr:g}, weight decay "
            f"{self.weight_decay:g}, batch {self.batch_size}, {self.epochs} epochs, {shift}, seed {self.seed}"
        )


def _random_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels (zero fill), one offset per batch."""
    if max_shift == 0:
        return x
    dx, dy = (int(v) for v in torch.randint(-max_shift, max_shift + 1, (2,), generator=gen))
    return torch.roll(torch.nn.functional.pad(x, (max_shift,) * 4), (dy, dx), (2, 3))[
        :, :, max_shift:-max_shift, max_shift:-max_shift
    ]


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, cfg: TrainConfig, device: str = "cpu") -> nn.Module:
    """Train ``model`` on images ``x`` (N, 1, 28, 28) in [0, 1] and labels ``y`` (N,).

    Deterministic on CPU given the seed; on CUDA the same batches and shifts, but max-pool's
    backward pass is not bit-reproducible there. The model is returned on the CPU.
    """
    if cfg.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}; use one of {OPTIMIZERS}")
    torch.manual_seed(cfg.seed)
    torch.use_deterministic_algorithms(True, warn_only=device != "cpu")
    gen = torch.Generator().manual_seed(cfg.seed)
    model.to(device)
    xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    steps = cfg.epochs * math.ceil(len(xt) / cfg.batch_size)
    if cfg.optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=cfg.max_lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(
            model.parameters(), lr=cfg.max_lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay
        )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.max_lr, total_steps=steps)
    model.train()
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(xt), generator=gen).to(device)
        total = 0.0
        for start in range(0, len(xt), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            xb = _random_shift(xt[idx], cfg.max_shift, gen)
            loss = nn.functional.cross_entropy(model(xb), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        log.info("epoch %d/%d: loss %.4f", epoch + 1, cfg.epochs, total / len(xt))
    model.eval()
    return model.cpu()


def export_onnx(model: nn.Module, path: str) -> onnx.ModelProto:
    """Export to ONNX: input ``input`` (N, 1, 28, 28), output ``logits``, dynamic batch,
    opset 17, IR version 8, conv nodes named ``conv1``, ``conv2``, ..."""
    return export_classifier(model, path, (1, 28, 28))


def export_classifier(model: nn.Module, path: str, shape: tuple[int, ...], *, keep_bn: bool = False) -> onnx.ModelProto:
    """Export an image classifier: input ``input`` (N, *shape), output ``logits``, dynamic batch, opset 17, IR
    version 8, convs named ``conv1`` ... in graph order; BatchNormalization folded into the convs (as PyTorch
    exports usually are) or, with ``keep_bn``, kept as nodes (no constant folding)."""
    model.eval()
    with warnings.catch_warnings():
        # the TorchScript exporter on purpose: no onnxscript needed, stable node names, same bytes each time
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (torch.zeros(1, *shape),),
            path,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
            opset_version=ONNX_OPSET,
            dynamo=False,
            training=torch.onnx.TrainingMode.EVAL,
            do_constant_folding=not keep_bn,
        )
    return finish_export(path)


def finish_export(path: str) -> onnx.ModelProto:
    """Name a freshly exported file's convs ``conv1``, ``conv2``, ... in graph order, set IR version 8 (what
    onnxruntime-gpu 1.31 reads), check it fully and save it again."""
    proto = onnx.load(path)
    for i, node in enumerate((n for n in proto.graph.node if n.op_type == "Conv"), start=1):
        node.name = f"conv{i}"
    proto.ir_version = ONNX_IR_VERSION
    proto.producer_name = "onnxredund-exporters"
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, path)
    return proto
