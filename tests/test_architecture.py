"""The package's imports point down its layers: cli -> analyses/report -> engine -> model/data -> errors.

Parsed from the source, so a violation anywhere (a function-level import too) fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import onnxredund

PACKAGE = Path(onnxredund.__file__).parent

#: part of the package -> the parts it may import (besides itself and the root's __version__)
ALLOWED = {
    "errors": set(),
    "metrics": set(),
    "ncc": set(),
    "atomic": {"errors", "interrupts"},  # atomic writes hold signals; interrupts imports nothing
    "interrupts": set(),
    "words": set(),
    "choices": set(),
    "model": {"errors", "words"},
    "data": {"errors", "model", "choices"},
    "engine": {"errors", "metrics", "model", "data", "atomic", "interrupts", "choices"},
    "analyses": {"errors", "metrics", "ncc", "atomic", "interrupts", "words", "choices", "model", "data", "engine"},
    "report": {"errors", "metrics", "ncc", "atomic", "interrupts", "words", "model", "data", "analyses"},
    "cli": {
        "errors",
        "metrics",
        "ncc",
        "atomic",
        "interrupts",
        "words",
        "choices",
        "model",
        "data",
        "engine",
        "analyses",
        "report",
    },
    "__main__": {"cli"},
}
#: modules that may be imported inside a function: heavy and optional
LAZY_OK = {"matplotlib", "matplotlib.pyplot"}
#: the commands import the library when they run, so that help and a mistyped option load none of it
LAZY_LIBRARY = {"cli/commands.py", "cli/groups.py"}


def _part(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(module imported, inside a function) for every import statement of a file."""
    tree = ast.parse(path.read_text())
    found = []
    for func in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
        for node in ast.walk(func):
            node._in_function = True
    for node in ast.walk(tree):
        nested = getattr(node, "_in_function", False)
        if isinstance(node, ast.Import):
            found += [(alias.name, nested) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, nested))
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


def _root_imports(path: Path) -> list[str]:
    """The names a file imports from the package's root (``from onnxredund import ...``)."""
    tree = ast.parse(path.read_text())
    return [
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == "onnxredund"
        for alias in node.names
    ]


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down_the_layers(path):
    part = _part(path)
    # the root's lazy public API would hide an import of any layer: only the version comes from there
    assert set(_root_imports(path)) <= {"__version__"}, f"{path.name} imports {_root_imports(path)} from the root"
    for module, _ in _imports(path):
        if not module.startswith("onnxredund.") or module == "onnxredund":
            continue
        target = module.split(".")[1]
        assert target == part or target in ALLOWED[part], f"{part} may not import {module}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_torch_no_function_level_imports_and_ray_only_in_its_backend(path):
    for module, nested in _imports(path):
        root = module.split(".")[0]
        assert root != "torch", f"{path.name} imports torch"
        if root == "ray":
            assert path.parent.name == "backends" and path.stem.startswith("ray"), f"{path} imports ray"
            continue
        own = module.startswith("onnxredund.") and str(path.relative_to(PACKAGE)) in LAZY_LIBRARY
        assert not nested or module in LAZY_OK or own, f"{path.name} imports {module} inside a function"


def test_every_part_is_known_and_the_checks_can_fail(tmp_path):
    assert {_part(p) for p in MODULES} <= set(ALLOWED)
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from onnxredund.cli import main\n    import torch\n")
    assert _imports(bad) == [("onnxredund.cli", True), ("torch", True)]
    bad.write_text("from onnxredund import __version__, run_prune\n")
    assert _root_imports(bad) == ["__version__", "run_prune"]


HEAVY = ("onnx", "onnxruntime", "onnx_ir", "scipy", "matplotlib", "PIL", "ray", "torch")


@pytest.mark.parametrize("args", [["--help"], ["audit", "-h"], ["prune", "--no-such-option"]])
def test_help_and_a_mistyped_option_import_none_of_the_heavy_modules(args):
    import subprocess
    import sys

    code = (
        "import sys\nfrom onnxredund.cli import run\nsys.argv = ['onnxredund', *sys.argv[1:]]\n"
        "try:\n    run()\nexcept SystemExit:\n    pass\nprint(' '.join(sorted(sys.modules)))"
    )
    r = subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True, text=True, timeout=60)
    loaded = set(r.stdout.split("\n")[-2].split())
    assert "onnxredund.cli.commands" in loaded  # the commands were there to answer
    assert not [m for m in loaded if m.split(".")[0] in HEAVY]
