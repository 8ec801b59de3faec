"""Every result is checked against ``schema/results.schema.json`` before it is written: a number out of its
range (a cosine above 1, an accuracy of 148 %) stops the write, whatever made it, instead of reaching a file
a gate or a person reads."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import jsonschema

__all__ = ["SCHEMA_PATH", "check_results", "check_sweep"]

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schema" / "results.schema.json"


@cache
def _validator(definition: str | None) -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    if definition is not None:
        schema = {"$ref": f"#/$defs/{definition}", "$defs": schema["$defs"]}
    return jsonschema.Draft202012Validator(schema)


def _check(payload: dict, definition: str | None, what: str) -> None:
    error = jsonschema.exceptions.best_match(_validator(definition).iter_errors(payload))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top)"
        raise RuntimeError(f"{what} does not follow its schema at {where}: {error.message} (a bug of onnxredund)")


def check_results(payload: dict) -> None:
    """An audit's results.json.

    Raises:
        RuntimeError: it does not validate (a bug: nothing is written).
    """
    _check(payload, None, "the audit's results")


def check_sweep(payload: dict) -> None:
    """One sweep's JSON (``ShuffleResult.to_dict``).

    Raises:
        RuntimeError: it does not validate (a bug: nothing is written).
    """
    _check(payload, "sweep", f"the {payload.get('mode')} sweep of {payload.get('layer')}")
