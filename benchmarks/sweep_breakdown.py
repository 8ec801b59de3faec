"""Where the time of one shuffle sweep goes: the clean runs, the fast runs, the output effects on the host,
waiting for permutations, and the rest (data, bookkeeping).

    python benchmarks/sweep_breakdown.py --data DIR_WITH_MNIST [--device cpu|cuda] [--limit N]

Each phase is timed by wrapping the function that does it (wall clock, inclusive); the sweep is run twice and
the second run is reported (the first builds sessions and warms the device up). The model runs (and the wait for
permutations) happen on one thread and the sums on another, so phases overlap: "rest" is the total less every
phase, negative by as much as they overlapped.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnxredund.analyses import effects, shuffle  # noqa: E402
from onnxredund.data import Dataset, load_mnist  # noqa: E402
from onnxredund.engine import load_model, permutations, sweep  # noqa: E402

SPENT: dict[str, float] = defaultdict(float)
PHASES = [
    ("clean runs", sweep.SweepRunner, "run_clean"),
    ("perturbed runs", sweep.SweepRunner, "run"),
    ("output effects (numpy)", effects.EffectMeter, "per_sample"),
    ("effect sums", effects.EffectMeter, "add_per_sample"),
    ("clean effects", effects.EffectMeter, "add_clean"),
    ("permutations (wait)", permutations.PermutationFeed, "take"),
]


def timed(label: str, fn):
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            SPENT[label] += time.perf_counter() - t0

    return wrapper


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--limit", type=int, default=10000)
    p.add_argument("--models", default="lenet5x10")
    p.add_argument("--modes", default="channel,pixel")
    args = p.parse_args()
    for label, owner, name in PHASES:
        setattr(owner, name, timed(label, getattr(owner, name)))
    test = load_mnist(args.data, "test")
    data = Dataset(test.x[: args.limit], test.y[: args.limit], f"mnist:test[:{args.limit}]")
    print(f"# sweep breakdown at conv2, {len(data)} images, batch 256, device {args.device}\n")
    print("| model | mode | total s | " + " | ".join(label for label, _, _ in PHASES) + " | rest |")
    print("|---|---|---|" + "---|" * (len(PHASES) + 1))
    for name in args.models.split(","):
        model = load_model(ROOT / "models" / f"{name}.onnx")
        for mode in args.modes.split(","):
            for _ in range(2):
                SPENT.clear()
                t0 = time.perf_counter()
                shuffle.run_shuffle(model, "conv2", data, mode=mode, device=args.device)
                total = time.perf_counter() - t0
            parts = [SPENT[label] for label, _, _ in PHASES]
            cells = " | ".join(f"{s:.3f}" for s in parts)
            print(f"| {name} | {mode} | {total:.3f} | {cells} | {total - sum(parts):.3f} |", flush=True)


if __name__ == "__main__":
    main()
