"""Typed option groups: the options several commands share, each group a dataclass built from click's values.

A command's function receives click's values as keyword arguments; :meth:`OptionGroup.take` moves a group's
values (its dataclass fields, named as its options) out of them into the dataclass, and :meth:`load` turns it
into what the library takes (a model, data, a backend, an estimation). A command then calls the library with
explicit keyword arguments: an option renamed without its field fails the group's test, not a run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from onnxredund.cli import options
from onnxredund.errors import OnnxRedundError

if TYPE_CHECKING:
    from onnxredund.analyses.sequential import Estimation
    from onnxredund.data import DataSource
    from onnxredund.engine.backends import Backend
    from onnxredund.model import Model

__all__ = ["BackendArgs", "DataArgs", "EstimationArgs", "ModelArgs", "OptionGroup"]


class OptionGroup:
    """A group of options: ``decorator`` adds them to a command; the dataclass fields are their names."""

    decorator: ClassVar

    @classmethod
    def options(cls, function):
        """Add the group's options to a command's function, and the group to those it takes."""
        function = cls.decorator(function)
        function.option_groups = (cls, *getattr(function, "option_groups", ()))
        return function

    @classmethod
    def take(cls, values: dict):
        """The group from a command's keyword arguments, its values removed from ``values``."""
        return cls(**{f.name: values.pop(f.name) for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class ModelArgs(OptionGroup):
    """MODEL, ``--input-shape``, ``--impulse-input``, ``--layout``, ``--classifier-output``, ``--input-value``."""

    decorator: ClassVar = options.model_options
    model: Path
    input_shape: dict | None
    impulse_input: str | None
    layout: str | None
    classifier_output: str | None
    input_value: dict | None

    def load(self) -> Model:
        from onnxredund.engine.loading import load_model

        return load_model(
            self.model,
            input_shape=self.input_shape,
            impulse_input=self.impulse_input,
            layout=self.layout,
            classifier=self.classifier_output,
            input_values=self.input_value,
        )


@dataclass(frozen=True)
class DataArgs(OptionGroup):
    """``--data``, ``--limit``, ``--preprocess``, ``--labels``, ``--skip-bad-images``, ``--data-loader-script``."""

    decorator: ClassVar = options.data_options
    data: str | None
    limit: int | None
    preprocess: str | None
    labels: Path | None
    skip_bad_images: bool
    data_loader_script: str | None

    def load(self, model: Model | None, seed: int) -> DataSource:
        """The data for ``model``'s inputs (any, without a model), cut to ``limit``."""
        from onnxredund.data import load_dataset, load_script

        if self.data_loader_script:
            if self.data:
                raise OnnxRedundError("pass --data or --data-loader-script, not both")
            return load_script(self.data_loader_script).limit(self.limit)
        data = load_dataset(
            self.data,
            seed=seed,
            inputs=None if model is None else model.inputs,
            preprocess=self.preprocess,
            labels=self.labels,
            skip_bad_images=self.skip_bad_images,
        )
        return data.limit(self.limit)


@dataclass(frozen=True)
class BackendArgs(OptionGroup):
    """``--backend``, ``--ray-address``, ``--workers``."""

    decorator: ClassVar = options.backend_options
    backend: str
    ray_address: str | None
    workers: int | None

    def load(self, device: str) -> Backend | None:
        """The backend; None for the local one (the sweeps run in this process, checkpointed per batch)."""
        from onnxredund.engine.backends import make_backend

        backend = make_backend(self.backend, address=self.ray_address, workers=self.workers, device=device)
        return None if self.backend == "local" else backend


@dataclass(frozen=True)
class EstimationArgs(OptionGroup):
    """``--cheap-drop``, ``--confidence``: how each shuffled channel is decided."""

    decorator: ClassVar = options.compose(options.cheap_drop, options.confidence)
    cheap_drop: float
    confidence: float

    def load(self, sequential: bool) -> Estimation:
        from onnxredund.analyses.sequential import Estimation

        return Estimation(sequential, self.cheap_drop, self.confidence)
