"""What every data source gives, and how its arrays become a model's feeds.

A source has a length, optional integer labels ``y`` (N,), and ``arrays(start, stop)``: the inputs of
samples ``start:stop`` keyed by input name, :data:`IMAGE_KEY` standing for the model's image input.
:func:`conform_feeds` checks them against the model's inputs (names, shapes, dtypes, finite values)
and moves an image's channel axis where the data and the model disagree.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from onnxredund.errors import OnnxRedundError
from onnxredund.model import ModelInput

__all__ = ["IMAGE_KEY", "DataSource", "Dataset", "conform", "conform_feeds", "iter_batches"]

#: the key of the image input's array when the data does not name the model's inputs
IMAGE_KEY = "x"


class DataSource(Protocol):
    """What the analyses read data through (:class:`Dataset`, image folders)."""

    name: str
    y: np.ndarray | None

    def __len__(self) -> int: ...

    def arrays(self, start: int, stop: int) -> dict[str, np.ndarray]: ...

    def limit(self, n: int | None) -> DataSource: ...

    def subset(self, indices: list[int], label: str) -> DataSource: ...

    def describe(self) -> dict: ...


def _batched(value: np.ndarray) -> bool:
    return np.ndim(value) > 0


@dataclass(frozen=True)
class Dataset:
    """Inputs held in memory, and optional labels.

    Attributes:
        x: inputs (N, ...): one array for the image input, or arrays by input name (:data:`IMAGE_KEY`
            for the image input); a 0-d array feeds every sample as it is.
        y: integer labels, shape (N,), or None when the data has none.
        name: where the data came from, for reports.
        info: what to record about the data in results (source, preprocessing, fingerprint).
    """

    x: np.ndarray | dict[str, np.ndarray]
    y: np.ndarray | None
    name: str
    info: dict = field(default_factory=dict, compare=False)

    def _named(self) -> dict[str, np.ndarray]:
        return self.x if isinstance(self.x, dict) else {IMAGE_KEY: self.x}

    def __len__(self) -> int:
        return int(next(v.shape[0] for v in self._named().values() if _batched(v)))

    def arrays(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """The inputs of samples ``start:stop``, by name."""
        return {k: v[start:stop] if _batched(v) else v for k, v in self._named().items()}

    def limit(self, n: int | None) -> Dataset:
        """The first ``n`` samples (all of them for None)."""
        if not n:
            return self
        x = self.x[:n] if not isinstance(self.x, dict) else self.arrays(0, n)
        return Dataset(x, None if self.y is None else self.y[:n], f"{self.name}[:{n}]", self.info)

    def subset(self, indices: list[int], label: str) -> Dataset:
        """The samples at ``indices`` (in that order), named ``name[label]``."""
        index = np.asarray(indices, np.int64)
        x = {k: v[index] if _batched(v) else v for k, v in self._named().items()}
        x = x if isinstance(self.x, dict) else x[IMAGE_KEY]
        return Dataset(x, None if self.y is None else self.y[index], f"{self.name}[{label}]", self.info)

    def describe(self) -> dict:
        """What the data is, for results: its name, sample count, labels and the source's own facts."""
        return {"name": self.name, "samples": len(self), "labelled": self.y is not None, **self.info}


def _move_channels(x: np.ndarray, want: tuple[int, ...]) -> np.ndarray:
    """``x`` (N, ...) with its channel axis moved first <-> last where that makes it ``want``."""
    rank = x.ndim
    last_to_first = (0, rank - 1, *range(1, rank - 1))
    first_to_last = (0, *range(2, rank), 1)
    for axes in (last_to_first, first_to_last):
        if tuple(x.shape[i] for i in axes[1:]) == want:
            return x.transpose(axes)
    return x


def conform(value: np.ndarray, inp: ModelInput, source: str = "the data") -> np.ndarray:
    """One input's array fitted to the model: shape (channels moved for an image), dtype, finite values.

    Raises:
        OnnxRedundError: the shapes cannot be matched, the dtype cannot be, or the data holds NaN or Inf.
    """
    value = np.asarray(value)
    if value.dtype.kind not in "fiub":
        raise OnnxRedundError(f"{source}: input {inp.name!r} must be numeric, got {value.dtype}")
    if not inp.batched:
        if value.shape != ():
            raise OnnxRedundError(f"{source}: input {inp.name!r} is a scalar but the data gives shape {value.shape}")
        return value.astype(inp.dtype)
    if inp.layout and value.ndim == len(inp.sample_shape) + 1 and value.shape[1:] != inp.sample_shape:
        value = _move_channels(value, inp.sample_shape)
    if value.shape[1:] != inp.sample_shape:
        kind = f" ({inp.layout})" if inp.layout else f" input {inp.name!r}"
        raise OnnxRedundError(
            f"data samples have shape {tuple(value.shape[1:])} but the model{kind} takes {inp.sample_shape}; "
            "pass data of the model's input shape"
        )
    if np.dtype(inp.dtype).kind == "f":
        value = np.ascontiguousarray(value, dtype=inp.dtype)
        if not np.isfinite(value).all():
            raise OnnxRedundError(f"{source} contains NaN or Inf; clean it first")
        return value
    if value.dtype.kind not in "iub":
        raise OnnxRedundError(f"{source}: input {inp.name!r} takes {inp.dtype} but the data gives {value.dtype}")
    return np.ascontiguousarray(value, dtype=inp.dtype)


def conform_feeds(
    arrays: dict[str, np.ndarray], inputs: list[ModelInput], image: str, source: str = "the data"
) -> dict[str, np.ndarray]:
    """A model's feeds from a source's arrays (see :func:`conform`); :data:`IMAGE_KEY` feeds ``image``.

    Raises:
        OnnxRedundError: an input without an array, an array that is no input, or an array that does not fit.
    """
    names = {i.name for i in inputs}
    named = dict(arrays)
    if IMAGE_KEY in named and IMAGE_KEY not in names:
        named[image] = named.pop(IMAGE_KEY)
    extra = sorted(set(named) - names)
    if extra:
        raise OnnxRedundError(f"{source} has an array {extra[0]!r} that is not an input of the model {sorted(names)}")
    missing = [i.name for i in inputs if i.name not in named]
    if missing:
        raise OnnxRedundError(
            f"{source} has no array for the model's input {missing[0]!r}; give one array per input "
            f"(by name in a .npz or a loader script's feed dicts)"
        )
    return {i.name: conform(named[i.name], i, source) for i in inputs}


def iter_batches(
    source: DataSource, batch_size: int, first: int = 0, *, prefetch: bool = True
) -> Iterator[tuple[int, dict[str, np.ndarray], np.ndarray | None]]:
    """(batch index, arrays, labels) of every batch from ``first`` on; the next batch is read on a thread
    while the caller works on this one."""
    starts = list(range(0, len(source), batch_size))

    def read(bi: int):
        start = starts[bi]
        stop = min(start + batch_size, len(source))
        return source.arrays(start, stop), None if source.y is None else source.y[start:stop]

    if not prefetch:
        for bi in range(first, len(starts)):
            yield (bi, *read(bi))
        return
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(read, first) if first < len(starts) else None
        for bi in range(first, len(starts)):
            arrays, labels = pending.result()
            pending = pool.submit(read, bi + 1) if bi + 1 < len(starts) else None
            yield bi, arrays, labels
