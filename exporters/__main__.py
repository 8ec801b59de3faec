"""Train and export the paper's two models and write the model card.

    python -m exporters --data DIR_WITH_MNIST --out models [--seed 0] [--epochs 30] [--optimizer sgd|adam]
        [--max-lr F] [--weight-decay F] [--max-shift N] [--device cpu|cuda]

Deterministic on CPU given the seed (on the same machine and torch build). Test accuracy in the model card
is measured by onnxruntime on the exported ONNX files, not by torch.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from exporters.lenet import ONNX_IR_VERSION, ONNX_OPSET, OPTIMIZERS, LeNet5, TrainConfig, export_onnx, train
from onnxredund.data import load_mnist

MODELS = {"lenet5": (1, 1), "lenet5x10": (10, 1)}


def onnx_accuracy(path: Path, x: np.ndarray, y: np.ndarray, batch: int = 1000) -> float:
    """Top-1 accuracy of an ONNX classifier, run by onnxruntime on CPU."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    correct = 0
    for s in range(0, len(x), batch):
        logits = sess.run(["logits"], {"input": x[s : s + batch]})[0]
        correct += int((logits.argmax(1) == y[s : s + batch]).sum())
    return correct / len(x)


def write_card(out: Path, rows: list[dict], cfg: TrainConfig, device: str) -> None:
    lines = [
        "# Model card: LeNet-5 and LeNet-5x10 on MNIST",
        "",
        "The two models of the paper, trained and exported by",
        f"`python -m exporters --data DIR --out models --device {device}` (see `exporters/`).",
        "",
        "## Architecture",
        "conv1 (1 -> 6w, 5x5, pad 2) -> ReLU -> max-pool 2x2 -> conv2 (6w -> 16w, 5x5) -> ReLU -> max-pool 2x2",
        "-> flatten (16w x 5 x 5) -> fc 120 -> ReLU -> fc 84 -> ReLU -> fc 10. LeNet-5 has w = 1, LeNet-5x10 w = 10.",
        "",
        "Input `input`: float32 N x 1 x 28 x 28, pixels scaled to [0, 1], dynamic batch. Output `logits`: N x 10.",
        f"ONNX opset {ONNX_OPSET}, IR version {ONNX_IR_VERSION}; conv nodes are named `conv1` and `conv2`.",
        "",
        "## Data and recipe",
        "Trained on the 60,000 MNIST training images; tested on the 10,000 test images.",
        f"{cfg.describe()}: `{json.dumps(asdict(cfg))}`.",
        f"Trained on {device} with torch {torch.__version__}: "
        + (
            "deterministic given the seed."
            if device == "cpu"
            else "not bit-reproducible there (max-pool's backward pass); `--device cpu` is, given the seed."
        ),
        "",
        "The recipe matters to the impulse analysis: trained with Adam (four recipes, two seeds), no conv1",
        "kernel of the wide model has a near-duplicate (NCC >= 0.9); trained with SGD and weight decay, 12 to",
        "38 % have one, as in the paper. `exporters/recipe_study.sh` trains several recipes and",
        "`python -m exporters.recipe_study` compares them; the last comparison is in `models/STUDY.md`.",
        "",
        "## Files",
        "| file | parameters | test accuracy (onnxruntime, 10,000 images) | sha256 |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| `{r['file']}` | {r['params']:,} | {100 * r['accuracy']:.2f} % | `{r['sha256']}` |")
    lines += [
        "",
        "Accuracy measured with `python -m exporters --data DIR --out models` (it reports it after export),",
        "or `onnxredund evaluate models/lenet5.onnx --data DIR`.",
        "",
    ]
    (out / "README.md").write_text("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="folder with the four MNIST IDX files")
    p.add_argument("--out", default="models")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    p.add_argument(
        "--optimizer", choices=OPTIMIZERS, default=TrainConfig.optimizer, help="with adam, lower --max-lr (3e-3)"
    )
    p.add_argument("--max-lr", type=float, default=TrainConfig.max_lr, help="peak of the one-cycle schedule")
    p.add_argument("--weight-decay", type=float, default=TrainConfig.weight_decay)
    p.add_argument("--max-shift", type=int, default=TrainConfig.max_shift, help="random shifts in pixels, 0: none")
    p.add_argument("--device", default="cpu", help="torch device for training (cpu is bit-reproducible)")
    p.add_argument("--limit", type=int, default=0, help="train on the first N images only (smoke tests)")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--fc-width", type=int, default=1, help="also widen the hidden fc layers of the wide model")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    train_set, test_set = load_mnist(args.data, "train"), load_mnist(args.data, "test")
    x, y = train_set.x, train_set.y
    if args.limit:
        x, y = x[: args.limit], y[: args.limit]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = TrainConfig(
        epochs=args.epochs,
        optimizer=args.optimizer,
        max_lr=args.max_lr,
        weight_decay=args.weight_decay,
        max_shift=args.max_shift,
        seed=args.seed,
    )
    rows = []
    for name in args.models.split(","):
        width, fc_width = MODELS[name]
        if width > 1:
            fc_width *= args.fc_width
        torch.manual_seed(args.seed)
        model = LeNet5(width, fc_width)
        t0 = time.time()
        train(model, x, y, cfg, args.device)
        path = out / f"{name}.onnx"
        export_onnx(model, str(path))
        acc = onnx_accuracy(path, test_set.x, test_set.y)
        rows.append(
            {
                "file": path.name,
                "params": sum(p.numel() for p in model.parameters()),
                "accuracy": acc,
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            }
        )
        logging.info("%s: test accuracy %.4f (onnxruntime), %.0f s", name, acc, time.time() - t0)
    write_card(out, rows, cfg, args.device)


if __name__ == "__main__":
    main()
