"""Peak RSS of a full shuffle sweep through the CLI, for growing numbers of images.

    python benchmarks/memory.py --data DIR_WITH_MNIST [--model models/lenet5x10.onnx] [--device cpu]

Each run is its own process; its peak RSS comes from the kernel (wait4). Batches are streamed, so
the peak should stay flat as the number of images grows, and under 2 GB.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile


def peak_rss_mb(cmd: list[str]) -> tuple[float, int]:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    return usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--model", default="models/lenet5x10.onnx")
    p.add_argument("--device", default="cpu")
    p.add_argument("--images", default="1000,5000,10000")
    args = p.parse_args()
    print(f"# peak RSS of `onnxredund shuffle {args.model} --layer conv2 --mode both`, device {args.device}")
    print("| images | peak RSS (MB) | exit |")
    print("|---|---|---|")
    for n in args.images.split(","):
        out = tempfile.mkdtemp()
        cmd = [
            sys.executable,
            "-m",
            "onnxredund.cli",
            "-q",
            "shuffle",
            args.model,
            "--layer",
            "conv2",
            "--mode",
            "both",
            "--data",
            args.data,
            "--limit",
            n,
            "--device",
            args.device,
            "--out",
            out,
            "--overwrite",
        ]
        rss, code = peak_rss_mb(cmd)
        print(f"| {n} | {rss:.0f} | {code} |", flush=True)


if __name__ == "__main__":
    main()
