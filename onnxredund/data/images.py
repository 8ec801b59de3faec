"""Image folders: png, jpg, bmp and webp files decoded lazily with Pillow, batch by batch, through a
declarative preprocessing spec.

Labels follow the ImageFolder convention (one subfolder per class, classes in sorted order) or come
from a CSV ``file,label``; without either the data is unlabelled. The pipeline per image::

    decode -> channels (rgb | bgr | gray) -> resize (shorter side, or W x H; bilinear) -> centre crop
           -> float32 -> * scale -> (x - mean) / std -> the model's layout (channels first or last)

Without ``resize`` and ``crop`` an image is resized to the model's input size. Nothing in the folder
is ever written.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from fractions import Fraction
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from onnxredund.choices import PREPROCESS_KEYS
from onnxredund.errors import OnnxRedundError
from onnxredund.model import ModelInput

__all__ = [
    "IMAGE_SUFFIXES",
    "PREPROCESS_KEYS",
    "ImageFolder",
    "Preprocess",
    "find_images",
    "open_image_folder",
    "parse_preprocess",
]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
_CHANNELS = ("rgb", "bgr", "gray")
_HIGH_DEPTH = ("I", "I;16", "I;16B", "I;16L", "F")  # one-channel images of more than 8 bits
_DECODE_WORKERS = min(4, os.cpu_count() or 1)


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes a model input (see the module docstring).

    Attributes:
        resize: the shorter side (int) or (width, height), or None.
        crop: (width, height) of the centre crop, or None.
        channels: "rgb", "bgr" or "gray"; None takes gray for 1-channel inputs and rgb for 3-channel ones.
        scale: multiplies the pixel values (default 1/255: pixels in [0, 1]).
        mean, std: per channel (or one value for all).
    """

    resize: int | tuple[int, int] | None = None
    crop: tuple[int, int] | None = None
    channels: str | None = None
    scale: Fraction = Fraction(1, 255)
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def __str__(self) -> str:
        parts = []
        if self.resize is not None:
            parts.append(f"resize={_size_text(self.resize)}")
        if self.crop is not None:
            parts.append(f"crop={_size_text(self.crop)}")
        if self.channels is not None:
            parts.append(f"channels={self.channels}")
        parts.append(f"scale={self.scale}")
        parts.append("mean=" + "/".join(f"{v:g}" for v in self.mean))
        parts.append("std=" + "/".join(f"{v:g}" for v in self.std))
        return ",".join(parts)

    def for_input(self, inp: ModelInput) -> Preprocess:
        """This spec with its channel mode fixed for ``inp``, checked against it.

        Raises:
            OnnxRedundError: the input takes neither 1 nor 3 channels, or the spec's channels do not fit it.
        """
        if len(inp.sample_shape) != 3:
            raise OnnxRedundError(
                f"image folders feed 2-D image inputs; input {inp.name!r} is N x {'x'.join(map(str, inp.sample_shape))}"
                f" ({inp.layout}): give a .npz or `data_loader_script`"
            )
        c = inp.channels
        channels = self.channels or {1: "gray", 3: "rgb"}.get(c)
        if channels is None or (channels == "gray") != (c == 1):
            given = f"channels={self.channels} gives {1 if self.channels == 'gray' else 3}" if self.channels else ""
            raise OnnxRedundError(
                f"input {inp.name!r} takes {c} channels; image folders give 1 (gray) or 3 (rgb, bgr) "
                f"{('(' + given + ')') if given else ''}: fix `preprocess` channels= or use `data_loader_script`"
            )
        for key, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, c):
                raise OnnxRedundError(f"`preprocess` {key} has {len(values)} values for {c} channels; give 1 or {c}")
        return replace(self, channels=channels)


def _size_text(size: int | tuple[int, int]) -> str:
    return str(size) if isinstance(size, int) else f"{size[0]}x{size[1]}"


def _parse_size(key: str, text: str, allow_side: bool) -> int | tuple[int, int]:
    """'224' -> 224 (a shorter side, for resize) or (224, 224); '320x240' -> (320, 240) (width, height)."""
    parts = text.lower().split("x")
    if len(parts) not in (1, 2) or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise OnnxRedundError(f"`preprocess` {key}={text}: use a size like 224 or WxH like 320x240")
    if len(parts) == 1:
        return int(parts[0]) if allow_side else (int(parts[0]), int(parts[0]))
    return int(parts[0]), int(parts[1])


def _parse_fraction(key: str, text: str) -> Fraction:
    try:
        return Fraction(text.strip())
    except (ValueError, ZeroDivisionError):
        raise OnnxRedundError(f"`preprocess` {key}={text}: not a number (use e.g. 0.5 or 1/255)") from None


def _parse_number(key: str, text: str) -> float:
    return float(_parse_fraction(key, text))


def parse_preprocess(spec: str | None) -> Preprocess:
    """``"resize=256,crop=224,scale=1/255,mean=0.485/0.456/0.406,std=0.229/0.224/0.225,channels=rgb"``
    -> :class:`Preprocess` (None or "" -> the defaults).

    Raises:
        OnnxRedundError: an unknown key, a malformed value, or a key given twice.
    """
    values: dict = {}
    for item in (spec or "").split(","):
        if not item.strip():
            continue
        key, sep, text = item.partition("=")
        key = key.strip().lower()
        if key not in PREPROCESS_KEYS or not sep:
            raise OnnxRedundError(
                f"`preprocess`: unknown key {key!r}; keys are {', '.join(PREPROCESS_KEYS)} (KEY=VALUE)"
            )
        if key in values:
            raise OnnxRedundError(f"`preprocess`: {key} given twice")
        values[key] = _parse_value(key, text.strip())
    return Preprocess(**values)


def _parse_value(key: str, text: str):
    if key in ("resize", "crop"):
        return _parse_size(key, text, allow_side=key == "resize")
    if key == "channels":
        if text.lower() not in _CHANNELS:
            raise OnnxRedundError(f"`preprocess` channels={text}: use one of {', '.join(_CHANNELS)}")
        return text.lower()
    if key == "scale":
        return _parse_fraction(key, text)
    numbers = tuple(_parse_number(key, t) for t in text.split("/"))
    if key == "std" and any(v == 0 for v in numbers):
        raise OnnxRedundError("`preprocess` std must not be 0")
    return numbers


def find_images(folder: Path) -> tuple[list[Path], int]:
    """The image files under ``folder`` (hidden files and folders skipped), sorted by their relative path,
    and how many other files were passed over."""
    images, others = [], 0
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if name.startswith("."):
                continue
            if name.lower().endswith(IMAGE_SUFFIXES):
                images.append(Path(root) / name)
            else:
                others += 1
    return sorted(images, key=lambda p: p.relative_to(folder).as_posix()), others


def _folder_labels(folder: Path, files: list[Path]) -> tuple[np.ndarray | None, list[str]]:
    """ImageFolder labels: every image one level down, classes = the sorted subfolder names."""
    rel = [f.relative_to(folder).parts for f in files]
    if not rel or any(len(parts) != 2 for parts in rel):
        return None, []
    classes = sorted({parts[0] for parts in rel})
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[parts[0]] for parts in rel], np.int64), classes


def _csv_labels(folder: Path, files: list[Path], labels_file: Path) -> np.ndarray:
    """Labels from a CSV ``file,label`` (file relative to the folder; an optional header row)."""
    try:
        with open(labels_file, newline="") as f:
            rows = [r for r in csv.reader(f) if r]
    except (OSError, UnicodeDecodeError) as e:
        raise OnnxRedundError(f"cannot read labels file {labels_file}: {e}") from None
    if rows and not rows[0][-1].strip().lstrip("-").isdigit():
        rows = rows[1:]  # a header
    table = {}
    for n, row in enumerate(rows, 1):
        if len(row) != 2 or not row[1].strip().isdigit():
            raise OnnxRedundError(f"{labels_file}: row {n} is {row!r}; each row is file,label with a label >= 0")
        table[Path(row[0].strip()).as_posix()] = int(row[1])
    rel = [f.relative_to(folder).as_posix() for f in files]
    missing = [r for r in rel if r not in table]
    if missing:
        raise OnnxRedundError(f"{len(missing)} images have no label in {labels_file} (first: {missing[0]}); add rows")
    return np.array([table[r] for r in rel], np.int64)


def _fingerprint(folder: Path, files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.relative_to(folder).as_posix()}\t{f.stat().st_size}\n".encode())
    return h.hexdigest()


@dataclass(frozen=True)
class ImageFolder:
    """Images decoded lazily, batch by batch, through a :class:`Preprocess` for one model input.

    Attributes:
        folder: the folder; files: its images in order; y: labels (N,) or None.
        target: the model input the images feed; spec: the preprocessing, fixed for ``target``.
    """

    folder: Path
    files: list[Path]
    y: np.ndarray | None
    target: ModelInput
    spec: Preprocess
    name: str
    info: dict = field(default_factory=dict, compare=False)

    def __len__(self) -> int:
        return len(self.files)

    def arrays(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """The images ``start:stop``, preprocessed, as the target input's array (decoded on threads)."""
        with ThreadPoolExecutor(_DECODE_WORKERS) as pool:
            images = list(pool.map(self.load, self.files[start:stop]))
        return {self.target.name: np.stack(images) if images else np.zeros((0, *self.target.sample_shape))}

    def load(self, path: Path) -> np.ndarray:
        """One image as the target input's sample (float32, the input's layout)."""
        try:
            with Image.open(path) as img:
                img.load()
                pixels = _pixels(img, self.spec, path, self.target.spatial_shape)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise OnnxRedundError(
                f"{path} is not a readable image ({type(e).__name__}: {str(e)[:80]}); remove or replace it, "
                "or pass `skip_bad_images`"
            ) from None
        return self._to_input(pixels, path)

    def _to_input(self, pixels: np.ndarray, path: Path) -> np.ndarray:
        spatial = self.target.spatial_shape
        if pixels.shape[:2] != tuple(spatial):
            raise OnnxRedundError(
                f"{path}: preprocessing gives {pixels.shape[1]}x{pixels.shape[0]} images but input "
                f"{self.target.name!r} takes {spatial[1]}x{spatial[0]} (WxH); change `preprocess` resize/crop"
            )
        # x * p / q for scale p/q: 1/255 gives pixels / 255 exactly as float32 division does
        x = pixels * np.float32(self.spec.scale.numerator) / np.float32(self.spec.scale.denominator)
        x = (x - np.asarray(self.spec.mean, np.float32)) / np.asarray(self.spec.std, np.float32)
        return np.ascontiguousarray(x if self.target.channels_last else x.transpose(2, 0, 1), np.float32)

    def limit(self, n: int | None) -> ImageFolder:
        if not n:
            return self
        y = None if self.y is None else self.y[:n]
        return replace(self, files=self.files[:n], y=y, name=f"{self.name}[:{n}]")

    def subset(self, indices: list[int], label: str) -> ImageFolder:
        y = None if self.y is None else self.y[np.asarray(indices, np.int64)]
        return replace(self, files=[self.files[i] for i in indices], y=y, name=f"{self.name}[{label}]")

    def describe(self) -> dict:
        return {"name": self.name, "samples": len(self), "labelled": self.y is not None, **self.info}


def _pixels(img: Image.Image, spec: Preprocess, path: Path, size_hw: tuple[int, ...]) -> np.ndarray:
    """Decoded pixels after channels, resize and crop: float32 (H, W, C)."""
    if img.mode in _HIGH_DEPTH:
        if spec.channels != "gray":
            raise OnnxRedundError(
                f"{path} is a {img.mode} (more than 8-bit, one-channel) image; it cannot give {spec.channels} "
                "channels: convert it, or pass `preprocess` channels=gray for a 1-channel input"
            )
        img = img.convert("F")
    else:
        img = img.convert("L" if spec.channels == "gray" else "RGB")
    img = _resized(img, spec, path, (size_hw[1], size_hw[0]))
    x = np.asarray(img, np.float32)
    x = x[:, :, None] if x.ndim == 2 else x
    return x[:, :, ::-1] if spec.channels == "bgr" else x


def _resized(img: Image.Image, spec: Preprocess, path: Path, model_wh: tuple[int, int]) -> Image.Image:
    if spec.resize is None and spec.crop is None:
        return img if img.size == model_wh else img.resize(model_wh, Image.Resampling.BILINEAR)
    if isinstance(spec.resize, int):
        w, h = img.size
        short = spec.resize
        size = (short, max(1, round(h * short / w))) if w <= h else (max(1, round(w * short / h)), short)
        img = img.resize(size, Image.Resampling.BILINEAR)
    elif spec.resize is not None:
        img = img.resize(spec.resize, Image.Resampling.BILINEAR)
    if spec.crop is not None:
        cw, ch = spec.crop
        w, h = img.size
        if cw > w or ch > h:
            raise OnnxRedundError(f"{path}: crop {cw}x{ch} is larger than the {w}x{h} image; resize it first")
        left, top = (w - cw) // 2, (h - ch) // 2
        img = img.crop((left, top, left + cw, top + ch))
    return img


def _decode_error(path: Path, whole: bool) -> str | None:
    """Why ``path`` does not open as an image (``whole``: or its pixels do not decode to the end); None if it does."""
    try:
        with Image.open(path) as img:
            if whole:
                img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        return type(e).__name__
    return None


def open_image_folder(
    folder: Path, target: ModelInput, spec: Preprocess, labels_file: Path | None = None, *, skip_bad: bool = False
) -> ImageFolder:
    """The images under ``folder`` for the model input ``target``.

    Every file's header is read once up front (not its pixels), so a file that is not an image fails
    before any work starts; a truncated one fails when its batch is decoded, naming it. With ``skip_bad``
    every image is decoded whole up front instead, and those that do not decode are left out (counted in
    ``describe()``, named in the log), labels staying with their images.

    Raises:
        OnnxRedundError: no images, a file that is not an image, or labels that do not cover the images.
    """
    files, others = find_images(folder)
    if not files:
        raise OnnxRedundError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)}); pass a folder of images")
    if others:
        log.info("%s: passed over %d files that are not images", folder, others)
    with ThreadPoolExecutor(_DECODE_WORKERS) as pool:
        errors = list(pool.map(partial(_decode_error, whole=skip_bad), files))
    bad = [(f, e) for f, e in zip(files, errors, strict=True) if e is not None]
    if bad and not skip_bad:
        raise OnnxRedundError(
            f"{bad[0][0]} is not a readable image ({bad[0][1]}); remove or replace it, or pass `skip_bad_images`"
        )
    spec = spec.for_input(target)
    if labels_file is not None:
        y, classes, labels = _csv_labels(folder, files, labels_file), [], f"csv:{labels_file}"
    else:
        y, classes = _folder_labels(folder, files)
        labels = "subfolders" if y is not None else None
    if bad:
        keep = np.flatnonzero([e is None for e in errors])
        if not keep.size:
            raise OnnxRedundError(f"{folder}: none of its {len(files)} images decodes")
        log.warning("%s: left out %d images that do not decode (first: %s)", folder, len(bad), bad[0][0])
        files, y = [files[i] for i in keep], None if y is None else y[keep]
    info = {
        "kind": "images",
        "folder": str(folder),
        "preprocess": str(spec),
        "labels": labels,
        "classes": classes,
        "fingerprint": _fingerprint(folder, files),
        **({"bad_images_skipped": len(bad)} if bad else {}),
    }
    return ImageFolder(folder, files, y, target, spec, folder.name or str(folder), info)
