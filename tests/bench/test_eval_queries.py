"""The real-figure evaluation queries (bench/eval/queries.jsonl) stay valid against a store
ingested from ../shared/data: every target resolves to exactly one figure, no query copies its
caption, in-figure-text queries name words absent from caption and title."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.eval.validate_queries import (
    DEFAULT_QUERIES,
    check_file,
    longest_shared_run,
    resolve,
    term_present,
    words,
)
from figsearch.core.config import Settings
from figsearch.store import FigureStore
from indexer.ingest import ingest_paths


@pytest.fixture(scope="module")
def real_store(tmp_path_factory, shared_data: Path) -> Path:
    """A data dir holding every real figure of ../shared/data (about 900, ~10 s)."""
    data_dir = tmp_path_factory.mktemp("eval-data")
    inputs = [shared_data / "pmc-figures" / "figures.jsonl"] + [
        shared_data / "jats" / d for d in ("plos", "pmc-nxml", "packages")
    ]
    ingest_paths(inputs, Settings(data_dir=data_dir), workers=1)
    return data_dir


def test_copy_and_term_checks() -> None:
    assert longest_shared_run("TLR4 signalling in macrophages", "TLR4 signalling in human macrophages") == 3
    assert longest_shared_run("a b c", "x y z") == 0
    assert term_present("IRF-3", "activates IRF3 dimers")
    assert not term_present("ISG15", "interferon stimulated genes")


@pytest.mark.slow
def test_committed_queries_are_valid(real_store: Path) -> None:
    report = check_file(DEFAULT_QUERIES, real_store)
    assert report.errors == []
    assert report.n_queries >= 170
    assert max(report.runs) <= 5


@pytest.mark.slow
def test_checks_catch_bad_queries(real_store: Path, tmp_path: Path) -> None:
    good = json.loads(DEFAULT_QUERIES.read_text(encoding="utf-8").splitlines()[0])
    ocr = next(json.loads(line) for line in DEFAULT_QUERIES.read_text(encoding="utf-8").splitlines()
               if json.loads(line)["kind"] == "ocr")
    store = FigureStore(real_store / "figsearch.db", create=False)
    caption_word = max(words(resolve(store, ocr["relevant"][0])[0].caption), key=len)
    store.close()
    bad = [
        good,
        dict(good),  # duplicate id
        {**good, "id": "x1", "relevant": [{"pmcid": "PMC0", "label": "Figure 1", "grade": 2}]},
        {**ocr, "id": "x2", "query": f"{ocr['query']} {caption_word}",
         "ocr_terms": [caption_word]},  # a word its caption has
        {**good, "id": "x3", "split": "train"},
    ]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(json.dumps(q) for q in bad) + "\n", encoding="utf-8")
    errors = "\n".join(check_file(path, real_store).errors)
    assert f"{good['id']}: id used 2 times" in errors
    assert "x1: " in errors and "resolves to 0 figures" in errors
    assert f"x2: ocr term '{caption_word}' appears in the caption or title" in errors
    assert "x3: split 'train'" in errors
