"""The library names its parameters in its messages; the console names the flags that set them."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from builders import MODELS, run_cli

from onnxredund import cli
from onnxredund.analyses.impulse import run_impulse
from onnxredund.cli.app import FLAGS, as_flags
from onnxredund.engine import load_model
from onnxredund.errors import OnnxRedundError

PACKAGE = Path(cli.__file__).resolve().parents[1]
PARAMETER = re.compile(r"(?<!`)`([a-z][a-z0-9_]*)`(?!`)")


def _messages() -> list[tuple[str, str]]:
    """(file, text) of every string the package outside cli/ writes that is not a docstring."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "cli" in path.relative_to(PACKAGE).parts:
            continue
        tree = ast.parse(path.read_text())
        docs = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        out += [
            (path.name, node.value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs
        ]
    return out


def _all_flags() -> set[str]:
    group = cli._group()
    return {opt for command in group.commands.values() for p in command.params for opt in p.opts}


def test_as_flags_writes_each_parameter_as_its_flag_and_leaves_code_alone():
    message = "`round_to` 1 removes them; `classifier` 'y' is not an output; see ``a_function``"
    assert (
        as_flags(message) == "--round-to 1 removes them; --classifier-output 'y' is not an output; see ``a_function``"
    )


def test_every_parameter_a_library_message_names_is_set_by_a_flag():
    named = {name for _, text in _messages() for name in PARAMETER.findall(text)}
    assert {"round_to", "classifier", "threshold", "input_shape"} <= named  # the scan sees the messages
    flags = _all_flags()
    assert {name: as_flags(f"`{name}`") for name in named if as_flags(f"`{name}`") not in flags} == {}
    assert set(FLAGS.values()) <= flags


def test_library_messages_name_no_flag():
    # the audit report's own text is written for the console's user (it says how to resume the command)
    flagged = [(f, t) for f, t in _messages() if re.search(r"(?<![\w-])--[a-z]", t) and f != "audit_report.py"]
    assert flagged == []


def test_an_error_names_the_parameter_in_the_library_and_the_flag_on_the_console():
    with pytest.raises(OnnxRedundError, match=r"^`threshold` 2.0 must lie in \[-1, 1\]$"):
        run_impulse(load_model(MODELS / "lenet5.onnx"), threshold=2.0, device="cpu")
    result = run_cli("impulse", MODELS / "lenet5.onnx", "--threshold", "2", "--device", "cpu")
    assert result.exit_code == 2
    assert result.stderr.strip() == "onnxredund: error: --threshold 2.0 must lie in [-1, 1]"
