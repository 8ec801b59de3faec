"""Channel and pixel shuffling sweeps (the paper's section 2) on any conv layer.

For every perturbed input channel k of the target conv, over all samples:

- ``cosine[k, c]``: mean over samples of the cosine similarity (eq. 1) of output channel c of A_i
  clean and perturbed;
- ``accuracy[k]``: top-1 accuracy of the perturbed model, where labels exist;
- ``agreement[k]``: fraction of samples whose perturbed top-1 equals the clean top-1.

Pseudocode::

    for each mini-batch (B samples; the last one may be smaller):
        X, Z, A, side, prediction = clean_model(batch)
        for repeat r, for each run of K channels ks:
            perms = [permutation(seed, r, k, batch index) for k in ks]
            cos_sum[r, ks] += sum_b cosine(A, A_perturbed)     # in-graph on the fast path
            correct[r, ks] += ...; agree[r, ks] += ...
    cosine = mean over repeats of cos_sum / N (std over repeats too)
"""

from __future__ import annotations

import csv
import io
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from onnxredund.data import Dataset, conform
from onnxredund.engine import (
    PERTURBED,
    build_clean_model,
    build_direct_model,
    build_fast_model,
    fast_path_blocker,
    prediction_output,
)
from onnxredund.errors import OnnxRedundError
from onnxredund.metrics import cosine_per_channel
from onnxredund.model import ConvLayer, Model
from onnxredund.perturb import MODES, apply_permutation, permutation_for
from onnxredund.runtime import Runner, resolve_device

__all__ = ["ShuffleResult", "SweepState", "parse_channels", "run_shuffle"]

log = logging.getLogger(__name__)

_CHUNK_BUDGET_BYTES = {"cpu": 64 << 20, "cuda": 4 << 30}


@dataclass(frozen=True)
class ShuffleResult:
    """One sweep's numbers.

    Attributes:
        channels: the perturbed input channels k, length K.
        cosine: mean cosine similarity, shape (K, C_out); cosine_std: std over repeats, same shape.
        cosine_repeats: the cosine of each repeat, shape (R, K, C_out).
        accuracy, accuracy_std: shape (K,), or None without labels or a classifier output.
        agreement, agreement_std: shape (K,), or None without a classifier output.
        baseline_accuracy: clean top-1 accuracy, or None.
        samples_done: samples measured (all of them unless ``complete`` is False).
    """

    model: str
    layer: str
    layer_index: int
    mode: str
    seed: int
    repeats: int
    batch_size: int
    num_samples: int
    data: str
    channels: list[int]
    cosine: np.ndarray
    cosine_std: np.ndarray
    accuracy: np.ndarray | None
    accuracy_std: np.ndarray | None
    agreement: np.ndarray | None
    agreement_std: np.ndarray | None
    baseline_accuracy: float | None
    path: str
    device: str
    complete: bool = True
    samples_done: int = 0
    seconds: float = 0.0
    cosine_repeats: np.ndarray | None = None

    def mean_cosine(self) -> np.ndarray:
        """Mean over output channels of ``cosine``: one number per perturbed channel, shape (K,)."""
        return self.cosine.mean(axis=1)

    def ranking(self) -> list[int]:
        """Perturbed channels from most redundant (costs least) to least redundant.

        Sorted by accuracy drop (or disagreement) first, then by mean cosine, highest first.
        """
        key_acc = self.accuracy if self.accuracy is not None else self.agreement
        order = sorted(
            range(len(self.channels)),
            key=lambda i: (-(key_acc[i] if key_acc is not None else 0.0), -self.mean_cosine()[i]),
        )
        return [self.channels[i] for i in order]

    def to_dict(self, *, timing: bool = False) -> dict:
        def arr(a):
            return None if a is None else np.round(np.asarray(a, np.float64), 10).tolist()

        d = {
            "model": self.model,
            "layer": self.layer,
            "layer_index": self.layer_index,
            "mode": self.mode,
            "seed": self.seed,
            "repeats": self.repeats,
            "batch_size": self.batch_size,
            "num_samples": self.num_samples,
            "samples_done": self.samples_done,
            "complete": self.complete,
            "data": self.data,
            "path": self.path,
            "channels": list(self.channels),
            "cosine": arr(self.cosine),
            "cosine_std": arr(self.cosine_std),
            "mean_cosine": arr(self.mean_cosine()),
            "accuracy": arr(self.accuracy),
            "accuracy_std": arr(self.accuracy_std),
            "agreement": arr(self.agreement),
            "agreement_std": arr(self.agreement_std),
            "baseline_accuracy": None if self.baseline_accuracy is None else round(self.baseline_accuracy, 10),
        }
        if timing:
            d["device"], d["seconds"] = self.device, round(self.seconds, 3)
        return d

    def to_csv(self) -> str:
        """One row per (k, c): channel, output_channel, cosine, cosine_std, accuracy, agreement."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["mode", "channel", "output_channel", "cosine", "cosine_std", "accuracy", "agreement"])
        for i, k in enumerate(self.channels):
            acc = "" if self.accuracy is None else f"{self.accuracy[i]:.6f}"
            agr = "" if self.agreement is None else f"{self.agreement[i]:.6f}"
            for c in range(self.cosine.shape[1]):
                w.writerow([self.mode, k, c, f"{self.cosine[i, c]:.8f}", f"{self.cosine_std[i, c]:.8f}", acc, agr])
        return buf.getvalue()


@dataclass
class SweepState:
    """Running sums, enough to resume a sweep after its last finished batch.

    Attributes:
        cos_sum: float64 (R, K, C_out); correct, agree: int64 (R, K).
    """

    batches_done: int
    samples_done: int
    baseline_correct: int
    cos_sum: np.ndarray
    correct: np.ndarray
    agree: np.ndarray
    seconds: float = 0.0

    @classmethod
    def empty(cls, repeats: int, k: int, c_out: int) -> SweepState:
        return cls(
            0, 0, 0, np.zeros((repeats, k, c_out)), np.zeros((repeats, k), np.int64), np.zeros((repeats, k), np.int64)
        )


def parse_channels(spec: str | None, count: int) -> list[int]:
    """'0,3,5-9' -> [0, 3, 5, 6, 7, 8, 9]; None -> all ``count`` channels."""
    if spec is None or spec.strip() in ("", "all"):
        return list(range(count))
    out: list[int] = []
    for part in spec.split(","):
        lo, sep, hi = part.strip().partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise OnnxRedundError(f"bad channel list {spec!r}; use e.g. 0,3,5-9")
        rng = range(int(lo), int(hi) + 1) if sep else [int(lo)]
        for k in rng:
            if k >= count:
                raise OnnxRedundError(f"channel {k} does not exist: the layer's input has channels 0..{count - 1}")
            if k not in out:
                out.append(k)
    if not out:
        raise OnnxRedundError(f"empty channel list {spec!r}")
    return out


class _Engine:
    """Runs the clean model once per batch, then the fast or direct path per run of channels."""

    def __init__(self, model: Model, layer: ConvLayer, mode: str, device: str, exact: bool, chunk: int | None):
        self.layer, self.mode, self.device = layer, mode, device
        self.pred = prediction_output(model)
        clean, self.clean_names = build_clean_model(model, layer, self.pred)
        self.clean = Runner.create(clean, device)
        self.input_name = model.input_name
        self.per_sample = not model.batch_dynamic
        blocker = None if exact else fast_path_blocker(model, layer)
        if blocker:
            log.warning("fast path unavailable (%s): using the direct path", blocker)
        self.path = "direct" if exact or blocker else "fast"
        if self.path == "fast":
            self.k = chunk or self._chunk_size(device)
            fast, self.fast_inputs = build_fast_model(model, layer, mode, self.k, self.pred)
            self.fast = Runner.create(fast, device)
        else:
            direct, self.direct_inputs = build_direct_model(model, layer, self.pred)
            self.direct = Runner.create(direct, device)

    def _chunk_size(self, device: str) -> int:
        """Channels per run: as many as the memory budget allows, balanced so the last run is not mostly padding."""
        c, h, w = self.layer.output_shape
        per_channel = 256 * c * h * w * 4 * 6  # about six live (B, C_out, H', W') float tensors per channel
        most = max(1, min(self.layer.in_channels, _CHUNK_BUDGET_BYTES[device] // per_channel))
        runs = -(-self.layer.in_channels // most)
        return -(-self.layer.in_channels // runs)

    def run_clean(self, xb: np.ndarray) -> dict:
        if self.per_sample:
            run = self.clean.run_per_sample
        else:  # on CUDA the clean tensors stay on the device for the fast model
            run = self.clean.run_device if self.device == "cuda" else self.clean.run
        return dict(zip(self.clean_names, run({self.input_name: xb}, self.clean_names), strict=True))

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
                correct.append(int((top == labels).sum()))
                agree.append(int((top == ref).sum()))
        return np.array(cos), np.array(correct, np.int64), np.array(agree, np.int64)

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
            feeds["labels"], feeds["ref_pred"] = labels, ref
        outs = self.fast.run(feeds)
        if self.pred is None:
            return outs[0][:n], None, None
        return outs[0][:n], outs[1][:n], outs[2][:n]


def _feed_workers(device: str) -> int:
    """Threads that draw permutations ahead: on a GPU run the host is otherwise idle."""
    return 0 if device == "cpu" else max(1, min(8, (os.cpu_count() or 2) - 1))


class _PermutationFeed:
    """The permutations of each batch, keyed (repeat, channel); drawn one batch ahead on threads.

    Every permutation comes from :func:`permutation_for` with its own (seed, repeat, channel, batch)
    generator, so threads change when they are drawn, never what they are.
    """

    def __init__(self, mode: str, seed: int, repeats: int, channels: list[int], pixels: int, workers: int) -> None:
        self.mode, self.seed, self.pixels = mode, seed, pixels
        self.cells = [(r, k) for r in range(repeats) for k in channels]
        self.pool = ThreadPoolExecutor(workers) if workers else None
        self.pending: dict[int, dict] = {}

    def _draw(self, cell: tuple[int, int], bi: int, batch: int) -> np.ndarray:
        return permutation_for(self.mode, self.seed, cell[0], cell[1], bi, batch, self.pixels)

    def request(self, bi: int, batch: int) -> None:
        if self.pool is not None and bi not in self.pending:
            self.pending[bi] = {c: self.pool.submit(self._draw, c, bi, batch) for c in self.cells}

    def take(self, bi: int, batch: int) -> dict[tuple[int, int], np.ndarray]:
        futures = self.pending.pop(bi, None)
        if futures is None:
            return {c: self._draw(c, bi, batch) for c in self.cells}
        return {c: f.result() for c, f in futures.items()}

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)


def _numpy(value) -> np.ndarray:
    return value if isinstance(value, np.ndarray) else value.numpy()


def _warn_degenerate(mode: str, batch_size: int, num: int) -> None:
    if mode == "channel" and min(batch_size, num) == 1:
        log.warning("channel shuffling with a batch of 1 is a no-op: every sample keeps its own channel")


def run_shuffle(
    model: Model,
    layer: ConvLayer | str | int,
    data: Dataset,
    *,
    mode: str = "channel",
    channels: list[int] | None = None,
    batch_size: int = 256,
    repeats: int = 1,
    seed: int = 0,
    device: str = "auto",
    exact_path: bool = False,
    chunk: int | None = None,
    progress: Callable[[int], None] | None = None,
    state: SweepState | None = None,
    on_batch: Callable[[SweepState], None] | None = None,
    max_seconds: float | None = None,
) -> ShuffleResult:
    """Shuffle each input channel of a conv layer and measure cosine, accuracy and agreement.

    Args:
        model: from :func:`onnxredund.load_model`.
        layer: the target conv (record, name or index).
        data: inputs (N, ...) and optional labels.
        mode: "channel" (across the samples of each mini-batch) or "pixel" (within each sample).
        channels: input channels to perturb; default all.
        batch_size: mini-batch size (the last batch may be smaller).
        repeats: R seeds (seed, seed's repeat 1, ...); results give mean and std over them.
        seed: the seed every permutation derives from.
        device: "auto", "cuda" or "cpu".
        exact_path: run the direct path (one full run per channel) instead of the fast one.
        chunk: channels per run on the fast path (default: sized to memory).
        progress: called with the number of samples finished after each batch.
        state: a :class:`SweepState` to resume from (same arguments as the interrupted run).
        on_batch: called with the state after each batch (checkpoints).
        max_seconds: stop after the batch that passes this time (``complete`` False, like Ctrl-C).

    Returns:
        A :class:`ShuffleResult`; ``complete`` is False when interrupted (Ctrl-C).
    """
    if mode not in MODES:
        raise OnnxRedundError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    if batch_size < 1 or repeats < 1:
        raise OnnxRedundError("--batch-size and --repeats must be at least 1")
    layer = layer if isinstance(layer, ConvLayer) else model.layer(layer)
    channels = list(range(layer.in_channels)) if channels is None else channels
    bad = [k for k in channels if not 0 <= k < layer.in_channels]
    if bad:
        raise OnnxRedundError(
            f"channels {bad} do not exist: {layer.name!r} has input channels 0..{layer.in_channels - 1}"
        )
    x = conform(data.x, model.sample_shape, model.layout)
    labels = data.y
    _warn_degenerate(mode, batch_size, len(x))
    device = resolve_device(device)
    engine = _Engine(model, layer, mode, device, exact_path, chunk)
    if labels is not None and engine.pred is not None:
        classes = model.shapes[engine.pred][0]
        if labels.size and int(labels.max()) >= classes:
            raise OnnxRedundError(f"labels go up to {int(labels.max())} but the model has {classes} classes")
    state = state or SweepState.empty(repeats, len(channels), layer.out_channels)
    pixels = int(np.prod(layer.input_shape[1:]))
    chunk_k = getattr(engine, "k", 1)
    complete = True
    t0 = time.perf_counter() - state.seconds
    starts = list(range(0, len(x), batch_size))
    sizes = [min(batch_size, len(x) - s) for s in starts]
    feed = _PermutationFeed(mode, seed, repeats, channels, pixels, workers=_feed_workers(device))
    try:
        for bi in range(state.batches_done, len(starts)):
            xb = x[starts[bi] : starts[bi] + batch_size]
            yb = labels[starts[bi] : starts[bi] + batch_size] if labels is not None else None
            perms = feed.take(bi, sizes[bi])
            if bi + 1 < len(starts):
                feed.request(bi + 1, sizes[bi + 1])  # drawn on worker threads while the device works
            clean = engine.run_clean(xb)
            ref = _numpy(clean[engine.pred]).argmax(axis=1).astype(np.int64) if engine.pred else None
            for r in range(repeats):
                for c0 in range(0, len(channels), chunk_k):
                    ks = channels[c0 : c0 + chunk_k]
                    run = engine.run_fast if engine.path == "fast" else engine.run_direct
                    cos, correct, agree = run(clean, ks, [perms[r, k] for k in ks], yb if yb is not None else ref, ref)
                    state.cos_sum[r, c0 : c0 + len(ks)] += cos
                    if correct is not None:
                        state.correct[r, c0 : c0 + len(ks)] += correct
                        state.agree[r, c0 : c0 + len(ks)] += agree
            if yb is not None and ref is not None:
                state.baseline_correct += int((ref == yb).sum())
            state.batches_done, state.samples_done = bi + 1, state.samples_done + len(xb)
            state.seconds = time.perf_counter() - t0
            if on_batch is not None:
                on_batch(state)
            if progress is not None:
                progress(len(xb))
            if max_seconds is not None and state.seconds >= max_seconds and bi + 1 < len(starts):
                complete = False
                log.warning("time budget spent after %d of %d samples", state.samples_done, len(x))
                break
    except KeyboardInterrupt:
        complete = False
        log.warning("interrupted after %d of %d samples", state.samples_done, len(x))
    finally:
        feed.close()
    return _result(model, layer, data, engine, state, mode, seed, repeats, batch_size, channels, complete, len(x))


def _mean_std(per_repeat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return per_repeat.mean(axis=0), per_repeat.std(axis=0)


def _result(model, layer, data, engine, state, mode, seed, repeats, batch_size, channels, complete, n) -> ShuffleResult:
    done = max(state.samples_done, 1)
    cosine, cosine_std = _mean_std(state.cos_sum / done)
    has_pred = engine.pred is not None
    has_labels = has_pred and data.y is not None
    acc = _mean_std(state.correct / done) if has_labels else (None, None)
    agr = _mean_std(state.agree / done) if has_pred else (None, None)
    return ShuffleResult(
        model=model.path,
        layer=layer.name,
        layer_index=layer.index,
        mode=mode,
        seed=seed,
        repeats=repeats,
        batch_size=batch_size,
        num_samples=n,
        data=data.name,
        channels=list(channels),
        cosine=cosine,
        cosine_std=cosine_std,
        accuracy=acc[0],
        accuracy_std=acc[1],
        agreement=agr[0],
        agreement_std=agr[1],
        baseline_accuracy=state.baseline_correct / done if has_labels else None,
        path=engine.path,
        device=engine.device,
        complete=complete,
        samples_done=state.samples_done,
        seconds=state.seconds,
        cosine_repeats=state.cos_sum / done,
    )
