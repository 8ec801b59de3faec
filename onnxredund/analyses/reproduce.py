"""The paper's experiments on the shipped LeNet-5 and LeNet-5x10, with its figures and a table that
checks each of its claims with numbers.

Claims checked (the paper's sections 2.3 and 3.4):

1-2. under channel / pixel shuffling at conv2, LeNet-5x10's mean cosine (over all k, c) is higher;
3-4. under channel / pixel shuffling, LeNet-5x10's worst accuracy is closer to its baseline;
5-6. in conv1 / conv2, LeNet-5x10 has a larger fraction of channels whose impulse-response best
     match is >= 0.9, and a higher mean best-match NCC;
7.   two cascaded Gaussian kernels (vertical, horizontal) give the same impulse response in either
     order (figure 7), NCC 1.
"""

from __future__ import annotations

import dataclasses
import logging
import site
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnxredund.analyses.cascade import cascade_check
from onnxredund.analyses.impulse import ImpulseResult, run_impulse
from onnxredund.analyses.prune_study import PruneStudy, run_prune_study
from onnxredund.analyses.shuffle import ShuffleResult, run_shuffle
from onnxredund.choices import BATCH_SIZE
from onnxredund.data import DataSource, conform_feeds
from onnxredund.engine.loading import load_model
from onnxredund.engine.permutations import apply_permutation, permutation_for
from onnxredund.engine.runtime import Runner
from onnxredund.engine.surgery import expose_outputs
from onnxredund.errors import OnnxRedundError
from onnxredund.model import Model

__all__ = ["PAPER_MODELS", "Claim", "ReproduceResult", "run_reproduce", "shipped_models", "with_prune_study"]

log = logging.getLogger(__name__)

PAPER_MODELS = ("lenet5", "lenet5x10")
RESIDUAL_MODEL = "resnet18_mnist"  # the pruning study's residual network (exporters/resnet.py)
TARGET = "conv2"


@dataclass(frozen=True)
class Claim:
    """One claim of the paper, the numbers that test it, and whether they bear it out.

    A claim that compares the two models has a number per model; one that holds for neither model
    in particular (figure 7's cascade) has its one number in ``value`` and None for the models.
    """

    claim: str
    lenet5: float | None
    lenet5x10: float | None
    passed: bool
    value: float | None = None

    def to_dict(self) -> dict:
        d = {"claim": self.claim, "lenet5": self.lenet5, "lenet5x10": self.lenet5x10, "passed": self.passed}
        if self.value is not None:
            d["value"] = self.value
        return d


@dataclass(frozen=True)
class ReproduceResult:
    """Shuffle results per model and mode, impulse results per model, the cascade check, the claims."""

    data: str
    seed: int
    shuffles: dict[str, dict[str, ShuffleResult]]
    impulses: dict[str, ImpulseResult]
    cascade: dict
    example: dict
    claims: list[Claim]
    prune: PruneStudy | None = None
    complete: bool = True  # False: the pruning study was interrupted (the paper's part is whole)

    def to_dict(self) -> dict:
        return {
            "complete": self.complete,
            "prune_study": None if self.prune is None else self.prune.to_dict(),
            "data": self.data,
            "seed": self.seed,
            "claims": [c.to_dict() for c in self.claims],
            "cascade_ncc": self.cascade["ncc"],
            "shuffle": {m: {k: r.to_dict() for k, r in modes.items()} for m, modes in self.shuffles.items()},
            "impulse": {m: r.to_dict() for m, r in self.impulses.items()},
        }


def _worst_drop(r: ShuffleResult) -> float:
    return float(r.baseline_accuracy - r.accuracy.min())


def paper_claims(shuffles, impulses, cascade) -> list[Claim]:
    """The claims table from the measured numbers."""
    a, b = "lenet5", "lenet5x10"
    claims = []
    for mode in ("channel", "pixel"):
        ca, cb = float(shuffles[a][mode].cosine.mean()), float(shuffles[b][mode].cosine.mean())
        claims.append(Claim(f"{mode} shuffling at conv2: LeNet-5x10 keeps a higher mean cosine", ca, cb, cb > ca))
    for mode in ("channel", "pixel"):
        da, db = _worst_drop(shuffles[a][mode]), _worst_drop(shuffles[b][mode])
        claims.append(
            Claim(
                f"{mode} shuffling at conv2: LeNet-5x10's worst accuracy is closer to its baseline (drop)",
                da,
                db,
                db < da,
            )
        )
    for i, name in enumerate(("conv1", "conv2")):
        fa, fb = impulses[a].layers[i].redundant_fraction, impulses[b].layers[i].redundant_fraction
        claims.append(
            Claim(f"impulse responses in {name}: LeNet-5x10 has more channels with a match >= 0.9", fa, fb, fb > fa)
        )
        ma = float(np.nanmean(impulses[a].layers[i].best_value))  # over the compared channels
        mb = float(np.nanmean(impulses[b].layers[i].best_value))
        claims.append(
            Claim(f"impulse responses in {name}: LeNet-5x10's mean best-match NCC is higher", ma, mb, mb > ma)
        )
    ncc = cascade["ncc"]
    claims.append(
        Claim("cascaded Gaussian kernels commute (figure 7): NCC of the two orders", None, None, ncc > 1 - 1e-6, ncc)
    )
    return claims


def shuffle_example(model: Model, data: DataSource, channel: int, seed: int, batch_size: int) -> dict:
    """Figure 4: sample 0's conv2 input channel ``channel`` (key ``index``), as arrays (H, W) under the
    keys ``clean``, ``channel`` (channel-shuffled) and ``pixel`` (pixel-shuffled)."""
    layer = model.layer(TARGET)
    clean = expose_outputs(model.proto, [layer.input])
    feeds = conform_feeds(data.arrays(0, min(batch_size, len(data))), model.inputs, model.input_name, data.name)
    a1 = Runner.create(clean, "cpu").run(feeds, [layer.input])[0]
    pixels = a1.shape[2] * a1.shape[3]
    out = {"clean": a1[0, channel], "index": channel}
    for mode in ("channel", "pixel"):
        perm = permutation_for(mode, seed, 0, channel, 0, len(a1), pixels)
        out[mode] = apply_permutation(a1, channel, perm, mode)[0, channel]
    return out


def shipped_models(given: str | Path | None = None) -> Path:
    """The folder of the shipped models: ``given``; else ``models/`` in the working folder (a clone of the
    repository); else the copy an install put in ``<prefix>/share/onnxredund/models``.

    Raises:
        OnnxRedundError: none of them holds the paper's models.
    """
    if given is not None:
        return Path(given)
    installed = [Path(sysconfig.get_path("data")), Path(site.getuserbase())]
    places = [Path("models"), *(p / "share" / "onnxredund" / "models" for p in installed)]
    for place in places:
        if all((place / f"{name}.onnx").is_file() for name in PAPER_MODELS):
            return place
    raise OnnxRedundError(
        f"the shipped models ({', '.join(PAPER_MODELS)}) are in none of {', '.join(map(str, places))}; pass `models` "
        "DIR (the models/ folder of onnxredund's repository)"
    )


def run_reproduce(
    models_dir: str | Path,
    data: DataSource,
    *,
    seed: int = 0,
    batch_size: int = BATCH_SIZE,
    device: str = "auto",
    progress: Callable[..., Callable[[int], None]] | None = None,
    prune_study: bool = True,
) -> ReproduceResult:
    """Shuffle conv2 of both models in both modes, run the impulse analysis, check the claims; then, with
    ``prune_study``, the pruning study (:func:`with_prune_study`)."""
    models_dir = Path(models_dir)
    if data.y is None:
        raise OnnxRedundError(f"data {data.name!r} has no labels; the paper's accuracy claims need MNIST labels")
    shuffles: dict[str, dict[str, ShuffleResult]] = {}
    impulses: dict[str, ImpulseResult] = {}
    models = {}
    for name in PAPER_MODELS:
        path = models_dir / f"{name}.onnx"
        if not path.is_file():
            raise OnnxRedundError(f"{path} not found; pass `models` with the folder of lenet5.onnx and lenet5x10.onnx")
        models[name] = model = load_model(path)
        impulses[name] = run_impulse(model, device=device)
        for mode in ("channel", "pixel"):
            cb = progress(f"{name} {mode}", len(data)) if progress else None
            res = run_shuffle(
                model, TARGET, data, mode=mode, batch_size=batch_size, seed=seed, device=device, progress=cb
            )
            shuffles.setdefault(name, {})[mode] = res
    cascade = cascade_check()
    example = shuffle_example(models["lenet5"], data, 0, seed, batch_size)
    claims = paper_claims(shuffles, impulses, cascade)
    result = ReproduceResult(data.name, seed, shuffles, impulses, cascade, example, claims)
    return with_prune_study(result, models_dir, data, device=device, progress=progress) if prune_study else result


def with_prune_study(
    result: ReproduceResult,
    models_dir: str | Path,
    data: DataSource,
    *,
    device: str = "auto",
    progress: Callable[..., Callable[[int], None]] | None = None,
) -> ReproduceResult:
    """``result`` with the pruning study on both models and the residual network beside them (calibration on
    the first fifth of the data, at most 2,000 samples; measured on the rest)."""
    models_dir = Path(models_dir)
    studied = {name: load_model(models_dir / f"{name}.onnx") for name in PAPER_MODELS}
    residual = models_dir / f"{RESIDUAL_MODEL}.onnx"
    if residual.is_file():
        studied[RESIDUAL_MODEL] = load_model(residual)
    study = run_prune_study(studied, data, calibration=min(2000, len(data) // 5), device=device, progress=progress)
    if not residual.is_file():
        study.notes.append(f"{residual} not found: the residual network is left out")
    return dataclasses.replace(result, prune=study)
