"""Shared fixtures. The real data lives in ../shared beside the checkout (never copied here)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FIGSEARCH_SHARED", REPO.parent / "shared")) / "data"
# Builds in tests skip the ONNX export step (about 10 s per model and data dir, minutes over the
# suite, in-process and in the CLI subprocesses that inherit this); the tests of that step and of
# the torch-free serve it feeds turn it on (tests/figsearch/test_serve_install.py).
os.environ.setdefault("FIGSEARCH_ONNX_EXPORT", "0")


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


# -- search API fixtures (API helper) ----------------------------------------------------------
@pytest.fixture(scope="session")
def small_index_data_dir(tmp_path_factory, shared_data, tiny_model_dir) -> Path:
    """A complete, real data dir for search/API/UI tests (session scope: do NOT modify it).

    ``figsearch.db`` with 36 real PMC figures (real JPEGs from shared/data/pmc-figures, licenses
    cc-by / cc-by-nc, figure types diagram/pathway / multi-panel figure), one article reusing the first figure's
    image (pmcid PMC0000001, same sha256 -> collapsed by dedup) and one synthetic article
    (key ``synthetic:SYNTH-7-1``, two ``chart/plot`` figures, no PMC links); ``images/``; and one
    FAISS index version built with ``tiny_model_dir`` (dim 32) as ``indexes/current``.
    Copy it (``shutil.copytree(..., symlinks=True)``) or use
    ``tests.figsearch.api_fixtures.make_small_index_data_dir`` for a mutable one.
    """
    from tests.figsearch.api_fixtures import make_small_index_data_dir

    return make_small_index_data_dir(tmp_path_factory.mktemp("search-data"), shared_data,
                                     tiny_model_dir)


@pytest.fixture()
def small_index_settings(small_index_data_dir, tiny_model_dir):
    """Settings over ``small_index_data_dir`` for in-process apps: tiny model, no rate limit,
    fast reload polling, and ``dedup_threshold=0.99999`` because the random tiny model maps all
    images to nearly the same direction (exact copies are still collapsed by sha256). Copy with
    ``model_copy(update=...)`` to change a limit."""
    from figsearch.core.config import Settings

    return Settings(
        data_dir=small_index_data_dir, model=str(tiny_model_dir), device="cpu",
        rate_limit_per_minute=0, reload_interval_s=0.2, admin_token="", dedup_threshold=0.99999,
    )
