"""Int8 text tower and the query-embedding cache, on the tiny model (real torch, no mocks)."""

from __future__ import annotations

import copy
import json
import threading

import numpy as np
import pytest

from figsearch.api.batching import BatchingEncoder, QueryCache
from figsearch.api.state import AppState
from figsearch.core.config import Settings
from figsearch.encoders import load_model, quantize_text_tower, text_tower

QUERIES = ["MAPK signalling pathway", "western blot of phosphorylated kinase", "survival curve",
           "apoptosis caspase cascade", "heatmap of gene expression", "T cell receptor",
           "mouse brain section", "bar chart of mean values"]


@pytest.fixture(scope="module")
def encoders(tiny_model_dir):
    float_enc = load_model(str(tiny_model_dir), device="cpu")
    int8_enc = copy.copy(float_enc)
    int8_enc.model = copy.deepcopy(float_enc.model)
    layers = quantize_text_tower(int8_enc)
    return float_enc, int8_enc, layers


def test_int8_text_tower_matches_the_float_model(encoders, shared_data):
    float_enc, int8_enc, layers = encoders
    assert layers > 0 and int8_enc.quantized and not float_enc.quantized
    kinds = {type(m).__module__ for m in text_tower(int8_enc.model).modules()}
    assert any("quantized.dynamic" in k for k in kinds), kinds
    qf, qq = float_enc.encode_texts(QUERIES), int8_enc.encode_texts(QUERIES)
    assert not np.array_equal(qf, qq)  # it really runs another model
    assert np.all(np.sum(qf * qq, axis=1) >= 0.99)
    lines = (shared_data / "pmc-figures" / "figures.jsonl").read_text().splitlines()[:200]
    corpus = float_enc.encode_texts([json.loads(line)["caption"] or "figure" for line in lines])
    top_f = np.argsort(-(qf @ corpus.T), axis=1)[:, :10]
    top_q = np.argsort(-(qq @ corpus.T), axis=1)[:, :10]
    overlap = [len(set(a) & set(b)) / 10 for a, b in zip(top_f, top_q, strict=True)]
    # The random tiny model packs captions within ~1e-3 of each other; ViT-B-16: bench/quantise.
    assert min(overlap) >= 0.8 and np.mean(overlap) >= 0.9


def test_image_tower_is_left_in_float(encoders, shared_data):
    from PIL import Image

    float_enc, int8_enc, _ = encoders
    img = Image.open(sorted((shared_data / "pmc-figures" / "images").glob("*.jpg"))[0])
    assert np.allclose(float_enc.encode_images([img]), int8_enc.encode_images([img]), atol=1e-6)


def test_batching_encoder_with_the_int8_tower_under_concurrency(encoders):
    _, int8_enc, _ = encoders
    batching = BatchingEncoder(int8_enc, max_batch=8)
    expected = int8_enc.encode_texts(QUERIES)
    out: dict[int, np.ndarray] = {}

    def worker(i: int) -> None:
        out[i] = batching.encode_texts([QUERIES[i]])[0]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(QUERIES))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batching.close()
    # Dynamic int8 scales activations per batch, so a vector depends a little on which queries
    # shared its batch: each thread must get its own query's vector up to that, not another's.
    assert sorted(out) == list(range(len(QUERIES)))
    got = np.stack([out[i] for i in range(len(QUERIES))])
    unit = lambda m: m / np.linalg.norm(m, axis=1, keepdims=True)  # noqa: E731
    cos = unit(got) @ unit(expected).T
    assert np.diag(cos).min() >= 0.99
    assert (cos.argmax(axis=1) == np.arange(len(QUERIES))).all()


def test_query_cache_is_a_bounded_lru():
    cache = QueryCache(2)
    cache.put("a", np.ones(3))
    cache.put("b", np.zeros(3))
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("c", np.ones(3))
    assert cache.get("b") is None and len(cache) == 2
    assert cache.hits == 1 and cache.misses == 1
    off = QueryCache(0)
    off.put("a", np.ones(3))
    assert off.get("a") is None and len(off) == 0


def test_settings_switch_quantisation_and_cache(small_index_data_dir, tiny_model_dir):
    base = Settings(data_dir=small_index_data_dir, model=str(tiny_model_dir), device="cpu")
    states = {}
    for name, update in (("plain", {"quantize_text": False, "query_cache_size": 0}),
                         ("fast", {"quantize_text": True, "query_cache_size": 16})):
        state = AppState(base.model_copy(update=update))
        state.reload()
        states[name] = state
    try:
        plain, fast = states["plain"].current.encoder, states["fast"].current.encoder
        assert fast.encoder.quantized and not plain.encoder.quantized
        first = fast.encode_texts(["kinase pathway"])
        again = fast.encode_texts(["kinase pathway"])
        assert fast.cache.hits == 1 and np.array_equal(first, again)
        plain.encode_texts(["kinase pathway"])
        plain.encode_texts(["kinase pathway"])
        assert plain.cache.hits == 0 and len(plain.cache) == 0
    finally:
        for state in states.values():
            state.close()
