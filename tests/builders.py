"""What the tests build and share: tiny ONNX models made in code with answers known in advance, where the data and
the models are, and the CLI run in-process. Test modules import these (``from builders import ...``);
``conftest.py`` keeps only fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxredund.engine.backends import LocalBackend

ROOT = Path(__file__).resolve().parents[1]
MNIST_DIR = ROOT.parent / "shared" / "data" / "mnist"
MODELS = ROOT / "models"
#: where scripts/fetch_models.py puts third-party models (read before the tests isolate the user's cache)
REAL_MODELS = Path(os.environ.get("ONNXREDUND_MODELS") or Path.home() / ".cache" / "onnxredund" / "models")


def _typed(value) -> np.ndarray:
    a = np.asarray(value)
    if a.dtype in (np.int8, np.uint8, np.int16, np.uint16):  # quantized values and zero points keep their type
        return a
    return a.astype(np.int64) if a.dtype.kind in "iu" else a.astype(np.float32)


def make_model(nodes, inputs, outputs, inits=(), opset: int = 17, ir: int = 8) -> onnx.ModelProto:
    """A model from nodes; ``inputs``/``outputs`` are (name, shape) pairs of float tensors; integer
    initializers become int64 (8 and 16 bit ones, quantized values, keep their type), the others float32."""
    graph = helper.make_graph(
        nodes,
        "test",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        initializer=[numpy_helper.from_array(_typed(v), k) for k, v in dict(inits).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir)
    onnx.checker.check_model(model)
    return model


def save(model: onnx.ModelProto, tmp_path: Path, name: str = "model.onnx") -> Path:
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def small_cnn(
    seed: int = 0,
    *,
    c_in: int = 3,
    c_mid: int = 4,
    c_out: int = 5,
    size: int = 6,
    classes: int = 4,
    residual: bool = False,
    bn: bool = False,
    groups: int = 1,
    zero_channel: int | None = None,
    batch=None,
) -> tuple[onnx.ModelProto, dict]:
    """input (N, c_in, size, size) -> conv1 (+BN) -> Relu -> conv2 (groups) -> Relu [+ residual conv1 act]
    -> GlobalAveragePool -> Flatten -> Gemm -> logits (N, classes). Returns the model and its weights."""
    rng = np.random.default_rng(seed)
    w = {
        "w1": rng.normal(size=(c_mid, c_in, 3, 3)),
        "b1": rng.normal(size=c_mid) * 0.1,
        "w2": rng.normal(size=(c_out, c_mid // groups, 3, 3)),
        "b2": rng.normal(size=c_out) * 0.1,
        "fc": rng.normal(size=(c_out, classes)),
        "fcb": rng.normal(size=classes) * 0.1,
    }
    if zero_channel is not None:
        w["w2"][:, zero_channel] = 0.0
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["z1"], name="conv1", pads=[1, 1, 1, 1])]
    act1_in = "z1"
    if bn:
        w |= {
            "g": rng.uniform(0.5, 2, c_mid),
            "beta": rng.normal(size=c_mid),
            "mu": rng.normal(size=c_mid),
            "var": rng.uniform(0.5, 2, c_mid),
        }
        nodes.append(helper.make_node("BatchNormalization", ["z1", "g", "beta", "mu", "var"], ["bn1"], name="bn1"))
        act1_in = "bn1"
    nodes += [
        helper.make_node("Relu", [act1_in], ["a1"], name="relu1"),
        helper.make_node("Conv", ["a1", "w2", "b2"], ["z2"], name="conv2", pads=[1, 1, 1, 1], group=groups),
        helper.make_node("Relu", ["z2"], ["a2"], name="relu2"),
    ]
    last = "a2"
    if residual:
        assert c_mid == c_out
        nodes.append(helper.make_node("Add", ["a2", "a1"], ["res"], name="residual"))
        last = "res"
    nodes += [
        helper.make_node("GlobalAveragePool", [last], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc", "fcb"], ["logits"], name="fc"),
    ]
    n = batch if batch is not None else "N"
    model = make_model(nodes, [("x", [n, c_in, size, size])], [("logits", [n, classes])], w)
    return model, w


def run_cli(*args: str, env: dict | None = None):
    """Run the CLI in-process; returns click's Result (exit_code, stdout, stderr)."""
    from click.testing import CliRunner

    from onnxredund.cli import main

    runner = CliRunner()
    return runner.invoke(main, [str(a) for a in args], env={**os.environ, **(env or {})}, catch_exceptions=False)


class ChunksHere(LocalBackend):
    """Units of one chunk each, run in this process as a worker runs them: kept when finished, a signal inside a
    unit loses the unit (what Ray's workers do, without Ray)."""

    in_process = False


def statically_quantized(
    proto: onnx.ModelProto, tmp_path: Path, *, per_channel: bool, operators: bool = False, seed: int = 7
) -> onnx.ModelProto:
    """``proto`` (input ``x`` of (N, 3, 6, 6)) through onnxruntime's static quantizer, calibrated on 8 seeded normal
    inputs: the QDQ form, or with ``operators`` the QOperator one (QLinearConv ...)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    rng = np.random.default_rng(seed)

    class Inputs(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"x": rng.normal(size=(1, 3, 6, 6)).astype(np.float32)} for _ in range(8)])

        def get_next(self):
            return next(self.batches, None)

    src, dst = tmp_path / "float.onnx", tmp_path / ("qop.onnx" if operators else "qdq.onnx")
    onnx.save(proto, src)
    form = QuantFormat.QOperator if operators else QuantFormat.QDQ
    quantize_static(str(src), str(dst), Inputs(), quant_format=form, per_channel=per_channel)
    return onnx.load(dst)
