"""Does the paper's finding depend on how the models were trained? Analyse a recipe study.

    python -m exporters.recipe_study DIR [--data MNIST_DIR] [--images 2000]

DIR holds one folder per recipe, each with ``lenet5.onnx`` and ``lenet5x10.onnx`` and the model card
the exporter wrote (``exporters/recipe_study.sh`` trains them). For every recipe and model it prints
the impulse statistics of both convs (fraction of channels whose best match is >= 0.9, mean best
match), how far training moved the wide model's conv1 kernels from their initial values (mean cosine
of each trained kernel with its initial one; where torch is installed) and, with ``--data``, channel
shuffling at conv2 (mean cosine, worst accuracy drop) on the first ``--images`` test images.
A Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np

from onnxredund import load_model, run_impulse, run_shuffle
from onnxredund.data import Dataset, load_mnist
from onnxredund.ncc import exact_best_matches, ncc_matrix

MODELS = ("lenet5", "lenet5x10")


def card_recipe(card: Path) -> str:
    text = card.read_text() if card.exists() else ""
    match = re.search(r"^(?:Adam|SGD)[^\n`]*", text, re.MULTILINE)
    return match.group(0).rstrip(": ") if match else "(no model card)"


def card_seed(card: Path) -> int:
    match = re.search(r'"seed": (\d+)', card.read_text()) if card.exists() else None
    return int(match.group(1)) if match else 0


def conv1_drift(model, width: int, seed: int) -> float | None:
    """Mean cosine between each trained conv1 kernel and its initial value (same seed), or None without torch."""
    try:
        import torch

        from exporters.lenet import LeNet5
    except ImportError:
        return None
    torch.manual_seed(seed)
    start = LeNet5(width).conv1.weight.detach().numpy().reshape(6 * width, -1)
    trained = model.constant(model.layers[0].weight).reshape(len(start), -1)
    cos = (start * trained).sum(1) / np.linalg.norm(start, axis=1) / np.linalg.norm(trained, axis=1)
    return float(cos.mean())


def analyse(folder: Path, data, threshold: float) -> dict:
    row = {}
    for name in MODELS:
        model = load_model(folder / f"{name}.onnx")
        if name == "lenet5x10":
            drift = conv1_drift(model, 10, card_seed(folder / "README.md"))
            row["lenet5x10 conv1 vs its start"] = "n/a" if drift is None else f"{drift:.2f}"
        imp = run_impulse(model, threshold=threshold, across=False, device="cpu")
        for layer in imp.layers:
            frac, best = 100 * (layer.redundant_fraction or 0.0), np.nanmean(layer.best_value)
            row[f"{name} {layer.name}"] = f"{layer.redundant_count}/{len(layer.best_value)} ({frac:.1f} %), {best:.3f}"
        if data is not None:
            res = run_shuffle(model, "conv2", data, mode="channel", device="cpu")
            drop = 100 * (res.baseline_accuracy - float(np.min(res.accuracy)))
            row[f"{name} shuffle"] = f"{res.cosine.mean():.4f}, {100 * res.baseline_accuracy:.2f} % - {drop:.2f} pp"
    return row


def chance(channels: int = 60, draws: int = 50, threshold: float = 0.9) -> tuple[float, float]:
    """Mean best match and mean count >= threshold of ``channels`` random 5x5 kernels (NCC over lags)."""
    rng = np.random.default_rng(0)
    best, count = [], []
    for _ in range(draws):
        k = rng.uniform(-1, 1, (channels, 1, 5, 5))
        _, val = exact_best_matches(k, ncc_matrix(k, k), np.ones(channels, bool))  # as the impulse analysis does
        best.append(val.mean())
        count.append(int((val >= threshold).sum()))
    return float(np.mean(best)), float(np.mean(count))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", type=Path)
    p.add_argument("--data", help="MNIST folder: also run channel shuffling at conv2")
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--threshold", type=float, default=0.9)
    args = p.parse_args()
    data = None
    if args.data:
        test = load_mnist(args.data, "test")
        data = Dataset(test.x[: args.images], test.y[: args.images], f"MNIST test[:{args.images}]")
    folders = sorted(f for f in args.dir.iterdir() if (f / "lenet5x10.onnx").exists())
    rows = {f.name: analyse(f, data, args.threshold) for f in folders}
    cols = list(next(iter(rows.values())))
    print(f"Impulse cells: channels with best match >= {args.threshold} (fraction), mean best match.")
    if data is not None:
        print(f"Shuffle cells (conv2, channel mode, first {args.images} test images): mean cosine, baseline - drop.")
    print()
    print("| recipe | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(row[c] for c in cols) + " |")
    print()
    for f in folders:
        print(f"- {f.name}: {card_recipe(f / 'README.md')}")
    best, count = chance()
    print(f"\nChance: 60 random 5x5 kernels (uniform, 50 draws) have a mean best match of {best:.3f} and {count:.1f}")
    print(f"channels >= {args.threshold} on average.")


if __name__ == "__main__":
    main()
