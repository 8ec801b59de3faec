"""Top-1 accuracy of a model's prediction output on labelled data."""

from __future__ import annotations

import numpy as np

from onnxredund.data import Dataset, conform
from onnxredund.engine.runtime import Runner
from onnxredund.errors import OnnxRedundError
from onnxredund.model import Model, classifier_output

__all__ = ["evaluate", "predict"]


def predict(model: Model, x: np.ndarray, *, batch_size: int = 256, device: str = "auto") -> np.ndarray:
    """Top-1 class of every sample: shape (N,), int64."""
    pred = classifier_output(model)
    if pred is None:
        raise OnnxRedundError(f"output {model.output_names[0]!r} is not (N, classes); cannot take a top-1")
    runner = Runner.create(model.proto, device)
    x = conform(x, model.sample_shape, model.layout)
    step = batch_size if model.batch_dynamic else 1
    tops = [runner.run({model.input_name: x[s : s + step]}, [pred])[0].argmax(axis=1) for s in range(0, len(x), step)]
    return np.concatenate(tops).astype(np.int64)


def evaluate(model: Model, data: Dataset, *, batch_size: int = 256, device: str = "auto") -> dict:
    """``{"model", "data", "num_samples", "accuracy"}`` for labelled data."""
    if data.y is None:
        raise OnnxRedundError(f"data {data.name!r} has no labels; pass labelled data (MNIST or .npz with y)")
    top = predict(model, data.x, batch_size=batch_size, device=device)
    return {"model": model.path, "data": data.name, "num_samples": len(data), "accuracy": float((top == data.y).mean())}
