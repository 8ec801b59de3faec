"""Channel and pixel permutations, drawn from an explicit seed and shared by every path.

The permutation for (seed, repeat, channel k, batch index) comes from its own
``numpy.random.Generator`` seeded with that tuple, so it is the same whatever the device, the path
(fast or direct), how many channels share a run, or where an interrupted run resumes.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "MODES",
    "apply_permutation",
    "batch_generator",
    "channel_permutation",
    "permutation_for",
    "pixel_permutation",
]

MODES = ("channel", "pixel")


def batch_generator(seed: int, repeat: int, channel: int, batch_index: int) -> np.random.Generator:
    """The generator of one (seed, repeat, channel, batch) cell."""
    return np.random.default_rng([seed, repeat, channel, batch_index])


def channel_permutation(rng: np.random.Generator, batch: int) -> np.ndarray:
    """Which sample each sample takes channel k from: shape (B,), a permutation of 0..B-1."""
    return rng.permutation(batch).astype(np.int64)


def pixel_permutation(rng: np.random.Generator, batch: int, pixels: int) -> np.ndarray:
    """For each sample, which pixel each pixel of channel k takes: shape (B, P), each row a permutation."""
    return rng.permuted(np.tile(np.arange(pixels, dtype=np.int64), (batch, 1)), axis=1)


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
