"""The analyses: what is measured, as frozen result dataclasses with ``to_dict()`` for JSON.

Owns: :mod:`.shuffle` (channel and pixel shuffling sweeps, their state and checkpoints),
:mod:`.impulse` (unit impulse responses and NCC), :mod:`.cascade` (the paper's figure 7),
:mod:`.audit` (all signals per layer, gates), :mod:`.reproduce` (the paper's experiments) and
:mod:`.evaluate` (top-1 accuracy). May import the engine, the model, the data, the metrics and
:mod:`onnxredund.atomic` (checkpoints); never the report or the CLI. To add an analysis: a module
here with one public ``run_*`` function returning a result dataclass, a writer in
:mod:`onnxredund.report.writers`, and a command in :mod:`onnxredund.cli`.
"""
