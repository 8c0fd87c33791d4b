"""The CPU fast path of the encoder: padding trimmed from text batches (exact, checked per
model), bfloat16 weights, and the torch thread count the API gives each worker. Real torch
models built here (a tiny causal CLIP text tower, the tiny BERT-tower model); no mocks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from figsearch.api.batching import model_thread
from figsearch.api.state import AppState
from figsearch.core.config import Settings
from figsearch.encoders import (
    LENGTH_STEP,
    Encoder,
    LoadedClip,
    _row_buckets,
    bucket,
    cpu_precision,
    fast_bf16_cpu,
    load_model,
    quantize_text_tower,
    row_bucket,
)

QUERIES = ["MAPK signalling pathway", "western blot", "Kaplan-Meier survival of EGFR-mutant "
           "non-small cell lung cancer patients treated with gefitinib", "T cell"]


def tiny_clip(causal: bool = True) -> Encoder:
    """open_clip's CLIP class with its built-in text transformer (CLIP's BPE tokenizer, 77
    tokens), tiny and random; ``causal=False`` makes every token attend to the padding."""
    import open_clip

    torch.manual_seed(0)
    text_cfg = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2,
                "layers": 2, "no_causal_mask": not causal}
    vision_cfg = {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16}
    model = open_clip.CLIP(embed_dim=16, vision_cfg=vision_cfg, text_cfg=text_cfg)
    loaded = LoadedClip(model=model, spec="tiny-clip", model_key="tiny-clip",
                        model_cfg={"embed_dim": 16, "vision_cfg": vision_cfg,
                                   "text_cfg": text_cfg},
                        preprocess_cfg={"size": 32, "mean": [0.5] * 3, "std": [0.5] * 3},
                        tokenizer=open_clip.SimpleTokenizer(context_length=77))
    return Encoder(loaded, device="cpu")


def lengths_seen(module: torch.nn.Module) -> list[int]:
    """Records the sequence length of every forward call of ``module``."""
    seen: list[int] = []
    module.register_forward_pre_hook(
        lambda _m, args, kwargs: seen.append(int((args or (kwargs.get("input_ids"),))[0].shape[1])),
        with_kwargs=True)
    return seen


def untrimmed(encoder: Encoder, texts: list[str]) -> np.ndarray:
    pad, encoder.pad_token = encoder.pad_token, None
    try:
        return encoder.encode_texts(texts)
    finally:
        encoder.pad_token = pad


def test_causal_clip_text_is_encoded_without_its_padding():
    enc = tiny_clip(causal=True)
    assert enc.pad_token == 0  # CLIP's tokenizer pads with 0; the check found trimming exact
    seen = lengths_seen(enc.model.transformer)
    trimmed = enc.encode_texts(QUERIES)
    longest = max(len(enc.tokenizer.encode(q)) + 2 for q in QUERIES)  # + start/end tokens
    assert seen == [bucket(longest, 77, LENGTH_STEP)] and seen[0] < 77
    full = untrimmed(enc, QUERIES)
    assert seen[-1] == 77
    assert np.allclose(trimmed, full, atol=1e-5)
    # each query alone: a batch of one is cut to (the bucket of) that query's own length
    assert np.allclose(enc.encode_texts(QUERIES[1:2]), full[1:2], atol=1e-5)
    assert seen[-1] == bucket(len(enc.tokenizer.encode(QUERIES[1])) + 2, 77, LENGTH_STEP)
    # three rows run as four (a power of two), and the copy's output is dropped
    assert np.allclose(enc.encode_texts(QUERIES[:3]), full[:3], atol=1e-5)


def test_buckets():
    assert [bucket(n, 77, 8) for n in (1, 8, 9, 70, 72, 73, 77)] == [8, 8, 16, 72, 72, 77, 77]


def test_row_buckets_pad_large_batches_to_multiples_of_8_and_warm_up_covers_them():
    assert [row_bucket(n) for n in (1, 2, 3, 5, 8, 9, 16, 17, 19, 24, 25, 32)] == \
        [1, 2, 4, 8, 8, 16, 16, 24, 24, 24, 32, 32]
    assert _row_buckets(32) == [1, 2, 4, 8, 16, 24, 32]
    assert _row_buckets(20) == [1, 2, 4, 8, 16, 24]  # a batch of 17-20 runs as 24 rows


def test_a_batch_of_19_runs_as_24_rows_with_the_vectors_of_single_queries():
    enc = tiny_clip(causal=True)
    texts = [f"{QUERIES[i % len(QUERIES)]} {i}" for i in range(19)]
    single = np.concatenate([enc.encode_texts([t]) for t in texts])
    seen: list[int] = []
    enc.model.transformer.register_forward_pre_hook(
        lambda _m, args: seen.append(int(args[0].shape[0])))
    batched = enc.encode_texts(texts)
    assert seen == [24]
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_texts_run_in_batches_of_similar_length_and_come_back_in_order(shared_data):
    """Real captions (up to the 77-token context) mixed with short queries: the tower runs on
    batches sorted by length, so a long caption never pads the short queries, and each row
    is the vector of its text encoded alone."""
    import csv
    import itertools

    with (shared_data / "roco" / "roco_pmc_figures.csv").open(newline="") as f:
        captions = [row["caption"] for row in itertools.islice(csv.DictReader(f), 60)]
    texts = [text for pair in zip(captions, itertools.cycle(QUERIES)) for text in pair]
    enc = tiny_clip(causal=True)
    alone = np.concatenate([enc.encode_texts([t]) for t in texts])
    seen = lengths_seen(enc.model.transformer)
    together = enc.encode_texts(texts)
    np.testing.assert_allclose(together, alone, atol=1e-5)
    assert len(seen) > 2 and seen == sorted(seen) and seen[0] <= 24 and seen[-1] == 77


def test_warm_up_runs_every_query_shape_and_changes_nothing():
    enc = tiny_clip(causal=True)
    before = enc.encode_texts(QUERIES)
    seen = lengths_seen(enc.model.transformer)
    shapes = enc.warm_up(max_rows=4)
    lengths = sorted(set(seen))
    assert lengths == [8, 16, 24, 32, 40, 48, 56, 64, 72, 77]
    assert shapes == 4 * 3 + 6 + 1  # rows 1, 2, 4 up to 32 tokens, one row above; one image
    assert np.array_equal(enc.encode_texts(QUERIES), before)


def test_a_tower_that_attends_to_padding_keeps_the_full_context():
    enc = tiny_clip(causal=False)
    assert enc.pad_token is None  # trimming would change its vectors, so it is left off
    seen = lengths_seen(enc.model.transformer)
    out = enc.encode_texts(QUERIES)
    with torch.inference_mode():
        ref = enc.model.encode_text(enc.tokenizer(QUERIES), normalize=True).numpy()
    assert seen[0] == 77 and np.allclose(out, ref, atol=1e-6)


def test_hf_text_tower_is_encoded_without_its_padding(tiny_model_dir):
    enc = load_model(str(tiny_model_dir), device="cpu")
    assert enc.pad_token is not None
    seen = lengths_seen(enc.model.text.transformer)
    trimmed = enc.encode_texts(QUERIES)
    assert seen[0] < enc.context_length
    assert np.allclose(trimmed, untrimmed(enc, QUERIES), atol=1e-5)
    assert seen[-1] == enc.context_length


def test_bfloat16_weights_give_the_same_vectors_within_rounding(tiny_model_dir, shared_data):
    from PIL import Image

    f32 = load_model(str(tiny_model_dir), device="cpu")
    bf16 = load_model(str(tiny_model_dir), device="cpu", precision="bfloat16")
    assert bf16.precision == "bfloat16" and f32.precision == "float32"
    assert {p.dtype for p in bf16.model.parameters()} == {torch.bfloat16}
    images = [Image.open(p) for p in
              sorted((shared_data / "pmc-figures" / "images").glob("*.jpg"))[:4]]
    for a, b in ((f32.encode_texts(QUERIES), bf16.encode_texts(QUERIES)),
                 (f32.encode_images(images), bf16.encode_images(images))):
        assert a.dtype == b.dtype == np.float32 and not np.array_equal(a, b)
        assert np.all(np.sum(a * b, axis=1) >= 0.99)
    with pytest.raises(ValueError, match="float32"):
        quantize_text_tower(bf16)


def test_precision_names():
    assert cpu_precision("float32") == "float32" and cpu_precision("bfloat16") == "bfloat16"
    assert cpu_precision("auto") == ("bfloat16" if fast_bf16_cpu() else "float32")
    with pytest.raises(ValueError, match="float32, bfloat16, auto"):
        cpu_precision("fp8")


def test_settings_choose_precision_and_threads(small_index_data_dir, tiny_model_dir):
    threads = torch.get_num_threads()
    settings = Settings(data_dir=small_index_data_dir, model=str(tiny_model_dir), device="cpu",
                        cpu_precision="bfloat16", torch_threads=1)
    state = AppState(settings)
    # a model thread that already runs torch with 2 threads (a previous version's)
    assert model_thread().call(lambda: (torch.set_num_threads(2), torch.get_num_threads())[1]) == 2
    try:
        state.reload()
        assert state.current is not None
        assert state.current.encoder.encoder.precision == "bfloat16"
        # an OpenMP thread count is per thread: it must hold where the models run
        assert model_thread().call(torch.get_num_threads) == 1
    finally:
        state.close()
        torch.set_num_threads(threads)
