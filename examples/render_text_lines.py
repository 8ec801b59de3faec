"""Render text lines as PNG images, upright (folder 0) and upside down (folder 180), for the PaddleOCR
direction classifier (48 x 192): an image folder with labels by subfolder.

    python examples/render_text_lines.py OUT_DIR [--count 64]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

WORDS = "redundancy channel pixel impulse shuffle network layer onnx model deploy audit prune budget kernel".split()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--count", type=int, default=64)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    font = ImageFont.load_default(size=28)
    for label in ("0", "180"):
        (args.out / label).mkdir(parents=True, exist_ok=True)
    for i in range(args.count):
        img = Image.new("RGB", (192, 48), "white")
        ImageDraw.Draw(img).text((6, 6), " ".join(rng.choice(WORDS, 2)), fill="black", font=font)
        img.save(args.out / "0" / f"{i:04d}.png")
        img.rotate(180).save(args.out / "180" / f"{i:04d}.png")


if __name__ == "__main__":
    main()
