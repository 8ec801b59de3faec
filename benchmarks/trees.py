"""Whole commands timed in two source trees, taking turns: the helpers the tree-against-tree benchmarks share.

Each command runs as a fresh ``python -m onnxredund`` with ``PYTHONPATH`` set to the tree (the wall time of the
whole process, imports and writes included, and its peak resident memory), best of the repeats.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: runs the command given as its arguments and prints the child's peak resident memory in KB
_PEAK = "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
_PEAK += "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"


def run(tree: Path, args: list[str], *, out: bool = False) -> tuple[float, float]:
    """(seconds, peak GB) of ``python -m onnxredund ARGS`` with ``tree`` first on the path (``out``: with
    ``--out`` in a fresh folder, removed after)."""
    folder = Path(tempfile.mkdtemp())
    try:
        env = {**os.environ, "PYTHONPATH": str(tree)}
        command = [sys.executable, "-m", "onnxredund", *args, *(["--out", str(folder / "run")] if out else [])]
        t = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", _PEAK, *command], env=env, check=True, capture_output=True)
        seconds = time.perf_counter() - t
        return seconds, int(done.stdout.split()[-1]) / (1 << 20)
    finally:
        shutil.rmtree(folder)


def compare(commands: list[tuple[str, list[str]]], baseline: Path, repeats: int, *, out: bool = False) -> None:
    """One Markdown row per command: best seconds (and peak GB) per tree and the ratio (this tree / baseline)."""
    print("| command | baseline s | this tree s | ratio | baseline peak GB | this tree peak GB |")
    print("|---|---|---|---|---|---|")
    for label, command in commands:
        best = {"baseline": (float("inf"), 0.0), "this": (float("inf"), 0.0)}
        for _ in range(repeats):
            for which, tree in (("baseline", baseline), ("this", ROOT)):
                best[which] = min(best[which], run(tree, command, out=out))
        (b, bm), (t, tm) = best["baseline"], best["this"]
        print(f"| {label} | {b:.2f} | {t:.2f} | {t / b:.2f} | {bm:.2f} | {tm:.2f} |", flush=True)
