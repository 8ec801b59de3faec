"""The paper's figure 7: two cascaded Gaussian kernels, vertical then horizontal or horizontal then
vertical, have the same impulse response (convolution commutes), so NCC finds them alike.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxredund.analyses.impulse import run_impulse
from onnxredund.engine.loading import load_model_proto
from onnxredund.ncc import ncc_matrix

__all__ = ["cascade_check", "cascade_model", "gaussian_kernel"]


def gaussian_kernel(size: int = 7, sigma: float = 1.5) -> np.ndarray:
    """A 1-D Gaussian, normalized to sum 1: shape (size,)."""
    t = np.arange(size) - (size - 1) / 2
    g = np.exp(-(t**2) / (2 * sigma**2))
    return (g / g.sum()).astype(np.float32)


def cascade_model(first: np.ndarray, second: np.ndarray, size: int = 33) -> onnx.ModelProto:
    """Two cascaded single-channel 2-D convs (``same`` padding) on a 1 x size x size input."""
    nodes, inits = [], []
    for i, k in enumerate((first, second)):
        kh, kw = k.shape
        inits.append(numpy_helper.from_array(k.reshape(1, 1, kh, kw).astype(np.float32), f"w{i}"))
        nodes.append(
            helper.make_node(
                "Conv",
                ["x" if i == 0 else "y0", f"w{i}"],
                [f"y{i}"],
                name=f"conv{i + 1}",
                pads=[kh // 2, kw // 2, kh // 2, kw // 2],
            )
        )
    graph = helper.make_graph(
        nodes,
        "cascade",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 1, size, size])],
        [helper.make_tensor_value_info("y1", onnx.TensorProto.FLOAT, ["N", 1, size, size])],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def cascade_check(size: int = 33, kernel: int = 7, sigma: float = 1.5) -> dict:
    """The paper's figure 7: vertical then horizontal Gaussian equals horizontal then vertical.

    Returns:
        ``{"ncc": float, "max_abs_diff": float, "responses": (2, size, size)}``: the impulse responses
        of the last conv in both orders, their NCC (1.0) and largest difference (float rounding).
    """
    g = gaussian_kernel(kernel, sigma)
    vertical, horizontal = g.reshape(-1, 1), g.reshape(1, -1)
    responses = []
    for first, second in ((vertical, horizontal), (horizontal, vertical)):
        model = load_model_proto(cascade_model(first, second, size), name="cascade")
        res = run_impulse(model, layers=[model.layers[-1]], mode="linear", across=False, device="cpu")
        responses.append(res.layers[0].responses[0, 0])
    a, b = responses
    ncc = float(ncc_matrix(a[None, None], b[None, None], lags=False)[0, 0])
    return {"ncc": ncc, "max_abs_diff": float(np.abs(a - b).max()), "responses": np.stack(responses)}
