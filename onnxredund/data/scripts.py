"""Loader scripts, the convention users already have (Polygraphy's ``--data-loader-script``).

``FILE.py[:FUNC]`` (FUNC defaults to ``load_data``) is imported and FUNC() called: it returns an
iterable of feed dicts ``{input_name: array}``, each a batch (N, ...) of every input (a 0-d array
feeds every sample as it is); a feed dict may also hold ``labels`` (N,) integers. The script is run
as the user's own code, with the user's rights: onnxredund runs only scripts it is pointed at. The
batches are gathered into memory (use an image folder for data larger than memory).
"""

from __future__ import annotations

import importlib.util
import traceback
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from onnxredund.data.base import Dataset
from onnxredund.errors import OnnxRedundError, first_line

__all__ = ["DEFAULT_FUNCTION", "LABELS_KEY", "load_script"]

DEFAULT_FUNCTION = "load_data"
LABELS_KEY = "labels"


def _split_spec(spec: str) -> tuple[Path, str]:
    path, sep, func = spec.rpartition(":")
    if not sep or not func.isidentifier() or not path.endswith(".py"):
        path, func = spec, DEFAULT_FUNCTION
    return Path(path), func


def _where(exc: BaseException, path: Path) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename) == path.resolve()]
    if isinstance(exc, SyntaxError) and exc.lineno:
        return f" (line {exc.lineno})"
    return f" (line {frames[-1].lineno})" if frames else ""


def _call(path: Path, func: str):
    spec = importlib.util.spec_from_file_location(f"onnxredund_loader_{path.stem}", path.resolve())
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        loader = getattr(module, func, None)
        if not callable(loader):
            raise OnnxRedundError(
                f"data loader script {path} defines no function {func}(); add it or name it FILE.py:FUNC"
            )
        return list(loader())
    except OnnxRedundError:
        raise
    except Exception as e:  # the user's own code: any error it raises is theirs to fix
        raise OnnxRedundError(
            f"data loader script {path} raised {type(e).__name__}: {first_line(e, 120)}{_where(e, path)}"
        ) from None


def _gather(batches: list, path: Path) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    if not batches:
        raise OnnxRedundError(f"data loader script {path} gave no feed dicts; return an iterable of {{name: array}}")
    columns: dict[str, list[np.ndarray]] = {}
    labels = []
    for n, feed in enumerate(batches):
        if not isinstance(feed, Mapping):
            raise OnnxRedundError(f"data loader script {path}: item {n} is a {type(feed).__name__}, not a feed dict")
        for name, value in feed.items():
            if name == LABELS_KEY:
                labels.append(np.asarray(value))
            else:
                columns.setdefault(str(name), []).append(np.asarray(value))
    if len({len(v) for v in columns.values()}) != 1 or len(next(iter(columns.values()))) != len(batches):
        raise OnnxRedundError(f"data loader script {path}: every feed dict must hold the same inputs")
    arrays = {}
    for name, parts in columns.items():
        if parts[0].ndim == 0:
            arrays[name] = parts[0]
        elif len({p.shape[1:] for p in parts}) != 1:
            raise OnnxRedundError(f"data loader script {path}: input {name!r} changes shape between feed dicts")
        else:
            arrays[name] = np.concatenate(parts)
    return arrays, _labels(labels, arrays, len(batches), path)


def _labels(parts: list[np.ndarray], arrays: dict, batches: int, path: Path) -> np.ndarray | None:
    if not parts:
        return None
    if len(parts) != batches:
        raise OnnxRedundError(f"data loader script {path}: give '{LABELS_KEY}' in every feed dict or in none")
    y = np.concatenate([p.reshape(-1) for p in parts])
    n = next(len(v) for v in arrays.values() if v.ndim)
    if y.dtype.kind not in "iu" or len(y) != n or (y.size and y.min() < 0):
        raise OnnxRedundError(
            f"data loader script {path}: '{LABELS_KEY}' must be {n} integers >= 0, got {y.dtype} {y.shape}"
        )
    return y.astype(np.int64)


def load_script(spec: str) -> Dataset:
    """The data a loader script ``FILE.py[:FUNC]`` gives (see the module docstring).

    Raises:
        OnnxRedundError: no such file or function, the script raises, or its feed dicts are malformed.
    """
    path, func = _split_spec(spec)
    if not path.is_file():
        raise OnnxRedundError(f"data loader script {path} does not exist")
    arrays, y = _gather(_call(path, func), path)
    if not any(v.ndim for v in arrays.values()):
        raise OnnxRedundError(f"data loader script {path}: no input has a batch axis")
    return Dataset(arrays, y, path.name, {"kind": "loader script", "script": f"{path}:{func}"})
