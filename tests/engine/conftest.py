"""Shared engine fixtures: one tiny checkpoint and one loaded model per test run."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_TORCH_COMPILE", "1")  # read when moshi is imported

import pytest

from serve_app.engine.loader import LoadedModel, load_model
from serve_app.engine.spec import ModelSpec
from serve_app.engine.tiny import build_tiny_checkpoint
from tests.engine.support import TINY_SEED


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt", TINY_SEED)


@pytest.fixture(scope="session")
def tiny_model(tiny_dir: Path) -> LoadedModel:
    """Shared by every test: each engine/stream must be closed (a model streams in one context at a time)."""
    return load_model(ModelSpec(local_dir=tiny_dir, device="cpu"))


@pytest.fixture(scope="session")
def tiny_persona_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny PersonaPlex checkpoint (16-step depformer, voices.tgz) in the real file layout."""
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-persona") / "ckpt", TINY_SEED, "personaplex")


@pytest.fixture(scope="session")
def tiny_persona(tiny_persona_dir: Path) -> LoadedModel:
    return load_model(ModelSpec(local_dir=tiny_persona_dir, device="cpu"))


@pytest.fixture(autouse=True)
def _tiny_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Never touch the user's ~/.cache from tests.
    monkeypatch.setenv("MOSHI_REALTIME_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    yield
