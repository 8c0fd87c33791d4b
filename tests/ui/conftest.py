"""UI test fixtures: a real figsearch API on loopback over the small real index."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.ui.servers import api_server


@pytest.fixture(scope="session")
def ui_settings(small_index_data_dir, tiny_model_dir):
    """API settings over the shared small index (tiny model, no rate limit, 1 MB uploads).

    ``dedup_threshold=1.0``: the tiny random model maps most figures to nearly the same
    vector, so the default near-duplicate collapse (0.98) would leave only a handful of
    results; exact-image dedup (same sha256) still applies.
    """
    from figsearch.core.config import Settings

    return Settings(
        data_dir=small_index_data_dir, model=str(tiny_model_dir), device="cpu",
        rate_limit_per_minute=0, reload_interval_s=60, admin_token="", max_upload_mb=1.0,
        dedup_threshold=1.0,
    )


@pytest.fixture(scope="session")
def api_url(ui_settings) -> Iterator[str]:
    """Base URL of a real API server (uvicorn thread) over ``small_index_data_dir``."""
    with api_server(ui_settings) as url:
        yield url
