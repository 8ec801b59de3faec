"""Datasets: MNIST IDX folders, ``.npz`` arrays and seeded synthetic inputs.

A data *spec* is what the user passes to ``--data``:

- ``mnist`` or ``mnist:train`` / ``mnist:test``: MNIST, looked up in ``$ONNXREDUND_DATA``, then
  the user cache (``~/.cache/onnxredund/mnist``), then downloaded from the official mirrors into
  the cache with checksums verified;
- a directory holding the four standard IDX files (gz or raw), optionally followed by
  ``:train`` / ``:test``;
- a ``.npz`` file with an array ``x`` (N, ...) and optionally integer labels ``y`` (N,);
- ``synthetic`` or ``synthetic:N``: N seeded uniform [0, 1) inputs shaped like the model input.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import struct
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnxredund.errors import OnnxRedundError

__all__ = [
    "MNIST_FILES",
    "MNIST_MIRRORS",
    "Dataset",
    "conform",
    "load_dataset",
    "load_mnist",
    "load_npz",
    "read_idx",
    "synthetic",
]

log = logging.getLogger(__name__)

#: file stem -> (sha256 of the .gz file, sha256 is verified after download)
MNIST_FILES: dict[str, str] = {
    "train-images-idx3-ubyte": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
MNIST_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
DATA_ENV = "ONNXREDUND_DATA"
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_MAX_SYNTHETIC = 1_000_000


@dataclass(frozen=True)
class Dataset:
    """Inputs and optional labels.

    Attributes:
        x: inputs, float32, shape (N, *sample_shape).
        y: integer labels, shape (N,), or None when the data has none.
        name: where the data came from, for reports.
    """

    x: np.ndarray
    y: np.ndarray | None
    name: str

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def limit(self, n: int | None) -> Dataset:
        """The first ``n`` samples (all of them for None)."""
        if not n:
            return self
        return Dataset(self.x[:n], None if self.y is None else self.y[:n], f"{self.name}[:{n}]")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (gz or raw) into an array of its stored shape and dtype."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise OnnxRedundError(f"cannot read IDX file {path}: {e}; replace it with an intact copy") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise OnnxRedundError(f"{path} is not an IDX file (bad magic number); replace it with an intact copy")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise OnnxRedundError(f"{path} has a truncated IDX header; replace it with an intact copy")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise OnnxRedundError(
            f"{path} holds {len(raw) - header} data bytes but its header {shape} needs {expected}; "
            "the file is truncated or corrupt"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def _find_idx(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx") + ".gz", stem.replace("-idx", ".idx")):
        if (directory / name).is_file():
            return directory / name
    return None


def _has_mnist(directory: Path) -> bool:
    return directory.is_dir() and all(_find_idx(directory, stem) for stem in MNIST_FILES)


def load_mnist(directory: str | os.PathLike, split: str = "test") -> Dataset:
    """Load MNIST from a folder holding the standard IDX files.

    Returns:
        images as float32 in [0, 1], shape (N, 1, 28, 28); labels int64, shape (N,).
    """
    directory = Path(directory)
    if split not in ("train", "test"):
        raise OnnxRedundError(f"unknown MNIST split {split!r}; use 'train' or 'test'")
    prefix = "train" if split == "train" else "t10k"
    found = {}
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        path = _find_idx(directory, f"{prefix}-{kind}")
        if path is None:
            raise OnnxRedundError(f"{directory} has no {prefix}-{kind}[.gz]; put the four MNIST IDX files there")
        found[kind] = path
    images = read_idx(found["images-idx3-ubyte"])
    labels = read_idx(found["labels-idx1-ubyte"])
    if images.ndim != 3 or images.dtype != np.uint8 or labels.ndim != 1:
        raise OnnxRedundError(f"{directory}: MNIST files have unexpected shapes {images.shape} and {labels.shape}")
    if images.shape[0] != labels.shape[0]:
        raise OnnxRedundError(
            f"{directory}: {images.shape[0]} images but {labels.shape[0]} labels; the files do not match"
        )
    if labels.size and int(labels.max()) > 9:
        raise OnnxRedundError(f"{directory}: MNIST labels must be 0..9, found {int(labels.max())}")
    x = (images.astype(np.float32) / 255.0)[:, None, :, :]
    return Dataset(x=x, y=labels.astype(np.int64), name=f"mnist:{split}")


def mnist_cache_dir() -> Path:
    """The user cache folder for MNIST: ``$XDG_CACHE_HOME/onnxredund/mnist`` or ``~/.cache/...``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "onnxredund" / "mnist"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download_mnist(directory: Path, mirrors: tuple[str, ...] = MNIST_MIRRORS, timeout: float = 30.0) -> Path:
    """Download the four MNIST files into ``directory``, verifying each sha256.

    Each file is written to a temporary name and renamed only once its checksum matches.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for stem, sha in MNIST_FILES.items():
        target = directory / f"{stem}.gz"
        if target.is_file() and _sha256(target) == sha:
            continue
        errors = []
        for mirror in mirrors:
            url = mirror + f"{stem}.gz"
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{stem}.", suffix=".part")
            try:
                with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                    shutil.copyfileobj(resp, out)
                got = _sha256(Path(tmp))
                if got != sha:
                    errors.append(f"{url}: checksum {got[:12]}... does not match {sha[:12]}...")
                    continue
                os.replace(tmp, target)
                log.info("downloaded %s", url)
                break
            except OSError as e:
                errors.append(f"{url}: {e}")
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        else:
            raise OnnxRedundError(
                f"could not download MNIST ({'; '.join(errors)}); put the four IDX files in a folder "
                f"and pass --data DIR or set ${DATA_ENV}"
            )
    return directory


def locate_mnist(mirrors: tuple[str, ...] = MNIST_MIRRORS) -> Path:
    """Find MNIST: ``$ONNXREDUND_DATA``, then the user cache, then download into the cache."""
    env = os.environ.get(DATA_ENV)
    if env:
        if _has_mnist(Path(env)):
            return Path(env)
        log.warning("$%s=%s has no MNIST IDX files; trying the cache", DATA_ENV, env)
    cache = mnist_cache_dir()
    if _has_mnist(cache):
        return cache
    log.info("MNIST not found locally; downloading into %s", cache)
    return download_mnist(cache, mirrors)


def load_npz(path: str | os.PathLike) -> Dataset:
    """Load ``x`` (N, ...) and optional integer ``y`` (N,) from an ``.npz`` file (no pickles)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "x" not in npz.files:
                raise OnnxRedundError(f"{path} has no array 'x' (it has {sorted(npz.files)}); save inputs as x=...")
            x = npz["x"]
            y = npz["y"] if "y" in npz.files else None
    except OnnxRedundError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise OnnxRedundError(f"cannot read {path} as .npz: {e}") from None
    if x.dtype.kind not in "fiub" or x.ndim < 2:
        raise OnnxRedundError(f"{path}: x must be a numeric array (N, ...), got {x.dtype} {x.shape}")
    x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise OnnxRedundError(f"{path}: x contains NaN or Inf; clean the data first")
    if y is not None:
        if y.dtype.kind not in "iu" or y.shape != (x.shape[0],):
            raise OnnxRedundError(f"{path}: y must be integer labels of shape ({x.shape[0]},), got {y.dtype} {y.shape}")
        if y.size and int(y.min()) < 0:
            raise OnnxRedundError(f"{path}: labels must be >= 0, found {int(y.min())}")
        y = y.astype(np.int64)
    return Dataset(x=x, y=y, name=path.name)


def synthetic(num: int, sample_shape: tuple[int, ...], rng: np.random.Generator) -> Dataset:
    """``num`` uniform [0, 1) float32 inputs of ``sample_shape``, no labels."""
    x = rng.random((num, *sample_shape), dtype=np.float32)
    return Dataset(x=x, y=None, name=f"synthetic:{num}")


def _split_suffix(spec: str) -> tuple[str, str]:
    head, sep, tail = spec.rpartition(":")
    if sep and tail in ("train", "test"):
        return head, tail
    return spec, "test"


def load_dataset(spec: str | None, *, seed: int = 0, sample_shape: tuple[int, ...] | None = None) -> Dataset:
    """Load the data a ``--data`` spec names (see the module docstring).

    Args:
        spec: the ``--data`` value; None means ``mnist``.
        seed: seed of the synthetic source.
        sample_shape: shape of one model input without the batch, for ``synthetic``.
    """
    spec = spec or "mnist"
    if spec == "synthetic" or spec.startswith("synthetic:"):
        count = spec.partition(":")[2] or "256"
        if not count.isdigit() or not 0 < int(count) <= _MAX_SYNTHETIC:
            raise OnnxRedundError(f"bad synthetic spec {spec!r}; use synthetic:N with 1 <= N <= {_MAX_SYNTHETIC}")
        if sample_shape is None:
            raise OnnxRedundError("synthetic data needs the model's input shape")
        return synthetic(int(count), sample_shape, np.random.default_rng(seed))
    base, split = _split_suffix(spec)
    if base == "mnist":
        return load_mnist(locate_mnist(), split)
    path = Path(base)
    if path.is_dir():
        return load_mnist(path, split)
    if path.suffix == ".npz":
        if not path.is_file():
            raise OnnxRedundError(f"data file {path} does not exist")
        return load_npz(path)
    if not path.exists():
        raise OnnxRedundError(f"data {spec!r} not found; pass an MNIST folder, a .npz file, 'mnist' or 'synthetic:N'")
    raise OnnxRedundError(f"cannot use {spec!r} as data; pass an MNIST folder, a .npz file, 'mnist' or 'synthetic:N'")


def conform(x: np.ndarray, sample_shape: tuple[int, ...], layout: str = "NCHW") -> np.ndarray:
    """Fit inputs (N, ...) to a model's sample shape, moving the channel axis where the layouts differ.

    Raises:
        OnnxRedundError: the shapes cannot be matched, or the data holds NaN or Inf.
    """
    sample_shape = tuple(sample_shape)
    if x.shape[1:] != sample_shape and x.ndim == 4:
        for axes in ((0, 2, 3, 1), (0, 3, 1, 2)):
            if tuple(x.shape[i] for i in axes[1:]) == sample_shape:
                x = x.transpose(axes)
                break
    if x.shape[1:] != sample_shape:
        raise OnnxRedundError(
            f"data samples have shape {tuple(x.shape[1:])} but the model ({layout}) takes {sample_shape}; "
            "pass data of the model's input shape"
        )
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise OnnxRedundError("the data contains NaN or Inf; clean it first")
    return x
