"""Unit impulse responses of every conv layer, compared by normalized cross-correlation (section 3).

Responses are read at each conv's output (before its activation), on the subgraph cut from the
model's image input to the conv layers, for one impulse per input channel (other inputs held at 0):

- ``network`` mode: the real network; the response to the impulse minus the response to an all-zero
  input, so constant terms (biases) cancel;
- ``linear`` mode: every bias zeroed, activations and constant additions bypassed, BatchNormalization
  reduced to its scale: the effective kernel of the cascade. Ops that stay non-linear (max-pool)
  make it an approximation; the result lists them in ``notes``.

A conv with stride s reads only every s-th position of its input, so one impulse shows one phase of
its kernel. Each strided conv therefore gets the impulse at its s phase positions per axis (spaced
by the stride the network has before the conv, at most :data:`MAX_PHASES` per axis), and its
responses are interleaved: the layer's response at the resolution of its own input.

Pseudocode::

    x = [zeros] + [impulse(channel m, position p + phase offset) for offsets, for m]   # (1 + O*M, *input)
    out = cut(model, input -> conv outputs)(x)
    response[layer] = interleave(out[layer][impulses] - out[layer][0] over the layer's phases)  # (C, M, *S)
    response[layer] = crop to the box where any of them is non-zero (NCC independent of the input size)
    compared = channels with a varying response over at least MIN_SUPPORT positions
    ncc[layer] = NCC of every pair (C, C); best[c] = best match c' != c among compared channels
    redundant fraction = compared channels whose best match >= threshold / compared channels
    across[c] = best match >= threshold among the compared channels of every earlier layer of the same rank
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from onnxredund.atomic import csv_text
from onnxredund.choices import IMPULSE_MODES, NCC_THRESHOLD
from onnxredund.engine.runtime import Runner, machine_memory
from onnxredund.engine.surgery import cut, linearize
from onnxredund.errors import OnnxRedundError
from onnxredund.model import ConvLayer, Model, data_dependent
from onnxredund.ncc import EarlierLayers, best_matches_in, constant_responses, exact_best_matches, ncc_matrix

__all__ = [
    "IMPULSE_MODES",
    "JSON_MATRIX_CHANNELS",
    "JSON_MATRIX_VALUES",
    "MAX_PHASES",
    "MIN_SUPPORT",
    "ImpulseResult",
    "LayerImpulse",
    "crop_to_support",
    "impulse_inputs",
    "interleave",
    "run_impulse",
]

MAX_PHASES = 4  # phase positions per axis of a strided conv
MIN_SUPPORT = 3  # positions a response needs to be compared (a 1x1 support is one number per input channel)
_MAX_RUN = 64  # impulses per run
QUANTIZED_NOTE = (
    "the model quantizes its activations (QuantizeLinear): an impulse's small responses may round to zero; "
    "analyse the float model it was made from for its kernels' responses"
)
_MAX_OUTPUT_BYTES = 1 << 30  # the network's outputs for the impulses held at once, at most
JSON_MATRIX_CHANNELS = 256  # larger NCC matrices go to the .npz only
JSON_MATRIX_VALUES = 100_000  # and so do those past this many values in all (about 1.3 MB of JSON)


@dataclass(frozen=True)
class LayerImpulse:
    """One layer's impulse analysis.

    Attributes:
        responses: shape (C, M, *S): channel c's response to an impulse in input channel m, cropped
            to ``support`` ([*start, *size] in the layer's interleaved output map).
        phases: phase positions per spatial axis the responses interleave (1 for a stride-1 conv).
        ncc: shape (C, C), one-vs-all NCC within the layer: float64 for the layers whose matrix the JSON
            carries (:func:`json_matrix_layers`), float32's (within 1e-6) for the others; best matches and their
            values are float64 always.
        compared: shape (C,) bool: channels whose response varies over at least MIN_SUPPORT positions.
        excluded: why the others were left out: {"support": n (too few positions), "constant": n (no response)}.
        best_match, best_value: shape (C,): the most similar other compared channel and its NCC
            (-1 and nan for channels not compared, or without another compared channel).
        redundant_count, redundant_fraction: compared channels whose best match >= the threshold, and
            their share of the compared channels (None when none was compared).
        across_best_layer, across_best_channel, across_best_value: per channel, the best match among the
            compared channels of every earlier layer where it reaches the threshold ("" / -1 / nan where none
            does: pairs that cannot reach it are never correlated).
    """

    name: str
    index: int
    responses: np.ndarray
    support: tuple[int, ...]
    phases: tuple[int, ...]
    ncc: np.ndarray
    compared: np.ndarray
    excluded: dict[str, int]
    best_match: np.ndarray
    best_value: np.ndarray
    redundant_count: int
    redundant_fraction: float | None
    across_best_layer: list[str]
    across_best_channel: np.ndarray
    across_best_value: np.ndarray

    @property
    def compared_count(self) -> int:
        return int(self.compared.sum())

    def to_dict(self, *, responses: bool = False, matrix: bool = True) -> dict:
        """The layer as JSON; ``matrix``: with its NCC matrix (rounded to 6 decimals; exact in the .npz)."""
        d = {
            "name": self.name,
            "index": self.index,
            "channels": int(self.ncc.shape[0]),
            "support": list(self.support),
            "phases": list(self.phases),
            "compared_count": self.compared_count,
            "excluded": dict(self.excluded),
            "ncc": np.round(self.ncc, 6).tolist() if matrix else None,
            "best_match": [int(v) for v in self.best_match],
            "best_value": _values(self.best_value),
            "redundant_count": self.redundant_count,
            "redundant_fraction": self.redundant_fraction,
            "across_best_layer": list(self.across_best_layer),
            "across_best_channel": [int(v) for v in self.across_best_channel],
            "across_best_value": _values(self.across_best_value),
        }
        if responses:
            d["responses"] = _rounded(self.responses)
        return d


def _rounded(a: np.ndarray) -> list:
    return np.round(np.asarray(a, np.float64), 10).tolist()


def _values(a: np.ndarray) -> list:
    return [None if np.isnan(v) else round(float(v), 10) for v in a]


@dataclass(frozen=True)
class ImpulseResult:
    """Impulse analysis of a model's conv layers.

    Attributes:
        position: where the impulse sits in the image input (spatial, in the input's own axis order).
        notes: what is approximate or was left out, in words.
    """

    model: str
    mode: str
    threshold: float
    lags: bool
    position: tuple[int, ...]
    notes: list[str]
    layers: list[LayerImpulse]
    seconds: float = field(default=0.0, compare=False)
    json_layers: frozenset[str] = field(default=frozenset(), compare=False)  # whose float64 matrix the JSON holds

    def layer(self, name: str) -> LayerImpulse:
        return next(layer for layer in self.layers if layer.name == name)

    def to_csv(self) -> str:
        """One row per (layer, channel): whether it was compared, its best match within the layer and in
        earlier layers."""
        rows = []
        for layer in self.layers:
            for c in range(len(layer.best_match)):
                redundant = bool(layer.best_value[c] >= self.threshold) if not np.isnan(layer.best_value[c]) else False
                rows.append(
                    [
                        layer.name,
                        c,
                        int(bool(layer.compared[c])),
                        int(layer.best_match[c]),
                        _csv_float(layer.best_value[c]),
                        int(redundant),
                        layer.across_best_layer[c],
                        int(layer.across_best_channel[c]),
                        _csv_float(layer.across_best_value[c]),
                    ]
                )
        header = ["layer", "channel", "compared", "best_match", "best_value", "redundant", "across_layer"]
        return csv_text([*header, "across_channel", "across_value"], rows)

    def to_dict(self, *, responses: bool = False) -> dict:
        """The result as JSON, with the NCC matrices of the layers in ``json_layers`` (the others are null; the
        .npz holds them, :meth:`arrays`)."""
        return {
            "model": self.model,
            "mode": self.mode,
            "threshold": self.threshold,
            "lags": self.lags,
            "position": list(self.position),
            "min_support": MIN_SUPPORT,
            "notes": list(self.notes),
            "layers": [
                layer.to_dict(responses=responses, matrix=layer.name in self.json_layers) for layer in self.layers
            ],
        }

    def arrays(self) -> dict[str, np.ndarray]:
        """Every layer's full NCC matrix and best matches, for an .npz next to the JSON."""
        out = {}
        for layer in self.layers:
            out[f"{layer.index}.ncc"] = layer.ncc
            out[f"{layer.index}.best_match"] = layer.best_match
            out[f"{layer.index}.best_value"] = layer.best_value
            out[f"{layer.index}.across_best_channel"] = layer.across_best_channel
            out[f"{layer.index}.across_best_value"] = layer.across_best_value
        return out


def _csv_float(v: float) -> str:
    return "" if np.isnan(v) else f"{v:.6f}"


def json_matrix_layers(channels: list[int]) -> set[int]:
    """Which layers (positions in ``channels``, each a layer's channel count) have their NCC matrix in the JSON:
    those of at most :data:`JSON_MATRIX_CHANNELS` channels, smallest first (then in order), until
    :data:`JSON_MATRIX_VALUES` values in all. The analysis computes theirs in float64."""
    chosen, total = set(), 0
    for position in sorted(range(len(channels)), key=lambda i: (channels[i], i)):
        size = channels[position] ** 2
        if channels[position] > JSON_MATRIX_CHANNELS or total + size > JSON_MATRIX_VALUES:
            break
        chosen.add(position)
        total += size
    return chosen


def crop_to_support(responses: np.ndarray, rel_tol: float = 1e-6) -> tuple[np.ndarray, tuple[int, ...]]:
    """Crop a layer's responses (C, M, *S) to the box where any of them is non-zero.

    NCC is then computed over the responses themselves, not over the zero margin around them, so it
    does not depend on the input size. Returns the crop and its box ([*start, *size]).
    """
    nd = responses.ndim - 2
    mag = np.abs(responses).max(axis=(0, 1))
    peak = float(mag.max(initial=0.0))
    if peak == 0.0:
        return responses, (*([0] * nd), *responses.shape[2:])
    starts, stops = _box_above(mag, rel_tol * peak)
    sizes = tuple(b - a for a, b in zip(starts, stops, strict=True))
    index = tuple(slice(a, b) for a, b in zip(starts, stops, strict=True))
    return responses[(slice(None), slice(None), *index)], (*starts, *sizes)


def _box_above(mag: np.ndarray, floor: float) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(start, stop) per axis of the box holding every value of ``mag`` above ``floor`` (none: a 0-size box)."""
    starts, stops = [], []
    for axis in range(mag.ndim):
        others = tuple(a for a in range(mag.ndim) if a != axis)
        hit = np.flatnonzero((mag.max(axis=others) if others else mag) > floor)
        starts.append(int(hit[0]) if len(hit) else 0)
        stops.append(int(hit[-1]) + 1 if len(hit) else 0)
    return tuple(starts), tuple(stops)


@dataclass(frozen=True)
class ImpulseSite:
    """Where the unit impulses go: the image input, or, past an in-graph preprocessing that an all-zero input
    does not survive (a min-max normalisation's 0/0), the first conv's input.

    Attributes:
        name: the tensor; channels, spatial: its sample's channels and spatial sizes; channels_last: its layout.
        inputs: the tensors the analysed subgraph starts from (the site and the model's other inputs).
    """

    name: str
    channels: int
    spatial: tuple[int, ...]
    channels_last: bool
    inputs: tuple[str, ...]

    @classmethod
    def of_input(cls, model: Model) -> ImpulseSite:
        image = model.image_input
        inputs = tuple(i.name for i in model.inputs)
        return cls(image.name, image.channels, image.spatial_shape, image.channels_last, inputs)

    @classmethod
    def of_tensor(cls, model: Model, name: str) -> ImpulseSite:
        """Any tensor whose per-sample shape is known as (channels, positions...), channels first (a conv's
        input always is).

        Raises:
            OnnxRedundError: no such tensor.
        """
        shape = model.shapes.get(name)
        if shape is None or len(shape) < 2:
            convs = ", ".join(dict.fromkeys(layer.input for layer in model.layers[:3]))
            raise OnnxRedundError(
                f"`at` {name!r}: no tensor of a known (channels, positions...) shape by that name; "
                f"a conv's input is one (the first: {convs})"
            )
        channels, *spatial = shape
        # the other inputs are zero; so is the main input where it is no image and reaches past the site
        # another way (DNSMOS's raw signal into two STFT convs, one of them the site)
        others = tuple(i.name for i in model.inputs if i.name != model.input_name or not i.layout)
        return cls(name, channels, tuple(spatial), False, (name, *others))

    @classmethod
    def of_first_conv(cls, model: Model, layers: list[ConvLayer]) -> ImpulseSite | None:
        """The first conv's input, where every analysed conv lies past it (else None)."""
        first, left_out = _past_first_conv(model, layers)
        return None if left_out else cls.of_tensor(model, first)


def _past_first_conv(model: Model, layers: list[ConvLayer]) -> tuple[str, list[ConvLayer]]:
    """The input of the first of ``layers`` and those of ``layers`` that do not lie past it (a parallel conv)."""
    first = min(layers, key=lambda layer: layer.node_index).input
    reach = data_dependent(model.proto.graph, [first]) | {first}
    return first, [layer for layer in layers if layer.input not in reach]


class _BaselineNotFinite(Exception):
    """The all-zero sample itself gives non-finite values: the model computes something of its input that zero
    breaks (its min and max, a norm) before the convs."""


class _Phases(NamedTuple):
    """Where a layer's impulses go.

    Attributes:
        phases: per axis of the layer's input, the impulse positions along it (its stride, capped; 1 for a
            transposed conv, which upsamples).
        spacing: per axis of the layer's input, the site's positions between two of its positions.
        axes: per axis of the layer's input, the site's axis it runs along (None: an axis of size 1 a reshape put
            in, a 1-D signal read by 1 x K kernels).
        rank: the site's spatial axes.
    """

    phases: tuple[int, ...]
    spacing: tuple[int, ...]
    axes: tuple[int | None, ...]
    rank: int


def _site_axes(image: tuple[int, ...], own: tuple[int, ...]) -> tuple[int | None, ...] | None:
    """For each spatial axis of a layer's input, the axis of the site it runs along: the same one where both have
    as many axes; else the site's axes in order along the layer's axes longer than 1 (None for the others); None
    where they do not pair up."""
    if len(own) == len(image):
        return tuple(range(len(own)))
    long = [a for a, n in enumerate(own) if n > 1]
    if len(long) != len(image):
        return None
    return tuple(long.index(a) if a in long else None for a in range(len(own)))


def _phases_of(site: ImpulseSite, layer: ConvLayer) -> _Phases:
    """A layer's phases and their spacing in the site's positions: its own stride, capped, and the stride the
    network has before it."""
    image, own = site.spatial, layer.input_shape[1:]
    axes = _site_axes(image, own)
    if axes is None:  # nothing of the layer's input pairs with the site's axes: one impulse, no phases
        return _Phases((1,) * len(own), (1,) * len(own), (None,) * len(own), len(image))
    # a conv's stride samples the input (impulses at each phase see every tap); a transposed conv's upsamples it
    conv = layer.op == "Conv"
    phases = tuple(min(s, MAX_PHASES) if conv and a is not None else 1 for s, a in zip(layer.stride, axes, strict=True))
    spacing = tuple(1 if a is None else max(1, round(image[a] / n)) for n, a in zip(own, axes, strict=True))
    return _Phases(phases, spacing, axes, len(image))


def _offsets(phases: _Phases) -> list[tuple[int, ...]]:
    """The impulse positions of a layer's phases (row-major over its axes), relative to the base, in the site's
    axes."""
    out = []
    for ds in itertools.product(*map(range, phases.phases)):
        offset = [0] * phases.rank
        for d, step, axis in zip(ds, phases.spacing, phases.axes, strict=True):
            if axis is not None:
                offset[axis] += d * step
        out.append(tuple(offset))
    return out


def impulse_inputs(
    model: Model, position: tuple[int, ...] | None, offsets: list[tuple[int, ...]], site: ImpulseSite | None = None
) -> tuple[dict[str, np.ndarray], tuple[int, ...]]:
    """Feeds of a zero sample and one unit impulse per (offset, channel of the site), offsets outer.

    Returns:
        (feeds: the site (1 + O*M, *sample) and zeros for every other input; the position).

    Raises:
        OnnxRedundError: the position lies outside the input, or has the wrong number of axes.
    """
    site = site or ImpulseSite.of_input(model)
    spatial, m = site.spatial, site.channels
    reach = [max(o[a] for o in offsets) for a in range(len(spatial))]
    if position is None:
        base = tuple(min(n // 2, n - 1 - r) for n, r in zip(spatial, reach, strict=True))
    else:
        if len(position) != len(spatial):
            raise OnnxRedundError(f"`position` needs {len(spatial)} coordinates for the {len(spatial)}-D input")
        if not all(0 <= p < n for p, n in zip(position, spatial, strict=True)):
            shape = " x ".join(map(str, spatial))
            raise OnnxRedundError(f"impulse position {tuple(position)} is outside the {shape} input")
        base = tuple(min(p, n - 1 - r) for p, n, r in zip(position, spatial, reach, strict=True))
    shape = (1 + len(offsets) * m, m, *spatial)
    size = np.prod(shape, dtype=np.float64) * 4
    if size > machine_memory() // 2:  # one impulse per channel and phase, each a whole sample
        raise OnnxRedundError(
            f"the impulses at {site.name!r} would take {size / (1 << 30):.1f} GiB, more than half this machine's "
            f"memory: {shape[0] - 1:,} impulses ({m:,} channels x {len(offsets)} phases), each a whole sample of "
            f"{m:,} x {' x '.join(map(str, spatial))}"
            f"{'' if site.channels_last else '; if its channels are last, pass `layout` nhwc'}"
        )
    batch = np.zeros(shape, np.float32)
    for i, off in enumerate(offsets):
        for c in range(m):
            batch[(1 + i * m + c, c, *(b + o for b, o in zip(base, off, strict=True)))] = 1.0
    if site.channels_last:
        batch = np.moveaxis(batch, 1, -1)
    feeds = {site.name: np.ascontiguousarray(batch)}
    for inp in model.inputs:
        if inp.name in site.inputs and inp.name != site.name:
            feeds[inp.name] = np.zeros((len(batch), *inp.sample_shape) if inp.batched else (), inp.dtype)
    return feeds, base


def interleave(per_phase: np.ndarray, phases: tuple[int, ...]) -> np.ndarray:
    """Responses to an impulse at each phase, (P, C, M, *S) with phases in row-major order, as one map
    (C, M, *(S * phases)): phase d's value at output position o goes to o * p + (p - 1 - d) per axis."""
    if all(p == 1 for p in phases):
        return per_phase[0]
    c, m, *spatial = per_phase.shape[1:]
    out = np.zeros((c, m, *(s * p for s, p in zip(spatial, phases, strict=True))), per_phase.dtype)
    for i, ds in enumerate(itertools.product(*map(range, phases))):
        index = tuple(slice(p - 1 - d, None, p) for d, p in zip(ds, phases, strict=True))
        out[(slice(None), slice(None), *index)] = per_phase[i]
    return out


def _memory_budget() -> int:
    """Bytes the network's outputs for the impulses may take at once: a quarter of the machine's memory, at most
    :data:`_MAX_OUTPUT_BYTES` (``ONNXREDUND_IMPULSE_MEMORY`` in bytes overrides it)."""
    given = os.environ.get("ONNXREDUND_IMPULSE_MEMORY")
    if given:
        return int(float(given))
    return min(machine_memory() // 4, _MAX_OUTPUT_BYTES)


def _kept_limit() -> int:
    """Bytes the responses kept for the comparisons may take in all: half the machine's memory."""
    return machine_memory() // 2


class _Blocks:
    """Each layer's response to each impulse (a row of the impulse batch), kept only inside the box where it is
    non-zero: memory grows with the responses' support, not with the input's area. Where the supports span the
    maps (attention, global pooling) and the kept responses would pass :func:`_kept_limit`, the analysis stops in
    one line before the machine runs out of memory."""

    def __init__(self, site: ImpulseSite) -> None:
        self.rows: dict[int, dict[int, tuple[tuple[int, ...], np.ndarray]]] = {}  # layer -> row -> (start, block)
        self.site, self.nbytes, self.limit = site, 0, _kept_limit()

    def add(self, layer: ConvLayer, row: int, delta: np.ndarray) -> None:
        start, stop = _box_above(np.abs(delta).max(axis=0, initial=0.0), 0.0)  # exactly non-zero
        index = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
        block = delta[(slice(None), *index)]
        if self.nbytes + block.nbytes > self.limit:
            raise OnnxRedundError(
                f"the impulse responses kept up to layer {layer.name!r} would take more than "
                f"{self.limit / (1 << 30):.1f} GiB, half this machine's memory: they span most of each map (attention "
                "or global pooling makes every response as big as the input). Compare fewer layers (`layers`), put "
                "the impulses further in (`impulse_at`) or give a smaller `input_shape`"
                f"{'' if self.site.channels_last else '; if its channels are last, pass `layout` nhwc'}"
            )
        self.nbytes += block.nbytes
        self.rows.setdefault(layer.index, {})[row] = (start, block.copy())

    def response(self, layer: int, rows: list[list[int]], shape: tuple[int, ...]) -> tuple[np.ndarray, tuple]:
        """The responses (P, C, M, *box) of the phases' rows, in float64, and the box's start in the layer's output."""
        kept = [self.rows[layer][r] for phase in rows for r in phase]
        nonempty = [(a, b) for a, b in kept if b.size]
        if nonempty:
            lo = tuple(min(a[i] for a, _ in nonempty) for i in range(len(shape) - 1))
            hi = tuple(max(a[i] + b.shape[1 + i] for a, b in nonempty) for i in range(len(shape) - 1))
        else:
            lo, hi = (0,) * (len(shape) - 1), (1,) * (len(shape) - 1)
        out = np.zeros((len(rows), len(rows[0]), shape[0], *(h - low for low, h in zip(lo, hi, strict=True))))
        for p, phase in enumerate(rows):
            for m, r in enumerate(phase):
                start, block = self.rows[layer][r]
                index = tuple(slice(a - low, a - low + n) for a, low, n in zip(start, lo, block.shape[1:], strict=True))
                out[(p, m, slice(None), *index)] = block
        return np.swapaxes(out, 1, 2), lo


def _run_groups(model: Model, site: ImpulseSite, feeds: dict, groups, mode: str, device: str):
    """Run the impulses, each group of rows on the subgraph cut to the layers that need them (a strided conv's
    extra phases need only the network up to it), in runs whose outputs fit the memory budget; each run starts
    with the all-zero sample, which every response is taken against.

    Returns:
        (the responses' blocks, notes of the linearisation).

    Raises:
        _BaselineNotFinite: the all-zero sample gives non-finite values.
        OnnxRedundError: an impulse does.
    """
    blocks, notes, budget = _Blocks(site), [], _memory_budget()
    for members, rows in groups:
        sub = cut(model.analysis_proto, list(site.inputs), [layer.output for layer in members])
        if QUANTIZED_NOTE not in notes and any(n.op_type == "QuantizeLinear" for n in sub.graph.node):
            notes.append(QUANTIZED_NOTE)
        if mode != "network":
            sub, found = linearize(sub)
            notes += [n for n in found if n not in notes]
        run = Runner.create(sub, device, derived=True).runs(model)
        per_sample = 4 * sum(int(np.prod(layer.output_shape)) for layer in members)
        step = int(max(1, min(_MAX_RUN - 1, budget // max(1, per_sample) - 1)))
        for s in range(0, len(rows), step):
            chunk = [0, *rows[s : s + step]]
            outs = run({k: v[chunk] if np.ndim(v) else v for k, v in feeds.items()})
            if not all(np.isfinite(o[:1]).all() for o in outs):
                raise _BaselineNotFinite
            for layer, out in zip(members, outs, strict=True):
                if not np.isfinite(out).all():
                    raise OnnxRedundError("impulse responses are not finite: the model overflows on a unit impulse")
                zero = out[0].astype(np.float64)
                for i, row in enumerate(chunk[1:], start=1):
                    blocks.add(layer, row, out[i].astype(np.float64) - zero)
            del outs
    return blocks, notes


def _compared(responses: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
    """Which channels' responses can be compared, and how many were left out for which reason."""
    c = len(responses)
    if int(np.prod(responses.shape[2:])) < MIN_SUPPORT:
        return np.zeros(c, bool), {"support": c, "constant": 0}
    constant = constant_responses(responses)
    return ~constant, {"support": 0, "constant": int(constant.sum())}


def _reachable(model: Model, layers: list[ConvLayer] | None, start: str) -> list[ConvLayer]:
    """The ``layers`` asked for (each must lie past ``start``), or every conv past ``start``."""
    reach = data_dependent(model.proto.graph, [start]) | {start}
    if not layers:
        return [layer for layer in model.layers if layer.input in reach]
    unreachable = [layer.name for layer in layers if layer.input not in reach]
    if unreachable:
        how = "pick another input with `impulse_input`" if start == model.input_name else "name an earlier tensor"
        raise OnnxRedundError(f"conv {unreachable[0]!r} does not depend on {start!r}: no impulse reaches it ({how})")
    return layers


def run_impulse(
    model: Model,
    *,
    layers: list[ConvLayer] | None = None,
    mode: str = "network",
    threshold: float = NCC_THRESHOLD,
    lags: bool = True,
    position: tuple[int, ...] | None = None,
    across: bool = True,
    device: str = "auto",
    progress: Callable[[str, int, int], Callable[[int], None]] | None = None,
    max_seconds: float | None = None,
    at: str | None = None,
) -> ImpulseResult:
    """Impulse responses and NCC of conv layers.

    Args:
        model: from :func:`onnxredund.load_model`.
        layers: the conv layers to analyse (default every conv the image input reaches, in graph order).
        mode: "network" or "linear" (see the module docstring).
        threshold: a channel is redundant when its best match is >= threshold.
        lags: maximise NCC over spatial lags (default) or take it at lag zero.
        position: the impulse's spatial coordinates in the image input; default the centre.
        across: also find each channel's best match in the earlier layers.
        device: "auto", "cuda" or "cpu".
        progress: ``progress(label, total layers, 0)`` returns a callback taking layers finished.
        max_seconds: past this, the comparisons with earlier layers are left out (said in ``notes``).
        at: a tensor to put the impulses at instead of the image input (a conv's input, past a preprocessing
            the model does in its graph); its sample is (channels, positions...).
    """
    if mode not in IMPULSE_MODES:
        raise OnnxRedundError(f"unknown impulse mode {mode!r}; use one of {', '.join(IMPULSE_MODES)}")
    if not -1.0 <= threshold <= 1.0:
        raise OnnxRedundError(f"`threshold` {threshold} must lie in [-1, 1]")
    t0 = time.perf_counter()
    main = model.image_input
    # an input with no channel axis: integers (token ids, bytes) or floats the graph makes the convs' channels of
    if main.dtype[0] in "iu":
        no_channels = "holds integers (token ids or bytes, embedded before the convs)"
    else:
        no_channels = "has no channel axis (the graph makes the convs' channels)"
    no_image = not main.layout
    left_out: list[str] = []
    if no_image and at is None:  # the first conv's input, and the convs past it (a parallel first conv is not)
        asked = list(layers or model.layers)
        at, parallel = _past_first_conv(model, asked)
        left_out = [layer.name for layer in parallel]
        layers = [layer for layer in asked if layer not in parallel]
    site = ImpulseSite.of_input(model) if at in (None, model.input_name) else ImpulseSite.of_tensor(model, at)
    layers = _reachable(model, layers, site.name)
    if not layers:
        raise OnnxRedundError(f"no conv layer lies past {site.name!r}: no impulse response to take")
    try:
        responses, sampling, base, notes = _responses(model, layers, site, mode, position, device)
        if no_image and site.name != model.input_name:
            notes.insert(
                0,
                f"impulses put at {site.name!r}, the first conv's input: the input {model.input_name!r} {no_channels}"
                + (f"; not past it, so not analysed: {', '.join(left_out)} (`at` their input)" if left_out else ""),
            )
    except _BaselineNotFinite:
        tried = site.name
        site = ImpulseSite.of_first_conv(model, layers) if at is None else None
        if site is None:
            raise OnnxRedundError(
                f"the model's output on an all-zero {tried!r} is not finite (it normalises it inside the "
                "graph, by its min and max or a norm, say); put the impulses past that with `at` TENSOR "
                "(a conv's input)"
            ) from None
        responses, sampling, base, notes = _responses(model, layers, site, mode, position, device)
        notes.insert(
            0,
            (
                f"impulses put at {site.name!r}, the first conv's input: the model computes something of its input "
                "before the convs that an all-zero input makes non-finite (a min-max normalisation's 0/0, say)"
            ),
        )
    bar = progress("impulse NCC", len(layers), 0) if progress else None
    deadline = None if max_seconds is None else t0 + max_seconds
    exact = json_matrix_layers([len(resp) for resp, _ in responses])
    results = _compare(
        layers,
        responses,
        sampling,
        exact=exact,
        threshold=threshold,
        lags=lags,
        across=across,
        bar=bar,
        deadline=deadline,
        notes=notes,
    )
    notes += _phase_notes(layers, sampling)
    return ImpulseResult(
        model=model.path,
        mode=mode,
        threshold=threshold,
        lags=lags,
        position=base,
        notes=notes,
        layers=results,
        seconds=time.perf_counter() - t0,
        json_layers=frozenset(results[i].name for i in exact),
    )


def _responses(model: Model, layers: list[ConvLayer], site: ImpulseSite, mode: str, position, device: str):
    """Every layer's cropped responses to impulses at ``site``: (responses, the phases each layer samples, position,
    notes)."""
    sampling = {layer.index: _phases_of(site, layer) for layer in layers}
    wanted = {layer.index: _offsets(sampling[layer.index]) for layer in layers}
    offsets = sorted({o for offs in wanted.values() for o in offs})
    feeds, base = impulse_inputs(model, position, offsets, site)
    m = site.channels

    def rows(offset) -> list[int]:
        return [1 + offsets.index(offset) * m + c for c in range(m)]

    # the impulses at an offset go to the layers that need it: a strided conv's extra phases skip the rest
    by_members: dict[tuple[int, ...], list[int]] = {}
    for off in offsets:
        by_members.setdefault(tuple(layer.index for layer in layers if off in wanted[layer.index]), []).extend(
            rows(off)
        )
    groups = [([layer for layer in layers if layer.index in key], r) for key, r in by_members.items()]
    blocks, notes = _run_groups(model, site, feeds, groups, mode, device)
    responses = []
    for layer in layers:
        phases = sampling[layer.index].phases
        per_phase, lo = blocks.response(layer.index, [rows(o) for o in wanted[layer.index]], layer.output_shape)
        blocks.rows.pop(layer.index, None)  # let go once cropped
        resp, box = crop_to_support(interleave(per_phase, phases))
        nd = len(lo)  # the box is in the interleaved map: the kept part starts at lo x phases
        responses.append((resp, (*(b + a * p for b, a, p in zip(box[:nd], lo, phases, strict=True)), *box[nd:])))
    return responses, sampling, base, notes


def _phase_notes(layers: list[ConvLayer], sampling: dict) -> list[str]:
    def capped_at_max(layer: ConvLayer) -> bool:  # sampled at MAX_PHASES phases, fewer than its stride
        return any(s > p == MAX_PHASES for s, p in zip(layer.stride, sampling[layer.index].phases, strict=True))

    capped = [layer.name for layer in layers if capped_at_max(layer)]
    if not capped:
        return []
    return [f"strides over {MAX_PHASES} sampled at {MAX_PHASES} phases per axis: {', '.join(capped[:5])}"]


def _compare(
    layers: list[ConvLayer],
    responses: list,
    sampling: dict[int, _Phases],
    *,
    exact: set[int],
    threshold: float,
    lags: bool,
    across: bool,
    bar: Callable[[int], None] | None,
    deadline: float | None,
    notes: list[str],
) -> list[LayerImpulse]:
    """NCC within each layer, and each channel's best match in the earlier layers until ``deadline`` (a
    ``time.perf_counter()``; past it, a note is added to ``notes`` and the layers are compared within only).

    The matrices of the layers at positions ``exact`` (those the JSON holds) are computed in float64, the others
    in float32 with each channel's best match computed again in float64."""
    searches: dict[int, tuple[EarlierLayers, list[tuple[int, np.ndarray]]]] = {}
    results: list[LayerImpulse] = []
    for position, (layer, (resp, box)) in enumerate(zip(layers, responses, strict=True)):
        compared, excluded = _compared(resp)
        if position in exact:
            ncc = ncc_matrix(resp, lags=lags)
            idx, val = best_matches_in(ncc, compared)
        else:
            ncc = ncc_matrix(resp, lags=lags, single=True)
            idx, val = exact_best_matches(resp, ncc, compared, lags=lags)
        count = int((val[compared] >= threshold).sum())
        n = int(compared.sum())
        search, members = searches.setdefault(resp.ndim, (EarlierLayers(), []))
        out_of_time = deadline is not None and time.perf_counter() > deadline
        if across and out_of_time and not any("earlier layers left out" in x for x in notes):
            notes.append(f"time budget spent: comparisons with earlier layers left out from {layer.name} on")
        run = across and n and not out_of_time
        matches = _across(search, members, layers, resp, compared, lags, threshold) if run else None
        if n:
            search.add(resp[compared])
            members.append((len(results), np.flatnonzero(compared)))
        results.append(
            LayerImpulse(
                name=layer.name,
                index=layer.index,
                responses=resp,
                support=box,
                phases=sampling[layer.index].phases,
                ncc=ncc,
                compared=compared,
                excluded=excluded,
                best_match=idx,
                best_value=val,
                redundant_count=count,
                redundant_fraction=count / n if n else None,
                **_across_fields(matches, len(resp)),
            )
        )
        if bar is not None:
            bar(1)
    return results


def _across(search, members, layers, resp, compared, lags, threshold) -> list[tuple[int, str, int, float]] | None:
    """(channel, earlier layer name, its channel, NCC) for each compared channel with an earlier match that
    reaches the threshold."""
    lj, ch, v = search.best_matches(resp[compared], lags=lags, floor=threshold)
    out = []
    for r, a, b, value in zip(np.flatnonzero(compared), lj, ch, v, strict=True):
        if a >= 0:
            position, kept = members[a]
            out.append((int(r), layers[position].name, int(kept[b]), float(value)))
    return out


def _across_fields(matches, c: int) -> dict:
    names, channels, values = [""] * c, np.full(c, -1), np.full(c, np.nan)
    for r, name, channel, value in matches or []:
        names[r], channels[r], values[r] = name, channel, value
    return {"across_best_layer": names, "across_best_channel": channels, "across_best_value": values}
