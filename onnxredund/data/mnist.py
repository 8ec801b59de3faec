"""MNIST from IDX files: a folder given by the user, ``$ONNXREDUND_DATA``, the user cache, or downloaded into
the cache from the official mirrors with checksums verified.
"""

from __future__ import annotations

import gzip
import logging
import os
import shutil
import struct
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

from onnxredund.data.base import Dataset
from onnxredund.errors import OnnxRedundError
from onnxredund.model import file_sha256

__all__ = [
    "DATA_ENV",
    "MNIST_FILES",
    "MNIST_MIRRORS",
    "download_mnist",
    "has_mnist",
    "load_mnist",
    "locate_mnist",
    "mnist_cache_dir",
    "read_idx",
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


def has_mnist(directory: Path) -> bool:
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
    info = {"kind": "mnist", "split": split, "scaling": "pixels / 255, in [0, 1]"}
    return Dataset(x=x, y=labels.astype(np.int64), name=f"mnist:{split}", info=info)


def mnist_cache_dir() -> Path:
    """The user cache folder for MNIST: ``$XDG_CACHE_HOME/onnxredund/mnist`` or ``~/.cache/...``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "onnxredund" / "mnist"


def download_mnist(directory: Path, mirrors: tuple[str, ...] = MNIST_MIRRORS, timeout: float = 30.0) -> Path:
    """Download the four MNIST files into ``directory``, verifying each sha256.

    Each file is written to a temporary name and renamed only once its checksum matches.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for stem, sha in MNIST_FILES.items():
        target = directory / f"{stem}.gz"
        if target.is_file() and file_sha256(target) == sha:
            continue
        errors = []
        for mirror in mirrors:
            url = mirror + f"{stem}.gz"
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{stem}.", suffix=".part")
            try:
                with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                    shutil.copyfileobj(resp, out)
                got = file_sha256(Path(tmp))
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
                f"and pass `data` DIR or set ${DATA_ENV}"
            )
    return directory


def locate_mnist(mirrors: tuple[str, ...] = MNIST_MIRRORS) -> Path:
    """Find MNIST: ``$ONNXREDUND_DATA``, then the user cache, then download into the cache."""
    env = os.environ.get(DATA_ENV)
    if env:
        if has_mnist(Path(env)):
            return Path(env)
        log.warning("$%s=%s has no MNIST IDX files; trying the cache", DATA_ENV, env)
    cache = mnist_cache_dir()
    if has_mnist(cache):
        return cache
    log.info("MNIST not found locally; downloading into %s", cache)
    return download_mnist(cache, mirrors)
