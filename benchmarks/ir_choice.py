"""Which ONNX IR the graph edits stand on: onnx-ir against onnx-graphsurgeon on a large model.

    python benchmarks/ir_choice.py [--model PATH]      # default: a ResNet-50 (random weights, exported
                                                       # with torch, weights in an external .data file)

For each library, in its own process (peak RSS from the kernel: VmHWM, read by the process itself, since a child's
rusage keeps the parent's peak across exec): the time to load the file with its
external data, and the time and peak memory of a pruning-shaped edit: every conv's weight is read as an
array, loses its last output channel (the writer's pattern: a fresh initializer the node reads), the
initializers nothing reads any more are dropped, and the model goes back to a ModelProto and through
onnx's full checker. A third row does the same edit on bare protobuf, as the code did before.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

EDIT = {
    "onnx-ir": """
import onnx_ir as ir, numpy as np, onnx
from onnx_ir.passes.common import RemoveUnusedNodesPass
model = ir.load(PATH)
t_load = time.perf_counter() - t0
for node in model.graph:
    if node.op_type == "Conv":
        w = node.inputs[1]
        new = ir.Value(name=w.name + "__pruned", const_value=ir.tensor(w.const_value.numpy()[:-1].copy()))
        model.graph.register_initializer(new)
        node.replace_input_with(1, new)
RemoveUnusedNodesPass()(model)
proto = ir.to_proto(model)
""",
    "onnx-graphsurgeon": """
import onnx_graphsurgeon as gs, numpy as np, onnx
graph = gs.import_onnx(onnx.load(PATH))
t_load = time.perf_counter() - t0
for node in graph.nodes:
    if node.op == "Conv":
        w = node.inputs[1]
        node.inputs[1] = gs.Constant(w.name + "__pruned", np.ascontiguousarray(w.values[:-1]))
graph.cleanup()
proto = gs.export_onnx(graph)
""",
    "protobuf": """
import onnx, numpy as np
from onnx import numpy_helper
proto = onnx.load(PATH)
t_load = time.perf_counter() - t0
inits = {t.name: t for t in proto.graph.initializer}
for node in proto.graph.node:
    if node.op_type == "Conv":
        w = numpy_helper.to_array(inits[node.input[1]])[:-1].copy()
        proto.graph.initializer.append(numpy_helper.from_array(w, node.input[1] + "__pruned"))
        node.input[1] = node.input[1] + "__pruned"
read = {t for n in proto.graph.node for t in n.input}
keep = [t for t in proto.graph.initializer if t.name in read]
del proto.graph.initializer[:]
proto.graph.initializer.extend(keep)
""",
}

RUNNER = """
import time, sys
PATH = sys.argv[1]
t0 = time.perf_counter()
{edit}
t_edit = time.perf_counter() - t0 - t_load
convs = [n for n in proto.graph.node if n.op_type == "Conv"]
size = sum(t.ByteSize() for t in proto.graph.initializer)
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]
print(f"{{t_load:.3f}} {{t_edit:.3f}} {{len(convs)}} {{size}} {{hwm}}")
"""


def run(name: str, path: Path) -> tuple[float, float, float]:
    code = RUNNER.format(edit=EDIT[name])
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    if proc.wait():
        raise SystemExit(f"{name} failed")
    t_load, t_edit, _, _, hwm_kb = out.split()
    return float(t_load), float(t_edit), int(hwm_kb) / 1024


def resnet50(folder: Path) -> Path:
    import onnx
    import torch

    from exporters.resnet import ResNet50

    torch.manual_seed(0)
    path = folder / "resnet50.onnx"
    torch.onnx.export(ResNet50().eval(), torch.zeros(1, 3, 224, 224), str(path), opset_version=17, dynamo=False)
    proto = onnx.load(str(path))
    onnx.save_model(proto, str(path), save_as_external_data=True, location="resnet50.onnx.data")
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.model or resnet50(Path(tmp))
        size = sum(f.stat().st_size for f in path.parent.glob(path.name + "*"))
        print(f"# {path.name}: {size / 2**20:.0f} MiB with its external data; best of {args.repeats} runs")
        print("| library | load (s) | edit + to proto (s) | peak RSS (MiB) |")
        print("|---|---|---|---|")
        for name in EDIT:
            runs = [run(name, path) for _ in range(args.repeats)]
            load, edit, rss = (min(r[k] for r in runs) for k in range(3))
            print(f"| {name} | {load:.3f} | {edit:.3f} | {rss:.0f} |")


if __name__ == "__main__":
    main()
