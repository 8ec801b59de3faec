"""Arrays from ``.npz`` files (no pickles) and seeded synthetic inputs."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from onnxredund.data.base import IMAGE_KEY, Dataset
from onnxredund.errors import OnnxRedundError
from onnxredund.model import ModelInput

__all__ = ["MAX_SYNTHETIC", "load_npz", "synthetic"]

MAX_SYNTHETIC = 1_000_000
_LABELS = "y"


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise OnnxRedundError(f"cannot read {path} as .npz: {e}") from None


def _check_labels(path: Path, y: np.ndarray, n: int) -> np.ndarray:
    if y.dtype.kind not in "iu" or y.shape != (n,):
        raise OnnxRedundError(f"{path}: y must be integer labels of shape ({n},), got {y.dtype} {y.shape}")
    if y.size and int(y.min()) < 0:
        raise OnnxRedundError(f"{path}: labels must be >= 0, found {int(y.min())}")
    return y.astype(np.int64)


def load_npz(path: str | os.PathLike, input_names: list[str] | None = None) -> Dataset:
    """Inputs and optional integer labels ``y`` (N,) from an ``.npz`` file.

    The inputs are either one array ``x`` (N, ...) for the image input, or one array per model input
    named after it (``input_names``); 0-d arrays feed every sample as they are.

    Raises:
        OnnxRedundError: the file cannot be read, holds no inputs, or holds non-numeric or non-finite inputs.
    """
    path = Path(path)
    arrays = _read_npz(path)
    y = arrays.pop(_LABELS, None)
    named = {k: v for k, v in arrays.items() if input_names and k in input_names}
    if not named:
        if IMAGE_KEY not in arrays:
            what = f"'x' or arrays named after the inputs {input_names}" if input_names else "'x'"
            raise OnnxRedundError(f"{path} has no array {what} (it has {sorted(arrays)}); save inputs as x=...")
        named = {IMAGE_KEY: arrays[IMAGE_KEY]}
    for name, x in named.items():
        if x.dtype.kind not in "fiub" or (x.ndim < 2 and name == IMAGE_KEY):
            raise OnnxRedundError(f"{path}: {name} must be a numeric array (N, ...), got {x.dtype} {x.shape}")
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise OnnxRedundError(f"{path}: {name} contains NaN or Inf; clean the data first")
    data = Dataset(named, None, path.name, {"kind": "npz", "file": str(path)})
    if y is not None:
        y = _check_labels(path, y, len(data))
    x = named[IMAGE_KEY].astype(np.float32, copy=False) if list(named) == [IMAGE_KEY] else named
    return Dataset(x, y, path.name, {"kind": "npz", "file": str(path)})


def synthetic(num: int, inputs: list[ModelInput] | tuple[int, ...], rng: np.random.Generator) -> Dataset:
    """``num`` seeded samples, no labels: uniform [0, 1) floats for float inputs (zeros for integer ones).

    Args:
        inputs: the model's inputs, or the image input's sample shape alone.
    """
    info = {"kind": "synthetic", "range": "uniform [0, 1)"}
    if isinstance(inputs, tuple):
        return Dataset(rng.random((num, *inputs), dtype=np.float32), None, f"synthetic:{num}", info)
    arrays = {inp.name: _random(rng, (num, *inp.sample_shape) if inp.batched else (), inp.dtype) for inp in inputs}
    return Dataset(arrays, None, f"synthetic:{num}", info)


def _random(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    if dtype in ("float32", "float64"):
        return rng.random(shape, dtype=np.dtype(dtype))
    if np.dtype(dtype).kind == "f":
        return rng.random(shape, dtype=np.float32).astype(dtype)
    return np.zeros(shape, dtype)
