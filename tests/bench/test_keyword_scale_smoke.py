"""bench.keyword_scale at 3,000 figures: one index and the same figures in two shards, built,
measured and compared; the sharded one answers as the single one does, up to near-ties."""

from __future__ import annotations

from pathlib import Path

from tests.bench.test_bench_smoke import run_bench


def test_keyword_scale_smoke_sharded_agrees_with_one_index(tmp_path: Path) -> None:
    results = tmp_path / "results"
    one, two = tmp_path / "kw-one", tmp_path / "kw-two"
    common = ["--n", "3000", "--queries", "20", "--rounds", "1", "--name", "keyword_scale"]
    _, single = run_bench("keyword_scale", [*common, "--index", str(one), "--shards", "1"],
                          results)
    _, sharded = run_bench("keyword_scale", [*common, "--index", str(two), "--shards", "2",
                                             "--compare", str(one), "--common-shares",
                                             "0.1,0.3"], results)
    assert single["figures"]["shards"] == 1 and sharded["figures"]["shards"] == 2
    for result in (single, sharded):
        figures = result["figures"]
        assert figures["figures"] == 3000 and figures["build_figures_per_s"] > 0
        assert figures["keyword_k20_p50_ms"] > 0 and figures["filtered_narrow_depth100_p50_ms"] > 0
    # 1,500 figures a shard: statistics differ by a few % at most, top lists barely move
    assert sharded["figures"]["top20_agreement_mean"] >= 0.9
    assert sharded["figures"]["top100_agreement_mean"] >= 0.9
    # the default mode's common-word cut, beside the exact keyword signal
    cut = sharded["figures"]
    assert cut["common_0_depth100_p50_ms"] > 0 and cut["common_0.1_depth100_p50_ms"] > 0
    for share in ("0.1", "0.3"):
        assert 0 < cut[f"common_{share}_depth100_top20_kept_mean"] <= 1
    # a higher share cuts fewer words: it keeps at least as much of the exact lists
    assert cut["common_0.3_depth100_top100_kept_mean"] >= cut["common_0.1_depth100_top100_kept_mean"]
