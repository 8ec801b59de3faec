"""Top-1 accuracy of a model's classifier output on labelled data."""

from __future__ import annotations

import numpy as np

from onnxredund.choices import BATCH_SIZE
from onnxredund.data import DataSource
from onnxredund.engine.runtime import Runner
from onnxredund.errors import OnnxRedundError
from onnxredund.metrics import top1
from onnxredund.model import Model, classifier_output

__all__ = ["evaluate", "one_class_note", "predict"]

ONE_CLASS_PROBE = 256  # samples the one-class check looks at


def predict(model: Model, data: DataSource, *, batch_size: int = BATCH_SIZE, device: str = "auto") -> np.ndarray:
    """Top-1 class of every sample of ``data``: shape (N,), int64.

    Raises:
        OnnxRedundError: the model has no classifier output (N, classes).
    """
    pred = classifier_output(model)
    if pred is None:
        raise OnnxRedundError(
            f"{model.path} has no classifier output (N, classes) among {model.output_names}; no top-1 to take "
            "(name one with `classifier`)"
        )
    scores = Runner.create(model.proto, device).run_over(model, data, [pred], batch_size)[0]
    return top1(scores).astype(np.int64)


def one_class_note(model: Model, data: DataSource, *, batch_size: int = BATCH_SIZE, device: str = "auto") -> str | None:
    """Where the model gives one class to every one of the first samples of unlabelled data (a classifier on
    noise often does), a note saying that agreement tells nothing there; else None."""
    if data.y is not None or classifier_output(model) is None or len(data) < 2:
        return None
    probe = data.limit(min(ONE_CLASS_PROBE, len(data)))
    classes = np.unique(predict(model, probe, batch_size=batch_size, device=device))
    if len(classes) > 1:
        return None
    return (
        f"the model gives class {int(classes[0])} to every one of the first {len(probe)} samples of {data.name}: "
        "a perturbation can hardly change that, so agreement (and a cheap verdict from it) says little here; "
        "measure on real data"
    )


def evaluate(model: Model, data: DataSource, *, batch_size: int = BATCH_SIZE, device: str = "auto") -> dict:
    """``{"model", "data", "num_samples", "accuracy"}`` for labelled data."""
    if data.y is None:
        raise OnnxRedundError(
            f"data {data.name!r} has no labels; pass labelled data (MNIST, a .npz with y, class subfolders or `labels`)"
        )
    top = predict(model, data, batch_size=batch_size, device=device)
    return {"model": model.path, "data": data.name, "num_samples": len(data), "accuracy": float((top == data.y).mean())}
