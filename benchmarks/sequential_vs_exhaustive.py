"""Sequential against exhaustive shuffle sweeps on the same model, layers and data (issue 25, item 3).

For each layer: the exhaustive sweep (every image for every channel; its wall time is the cost to
beat), then the sequential one (each channel until decided), then the sequential one with a budget of a tenth
of the exhaustive sweep's time. Reported per run: wall seconds, channel x images measured, and the decisions
against the exhaustive sweep's: its point estimate (cost <= cheap-drop, what an exhaustive audit's cheap
fraction counts) and its own interval's decision.

    python benchmarks/sequential_vs_exhaustive.py MODEL --data DIR [--layers a,b] [--modes channel,pixel]
        [--limit N] [--input-shape ...] [--preprocess ...] [--batch-size 256] [--no-shared-clean]
        [--out results.json]

Each configuration (exhaustive, sequential, sequential at a tenth) sweeps a layer's modes one after the other
as an audit does, the second taking the first's clean runs (:class:`~onnxredund.engine.sweep.CleanPasses`);
``--no-shared-clean`` runs them again in every sweep (the audits before they were shared).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from onnxredund.analyses.sequential import Estimation
from onnxredund.analyses.shuffle import run_shuffle
from onnxredund.data import load_dataset
from onnxredund.engine import load_model
from onnxredund.engine.sweep import CleanPasses


def _agreement(seq, exhaustive, cheap_drop: float) -> dict:
    """How the sequential decisions compare with the exhaustive sweep's."""
    point = ["cheap" if c <= cheap_drop else "costly" for c in exhaustive.cost()]
    decided = [i for i, d in enumerate(seq.decision) if d != "undecided"]
    agree = [i for i in decided if seq.decision[i] == point[i]]
    disagree = [i for i in decided if seq.decision[i] != point[i]]
    # a disagreement the exhaustive sweep itself could not settle: its interval holds the threshold
    unsettled = [i for i in disagree if exhaustive.decision[i] == "undecided"]
    return {
        "channels": len(seq.channels),
        "decided": len(decided),
        "undecided": len(seq.channels) - len(decided),
        "agree": len(agree),
        "disagree": len(disagree),
        "disagree_within_exhaustive_interval": len(unsettled),
        "channel_images": int(np.sum(seq.images)),
        "seconds": round(seq.seconds, 2),
        "counts": seq.decision_counts(),
    }


def _sweeps(model, layer, data, modes, shared: bool, common: dict, estimation, max_seconds=None) -> dict:
    """The layer's sweeps in each mode one after the other, as an audit makes them: (result, wall seconds) by
    mode; with ``shared`` the later modes take the first one's clean runs."""
    passes = CleanPasses() if shared else None
    out = {}
    for mode in modes:
        t0 = time.perf_counter()
        limit = None if max_seconds is None else max_seconds[mode]
        result = run_shuffle(
            model, layer, data, mode=mode, estimation=estimation, max_seconds=limit, clean_passes=passes, **common
        )
        out[mode] = (result, time.perf_counter() - t0)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--data", required=True)
    p.add_argument("--layers", help="comma separated names or indices [default: every conv with > 1 input channel]")
    p.add_argument("--modes", default="channel,pixel")
    p.add_argument("--limit", type=int)
    p.add_argument("--input-shape", help="CxHxW of an image input with free sizes")
    p.add_argument("--preprocess")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--cheap-drop", type=float, default=0.005)
    p.add_argument("--no-shared-clean", action="store_true", help="each sweep runs its own clean passes")
    p.add_argument("--out")
    a = p.parse_args()
    shape = tuple(int(v) for v in a.input_shape.split("x")) if a.input_shape else None
    model = load_model(a.model, input_shape=shape)
    data = load_dataset(a.data, seed=0, inputs=model.inputs, preprocess=a.preprocess).limit(a.limit)
    layers = (
        [model.layer(s) for s in a.layers.split(",")]
        if a.layers
        else [conv for conv in model.layers if conv.in_channels > 1]
    )
    common = {"batch_size": a.batch_size, "device": "cpu"}
    modes = a.modes.split(",")
    exhaustive = Estimation(cheap_drop=a.cheap_drop)
    sequential = Estimation(sequential=True, cheap_drop=a.cheap_drop)
    rows, totals = [], {"exhaustive": 0.0, "sequential": 0.0, "budget": 0.0, "exhaustive_channel_images": 0}
    for layer in layers:
        config = (model, layer, data, modes, not a.no_shared_clean, common)
        full = _sweeps(*config, exhaustive)
        seq = _sweeps(*config, sequential)
        tight = _sweeps(*config, sequential, {mode: full[mode][1] / 10 for mode in modes})
        for mode in modes:
            (r_full, t_full), (r_seq, t_seq), (r_tight, t_tight) = full[mode], seq[mode], tight[mode]
            row = {
                "layer": layer.name,
                "mode": mode,
                "in_channels": layer.in_channels,
                "images": len(data),
                "exhaustive_seconds": round(t_full, 2),
                "exhaustive_counts": r_full.decision_counts(),
                "exhaustive_cheap_by_estimate": int((r_full.cost() <= a.cheap_drop).sum()),
                "sequential": _agreement(r_seq, r_full, a.cheap_drop) | {"wall": round(t_seq, 2)},
                "budget_tenth": _agreement(r_tight, r_full, a.cheap_drop) | {"wall": round(t_tight, 2)},
            }
            rows.append(row)
            totals["exhaustive"] += t_full
            totals["sequential"] += t_seq
            totals["budget"] += t_tight
            totals["exhaustive_channel_images"] += layer.in_channels * len(data)
            print(json.dumps(row), flush=True)
    summary = {"model": a.model, "data": data.name, "totals": totals}
    for run in ("sequential", "budget_tenth"):
        r = [row[run] for row in rows]
        decided = sum(x["decided"] for x in r)
        summary[run] = {
            "channels": sum(x["channels"] for x in r),
            "decided": decided,
            "undecided": sum(x["undecided"] for x in r),
            "agree_of_decided": sum(x["agree"] for x in r) / max(decided, 1),
            "disagree": sum(x["disagree"] for x in r),
            "disagree_within_exhaustive_interval": sum(x["disagree_within_exhaustive_interval"] for x in r),
            "channel_images_share": sum(x["channel_images"] for x in r) / max(totals["exhaustive_channel_images"], 1),
        }
    print(json.dumps(summary, indent=2))
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"rows": rows, "summary": summary}, f, indent=2)


if __name__ == "__main__":
    main()
