"""Running one shuffle sweep's models: the clean model once per batch, then the fast or the direct path
for each run of perturbed channels.

:class:`SweepRunner` owns the sessions of one (layer, mode) sweep; the sweep's loop and its sums
live in :mod:`onnxredund.analyses.shuffle`.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from onnxredund.engine.analysis_models import (
    PERTURBED,
    build_clean_model,
    build_direct_model,
    build_fast_model,
    fast_path_blocker,
)
from onnxredund.engine.permutations import apply_permutation
from onnxredund.engine.runtime import Runner
from onnxredund.metrics import cosine_per_channel
from onnxredund.model import ConvLayer, Model, classifier_output

__all__ = ["SweepRunner", "permutation_workers"]

log = logging.getLogger(__name__)

_CHUNK_BUDGET_BYTES = {"cpu": 64 << 20, "cuda": 4 << 30}
_LIVE_TENSORS = 6  # about six live (B, C_out, H', W') float tensors per perturbed channel in a fast run


def permutation_workers(device: str) -> int:
    """Threads that draw permutations ahead: on a GPU run the host is otherwise idle."""
    return 0 if device == "cpu" else max(1, min(8, (os.cpu_count() or 2) - 1))


def _numpy(value) -> np.ndarray:
    return value if isinstance(value, np.ndarray) else value.numpy()


class SweepRunner:
    """The sessions of one sweep: clean model, and the fast or the direct model.

    Attributes:
        path: "fast" or "direct"; k: channels per fast run; pred: the classifier output or None.
    """

    def __init__(
        self,
        model: Model,
        layer: ConvLayer,
        mode: str,
        device: str,
        *,
        exact: bool,
        chunk: int | None,
        batch_size: int,
        labelled: bool,
    ) -> None:
        self.layer, self.mode, self.device, self.labelled = layer, mode, device, labelled
        self.pred = classifier_output(model)
        clean, self.clean_names = build_clean_model(model, layer, self.pred)
        self.clean = Runner.create(clean, device)
        self.input_name = model.input_name
        self.per_sample = not model.batch_dynamic
        blocker = None if exact else fast_path_blocker(model, layer)
        if blocker:
            log.warning("fast path unavailable (%s): using the direct path", blocker)
        self.path = "direct" if exact or blocker else "fast"
        self.k = 1
        if self.path == "fast":
            self.k = chunk or self._chunk_size(device, batch_size)
            fast, self.fast_inputs = build_fast_model(model, layer, mode, self.k, self.pred, labelled=labelled)
            self.fast = Runner.create(fast, device)
        else:
            direct, self.direct_inputs = build_direct_model(model, layer, self.pred)
            self.direct = Runner.create(direct, device)

    def _chunk_size(self, device: str, batch_size: int) -> int:
        """Channels per run: as many as the memory budget allows, balanced so the last run is not mostly padding."""
        per_channel = batch_size * int(np.prod(self.layer.output_shape)) * 4 * _LIVE_TENSORS
        most = max(1, min(self.layer.in_channels, _CHUNK_BUDGET_BYTES[device] // per_channel))
        runs = -(-self.layer.in_channels // most)
        return -(-self.layer.in_channels // runs)

    def run_clean(self, xb: np.ndarray) -> dict:
        """The clean tensors of a batch, by name (on CUDA they stay on the device for the fast model)."""
        if self.per_sample:
            run = self.clean.run_per_sample
        else:
            run = self.clean.run_device if self.device == "cuda" else self.clean.run
        return dict(zip(self.clean_names, run({self.input_name: xb}, self.clean_names), strict=True))

    def clean_prediction(self, clean: dict) -> np.ndarray | None:
        """Top-1 of the clean model per sample (B,), or None without a classifier output."""
        return _numpy(clean[self.pred]).argmax(axis=1).astype(np.int64) if self.pred else None

    def run(self, clean: dict, ks: list[int], perms: list[np.ndarray], labels, ref) -> tuple:
        """(cos_sum (K, C_out), correct (K,) or None, agree (K,) or None) for the channels ``ks`` of one batch.

        Args:
            labels: (B,) labels of the batch, or None; ref: (B,) clean top-1, or None.
        """
        return (self.run_fast if self.path == "fast" else self.run_direct)(clean, ks, perms, labels, ref)

    def run_direct(self, clean: dict, ks: list[int], perms: list[np.ndarray], labels, ref) -> tuple:
        x = _numpy(clean[self.layer.input])
        a = _numpy(clean[self.layer.activation])
        cos, correct, agree = [], [], []
        for k, perm in zip(ks, perms, strict=True):
            feeds = {
                n: (apply_permutation(x, k, perm, self.mode) if n == PERTURBED else _numpy(clean[n]))
                for n in self.direct_inputs
            }
            outs = (self.direct.run_per_sample if self.per_sample else self.direct.run)(feeds)
            cos.append(cosine_per_channel(outs[0], a).sum(axis=0))
            if self.pred is not None:
                top = outs[1].argmax(axis=1)
                agree.append(int((top == ref).sum()))
                if labels is not None:
                    correct.append(int((top == labels).sum()))
        has_pred = self.pred is not None
        return np.array(cos), _counts(correct, has_pred and labels is not None), _counts(agree, has_pred)

    def run_fast(self, clean: dict, ks: list[int], perms: list[np.ndarray], labels, ref) -> tuple:
        n = len(ks)
        pad_ks = ks + [ks[-1]] * (self.k - n)
        pad_perms = perms + [perms[-1]] * (self.k - n)
        batch = len(pad_perms[0])
        if self.mode == "channel":  # rows j*B + b of the (K*B, H*W) channel planes
            index = (np.stack(pad_perms) + np.arange(self.k)[:, None] * batch).reshape(-1)
        else:
            index = np.concatenate(pad_perms)
        feeds = {name: clean[name] for name in self.fast_inputs if name in clean}
        feeds["ks"] = np.array(pad_ks, np.int64)
        feeds["perm_index"] = index.astype(np.int64)
        if self.pred is not None:
            feeds["ref_pred"] = ref
            if self.labelled:
                feeds["labels"] = labels
        outs = dict(zip(self.fast.output_names, self.fast.run(feeds), strict=True))
        correct, agree = outs.get("correct"), outs.get("agree")
        return outs["cos_sum"][:n], None if correct is None else correct[:n], None if agree is None else agree[:n]


def _counts(values: list[int], measured: bool) -> np.ndarray | None:
    return np.array(values, np.int64) if measured else None
