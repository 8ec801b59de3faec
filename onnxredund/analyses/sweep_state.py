"""The running sums of a shuffle sweep, their key and their checkpoint file.

A :class:`SweepState` holds the sums after the last finished batch; saved with the key of the
sweep's arguments (:func:`sweep_key`: the model's bytes, its external weight files, the data and
every option that changes a permutation), it lets an interrupted sweep resume with the same
permutations and end with the numbers of an uninterrupted one.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from onnxredund.analyses.sequential import Estimation
from onnxredund.atomic import write_npz
from onnxredund.data import DataSource
from onnxredund.errors import OnnxRedundError
from onnxredund.model import ConvLayer, Model, external_tensors, file_sha256

__all__ = ["SweepState", "sweep_key"]


@dataclass
class SweepState:
    """Running sums, enough to resume a sweep after its last finished batch.

    Attributes:
        sums: named arrays: ``cos_sum`` float64 (R, K, C_out), the output effects' sums
            (:class:`~onnxredund.analyses.effects.EffectMeter`), ``baseline_correct`` and ``correct``.
        key: the arguments the sums belong to (see :func:`sweep_key`); a resume must match it.
    """

    batches_done: int
    samples_done: int
    sums: dict[str, np.ndarray]
    seconds: float = 0.0
    key: str = field(default="", compare=False)

    def save(self, path: Path) -> None:
        """Write the state atomically as an .npz (no pickles; a signal waits until it is in place)."""
        arrays = {f"sum_{k}": v for k, v in self.sums.items()}
        write_npz(
            path,
            dict(
                arrays,
                key=np.array(self.key),
                batches_done=self.batches_done,
                samples_done=self.samples_done,
                seconds=self.seconds,
            ),
        )

    @classmethod
    def load(cls, path: Path, key: str) -> SweepState | None:
        """The state saved at ``path`` (None if there is none).

        Raises:
            OnnxRedundError: it belongs to other arguments, or cannot be read.
        """
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["key"]) != key:
                    raise OnnxRedundError(f"{path} is from a run with other arguments; rerun without `resume`")
                sums = {name[4:]: z[name] for name in z.files if name.startswith("sum_")}
                return cls(int(z["batches_done"]), int(z["samples_done"]), sums, float(z["seconds"]), key=key)
        except (OSError, KeyError, ValueError) as e:
            raise OnnxRedundError(f"cannot resume from {path}: {e}") from None


def _model_files(model: Model) -> list[Path]:
    """The model file and the external weight files it reads."""
    files = [Path(model.path)] if Path(model.path).is_file() else []
    for tensor in external_tensors(model.proto):
        info = {e.key: e.value for e in tensor.external_data}
        files.append(Path(info.get("basepath", "")) / info["location"])
    return list(dict.fromkeys(files))


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=64)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file, read once per (size, modification time): an audit keys every sweep and every unit by
    the model's bytes, and a model of hundreds of MB is not read again for each."""
    return file_sha256(path)


def sweep_key(
    model: Model,
    layer: ConvLayer,
    data: DataSource,
    *,
    mode: str,
    channels: list[int],
    batch_size: int,
    repeats: int,
    seed: int,
    exact_path: bool,
    estimation: Estimation | None = None,
) -> str:
    """What a sweep's sums depend on: the model's bytes (external weight files too), the data and the arguments
    (how a sequential sweep decides its channels too: it stops measuring them by it)."""
    sequential = {"estimation": estimation.to_dict()} if estimation is not None and estimation.sequential else {}
    return json.dumps(
        sequential
        | {
            "model": [_digest(str(p.resolve()), *_stat(p)) for p in _model_files(model)],
            "layer": layer.name,
            "mode": mode,
            "channels": channels,
            "data": data.describe(),
            "batch": batch_size,
            "repeats": repeats,
            "seed": seed,
            "exact": exact_path,
        },
        sort_keys=True,
        default=str,
    )
