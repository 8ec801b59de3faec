"""Running one shuffle sweep's models: the clean model once per batch, then the fast or the direct path
for each run of perturbed channels.

:class:`SweepRunner` owns the sessions of one (layer, mode) sweep; the sweep's loop and its sums
live in :mod:`onnxredund.analyses.shuffle`.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import threading

import numpy as np

from onnxredund.engine.analysis_models import (
    PERTURBED,
    build_clean_model,
    build_direct_model,
    build_fast_model,
    fast_path_blocker,
    measured_outputs,
)
from onnxredund.engine.batching import moved_inputs
from onnxredund.engine.permutations import apply_permutation
from onnxredund.engine.runtime import Runner, as_samples, machine_memory, rows_per_run
from onnxredund.errors import OnnxRedundError
from onnxredund.metrics import cosine_per_channel
from onnxredund.model import ConvLayer, Model, downstream

__all__ = ["CleanPasses", "SweepRunner", "chunk_size", "permutation_workers"]

log = logging.getLogger(__name__)

_CHUNK_BUDGET_BYTES = {"cpu": 64 << 20, "cuda": 4 << 30}
_LIVE_TENSORS = 6  # about six live (B, C_out, *spatial') float tensors per perturbed channel in a fast run
#: a fast run's peak memory per sample, in the largest tensors after the layer (15 measured: PaddleOCR's detector
#: at 800 x 608, one channel over 64 images took 15 GB)
_FAST_PEAK_PER_LARGEST = 16
#: a batch holds its clean tensors about this many times over (measured 2.5 on PaddleOCR's detector at 800 x 608)
_KEPT_COPIES = 3
_EFFECT_FLOATS = 12  # the effects at an output hold about six float64 copies of it (12 float32s per element)


def permutation_workers(device: str) -> int:
    """Threads that draw permutations ahead: on a GPU run the host is otherwise idle."""
    return 0 if device == "cpu" else max(1, min(8, (os.cpu_count() or 2) - 1))


def as_numpy(value) -> np.ndarray:
    """A numpy array from a numpy array or an onnxruntime OrtValue."""
    return value if isinstance(value, np.ndarray) else value.numpy()


def _after(model: Model, layer: ConvLayer) -> list[str]:
    """The tensors the network computes after the layer's activation: what its fast runs hold per channel."""
    graph = model.proto.graph
    return [o for i in downstream(graph, layer.activation) for o in graph.node[i].output if o]


def chunk_size(model: Model, layer: ConvLayer, device: str, batch_size: int) -> int:
    """Channels per fast run: as many as the memory budget allows, balanced so the last run is not mostly padding.

    Each channel of a run holds a batch of the layer's output a few times over, and runs the rest of the
    network on its own batch: the largest tensors there (a squeeze-excitation scale multiplies a whole
    feature map) count too.
    """
    suffix = max((int(np.prod(model.shapes.get(t, (1,)))) for t in _after(model, layer)), default=0)
    outputs = sum(int(np.prod(model.shapes.get(o, (1,)))) for o in measured_outputs(model, layer))
    per_sample = int(np.prod(layer.output_shape)) * _LIVE_TENSORS + 3 * suffix + _EFFECT_FLOATS * outputs
    per_channel = batch_size * per_sample * 4
    most = max(1, min(layer.in_channels, _CHUNK_BUDGET_BYTES[device] // per_channel))
    runs = -(-layer.in_channels // most)
    return -(-layer.in_channels // runs)


def _check_batch_memory(model: Model, kept: list[str], outputs: list[str], device: str, batch_size: int) -> None:
    """Refuse a batch whose clean tensors, held for its perturbed runs, and the effects at its outputs would take
    more than a quarter of the machine's memory (the runs in parts may take another quarter), naming a batch size
    that fits (a batch of 256 detector images at 800 x 608 ended in numpy's MemoryError)."""
    if device != "cpu":
        return
    # the clean tensors, a perturbed copy of the layer's input and what a run gives back: about three of them
    per_sample = 4 * _KEPT_COPIES * sum(int(np.prod(model.shapes.get(t, ()))) for t in kept)
    per_sample += 4 * _EFFECT_FLOATS * sum(int(np.prod(model.shapes.get(t, ()))) for t in outputs)
    room = machine_memory() // 4
    if batch_size * per_sample <= room:
        return
    fits = max(1, room // per_sample)
    raise OnnxRedundError(
        f"a batch of {batch_size} samples holds about {_size(batch_size * per_sample)} of this model's tensors "
        f"(this machine has {_size(machine_memory())}); pass `batch_size` {fits} or less"
    )


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.1f} MB"


def _too_big(model: Model, layer: ConvLayer, device: str, batch_size: int) -> str | None:
    """Why a fast run of one channel over a batch would take more than a quarter of the machine's memory (its
    rows are the batch's samples, through the network after the layer), or None."""
    rows = rows_per_run(model, device, [layer.output, *_after(model, layer)], peak=_FAST_PEAK_PER_LARGEST)
    if rows is None or batch_size <= rows:
        return None
    return (
        f"one channel's run over a batch of {batch_size} would take more than a quarter of this machine's memory; "
        f"the direct path runs it in parts (`batch_size` {rows} keeps the fast path)"
    )


class SweepRunner:
    """The sessions of one sweep: the clean model, and the fast or the direct model.

    Attributes:
        path: "fast" or "direct"; k: channels per fast run.
        outputs: the graph outputs the layer can change (measured); every graph output is in the clean run.
        blocker: why the fast path does not run (None when it does, or when the direct path was asked for).
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
        threads: int = 0,
    ) -> None:
        self.model, self.layer, self.mode, self.device = model, layer, mode, device
        self.outputs = measured_outputs(model, layer)
        clean, self.clean_names = build_clean_model(model, layer, model.output_names)
        self.clean = Runner.create(clean, device, threads, derived=True)
        self.per_sample = not model.batch_dynamic
        # samples a run of the network may take (the clean and direct runs go in parts past it); not where a
        # state's tensors hold their samples on a later axis
        self.rows = None if moved_inputs(model.analysis_proto) else rows_per_run(model, device)
        _check_batch_memory(model, self.clean_names, self.outputs, device, batch_size)
        self.blocker = None if exact else fast_path_blocker(model, layer) or _too_big(model, layer, device, batch_size)
        self.path = "direct" if exact or self.blocker else "fast"
        self.k = 1
        if self.path == "fast":
            self.k = chunk or chunk_size(model, layer, device, batch_size)
            fast, self.fast_inputs = build_fast_model(model, layer, mode, self.outputs)
            self.fast = Runner.create(fast, device, threads, derived=True)
        else:
            direct, self.direct_inputs = build_direct_model(model, layer, self.outputs)
            self.direct = Runner.create(direct, device, threads, derived=True)

    def run_clean(self, feeds: dict[str, np.ndarray]) -> dict:
        """The clean tensors of a batch, by name (on CUDA they stay on the device for the fast model)."""
        run = self.clean.run_device if self.device == "cuda" and not self.per_sample else self._batched(self.clean)
        return dict(zip(self.clean_names, run(feeds, self.clean_names), strict=True))

    def _batched(self, runner: Runner):
        """How the clean or the direct model runs a batch on numpy arrays: sample by sample where the model's batch
        is fixed, else in parts of at most :attr:`rows` samples."""
        return runner.run_per_sample if self.per_sample else functools.partial(runner.run_parts, rows=self.rows)

    def clean_outputs(self, clean: dict) -> dict[str, np.ndarray]:
        """Every graph output of the clean run, as numpy (B, *its sample's shape)."""
        n = len(as_numpy(clean[self.layer.input]))
        return {name: as_samples(self.model, name, as_numpy(clean[name]), n) for name in self.model.output_names}

    def run(self, clean: dict, ks: list[int], perms: list[np.ndarray]) -> tuple:
        """One run of the channels ``ks`` over a batch.

        Returns:
            (sum over the batch of the cosine of A_i per channel: float64 (K, C_out),
            each measured output with channel k perturbed (K, B, ...), on the direct path, else None,
            the per-sample effects at the measured outputs ``{(output, what): (K, B)}``, on the fast path, else None).
        """
        return (self.run_fast if self.path == "fast" else self.run_direct)(clean, ks, perms)

    def run_direct(self, clean: dict, ks: list[int], perms: list[np.ndarray]) -> tuple:
        x = as_numpy(clean[self.layer.input])
        a = as_numpy(clean[self.layer.activation])
        cos, outs = [], {name: [] for name in self.outputs}
        run = self._batched(self.direct)
        for k, perm in zip(ks, perms, strict=True):
            feeds = {
                n: (apply_permutation(x, k, perm, self.mode) if n == PERTURBED else as_numpy(clean[n]))
                for n in self.direct_inputs
            }
            values = dict(zip(self.direct.output_names, run(feeds), strict=True))
            cos.append(cosine_per_channel(values[self.layer.activation], a).sum(axis=0))
            for name in self.outputs:
                outs[name].append(as_samples(self.model, name, values[name], len(x)))
        return np.array(cos), {name: np.stack(v) for name, v in outs.items()}, None

    def run_fast(self, clean: dict, ks: list[int], perms: list[np.ndarray]) -> tuple:
        n = len(ks)  # at most k; fewer in a run of the last channels, or of those a sequential sweep has open
        batch = len(perms[0])
        if self.mode == "channel":  # rows j*B + b of the (K*B, P) channel planes
            index = (np.stack(perms) + np.arange(n)[:, None] * batch).reshape(-1).astype(np.int32)
        else:  # int32 halves what goes to the device
            index = np.concatenate(perms, dtype=np.int32)
        feeds = {name: clean[name] for name in self.fast_inputs if name in clean}
        feeds["ks"] = np.array(ks, np.int64)
        feeds["perm_index"] = index
        values = dict(zip(self.fast.output_names, self.fast.run(feeds), strict=True))
        per_sample = {}
        for key, value in values.items():
            if key.startswith("effect/"):
                _, what, name = key.split("/", 2)
                per_sample[name, what] = value
        return values["cos_sum"], None, per_sample


class CleanPasses:
    """A layer's clean runs, kept for its next sweeps over the same batches: the other mode, or the other units
    of its channels. A clean run does not depend on what is perturbed, and on a CPU it costs several perturbed
    runs (LeNet-5x10's conv2: a clean pass of 256 images costs five one-channel runs), so a channel left open
    to the end of the data in each mode had the network run twice over the whole data for nothing.

    A run is found by the layer, the clean model's tensors and a digest of the batch's input bytes, so a sweep
    over other images (a budget's sample, another order) never gets another batch's values. Only one layer's
    runs are held (a layer's sweeps follow each other), at most ``limit`` bytes of them (default: an eighth of
    the machine's memory, ``ONNXREDUND_CLEAN_MEMORY`` in bytes overrides it); runs past it are not kept. Only
    runs on the CPU are kept (on CUDA the values stay on the device). The values are shared, not copied: what
    reads them must not write them (they are not made read-only, because onnxruntime copies a read-only array
    it is fed, on every run).
    """

    def __init__(self, limit: int | None = None) -> None:
        given = os.environ.get("ONNXREDUND_CLEAN_MEMORY")
        self.limit = limit if limit is not None else int(float(given)) if given else machine_memory() // 8
        self.layer: tuple | None = None
        self.runs: dict[bytes, dict] = {}
        self.held = 0
        self.reused = 0
        self.lock = threading.Lock()

    def run(self, runner: SweepRunner, feeds: dict[str, np.ndarray]) -> dict:
        """``runner.run_clean(feeds)``, or the values of the same run made before."""
        if runner.device != "cpu" or self.limit <= 0:
            return runner.run_clean(feeds)
        layer = (runner.layer.name, tuple(runner.clean_names))
        key = _digest(feeds)
        with self.lock:
            if layer != self.layer:
                self.layer, self.runs, self.held = layer, {}, 0
            found = self.runs.get(key)
            if found is not None:
                self.reused += 1
                return found
        clean = runner.run_clean(feeds)
        size = sum(v.nbytes for v in clean.values())
        with self.lock:
            if layer == self.layer and self.held + size <= self.limit:
                self.runs[key] = clean
                self.held += size
        return clean


def _digest(feeds: dict[str, np.ndarray]) -> bytes:
    """A digest of a batch's inputs: names, types, shapes and bytes."""
    h = hashlib.blake2b(digest_size=20)
    for name in sorted(feeds):
        value = np.ascontiguousarray(feeds[name])
        h.update(f"{name}|{value.dtype.str}|{value.shape}|".encode())
        h.update(value.reshape(-1).view(np.uint8))
    return h.digest()
