"""Load: 32 concurrent clients for ~15 s against a real ``figsearch serve`` process.

The full 60 s run is ``python bench/soak.py --duration 60 --clients 32`` (writes
bench/results/soak.json); this is its CI-sized version over the small real index.
"""

from __future__ import annotations

import asyncio

import pytest

from bench.soak import query_images, run_soak

from .servers import api_process

CLIENTS, DURATION_S = 32, 15.0
# Memory growth is a measurement, not a pass/fail line here: `python -m bench.soak` records it
# (rss_growth_mb, rss_growth_second_half_mb) and checks it against its --max-rss-growth-mb.


@pytest.mark.slow
def test_soak_32_clients_zero_errors_bounded_memory(small_index_data_dir, tiny_model_dir, tmp_path):
    with api_process(small_index_data_dir, tiny_model_dir, tmp_path / "api.log") as api:
        figures, errors = asyncio.run(
            run_soak(api.url, api.pid, CLIENTS, DURATION_S, query_images(), warmup=3.0))
        assert api.process.poll() is None, "server died under load"
    print(f"\nsoak {CLIENTS} clients x {DURATION_S:g} s: {figures['requests']} requests "
          f"({figures['requests_per_s']}/s), {figures['errors']} errors, p50 {figures['p50_ms']} ms, "
          f"p99 {figures['p99_ms']} ms, max {figures['max_ms']} ms; server RSS "
          f"{figures['rss_after_warmup_mb']} -> {figures['rss_end_mb']} MiB "
          f"(peak {figures['rss_peak_mb']}, second half +{figures['rss_growth_second_half_mb']})")
    assert errors == [], errors[:5]
    assert figures["requests"] > 100
    assert all(figures[f"{k}_requests"] > 0 for k in ("dense", "hybrid", "image", "filtered"))
    # the memory figures were measured from the live server process
    assert 0 < figures["rss_after_warmup_mb"] <= figures["rss_peak_mb"]
