"""Where the fast path's time goes: onnxruntime's per-op profile of one fast-model run.

python benchmarks/profile_fast.py [--model models/lenet5x10.onnx] [--layer conv2] [--mode channel]
                                  [--chunk K] [--device cpu|cuda] [--batch 256]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from onnxredund.engine import load_model
from onnxredund.engine.analysis_models import build_clean_model, build_fast_model, measured_outputs
from onnxredund.engine.permutations import permutation_for
from onnxredund.engine.runtime import Runner, providers_for


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models/lenet5x10.onnx")
    p.add_argument("--layer", default="conv2")
    p.add_argument("--mode", default="channel")
    p.add_argument("--chunk", type=int, default=0, help="channels per run (default: all)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--runs", type=int, default=10)
    args = p.parse_args()
    model = load_model(args.model)
    layer = model.layer(args.layer)
    k = args.chunk or layer.in_channels
    fast, inputs = build_fast_model(model, layer, args.mode, k, measured_outputs(model, layer))
    clean, names = build_clean_model(model, layer, model.output_names)
    x = np.random.default_rng(0).random((args.batch, *model.sample_shape), dtype=np.float32)
    values = dict(zip(names, Runner.create(clean, args.device).run({model.input_name: x}, names), strict=True))
    ks = [i % layer.in_channels for i in range(k)]
    pixels = int(np.prod(layer.input_shape[1:]))
    perms = [permutation_for(args.mode, 0, 0, c, 0, args.batch, pixels) for c in ks]
    index = (
        (np.stack(perms) + np.arange(k)[:, None] * args.batch).reshape(-1)
        if args.mode == "channel"
        else np.concatenate(perms)
    )
    feeds = {n: values[n] for n in inputs if n in values} | {
        "ks": np.array(ks, np.int64),
        "perm_index": index.astype(np.int32),
    }
    opts = ort.SessionOptions()
    opts.enable_profiling = True
    opts.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "prof")
    sess = ort.InferenceSession(fast.SerializeToString(), opts, providers=providers_for(args.device))
    runner = Runner(sess, args.device)
    dev_feeds = {n: runner.to_device(v) for n, v in feeds.items()}
    for _ in range(3):
        runner.run_device(dev_feeds)
    t0 = time.perf_counter()
    for _ in range(args.runs):
        out = runner.run_device(dev_feeds)
    out[0].numpy()
    dt = (time.perf_counter() - t0) / args.runs
    print(
        f"{args.model} {args.layer} {args.mode} K={k} B={args.batch} {args.device}: {1000 * dt:.2f} ms per run, "
        f"{1000 * dt / k:.3f} ms per channel"
    )
    events = json.load(open(sess.end_profiling()))
    agg: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            agg[e["args"]["op_name"]] = agg.get(e["args"]["op_name"], 0) + e["dur"]
    on_cpu = sorted(
        {
            e["args"]["op_name"]
            for e in events
            if e.get("cat") == "Node" and e["args"].get("provider") == "CPUExecutionProvider"
        }
    )
    if args.device == "cuda":
        print(f"  ops on the CPU in this CUDA session: {', '.join(on_cpu) or 'none'}")
    total = sum(agg.values()) or 1
    for op, v in sorted(agg.items(), key=lambda t: -t[1])[:15]:
        print(f"  {op:24s} {100 * v / total:5.1f} %  {v / (args.runs + 3) / 1000:8.3f} ms/run")


if __name__ == "__main__":
    main()
