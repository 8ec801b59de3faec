"""Data: what the analyses feed a model, from what a user has.

A data *spec* is what the user passes to ``--data``:

- ``mnist`` or ``mnist:train`` / ``mnist:test``: MNIST, looked up in ``$ONNXREDUND_DATA``, then the
  user cache (``~/.cache/onnxredund/mnist``), then downloaded with checksums verified; pixels / 255,
  in [0, 1];
- a folder: the four MNIST IDX files (optionally followed by ``:train`` / ``:test``), or images (png,
  jpg, bmp, webp; see :mod:`.images`), told apart by what it holds;
- a ``.npz`` file: ``x`` (N, ...) or one array per model input, optional integer labels ``y`` (N,);
- ``synthetic`` or ``synthetic:N``: N seeded uniform [0, 1) inputs shaped like the model's inputs.

Loader scripts (:mod:`.scripts`) come through their own option. Owns :mod:`.base` (the source
protocol, feeds), :mod:`.mnist`, :mod:`.arrays`, :mod:`.images` and :mod:`.scripts`; may import
:mod:`onnxredund.model` (input descriptions) and :mod:`onnxredund.errors`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from onnxredund.data.arrays import MAX_SYNTHETIC, load_npz, synthetic
from onnxredund.data.base import IMAGE_KEY, Dataset, DataSource, conform, conform_feeds, iter_batches
from onnxredund.data.images import (
    IMAGE_SUFFIXES,
    ImageFolder,
    Preprocess,
    find_images,
    open_image_folder,
    parse_preprocess,
)
from onnxredund.data.mnist import has_mnist, load_mnist, locate_mnist, read_idx
from onnxredund.data.scripts import load_script
from onnxredund.errors import OnnxRedundError
from onnxredund.model import ModelInput

__all__ = [
    "IMAGE_KEY",
    "DataSource",
    "Dataset",
    "ImageFolder",
    "Preprocess",
    "conform",
    "conform_feeds",
    "iter_batches",
    "load_dataset",
    "load_mnist",
    "load_npz",
    "load_script",
    "parse_preprocess",
    "read_idx",
    "synthetic",
]

_MNIST_SHAPES = ((1, 28, 28), (28, 28, 1))


def _split_suffix(spec: str) -> tuple[str, str]:
    head, sep, tail = spec.rpartition(":")
    if sep and tail in ("train", "test"):
        return head, tail
    return spec, "test"


def _synthetic(spec: str, seed: int, inputs, sample_shape) -> Dataset:
    count = spec.partition(":")[2] or "256"
    if not count.isdigit() or not 0 < int(count) <= MAX_SYNTHETIC:
        raise OnnxRedundError(f"bad synthetic spec {spec!r}; use synthetic:N with 1 <= N <= {MAX_SYNTHETIC}")
    if inputs is None and sample_shape is None:
        raise OnnxRedundError("synthetic data needs the model's input shape")
    rng = np.random.default_rng(seed)
    if inputs is not None and (len(inputs) > 1 or sample_shape is None):
        return synthetic(int(count), inputs, rng)
    return synthetic(int(count), tuple(sample_shape if sample_shape is not None else inputs[0].sample_shape), rng)


def _image(inputs: list[ModelInput] | None) -> ModelInput | None:
    return next((i for i in inputs or [] if i.layout), None)


def _no_image(inputs: list[ModelInput]) -> str:
    """What the model's main input is, where none is an image: "'bytes' (N x 2048, int32)"."""
    main = next((i for i in inputs if i.batched), inputs[0])
    return f"{main.name!r} (N x {'x'.join(map(str, main.sample_shape))}, {main.dtype})"


def _check_default_fits(image: ModelInput | None, inputs: list[ModelInput] | None) -> None:
    """No --data means MNIST; say so plainly where MNIST cannot feed the model."""
    if image is None and inputs:
        raise OnnxRedundError(
            f"no `data` given, and MNIST does not fit the model's input {_no_image(inputs)}, which is no image; "
            "pass `data` with a .npz or synthetic:N, or `data_loader_script` FILE.py"
        )
    if image is not None and image.sample_shape not in _MNIST_SHAPES:
        raise OnnxRedundError(
            f"no `data` given, and MNIST (1x28x28) does not fit the model's input {image.name!r} "
            f"({'x'.join(map(str, image.sample_shape))}, {image.layout}); pass `data` with an image folder, a .npz "
            "or synthetic:N, or `data_loader_script` FILE.py"
        )


def load_dataset(
    spec: str | None,
    *,
    seed: int = 0,
    sample_shape: tuple[int, ...] | None = None,
    inputs: list[ModelInput] | None = None,
    preprocess: str | Preprocess | None = None,
    labels: str | os.PathLike | None = None,
    skip_bad_images: bool = False,
) -> DataSource:
    """Load the data a ``--data`` spec names (see the module docstring).

    Args:
        spec: the ``--data`` value; None means ``mnist``.
        seed: seed of the synthetic source.
        sample_shape: shape of the image input without the batch, for ``synthetic`` (or give ``inputs``).
        inputs: the model's inputs: synthetic data for each, images for the image input, npz arrays by name.
        preprocess: the preprocessing of an image folder (a spec string or a :class:`Preprocess`).
        labels: a CSV ``file,label`` for an image folder.
        skip_bad_images: leave out the images of a folder that do not decode (each decoded once up front)
            instead of stopping at the first.
    """
    image = _image(inputs)
    if spec is None:
        _check_default_fits(image, inputs)
    spec = spec or "mnist"
    folder_only = {"`preprocess`": preprocess, "`labels`": labels, "`skip_bad_images`": skip_bad_images or None}

    def images_only(source: str) -> None:  # options that only an image folder reads are refused, never ignored
        given = [flag for flag, value in folder_only.items() if value is not None]
        if given:
            raise OnnxRedundError(f"{given[0]} applies to image folders; {source} is read as it is")

    if spec == "synthetic" or spec.startswith("synthetic:"):
        images_only("synthetic data")
        return _synthetic(spec, seed, inputs, sample_shape)
    base, split = _split_suffix(spec)
    if base == "mnist":
        images_only("MNIST")
        return load_mnist(locate_mnist(), split)
    path = Path(base)
    if path.is_dir():
        if has_mnist(path) or any(path.glob("*-idx[13]-ubyte*")):
            images_only("MNIST")
        if image is None and inputs and find_images(path)[0]:
            raise OnnxRedundError(
                f"image folders feed image inputs; the model's input {_no_image(inputs)} is none: give a .npz or "
                "`data_loader_script`"
            )
        return _folder(path, split, image, preprocess, labels, skip_bad_images)
    if path.suffix == ".npz":
        images_only("a .npz file")
        if not path.is_file():
            raise OnnxRedundError(f"data file {path} does not exist")
        return load_npz(path, [i.name for i in inputs] if inputs else None)
    if not path.exists():
        raise OnnxRedundError(
            f"data {spec!r} not found; pass an image or MNIST folder, a .npz file, 'mnist' or 'synthetic:N'"
        )
    raise OnnxRedundError(
        f"cannot use {spec!r} as data; pass an image or MNIST folder, a .npz file, 'mnist' or 'synthetic:N'"
    )


def _folder(path: Path, split: str, image: ModelInput | None, preprocess, labels, skip_bad: bool) -> DataSource:
    if has_mnist(path):
        return load_mnist(path, split)
    if any(path.glob("*-idx[13]-ubyte*")):
        return load_mnist(path, split)  # a broken MNIST folder: say what is wrong with it
    if not find_images(path)[0]:
        raise OnnxRedundError(
            f"{path} holds neither the four MNIST IDX files nor images ({', '.join(IMAGE_SUFFIXES)}); "
            "pass such a folder"
        )
    if image is None:
        raise OnnxRedundError("an image folder needs the model it feeds (its input size and layout)")
    spec = preprocess if isinstance(preprocess, Preprocess) else parse_preprocess(preprocess)
    return open_image_folder(path, image, spec, None if labels is None else Path(labels), skip_bad=skip_bad)
