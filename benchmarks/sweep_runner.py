"""The sweeps through the one runner (issue 22) against the code before it: the same commands, two source trees,
one run.

    python benchmarks/sweep_runner.py --baseline TREE --data MNIST_DIR [--repeats 3]

TREE is a checkout of the commit to compare with (``git worktree add /tmp/before COMMIT``). Each command runs as
a fresh ``python -m onnxredund`` per tree (the wall time of the whole process, imports and writes included), the
trees taking turns, best of ``--repeats``:

- ``shuffle``: LeNet-5x10's conv2, both modes, 2,000 MNIST test images, ``--out`` (kept after every batch);
- ``shuffle --sequential``: the same layer, channel mode, decided at 2 pp, 4,000 images, ``--out``;
- ``audit``: LeNet-5 on 1,000 images, ``--out`` (impulse analysis, four sweeps, report and figures).

Prints one Markdown row per command: seconds for each tree, their ratio (this tree / baseline) and peak memory
(`trees.py`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from trees import ROOT, compare


def _commands(data: Path) -> list[tuple[str, list[str]]]:
    lenet5, lenet5x10 = str(ROOT / "models" / "lenet5.onnx"), str(ROOT / "models" / "lenet5x10.onnx")
    common = ["--data", str(data), "--device", "cpu", "-q"]
    shuffle = ["shuffle", lenet5x10, "--layer", "conv2"]
    return [
        (
            "shuffle LeNet-5x10 conv2, both modes, 2,000 images",
            [*shuffle, "--mode", "both", "--limit", "2000", *common],
        ),
        (
            "shuffle --sequential LeNet-5x10 conv2, 2 pp, 4,000 images",
            [*shuffle, "--sequential", "--cheap-drop", "0.02", "--limit", "4000", *common],
        ),
        ("audit LeNet-5, 1,000 images", ["audit", lenet5, "--limit", "1000", *common]),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, required=True, help="a checkout of the commit to compare with")
    parser.add_argument("--data", type=Path, required=True, help="the MNIST folder")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    compare(_commands(args.data), args.baseline, args.repeats, out=True)


if __name__ == "__main__":
    main()
