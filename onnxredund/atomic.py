"""Writing results without losing anything: atomic files, guarded output folders.

Used by the analyses (sweep checkpoints) and the report alike; imports only :mod:`onnxredund.errors` and
:mod:`onnxredund.interrupts`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from onnxredund.errors import OnnxRedundError
from onnxredund.interrupts import deferred

__all__ = ["atomic_write", "check_writable", "csv_text", "prepare_out_dir", "write_json", "write_npz"]


def prepare_out_dir(path: str | os.PathLike, *, overwrite: bool = False, resume: bool = False) -> Path:
    """Create the output folder; refuse a file, an unwritable place, or a non-empty folder without
    ``overwrite`` (or ``resume``, which continues what is there)."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise OnnxRedundError(f"output path {out} is a file; pass a folder for `out`")
    if out.is_dir() and any(out.iterdir()) and not (overwrite or resume):
        raise OnnxRedundError(f"output folder {out} is not empty; pass `overwrite` to replace its results")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OnnxRedundError(f"cannot create output folder {out}: {e.strerror}") from None
    check_writable(out)
    return out


def check_writable(folder: Path) -> None:
    """Refuse a folder a file cannot be written into (read-only, full, not ours), before any work: by writing
    one (the permission bits do not tell, for root or on a read-only mount); a signal is held until the probe is
    gone."""
    with deferred():
        try:
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".onnxredund-probe.")
        except OSError as e:
            message = f"output folder {folder} is not writable ({e.strerror}); pass another `out`"
            raise OnnxRedundError(message) from None
        try:
            os.close(fd)
        finally:
            os.unlink(tmp)


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` to a temporary file next to ``path`` and rename it into place.

    A failure (disk full, permission) leaves any previous file intact and no partial file behind; a signal
    is held until the file is in place (one that came between making the temporary file and the cleanup's
    reach left it behind).
    """
    with deferred():
        return _write_then_rename(Path(path), data.encode() if isinstance(data, str) else data)


def _write_then_rename(path: Path, raw: bytes) -> Path:
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise OnnxRedundError(f"cannot write {path}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results get the user's usual mode
        os.replace(tmp, path)
    except OSError as e:
        raise OnnxRedundError(f"cannot write {path}: {e.strerror}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, obj) -> Path:
    """Deterministic JSON (sorted keys, fixed separators) written atomically."""
    return atomic_write(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


def write_npz(path: str | os.PathLike, arrays: dict, *, compressed: bool = False) -> Path:
    """Named arrays (no pickles) into an .npz written atomically; a signal is held until the file is in place
    (one that came inside numpy's zip writer turned into the writer's own error, and a stopped run into a
    crash)."""
    buf = io.BytesIO()
    with deferred():
        (np.savez_compressed if compressed else np.savez)(buf, **arrays)
        return atomic_write(path, buf.getvalue())


def csv_text(header: list[str], rows: list[list]) -> str:
    """CSV with quoting where a field needs it; None is written as an empty field."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows([["" if v is None else v for v in row] for row in rows])
    return buf.getvalue()
