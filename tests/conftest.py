"""Shared fixtures. The real data lives in ../shared beside the checkout (never copied here)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FIGSEARCH_SHARED", REPO.parent / "shared")) / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``: real PMC figures, JATS articles and packages, OA file lists."""
    if not SHARED.is_dir():
        pytest.fail(f"shared data not found at {SHARED} (set FIGSEARCH_SHARED)")
    return SHARED


@pytest.fixture()
def store(tmp_path):
    """An empty figure store in a temporary directory."""
    from figsearch.store import FigureStore

    s = FigureStore(tmp_path / "figsearch.db")
    yield s
    s.close()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny randomly initialised CLIP model (ViT + BERT) in open_clip's hub format.

    ``load_model(str(tiny_model_dir))`` loads it without network (embed dim 32, 32 px images).
    """
    from tests.trainer.tiny import make_tiny_model_dir

    return make_tiny_model_dir(tmp_path_factory.mktemp("models") / "tiny-clip")
