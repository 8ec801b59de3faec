"""Running models: loading them for analysis, graph surgery, onnxruntime sessions, permutations, and the
analysis models a shuffle sweep runs.

Owns: :mod:`.surgery` (pure ``ModelProto -> ModelProto`` edits), :mod:`.runtime` (sessions, devices,
IO binding), :mod:`.batching` (freeing a fixed batch), :mod:`.loading` (:func:`load_model`),
:mod:`.permutations` (seeded permutations), :mod:`.analysis_models` (clean, direct and fast models)
and :mod:`.sweep` (the sessions of one sweep). May import :mod:`onnxredund.model`,
:mod:`onnxredund.data`, :mod:`onnxredund.metrics` and :mod:`onnxredund.errors`; never the analyses,
the report or the CLI.
"""

from __future__ import annotations

from onnxredund.engine.loading import load_model, load_model_proto

__all__ = ["load_model", "load_model_proto"]
