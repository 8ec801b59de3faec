"""Audit sweeps as units on the local backend and on Ray with 1 and 2 workers; ResNet-50 unit times and what a full
ResNet-50 audit would take on 1, 8 and 64 GPUs.

    python benchmarks/ray_scaling.py --data DIR [--images 256] [--workers 1,2] [--device cpu]
        [--resnet50 PATH] [--resnet50-images 32] [--skip-ray] --out benchmarks/results/ray_scaling.json

Part A: every conv of the ResNet-18-layout MNIST network (models/resnet18_mnist.onnx) with more than one input
channel, both modes, every input channel, on the first --images MNIST test images, run as units (a) in this
process (LocalBackend), (b) on a Ray started here with 1 worker, (c) with 2 workers. Times count the sweeps
only (Ray's start and the actors' start are timed apart); the JSON of every sweep must be identical across
(a), (b) and (c). Per-unit overhead of Ray = ((b) - (a)) / units; scaling = (b) / (c) / 2.

Part B (with --resnet50, a torchvision-architecture ResNet-50 exported by exporters.resnet): one unit (one
chunk of channels over --resnet50-images images) of the first conv of each stage and of the last conv, timed
on --device. A unit's time per (channel x image) is fitted as a + b x (the MACs of the network from that
layer on); summed over every sweep of a full audit, that gives its time on one device, and divided over
workers (plus Ray's measured per-unit overhead) the table for 1, 8 and 64 GPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnxredund.analyses.audit import default_shuffle_layers  # noqa: E402
from onnxredund.analyses.distributed import job_for, plan_units, run_sweeps, run_unit  # noqa: E402
from onnxredund.analyses.plan import suffix_share  # noqa: E402
from onnxredund.analyses.shuffle import SweepOptions  # noqa: E402
from onnxredund.data import Dataset, load_mnist  # noqa: E402
from onnxredund.engine.backends import LocalBackend, make_backend  # noqa: E402
from onnxredund.engine.loading import load_model  # noqa: E402
from onnxredund.engine.runtime import resolve_device  # noqa: E402

MODES = ("channel", "pixel")


def _sweeps(model):
    return [(layer, m, list(range(layer.in_channels))) for layer in default_shuffle_layers(model.layers) for m in MODES]


def part_a(data_dir: str, images: int, workers: list[int], skip_ray: bool, batch_size: int) -> dict:
    model = load_model(ROOT / "models" / "resnet18_mnist.onnx")
    data = load_mnist(data_dir, "test").limit(images)
    sweeps = _sweeps(model)
    job = job_for(model, data, sweeps, SweepOptions(batch_size=batch_size, device="cpu"))
    pairs = [(layer, m) for layer, m, _ in sweeps]
    units = plan_units(job, pairs)
    out = {
        "model": "models/resnet18_mnist.onnx",
        "images": images,
        "sweeps": len(pairs),
        "units": len(units),
        "batch_size": batch_size,
        "runs": {},
    }
    t0 = time.perf_counter()
    local, _ = run_sweeps(job, pairs, LocalBackend())
    out["runs"]["local"] = {"seconds": time.perf_counter() - t0}
    reference = {(r.layer, r.mode): json.dumps(r.to_dict()) for r in local}
    print(f"local: {out['runs']['local']['seconds']:.1f} s for {len(units)} units", flush=True)
    if skip_ray:
        return out
    import ray

    for n in workers:
        t0 = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        backend = make_backend("ray", workers=n, device="cpu")
        backend.pids()  # the actors are up
        start = time.perf_counter() - t0
        t0 = time.perf_counter()
        results, complete = run_sweeps(job, pairs, backend)
        seconds = time.perf_counter() - t0
        same = complete and all(json.dumps(r.to_dict()) == reference[(r.layer, r.mode)] for r in results)
        out["runs"][f"ray{n}"] = {"seconds": seconds, "start_seconds": start, "identical_json": same}
        print(f"ray {n} workers: {seconds:.1f} s (+{start:.1f} s start), identical JSON: {same}", flush=True)
        backend.close()
        ray.shutdown()
    runs = out["runs"]
    if "ray1" in runs:
        out["ray_overhead_per_unit_seconds"] = (runs["ray1"]["seconds"] - runs["local"]["seconds"]) / len(units)
    if "ray1" in runs and "ray2" in runs:
        out["scaling_efficiency_1_to_2"] = runs["ray1"]["seconds"] / runs["ray2"]["seconds"] / 2
    return out


def part_b(path: str, images: int, device: str, batch_size: int) -> dict:
    model = load_model(path)
    device = resolve_device(device)
    rng = np.random.default_rng(0)
    data = Dataset(rng.random((images, *model.sample_shape), np.float32), None, "uniform")
    sweeps = _sweeps(model)
    layers = [layer for layer, m, _ in sweeps if m == "channel"]
    stage_firsts = [layer for layer in layers if layer.stride == (2, 2) or layer is layers[0]] + [layers[-1]]
    picked = list(dict.fromkeys(stage_firsts))
    job = job_for(model, data, sweeps, SweepOptions(batch_size=batch_size, device=device))
    cache: dict = {}
    measured = []
    total_macs = sum(layer.macs for layer in model.layers)
    for layer in picked:
        unit = next(u for u in plan_units(job, [(layer, "channel")]))
        run_unit(job, unit, cache)  # warm-up: builds the sessions
        t0 = time.perf_counter()
        run_unit(job, unit, cache)
        seconds = time.perf_counter() - t0
        cache.clear()
        suffix = suffix_share(model, layer) * total_macs
        measured.append(
            {
                "layer": layer.name,
                "in_channels": layer.in_channels,
                "chunk": len(unit.channels),
                "seconds": seconds,
                "per_channel_image": seconds / (len(unit.channels) * images),
                "suffix_macs": suffix,
            }
        )
        print(f"{layer.name}: {len(unit.channels)} channels x {images} images in {seconds:.2f} s", flush=True)
    x = np.array([m["suffix_macs"] for m in measured])
    y = np.array([m["per_channel_image"] for m in measured])
    b, a = np.polyfit(x, y, 1) if len(x) > 1 else (y[0] / x[0], 0.0)
    a = max(a, 0.0)
    per_sweep = [(layer.in_channels * (a + b * suffix_share(model, layer) * total_macs)) for layer, _, _ in sweeps]
    units = plan_units(job, [(layer, m) for layer, m, _ in sweeps])
    return {
        "model": path,
        "device": device,
        "images_timed": images,
        "batch_size": batch_size,
        "units": measured,
        "fit": {"a": a, "b": b},
        "sweeps": len(sweeps),
        "audit_units": len(units),
        "seconds_per_image_all_sweeps": float(sum(per_sweep)),
    }


def projection(b: dict, overhead: float, images: int = 5000) -> list[dict]:
    """A full audit of ``images`` images on 1, 8 and 64 devices (every sweep, both modes, every channel)."""
    total = b["seconds_per_image_all_sweeps"] * images
    units = b["audit_units"]
    rows = []
    for n in (1, 8, 64):
        rows.append({"devices": n, "hours": (total / n + overhead * units / n) / 3600, "units_per_device": units / n})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--workers", default="1,2")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--skip-ray", action="store_true")
    p.add_argument("--skip-a", action="store_true")
    p.add_argument("--resnet50")
    p.add_argument("--resnet50-images", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    result = {}
    if not args.skip_a:
        result["resnet18"] = part_a(
            args.data, args.images, [int(w) for w in args.workers.split(",")], args.skip_ray, args.batch_size
        )
    if args.resnet50:
        result["resnet50"] = part_b(args.resnet50, args.resnet50_images, args.device, args.batch_size)
        overhead = result.get("resnet18", {}).get("ray_overhead_per_unit_seconds", 0.0)
        result["resnet50"]["projection_5000_images"] = projection(result["resnet50"], max(overhead, 0.0))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
