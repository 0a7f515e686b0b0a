"""Shared fixtures: a worker token, a mock manager, and the project's Python reference of every
format (`.specs/reference/vectors.py`), which checks what the package says independently."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

import vram_residency as vr

TOKEN = b"python-test-worker-token-0123456789"
WORKER = "py-worker-1"
REFERENCE = Path(__file__).resolve().parents[3] / ".specs" / "reference" / "vectors.py"


@pytest.fixture
def token_env(monkeypatch: pytest.MonkeyPatch) -> bytes:
    monkeypatch.setenv("VRAM_WORKER_TOKEN", TOKEN.decode())
    return TOKEN


@pytest.fixture
def manager(token_env: bytes) -> Iterator[vr.Manager]:
    yield vr.Manager(WORKER, backend="mock")


@pytest.fixture(scope="session")
def reference() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vectors", REFERENCE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def gpu_tests_enabled() -> bool:
    return os.environ.get("VRAM_TEST_GPU") == "1"
