"""onnxredund: find redundancy in convolutional neural networks from their ONNX files.

The public API, imported lazily so that the command line starts fast::

    from onnxredund import load_model, load_dataset, run_shuffle, run_impulse, run_audit
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "OnnxRedundError": "onnxredund.errors",
    "ConvLayer": "onnxredund.model",
    "Model": "onnxredund.model",
    "load_model": "onnxredund.engine",
    "load_model_proto": "onnxredund.engine",
    "Dataset": "onnxredund.data",
    "load_dataset": "onnxredund.data",
    "ShuffleResult": "onnxredund.analyses.shuffle",
    "run_shuffle": "onnxredund.analyses.shuffle",
    "ImpulseResult": "onnxredund.analyses.impulse",
    "run_impulse": "onnxredund.analyses.impulse",
    "cascade_check": "onnxredund.analyses.cascade",
    "AuditResult": "onnxredund.analyses.audit",
    "run_audit": "onnxredund.analyses.audit",
    "evaluate": "onnxredund.analyses.evaluate",
    "PruneResult": "onnxredund.analyses.prune",
    "Target": "onnxredund.analyses.prune",
    "run_prune": "onnxredund.analyses.prune",
    "save_pruned": "onnxredund.engine.pruning",
    "channel_groups": "onnxredund.engine.channel_groups",
}

__all__ = [  # noqa: RUF022 - grouped by module, like _EXPORTS
    "__version__",
    "OnnxRedundError",
    "ConvLayer",
    "Model",
    "load_model",
    "load_model_proto",
    "Dataset",
    "load_dataset",
    "ShuffleResult",
    "run_shuffle",
    "ImpulseResult",
    "run_impulse",
    "cascade_check",
    "AuditResult",
    "run_audit",
    "evaluate",
    "PruneResult",
    "Target",
    "run_prune",
    "save_pruned",
    "channel_groups",
]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'onnxredund' has no attribute {name!r}")
