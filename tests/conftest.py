"""Fixtures every test gets (an isolated cache, the package's logger as before any test) or asks for (MNIST, a
cached third-party model); what tests build is in ``builders.py``."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from builders import MNIST_DIR, REAL_MODELS


@pytest.fixture
def mnist_dir() -> Path:
    if not (MNIST_DIR / "t10k-labels-idx1-ubyte.gz").is_file():
        pytest.skip("MNIST not at ../shared/data/mnist")
    return MNIST_DIR


@pytest.fixture
def real_model():
    """A third-party model from the cache by its name there; the test skips, saying how to fetch it, if absent."""

    def get(name: str) -> Path:
        path = REAL_MODELS / name
        if not path.is_file():
            pytest.skip(f"{name} is not in {REAL_MODELS}: run python scripts/fetch_models.py")
        return path

    return get


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Tests never read or write the user's cache, and never download."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.delenv("ONNXREDUND_DATA", raising=False)
    yield


_LOG = logging.getLogger("onnxredund")
_PRISTINE_LOG = (_LOG.propagate, list(_LOG.handlers), _LOG.level)


@pytest.fixture(autouse=True)
def _logging_restored():
    """A command run in-process sets up the package's logger (its own handler, no propagation to the root, where
    pytest's caplog listens): each test starts with it as it was before any test (a module-scoped fixture that ran
    a command sets it up before a test's own fixtures could note it)."""
    _LOG.propagate, _LOG.handlers = _PRISTINE_LOG[0], list(_PRISTINE_LOG[1])
    _LOG.setLevel(_PRISTINE_LOG[2])
    yield
