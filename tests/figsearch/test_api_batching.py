"""BatchingEncoder: concurrent queries share forward passes and get their own vectors back."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from figsearch.api.batching import (
    BatchingEncoder,
    model_thread,
    run_in_own_thread,
    stop_model_thread,
)
from figsearch.encoders import load_model
from figsearch.index import as_float32


@pytest.fixture(scope="module")
def encoder(tiny_model_dir):
    return load_model(str(tiny_model_dir), device="cpu")


class CountingEncoder:
    """The real tiny encoder, counting forward passes (a wrapper, not a fake)."""

    def __init__(self, inner):
        self.inner, self.model_key, self.dim = inner, inner.model_key, inner.dim
        self.calls: list[int] = []

    def encode_texts(self, texts):
        self.calls.append(len(texts))
        return self.inner.encode_texts(texts)

    def encode_images(self, images):
        self.calls.append(len(images))
        return self.inner.encode_images(images)


def test_concurrent_texts_are_batched_and_routed_back(encoder):
    counting = CountingEncoder(encoder)
    batching = BatchingEncoder(counting, max_batch=16)
    texts = [f"query number {i} about kinases" for i in range(40)]
    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(lambda t: batching.encode_texts([t])[0], texts))
    direct = encoder.encode_texts(texts)
    np.testing.assert_allclose(np.stack(got), direct, atol=1e-4)
    assert sum(counting.calls) == 40 and len(counting.calls) < 40  # some calls were shared
    batching.close()
    # after close, calls still work instead of hanging (a request may hold an old snapshot)
    np.testing.assert_allclose(batching.encode_texts([texts[0]])[0], direct[0], atol=1e-4)


def test_stopping_the_model_thread_waits_for_it_and_a_later_call_starts_another(encoder):
    batching = BatchingEncoder(encoder)
    batching.encode_texts(["first"])
    thread = model_thread()
    stop_model_thread()
    # stop waits for the thread: a daemon thread still freeing tensors at interpreter exit
    # is killed inside torch's C++ code (SIGABRT, "terminate called without an active exception")
    assert not thread.alive
    assert batching.encode_texts(["second"]).shape == (1, encoder.dim)
    assert model_thread() is not thread and model_thread().alive


def test_every_model_call_runs_on_the_one_model_thread_and_batches_per_function():
    seen: dict[str, set[int]] = {"double": set(), "negate": set()}
    sizes: list[int] = []

    def double(items):
        seen["double"].add(threading.get_ident())
        sizes.append(len(items))
        return [2 * x for x in items]

    def negate(items):
        seen["negate"].add(threading.get_ident())
        return [-x for x in items]

    worker = model_thread()
    with ThreadPoolExecutor(16) as pool:
        doubled = list(pool.map(lambda x: worker.submit(double, x), range(64)))
        negated = list(pool.map(lambda x: worker.submit(negate, x), range(64)))
    assert doubled == [2 * x for x in range(64)] and negated == [-x for x in range(64)]
    assert seen["double"] == seen["negate"] == {worker._thread.ident}
    assert sum(sizes) == 64 and max(sizes) > 1  # concurrent callers shared calls
    assert worker.call(lambda: threading.get_ident()) == worker._thread.ident


def test_load_thread_result_and_errors():
    assert run_in_own_thread(lambda: threading.get_ident()) != threading.get_ident()
    with pytest.raises(ValueError, match="bad version"):
        run_in_own_thread(lambda: (_ for _ in ()).throw(ValueError("bad version")))


def _omp_threads_added(work) -> int:
    """OS threads this process gains while 8 live threads have each run ``work`` once."""
    import torch

    ready, done = threading.Barrier(9), threading.Event()

    def run():
        torch.set_num_threads(2)  # a per-thread setting in OpenMP: as a 2-core machine
        work()
        ready.wait()
        done.wait()

    before = set(os.listdir("/proc/self/task"))
    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    ready.wait()
    ours = {str(t.native_id) for t in threads}
    added = len(set(os.listdir("/proc/self/task")) - before - ours)
    done.set()
    for t in threads:
        t.join()
    return added


def test_converting_stored_vectors_in_request_threads_starts_no_openmp_threads():
    import torch

    rows = np.random.default_rng(0).standard_normal((1000, 384)).astype(np.float16)
    # the measurement can see it: the plain torch conversion gives each thread a team
    assert _omp_threads_added(lambda: torch.from_numpy(rows).float()) >= 8
    assert _omp_threads_added(lambda: as_float32(rows)) == 0
    np.testing.assert_array_equal(as_float32(rows), rows.astype(np.float32))


def test_images_and_errors(encoder):
    from PIL import Image

    batching = BatchingEncoder(encoder)
    image = Image.new("RGB", (40, 30), (200, 10, 10))
    np.testing.assert_allclose(batching.encode_images([image])[0],
                               encoder.encode_images([image])[0], atol=1e-4)
    with pytest.raises(Exception):  # noqa: B017 - whatever the model raises reaches the caller
        batching.encode_images(["not an image"])
    assert batching.encode_texts(["still alive"]).shape == (1, encoder.dim)
    batching.close()


class GatedEncoder:
    """The real tiny encoder, holding each call until ``ready()`` (at most 10 s) and noting
    whether it came: work that the request thread does while the model encodes makes it."""

    def __init__(self, inner, ready):
        self.inner, self.model_key, self.dim, self.ready = inner, inner.model_key, inner.dim, ready
        self.opened: list[bool] = []

    def encode_texts(self, texts):
        deadline = time.monotonic() + 10
        while not self.ready() and time.monotonic() < deadline:
            time.sleep(0.005)
        self.opened.append(self.ready())
        return self.inner.encode_texts(texts)


class KeywordsOpeningTheGate:
    """The real keyword index; opens ``gate`` when a search starts."""

    def __init__(self, inner, gate: threading.Event):
        self.inner, self.gate = inner, gate

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def ranked(self, *args, **kwargs):
        self.gate.set()
        return self.inner.ranked(*args, **kwargs)


def test_hybrid_search_runs_the_keyword_search_while_the_model_encodes(small_index_settings):
    """The query's encoding runs on the model thread; the request thread searches the keyword
    index meanwhile instead of waiting (at 15 M figures the keyword search is ~19 ms of a
    hybrid query). Results are those of the same query encoded first and searched after."""
    from figsearch.api.state import AppState

    state = AppState(small_index_settings.model_copy(update={"query_cache_size": 0}))
    state.reload()
    try:
        service = state.current.service
        assert isinstance(service.encoder, BatchingEncoder) and service.keywords is not None
        query = "western blot of protein expression"
        before = service.search_text(query, k=10, mode="hybrid")
        gate = threading.Event()
        gated = GatedEncoder(service.encoder.encoder, gate.is_set)
        service.encoder.encoder = gated
        service.keywords = KeywordsOpeningTheGate(service.keywords, gate)
        page = service.search_text(query, k=10, mode="hybrid")
        assert gated.opened == [True]  # the keyword search started before the encoding ended
        assert [h.id for h in page.hits] == [h.id for h in before.hits]
        assert [round(h.score, 5) for h in page.hits] == [round(h.score, 5) for h in before.hits]
    finally:
        state.close()


def test_a_filters_row_masks_are_made_while_the_model_encodes(small_index_settings):
    """On a filter's first use the vector indexes' row masks and plans (25-45 ms each at 15 M
    figures) are made while the model thread encodes the query, not after it."""
    from figsearch.api.state import AppState
    from figsearch.store import FigureFilter

    state = AppState(small_index_settings.model_copy(update={"query_cache_size": 0}))
    state.reload()
    try:
        service = state.current.service
        assert service.columns is not None
        flt = FigureFilter(license_class="cc-by")
        query = "microscopy of stained tissue"
        index = service.index
        gated = GatedEncoder(service.encoder.encoder, lambda: len(index._subsets) > 0)
        plain = service.encoder.encoder
        service.encoder.encoder = gated
        page = service.search_text(query, k=10, mode="hybrid", flt=flt)
        assert gated.opened == [True]  # the image index's plan for the filter came first
        assert page.hits and all(h.figure["license_class"] == "cc-by" for h in page.hits)
        service.encoder.encoder = plain
        again = service.search_text(query, k=10, mode="hybrid", flt=flt)
        assert [h.id for h in again.hits] == [h.id for h in page.hits]
    finally:
        state.close()
