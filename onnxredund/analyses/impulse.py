"""Unit impulse responses of every conv layer, compared by normalized cross-correlation (section 3).

Responses are read at each conv's output (before its activation), on the subgraph cut from the
model's input to the conv layers, for one impulse per model input channel:

- ``network`` mode: the real network; the response to the impulse minus the response to an all-zero
  input, so constant terms (biases) cancel;
- ``linear`` mode: every bias zeroed, activations and constant additions bypassed, BatchNormalization
  reduced to its scale: the effective kernel of the cascade. Ops that stay non-linear (max-pool)
  make it an approximation; the result lists them in ``notes``.

Pseudocode::

    x = [zeros, impulse(channel 0), ..., impulse(channel M-1)]          # (1 + M, *input)
    out = cut(model, input -> conv outputs)(x)
    response[layer] = out[layer][1:] - out[layer][0]                      # (M, C, H, W) -> (C, M, H, W)
    response[layer] = crop to the box where any channel responds (NCC independent of the input size)
    ncc[layer] = ncc_matrix(response, response)                          # (C, C), lags or zero lag
    best[c] = argmax over c' != c of ncc[c, c']; redundant = best value >= threshold
    across[layer][earlier] = ncc_matrix(response[layer], response[earlier])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from onnxredund.atomic import csv_text
from onnxredund.engine.runtime import Runner
from onnxredund.engine.surgery import cut, linearize
from onnxredund.errors import OnnxRedundError
from onnxredund.metrics import ncc_matrix
from onnxredund.model import ConvLayer, Model

__all__ = [
    "IMPULSE_MODES",
    "ImpulseResult",
    "LayerImpulse",
    "best_matches",
    "crop_to_support",
    "impulse_inputs",
    "run_impulse",
]

IMPULSE_MODES = ("network", "linear")


@dataclass(frozen=True)
class LayerImpulse:
    """One layer's impulse analysis.

    Attributes:
        responses: shape (C, M, H, W): channel c's response to an impulse in input channel m, cropped
            to ``support`` (top, left, height, width) in the layer's output map.
        ncc: shape (C, C), one-vs-all NCC within the layer.
        best_match: shape (C,), the most similar other channel (-1 for a single-channel layer).
        best_value: shape (C,), its NCC.
        across: per earlier layer name, NCC of this layer's channels against its channels (C, C_earlier).
        across_best_layer, across_best_channel, across_best_value: per channel, the best match in
            any earlier layer (empty strings / -1 / nan for the first layer).
    """

    name: str
    index: int
    responses: np.ndarray
    support: tuple[int, int, int, int]
    ncc: np.ndarray
    best_match: np.ndarray
    best_value: np.ndarray
    redundant_count: int
    redundant_fraction: float
    across: dict[str, np.ndarray]
    across_best_layer: list[str]
    across_best_channel: np.ndarray
    across_best_value: np.ndarray

    def to_dict(self, *, responses: bool = False) -> dict:
        def r(a):
            return np.round(np.asarray(a, np.float64), 10).tolist()

        d = {
            "name": self.name,
            "index": self.index,
            "channels": int(self.ncc.shape[0]),
            "support": list(self.support),
            "ncc": r(self.ncc),
            "best_match": [int(v) for v in self.best_match],
            "best_value": [None if np.isnan(v) else round(float(v), 10) for v in self.best_value],
            "redundant_count": self.redundant_count,
            "redundant_fraction": self.redundant_fraction,
            "across": {k: r(v) for k, v in self.across.items()},
            "across_best_layer": list(self.across_best_layer),
            "across_best_channel": [int(v) for v in self.across_best_channel],
            "across_best_value": [None if np.isnan(v) else round(float(v), 10) for v in self.across_best_value],
        }
        if responses:
            d["responses"] = r(self.responses)
        return d


@dataclass(frozen=True)
class ImpulseResult:
    """Impulse analysis of a model's conv layers."""

    model: str
    mode: str
    threshold: float
    lags: bool
    position: tuple[int, int]
    notes: list[str]
    layers: list[LayerImpulse]

    def to_csv(self) -> str:
        """One row per (layer, channel): its best match within the layer and in earlier layers."""
        rows = []
        for l in self.layers:
            for c in range(len(l.best_match)):
                rows.append(
                    [
                        l.name,
                        c,
                        int(l.best_match[c]),
                        _csv_float(l.best_value[c]),
                        int(bool(l.best_value[c] >= self.threshold)),
                        l.across_best_layer[c],
                        int(l.across_best_channel[c]),
                        _csv_float(l.across_best_value[c]),
                    ]
                )
        header = ["layer", "channel", "best_match", "best_value", "redundant", "across_layer", "across_channel"]
        return csv_text([*header, "across_value"], rows)

    def to_dict(self, *, responses: bool = False) -> dict:
        return {
            "model": self.model,
            "mode": self.mode,
            "threshold": self.threshold,
            "lags": self.lags,
            "position": list(self.position),
            "notes": list(self.notes),
            "layers": [layer.to_dict(responses=responses) for layer in self.layers],
        }


def _csv_float(v: float) -> str:
    return "" if np.isnan(v) else f"{v:.6f}"


def crop_to_support(responses: np.ndarray, rel_tol: float = 1e-6) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Crop a layer's responses (C, M, H, W) to the box where any of them is non-zero.

    NCC is then computed over the responses themselves, not over the zero margin around them, so it
    does not depend on the input size. Returns the crop and its box (top, left, height, width).
    """
    mag = np.abs(responses).max(axis=(0, 1))
    peak = float(mag.max(initial=0.0))
    if peak == 0.0:
        return responses, (0, 0, *responses.shape[2:])
    rows = np.flatnonzero(mag.max(axis=1) > rel_tol * peak)
    cols = np.flatnonzero(mag.max(axis=0) > rel_tol * peak)
    top, left = int(rows[0]), int(cols[0])
    h, w = int(rows[-1]) - top + 1, int(cols[-1]) - left + 1
    return responses[:, :, top : top + h, left : left + w], (top, left, h, w)


def best_matches(ncc: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Per row, the best column other than itself: (index (C,), value (C,), count >= threshold)."""
    c = ncc.shape[0]
    if c < 2:
        return np.full(c, -1), np.full(c, np.nan), 0
    masked = ncc.copy()
    np.fill_diagonal(masked, -np.inf)
    idx = masked.argmax(axis=1)
    val = masked[np.arange(c), idx]
    return idx, val, int((val >= threshold).sum())


def impulse_inputs(
    sample_shape: tuple[int, ...], layout: str, position: tuple[int, int] | None
) -> tuple[np.ndarray, tuple[int, int]]:
    """A zero input followed by one unit impulse per input channel: shape (1 + M, *sample_shape)."""
    if layout == "NHWC":
        h, w, m = sample_shape
    else:
        m, h, w = sample_shape
    y, x = position if position is not None else (h // 2, w // 2)
    if not (0 <= y < h and 0 <= x < w):
        raise OnnxRedundError(f"impulse position ({y}, {x}) is outside the {h} x {w} input")
    batch = np.zeros((1 + m, m, h, w), np.float32)
    for c in range(m):
        batch[1 + c, c, y, x] = 1.0
    if layout == "NHWC":
        batch = batch.transpose(0, 2, 3, 1)
    return np.ascontiguousarray(batch), (y, x)


def _responses(model: Model, sub: onnx.ModelProto, batch: np.ndarray, device: str) -> list[np.ndarray]:
    """Each output of ``sub`` for the impulses minus its output for zeros, as (C, M, H, W) float64."""
    runner = Runner.create(sub, device)
    run = runner.run if model.batch_dynamic else runner.run_per_sample
    outs = run({model.input_name: batch})
    responses = [(o[1:].astype(np.float64) - o[:1]).transpose(1, 0, 2, 3) for o in outs]
    if not all(np.isfinite(r).all() for r in responses):
        raise OnnxRedundError("impulse responses are not finite: the model overflows on a unit impulse")
    return responses


def run_impulse(
    model: Model,
    *,
    layers: list[ConvLayer] | None = None,
    mode: str = "network",
    threshold: float = 0.9,
    lags: bool = True,
    position: tuple[int, int] | None = None,
    across: bool = True,
    device: str = "auto",
) -> ImpulseResult:
    """Impulse responses and NCC matrices of conv layers.

    Args:
        model: from :func:`onnxredund.load_model`.
        layers: the conv layers to analyse (default all, in graph order).
        mode: "network" or "linear" (see the module docstring).
        threshold: a channel is redundant when its best match is >= threshold.
        lags: maximise NCC over spatial lags (default) or take it at lag zero.
        position: (row, column) of the impulse; default the centre.
        across: also compare each layer with the earlier ones.
        device: "auto", "cuda" or "cpu".
    """
    if mode not in IMPULSE_MODES:
        raise OnnxRedundError(f"unknown impulse mode {mode!r}; use one of {', '.join(IMPULSE_MODES)}")
    if not -1.0 <= threshold <= 1.0:
        raise OnnxRedundError(f"--threshold {threshold} must lie in [-1, 1]")
    layers = layers or model.layers
    if any(len(l.kernel) != 2 for l in layers):
        raise OnnxRedundError("impulse analysis handles 2-D convs; choose 2-D conv layers with --layers")
    batch, pos = impulse_inputs(model.sample_shape, model.layout, position)
    sub = cut(model.proto, [model.input_name], [l.output for l in layers])
    sub, notes = (sub, []) if mode == "network" else linearize(sub)
    cropped = [crop_to_support(r) for r in _responses(model, sub, batch, device)]
    responses = [r for r, _ in cropped]
    results: list[LayerImpulse] = []
    for layer, (resp, box) in zip(layers, cropped, strict=True):
        ncc = ncc_matrix(resp, resp, lags=lags)
        idx, val, count = best_matches(ncc, threshold)
        across_ncc = {}
        if across:
            for earlier, eresp in zip(results, responses, strict=False):
                across_ncc[earlier.name] = ncc_matrix(resp, eresp, lags=lags)
        results.append(_layer_result(layer, resp, box, ncc, idx, val, count, across_ncc))
    return ImpulseResult(
        model=model.path, mode=mode, threshold=threshold, lags=lags, position=pos, notes=notes, layers=results
    )


def _layer_result(layer, resp, box, ncc, idx, val, count, across_ncc) -> LayerImpulse:
    c = ncc.shape[0]
    best_layer, best_channel, best_value = [""] * c, np.full(c, -1), np.full(c, np.nan)
    for name, m in across_ncc.items():
        j = m.argmax(axis=1)
        v = m[np.arange(c), j]
        for ch in range(c):
            if np.isnan(best_value[ch]) or v[ch] > best_value[ch]:
                best_layer[ch], best_channel[ch], best_value[ch] = name, j[ch], v[ch]
    return LayerImpulse(
        name=layer.name,
        index=layer.index,
        responses=resp,
        support=box,
        ncc=ncc,
        best_match=idx,
        best_value=val,
        redundant_count=count,
        redundant_fraction=count / c,
        across=across_ncc,
        across_best_layer=best_layer,
        across_best_channel=best_channel,
        across_best_value=best_value,
    )
