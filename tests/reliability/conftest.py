"""Fixtures of the reliability suite."""

from __future__ import annotations

import pytest

from figsearch.core.config import Settings

from .servers import api_thread


@pytest.fixture(scope="session")
def default_api(small_index_data_dir, tiny_model_dir):
    """One real API (uvicorn thread) with *default* access settings over the small index;
    only the model, device and data dir are chosen, and rate limiting is off so that the many
    requests of this suite are not throttled (the rate limit has its own test and server).
    Shared by the reliability tests."""
    settings = Settings(data_dir=small_index_data_dir, model=str(tiny_model_dir), device="cpu",
                        rate_limit_per_minute=0)
    assert settings.admin_token == "" and settings.cors_origins == ""
    with api_thread(settings) as url:
        yield url
