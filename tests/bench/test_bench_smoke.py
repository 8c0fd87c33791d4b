"""Every bench script runs at a tiny size, exits 0, prints its table and writes its result.

Scripts run as subprocesses with the venv's python (``python -m bench.<name>``), writing into
a temporary results directory (``FIGSEARCH_BENCH_RESULTS``) so real results are never touched.
``scale`` and ``report`` read results: their tests write the results they read into their own
directory first, so each test stands alone, in any order or on its own.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV_PY = REPO / ".venv" / "bin" / "python"
PYTHON = str(VENV_PY if VENV_PY.exists() else Path(sys.executable))
TABLE = re.compile(r"^\|.*\|[ \t]*\n\|(?:-+\|)+[ \t]*$", re.MULTILINE)  # markdown
TEXT_TABLE = re.compile(r"^\S.*\s{2,}\S.*\n-{20,}[ \t]*$", re.MULTILINE)  # header + dashes


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bench-results")


def run_bench(name: str, args: list[str], results: Path, table: re.Pattern[str] = TABLE,
              timeout: float = 600) -> tuple[str, dict[str, Any]]:
    """Run ``bench.<name>``; assert exit 0, a printed table and a result file."""
    from bench.common import normalise_result

    env = {**os.environ, "FIGSEARCH_BENCH_RESULTS": str(results), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([PYTHON, "-m", f"bench.{name}", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    tail = f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, tail
    assert table.search(proc.stdout), f"no table printed\n{tail}"
    result = normalise_result(json.loads((results / f"{name}.json").read_text()), name)
    assert result["name"] == name and result["figures"], result
    assert result["machine"]["cores"] >= 1 and result["versions"]["python"]
    return proc.stdout, result


@pytest.mark.slow
def test_ingest_bench_smoke(results_dir: Path, tmp_path: Path) -> None:
    args = ["--synthetic", "6", "--quick", "--synth-dir", str(tmp_path / "synth"),
            "--out", str(results_dir / "ingest.json")]
    _, result = run_bench("ingest", args, results_dir, table=TEXT_TABLE)
    assert result["figures"]["synthetic (6) cold figures_per_s"] > 0
    assert result["figures"]["synthetic (6) cold articles"] == 6


@pytest.mark.slow
def test_ann_bench_smoke(results_dir: Path, tmp_path: Path) -> None:
    _, result = run_bench("ann", ["--sizes", "2000", "--quick", "--tmp", str(tmp_path),
                                  "--pq-sizes", "4,16"], results_dir)
    figures = result["figures"]
    assert 0 < figures["recall_at_10"] <= 1 and figures["bytes_per_vector"] > 0
    assert figures["query_p50_ms"] > 0 and result["params"]["n"] == 2000
    # the extra code sizes are measured too, and smaller codes take fewer bytes per vector
    small, large = (figures[f"2000 IVF-PQ{m} rerank bytes_per_vector"] for m in (4, 16))
    assert small < large


def test_index_build_bench_smoke(results_dir: Path, tmp_path: Path) -> None:
    """The product's build at a tiny size: stage seconds from the manifest, recall through
    SearchIndex with the API's settings (SQ8 codes: re-ranked)."""
    args = ["--n", "3000", "--dim", "32", "--intrinsic-dim", "8", "--queries", "30",
            "--factory", "IVF16,SQ8", "--tmp", str(tmp_path)]
    _, result = run_bench("index_build", args, results_dir)
    figures = result["figures"]
    assert figures["factory"] == "IVF16,SQ8" and figures["rerank"] is True
    assert figures["recall_at_10"] >= 0.9 and figures["train_s"] > 0
    assert figures["build_wall_s"] >= figures["train_s"] + figures["add_s"] + figures["write_s"]


def test_delta_bench_smoke(results_dir: Path, tmp_path: Path) -> None:
    """A delta applied to a tiny IVF version and its caption index: stage seconds, recall,
    removed figures never returned, the projection."""
    args = ["--n", "3000", "--dim", "32", "--caption-dim", "16", "--intrinsic-dim", "8",
            "--new", "100", "--changed", "20", "--removed", "10", "--queries", "20",
            "--factory", "IVF16,SQ8", "--tmp", str(tmp_path)]
    _, result = run_bench("delta", args, results_dir)
    figures = result["figures"]
    assert figures["factory"] == "IVF16,SQ8" and figures["count"] == 3000 + 100 - 10
    assert figures["recall_at_10"] >= 0.9 and figures["removed_returned"] == 0
    assert figures["delta_s"] >= figures["delta_image_s"] > 0
    assert figures["projected_delta_s"] > figures["delta_s"]


@pytest.mark.slow
def test_embed_bench_smoke(results_dir: Path) -> None:
    _, result = run_bench("embed", ["--n", "16", "--quick"], results_dir)
    assert result["figures"]["figclip-mini_naive_fig_s"] > 0


@pytest.mark.slow
def test_pmc_cloud_bench_smoke(results_dir: Path) -> None:
    _, result = run_bench("pmc_cloud", ["--copies", "1", "--concurrency", "2", "--quick",
                                        "--diff-rows", "2000"], results_dir)
    figures = result["figures"]
    assert figures["fetch_c2_objects_per_s"] > 0 and figures["requests_per_version"] > 2
    assert figures["backfill_hours_at_cap"] > 0 and result["params"]["versions_served"] == 20


@pytest.mark.slow
def test_api_bench_smoke(results_dir: Path, tiny_model_dir: Path) -> None:
    """Every query kind at each concurrency answered, none failed, percentiles in order (the
    tiny test model: the script's path is the same, without building figclip-mini)."""
    _, result = run_bench("api", ["--n", "1500", "--duration", "0.5", "--concurrency", "1,4",
                                  "--model", str(tiny_model_dir)], results_dir)
    figures = result["figures"]
    assert result["params"]["n"] == 1500
    for kind in ("dense", "hybrid", "image"):
        for c in (1, 4):
            assert figures[f"{kind}_c{c}_requests"] > 0
            assert figures[f"{kind}_c{c}_errors"] == 0
            assert 0 < figures[f"{kind}_c{c}_p50_ms"] <= figures[f"{kind}_c{c}_p99_ms"]


@pytest.mark.slow
def test_ocr_bench_smoke(results_dir: Path, tmp_path: Path) -> None:
    texts = tmp_path / "texts.jsonl"
    _, result = run_bench("ocr", ["--n", "1", "--workers", "1", "--texts", str(texts)], results_dir)
    figures = result["figures"]
    assert figures["images"] == 1 and figures["images_per_s"] > 0
    assert figures["rerun_images_read"] == 0  # the second run finds the image cached
    (row,) = [json.loads(line) for line in texts.read_text().splitlines()]
    assert row["pmcid"].startswith("PMC") and len(row["sha256"]) == 64 and row["error"] is None


@pytest.mark.slow
def test_hostile_bench_smoke(results_dir: Path) -> None:
    # limits far away: the smoke run checks the script, the real limits are the script's own
    _, result = run_bench("hostile", ["--no-slowloris", "--max-refusal-s", "1e9"], results_dir)
    figures = result["figures"]
    assert {f"{case}_s" for case in ("billion_laughs", "png_bomb", "zip_bomb")} <= set(figures)
    assert figures["png_bomb_rss_growth_mb"] >= 0 and "slowloris_max_s" not in figures


def test_hostile_limits_are_checked() -> None:
    from bench.hostile import check_limits

    fine = {"png_bomb_s": 0.1, "png_bomb_rss_growth_mb": 3.0, "slowloris_max_s": 0.5}
    assert check_limits(fine, 2.0, 3.0) == []
    slow = {"png_bomb_s": 2.5, "billion_laughs_rss_growth_mb": 80.0, "slowloris_max_s": 4.0}
    over = check_limits(slow, 2.0, 3.0)
    assert len(over) == 3 and over[0].startswith("png_bomb: refused in 2.5 s")


def write_inputs(results: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Results of ``ann`` and ``ingest`` (as those scripts write them) for scale and report."""
    from bench.common import write_result

    monkeypatch.setenv("FIGSEARCH_BENCH_RESULTS", str(results))
    write_result("ann", {"n": 2000, "dim": 256},
                 {"query_p50_ms": 3.25, "build_s": 0.5, "recall_at_10": 0.97})
    write_result("ingest", {"synthetic": 6}, {"synthetic (6) cold figures_per_s": 41.5})


@pytest.mark.slow
def test_scale_bench_smoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    results_dir = tmp_path / "results"
    write_inputs(results_dir, monkeypatch)
    out, result = run_bench("scale", ["--synth-n", "4", "--results", str(results_dir)], results_dir)
    md = (results_dir / "scale.md").read_text()
    assert "15,000,000 figures / 4,500,000 articles" in md and TABLE.search(md)
    figures = result["figures"]
    assert figures["index factory"].startswith("OPQ") and figures["index RAM total (GiB)"] > 0
    assert figures["store bytes / figure (B)"] > 0
    assert figures["re-rank vectors (float16, mmap, disk) (GiB)"] == pytest.approx(
        15_000_000 * figures["embedding dim"] * 2 / 2**30)
    inputs = result["params"]["inputs"]
    for name, inp in inputs.items():  # every measured input names a result that exists
        match = re.search(r"bench/results/(\w+)\.json", inp["source"])
        if match and not inp["assumed"]:
            assert (results_dir / f"{match.group(1)}.json").is_file(), (name, inp)
    assert inputs["store_bytes_per_figure"]["assumed"] is False
    # the measured inputs written above are the ones used
    assert (inputs["query_p50_ms"]["value"], inputs["query_p50_ms"]["assumed"]) == (3.25, False)
    assert inputs["build_s_per_vector"] == {
        "value": pytest.approx(0.5 / 2000), "source": inputs["build_s_per_vector"]["source"],
        "assumed": False}
    assert (inputs["ingest_figures_per_s"]["value"], inputs["ingest_figures_per_s"]["assumed"]) == (
        41.5, False)


@pytest.mark.slow
def test_report_regenerates_only_between_markers(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    results_dir = tmp_path / "results"
    write_inputs(results_dir, monkeypatch)
    page = tmp_path / "benchmarks.md"
    original = (REPO / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    assert "<!-- bench:start -->" in original and "<!-- bench:end -->" in original
    before, _, rest = original.partition("<!-- bench:start -->")
    _, _, after = rest.partition("<!-- bench:end -->")
    page.write_text(original, encoding="utf-8")
    env = {**os.environ, "FIGSEARCH_BENCH_RESULTS": str(results_dir)}
    proc = subprocess.run([PYTHON, "-m", "bench.report", "--doc", str(page)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert TABLE.search(proc.stdout)
    text = page.read_text(encoding="utf-8")
    assert text.startswith(before + "<!-- bench:start -->") and text.endswith("<!-- bench:end -->" + after)
    table = text[len(before):len(text) - len(after)]
    assert sorted(p.stem for p in results_dir.glob("*.json")) == ["ann", "ingest"]
    assert "| ann | query_p50_ms | 3.25 |" in table and "| ingest |" in table
    again = subprocess.run([PYTHON, "-m", "bench.report", "--doc", str(page)], cwd=REPO,
                           env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and page.read_text(encoding="utf-8") == text  # idempotent


def test_index_ram_from_factory_string() -> None:
    from bench.scale import factory_numbers, index_ram_bytes

    f = factory_numbers("OPQ64,IVF65536_HNSW32,PQ64", 512)
    assert f == {"nlist": 65536, "code_bytes": 64, "pq_m": 64, "opq": 1, "hnsw": 1,
                 "centroid_bytes": 4}
    ram = index_ram_bytes(15_000_000, 512, "OPQ64,IVF65536_HNSW32,PQ64")
    assert ram["codes"] == 15_000_000 * (64 + 8)
    assert ram["coarse"] == 65536 * 512 * 4 + 65536 * 32 * 2 * 4
    assert ram["total"] == ram["codes"] + ram["coarse"] + 512 * 512 * 4 + 256 * 512 * 4
    assert index_ram_bytes(1000, 64, "Flat")["total"] == 1000 * 64 * 4
    half = index_ram_bytes(15_000_000, 512, "OPQ64,IVF65536(HNSW32_SQfp16),PQ64")  # the rule's
    assert ram["coarse"] - half["coarse"] == 65536 * 512 * 2 and half["codes"] == ram["codes"]


def test_missing_inputs_fall_back_to_marked_defaults() -> None:
    from bench.scale import (
        DEFAULTS,
        _build_s_per_vector,
        _gpu_throughput,
        build_fit,
        measured_or_default,
    )

    results = {"ann": {"params": {"n": 1000, "dim": 256}, "figures": {"build_s": 2.0, "query_p50_ms": 3.5}}}
    p50 = measured_or_default(results, "query_p50_ms")
    assert (p50.value, p50.assumed) == (3.5, False) and "ann.json" in p50.source
    fit_results = {"ann": {"figures": {"100000 IVF-PQ build_s": 9.0, "100000 IVF-PQ rerank build_s": 10.0,
                                       "1000000 IVF-PQ rerank build_s": 55.0, "build_s": 55.0}}}
    train, per_vector, family = build_fit(fit_results)  # type: ignore[misc]
    assert family == "IVF-PQ" and per_vector == pytest.approx(5e-5) and train == pytest.approx(5.0)
    assert build_fit(results) is None  # one size only: no fit
    build = _build_s_per_vector(results)
    assert build.value == pytest.approx(0.002) and not build.assumed
    gpu_results = {"embed_gpu": {"params": {"gpu": "H200"}, "figures": {"end_to_end_jpeg_b512_img_s": 2500.0}}}
    rate, basis = _gpu_throughput(gpu_results, measured_or_default(gpu_results, "embed_images_per_s", "gpu_images_per_s"))
    assert rate == 2500.0 and "H200" in basis and basis.startswith("measured")
    missing = measured_or_default({}, "ingest_figures_per_s")
    assert missing.assumed and missing.value == DEFAULTS["ingest_figures_per_s"][0]
    assert missing.basis().startswith("assumed:")


def test_report_refuses_a_page_without_markers(tmp_path: Path) -> None:
    from bench.report import replace_between_markers

    assert replace_between_markers("a\n<!-- bench:start -->\nold\n<!-- bench:end -->\nz", "T") == (
        "a\n<!-- bench:start -->\nT\n<!-- bench:end -->\nz")
    page = tmp_path / "benchmarks.md"
    page.write_text("no markers here\n")
    proc = subprocess.run([PYTHON, "-m", "bench.report", "--doc", str(page)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "markers" in proc.stderr
    assert page.read_text() == "no markers here\n"


def test_quantise_bench_smoke(results_dir: Path, tiny_model_dir: Path) -> None:
    _, result = run_bench("quantise", ["--model", str(tiny_model_dir), "--corpus", "30",
                                       "--queries", "8", "--images", "12",
                                       "--timing-queries", "3"], results_dir)
    figures = result["figures"]
    # trimming the padding is exact: the same vectors and top-10 lists as the full context
    assert figures["float32"]["padding_trimmed"] and not figures["float32-full"]["padding_trimmed"]
    assert figures["float32"]["cosine_min"] >= 0.9999 and figures["float32"]["top10_identical"] == 1
    assert figures["bfloat16"]["cosine_min"] >= 0.99 and "image_cosine_min" in figures["bfloat16"]
    assert "image_cosine_min" not in figures["int8"]  # int8 touches the text tower only
