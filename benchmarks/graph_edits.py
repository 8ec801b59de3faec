"""Graph edits on the IR against the code before them: the same work, two source trees, one run.

    python benchmarks/graph_edits.py --baseline TREE --data MNIST_DIR [--models DIR] [--repeats 3]

TREE is a checkout of the commit to compare with (``git worktree add /tmp/before COMMIT``). Each measurement
runs in a fresh process per tree, the trees taking turns, best of ``--repeats``:

- ``build``: the analysis models of every conv (clean, direct and, where the fast path runs, fast) of
  LeNet-5x10, PaddleOCR's text-line classifier (3 x 48 x 192) and YOLOv8n (NudeNet, 3 x 640 x 640);
- ``sweep``: a channel-shuffle sweep of LeNet-5x10's conv2 on 1,000 MNIST test images (CPU);
- ``impulse``: the impulse analysis of PaddleOCR's classifier (CPU).

Prints one Markdown row per measurement: seconds for each tree and their ratio (this tree / baseline).
Third-party models come from ``scripts/fetch_models.py``'s cache (``--models``); those absent are skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path.home() / ".cache" / "onnxredund" / "models"

_BUILD = """
import json, sys, time
from onnxredund.engine import load_model
from onnxredund.engine.analysis_models import (
    build_clean_model, build_direct_model, build_fast_model, fast_path_blocker, measured_outputs)
path, shape = sys.argv[1], sys.argv[2]
model = load_model(path, input_shape=tuple(map(int, shape.split("x"))) if shape else None)
t = time.perf_counter()
for layer in model.layers:
    outputs = measured_outputs(model, layer)
    build_clean_model(model, layer, outputs)
    build_direct_model(model, layer, outputs)
    if fast_path_blocker(model, layer) is None:
        for mode in ("channel", "pixel"):
            build_fast_model(model, layer, mode, outputs)
print(json.dumps(time.perf_counter() - t))
"""

_SWEEP = """
import json, sys, time
from onnxredund.analyses.shuffle import run_shuffle
from onnxredund.data import load_mnist
from onnxredund.engine import load_model
model, data = load_model(sys.argv[1]), load_mnist(sys.argv[2])
t = time.perf_counter()
run_shuffle(model, "conv2", data.limit(1000), device="cpu")
print(json.dumps(time.perf_counter() - t))
"""

_IMPULSE = """
import json, sys, time
from onnxredund.analyses.impulse import run_impulse
from onnxredund.engine import load_model
model = load_model(sys.argv[1], input_shape=(3, 48, 192))
t = time.perf_counter()
run_impulse(model, device="cpu")
print(json.dumps(time.perf_counter() - t))
"""


def _seconds(tree: Path, code: str, *args: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, check=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, required=True, help="a checkout of the commit to compare with")
    parser.add_argument("--data", type=Path, required=True, help="the MNIST folder")
    parser.add_argument("--models", type=Path, default=CACHE)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cases = [("build LeNet-5x10", _BUILD, str(ROOT / "models" / "lenet5x10.onnx"), "")]
    for name, shape in (("paddleocr-cls", "3x48x192"), ("nudenet-320n", "3x640x640")):
        if (args.models / f"{name}.onnx").is_file():
            cases.append((f"build {name} {shape}", _BUILD, str(args.models / f"{name}.onnx"), shape))
    cases.append(
        ("sweep LeNet-5x10 conv2, 1,000 images", _SWEEP, str(ROOT / "models" / "lenet5x10.onnx"), str(args.data))
    )
    if (args.models / "paddleocr-cls.onnx").is_file():
        cases.append(("impulse paddleocr-cls 3x48x192", _IMPULSE, str(args.models / "paddleocr-cls.onnx")))
    print("| measurement | baseline s | this tree s | ratio |\n|---|---|---|---|")
    for label, code, *case_args in cases:
        best = {"baseline": float("inf"), "this": float("inf")}
        for _ in range(args.repeats):
            for which, tree in (("baseline", args.baseline), ("this", ROOT)):
                best[which] = min(best[which], _seconds(tree, code, *case_args))
        print(f"| {label} | {best['baseline']:.3f} | {best['this']:.3f} | {best['this'] / best['baseline']:.2f} |")


if __name__ == "__main__":
    main()
