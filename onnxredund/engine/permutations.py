"""Channel and pixel permutations, drawn from an explicit seed and shared by every path.

The permutation for (seed, repeat, channel k, batch index) comes from its own
``numpy.random.Generator`` seeded with that tuple, so it is the same whatever the device, the path
(fast or direct), how many channels share a run, or where an interrupted run resumes.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from onnxredund.choices import MODES

__all__ = [
    "MODES",
    "PermutationFeed",
    "apply_permutation",
    "batch_generator",
    "channel_permutation",
    "permutation_for",
    "pixel_permutation",
]


def batch_generator(seed: int, repeat: int, channel: int, batch_index: int) -> np.random.Generator:
    """The generator of one (seed, repeat, channel, batch) cell."""
    return np.random.default_rng([seed, repeat, channel, batch_index])


def channel_permutation(rng: np.random.Generator, batch: int) -> np.ndarray:
    """Which sample each sample takes channel k from: shape (B,), a permutation of 0..B-1."""
    return rng.permutation(batch).astype(np.int64)


def pixel_permutation(rng: np.random.Generator, batch: int, pixels: int) -> np.ndarray:
    """For each sample, which pixel each pixel of channel k takes: int32 (B, P), each row a permutation (the same
    rows as in int64: the shuffle does not depend on the type)."""
    return rng.permuted(np.tile(np.arange(pixels, dtype=np.int32), (batch, 1)), axis=1)


def permutation_for(mode: str, seed: int, repeat: int, channel: int, batch_index: int, batch: int, pixels: int):
    """The permutation of one cell: (B,) for channel mode, (B, P) for pixel mode."""
    rng = batch_generator(seed, repeat, channel, batch_index)
    if mode == "channel":
        return channel_permutation(rng, batch)
    if mode == "pixel":
        return pixel_permutation(rng, batch, pixels)
    raise ValueError(f"unknown mode {mode!r}")


def apply_permutation(x: np.ndarray, channel: int, perm: np.ndarray, mode: str) -> np.ndarray:
    """Copy of ``x`` (B, C, H, W) with channel ``channel`` shuffled by ``perm``.

    Channel mode: ``out[b, k] = x[perm[b], k]``. Pixel mode: ``out[b, k].flat[p] = x[b, k].flat[perm[b, p]]``.
    """
    out = x.copy()
    if mode == "channel":
        out[:, channel] = x[perm, channel]
    elif mode == "pixel":
        flat = x[:, channel].reshape(x.shape[0], -1)
        out[:, channel] = np.take_along_axis(flat, perm, axis=1).reshape(x[:, channel].shape)
    else:
        raise ValueError(f"unknown mode {mode!r}")
    return out


class PermutationFeed:
    """The permutations of each batch, keyed (repeat, channel); drawn one batch ahead on threads.

    Every permutation comes from :func:`permutation_for` with its own (seed, repeat, channel, batch)
    generator, so threads change when they are drawn, never what they are.
    """

    def __init__(self, mode: str, seed: int, repeats: int, channels: list[int], pixels: int, workers: int) -> None:
        self.mode, self.seed, self.pixels = mode, seed, pixels
        self.cells = [(r, k) for r in range(repeats) for k in channels]
        self.pool = ThreadPoolExecutor(workers) if workers else None
        self.pending: dict[int, dict[tuple[int, int], Future]] = {}

    def _draw(self, cell: tuple[int, int], bi: int, batch: int) -> np.ndarray:
        return permutation_for(self.mode, self.seed, cell[0], cell[1], bi, batch, self.pixels)

    def request(self, bi: int, batch: int) -> None:
        """Start drawing batch ``bi``'s permutations on the threads (no-op without threads)."""
        if self.pool is not None and bi not in self.pending:
            self.pending[bi] = {c: self.pool.submit(self._draw, c, bi, batch) for c in self.cells}

    def take(self, bi: int, batch: int) -> dict[tuple[int, int], np.ndarray]:
        """Batch ``bi``'s permutations, by (repeat, channel)."""
        futures = self.pending.pop(bi, None)
        if futures is None:
            return {c: self._draw(c, bi, batch) for c in self.cells}
        return {c: f.result() for c, f in futures.items()}

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
