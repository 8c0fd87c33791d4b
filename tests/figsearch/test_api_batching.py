"""BatchingEncoder: concurrent queries share forward passes and get their own vectors back."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from figsearch.api.batching import BatchingEncoder
from figsearch.encoders import load_model


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
    # close waits for the worker: a daemon thread still freeing tensors at interpreter exit
    # is killed inside torch's C++ code (SIGABRT, "terminate called without an active exception")
    assert not batching._worker.is_alive()
    # after close, calls still work (encoded directly) instead of hanging
    np.testing.assert_allclose(batching.encode_texts([texts[0]])[0], direct[0], atol=1e-4)


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
