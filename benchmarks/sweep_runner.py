"""The sweeps through the one runner (issue 22) against the code before it: the same commands, two source trees,
one run.

    python benchmarks/sweep_runner.py --baseline TREE --data MNIST_DIR [--repeats 3]

TREE is a checkout of the commit to compare with (``git worktree add /tmp/before COMMIT``). Each command runs as
a fresh ``python -m onnxredund`` per tree (the wall time of the whole process, imports and writes included), the
trees taking turns, best of ``--repeats``:

- ``shuffle``: LeNet-5x10's conv2, both modes, 2,000 MNIST test images, ``--out`` (kept after every batch);
- ``shuffle --sequential``: the same layer, channel mode, decided at 2 pp, 4,000 images, ``--out``;
- ``audit``: LeNet-5 on 1,000 images, ``--out`` (impulse analysis, four sweeps, report and figures).

Prints one Markdown row per command: seconds for each tree and their ratio (this tree / baseline).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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


def _seconds(tree: Path, args: list[str]) -> float:
    out = Path(tempfile.mkdtemp())
    try:
        env = {**os.environ, "PYTHONPATH": str(tree)}
        t = time.perf_counter()
        command = [sys.executable, "-m", "onnxredund", *args, "--out", str(out / "run")]
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - t
    finally:
        shutil.rmtree(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, required=True, help="a checkout of the commit to compare with")
    parser.add_argument("--data", type=Path, required=True, help="the MNIST folder")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print("| command | baseline s | this tree s | ratio |\n|---|---|---|---|")
    for label, command in _commands(args.data):
        best = {"baseline": float("inf"), "this": float("inf")}
        for _ in range(args.repeats):
            for which, tree in (("baseline", args.baseline), ("this", ROOT)):
                best[which] = min(best[which], _seconds(tree, command))
        print(f"| {label} | {best['baseline']:.2f} | {best['this']:.2f} | {best['this'] / best['baseline']:.2f} |")


if __name__ == "__main__":
    main()
