"""The torch-free query path: models exported to ONNX (``figsearch export-onnx``) and served on
ONNX Runtime with ``FIGSEARCH_ENCODER_BACKEND=onnx``.

The exported tokenizers and the numpy image preprocessing are checked against open_clip's own on
real PMC captions and figures; the exported towers against the torch models they came from; and
a real ``figsearch serve`` process on loopback answers text and image queries with the onnx
backend while no torch library is loaded in it.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from figsearch.api.state import AppState, onnx_root
from figsearch.core.config import Settings
from figsearch.encoders import ModelLoadError, load_model, make_transform
from figsearch.encoders.lengths import length_batches
from figsearch.netutil import free_port, wait_for_http
from figsearch.onnx_encoder import (
    MANIFEST,
    OnnxEncoder,
    OnnxExportMissing,
    TextTokenizer,
    clean_text,
    export_dir_name,
    find_export,
    preprocess_image,
)
from figsearch.onnx_export import (
    _bpe_tokenizer,
    export_clip,
    tokenizer_export,
)
from tests.figsearch.test_encoder_fastpath import QUERIES, tiny_clip

REPO = Path(__file__).resolve().parents[2]
EDGE_TEXTS = [
    "", "a", "   spaced\tout \n text  ", "p53 &amp;amp; MDM2 &lt;b&gt;", "Ã©tude franÃ§aise (mojibake)",
    "IL-6/STAT3 signalling: 2.5 µm, 37 °C, β-catenin, α-SMA", "<start_of_text> inside a text",
    "don't, it's, we're, they've, I'm, we'll, he'd", "ＦＵＬＬＷＩＤＴＨ ｔｅｘｔ", "🙂 emoji 🧬 DNA",
    "word " * 200,
]


def real_captions(shared_data: Path, n: int) -> list[str]:
    """The first ``n`` of the 22k real PMC captions (ROCO), plus edge cases."""
    with (shared_data / "roco" / "roco_pmc_figures.csv").open(newline="") as f:
        captions = [row["caption"] for row in itertools.islice(csv.DictReader(f), n)]
    return captions + EDGE_TEXTS


def real_figures(shared_data: Path, n: int) -> list[Image.Image]:
    paths = sorted((shared_data / "pmc-figures" / "images").rglob("*.jpg"))[:n]
    assert len(paths) == n
    return [Image.open(p) for p in paths]


def padded(ids: np.ndarray, length: int, pad: int) -> np.ndarray:
    out = np.full((len(ids), length), pad, np.int64)
    out[:, :ids.shape[1]] = ids
    return out


# --------------------------------------------------------------------------- tokenizers
def test_clip_bpe_tokenizer_gives_open_clips_ids_on_real_captions(shared_data, tmp_path):
    import open_clip

    simple = open_clip.SimpleTokenizer(context_length=77)
    backend, rules = tokenizer_export(simple, 77)
    assert rules["clean"] == "lower"
    backend.save(str(tmp_path / "tokenizer.json"))
    ours = TextTokenizer.from_export(tmp_path, rules)
    texts = real_captions(shared_data, 3000)
    expected = simple(texts).numpy()
    got = padded(ours(texts), 77, 0)
    mismatched = [texts[i][:60] for i in np.flatnonzero((got != expected).any(1))]
    assert mismatched == []
    # the long text is cut to 77 tokens and still ends with end-of-text
    assert (got[-1] != 0).all() and got[-1, -1] == simple.eot_token_id


def test_hf_tokenizer_gives_open_clips_ids_on_real_captions(shared_data, tiny_model_dir, tmp_path):
    encoder = load_model(str(tiny_model_dir), device="cpu")
    backend, rules = tokenizer_export(encoder.tokenizer, encoder.context_length)
    assert rules["clean"] == "whitespace" and rules["pad_id"] == 0
    backend.save(str(tmp_path / "tokenizer.json"))
    ours = TextTokenizer.from_export(tmp_path, rules)
    texts = real_captions(shared_data, 3000)
    expected = encoder.tokenizer(texts).numpy()
    got = padded(ours(texts), encoder.context_length, rules["pad_id"])
    assert [texts[i][:60] for i in np.flatnonzero((got != expected).any(1))] == []
    assert ours(["a", "a much longer text"]).shape == (2, 6)  # padded to the batch, not to 64


def test_text_cleaning_follows_open_clip():
    from open_clip import tokenizer as oc

    for text in EDGE_TEXTS:
        assert clean_text(text, "whitespace") == oc._clean_whitespace(text)
        assert clean_text(text, "lower") == oc._clean_lower(text)
        assert clean_text(text, "canonicalize") == oc._clean_canonicalize(text)
        assert clean_text(text, "none") == text


def test_length_batches_group_similar_lengths_within_the_budgets():
    lengths = np.random.default_rng(0).integers(1, 300, 500).tolist() + [256, 5, 5]
    batches = length_batches(lengths, max_rows=64, max_tokens=1024)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))  # each row once
    for batch in batches:
        longest = max(lengths[i] for i in batch)
        assert len(batch) <= 64 and (len(batch) * longest <= 1024 or len(batch) == 1)
    for shorter, longer in itertools.pairwise(batches):  # a long text never pads short ones
        assert max(lengths[i] for i in shorter) <= min(lengths[i] for i in longer)
    assert [len(b) for b in length_batches([10] * 130, 64, 1024)] == [64, 64, 2]
    assert length_batches([], 64, 1024) == []


def test_bpe_export_is_a_real_tokenizers_file(tmp_path):
    import open_clip
    from tokenizers import Tokenizer

    simple = open_clip.SimpleTokenizer()
    _bpe_tokenizer(simple).save(str(tmp_path / "t.json"))
    reread = Tokenizer.from_file(str(tmp_path / "t.json")).encode("western blot").ids
    assert reread == simple(["western blot"])[0, :len(reread)].tolist()
    assert reread[0] == simple.sot_token_id and reread[-1] == simple.eot_token_id


# --------------------------------------------------------------------------- images
PREPROCESS = [
    {"size": 224, "mean": [0.48145466, 0.4578275, 0.40821073],
     "std": [0.26862954, 0.26130258, 0.27577711], "interpolation": "bicubic",
     "resize_mode": "shortest"},
    {"size": [32, 32], "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear",
     "resize_mode": "squash"},
    {"size": 128, "mean": [0.5] * 3, "std": [0.25] * 3},  # open_clip's defaults for the rest
]


def odd_images() -> list[Image.Image]:
    """Modes and shapes real uploads have: RGBA, grey, palette, 1-bit, thin, exact size."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (300, 200, 3), np.uint8))
    return [rgb.convert("RGBA"), rgb.convert("L"), rgb.convert("P"), rgb.convert("1"),
            rgb.resize((900, 7)), rgb.resize((224, 224)), rgb.resize((33, 32))]


@pytest.mark.parametrize("cfg", PREPROCESS, ids=["shortest-224", "squash-32", "defaults-128"])
def test_image_preprocessing_matches_open_clip(cfg, shared_data):
    reference = make_transform(cfg)
    for image in real_figures(shared_data, 12) + odd_images():
        expected = reference(image).numpy()
        got = preprocess_image(image, cfg)
        assert got.shape == expected.shape and got.dtype == np.float32
        assert float(np.abs(got - expected).max()) < 1e-5, (image.mode, image.size)


def test_unsupported_preprocessing_is_refused():
    image = Image.new("RGB", (10, 10))
    with pytest.raises(ModelLoadError, match="non-square"):
        preprocess_image(image, {"size": [32, 48]})
    from figsearch.onnx_encoder import check_preprocess_supported

    with pytest.raises(ModelLoadError, match="resize mode 'longest'"):
        check_preprocess_supported({"size": 32, "resize_mode": "longest"})


# --------------------------------------------------------------------------- towers
def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1)


@pytest.fixture(scope="module")
def tiny_export(tiny_model_dir, tmp_path_factory):
    encoder = load_model(str(tiny_model_dir), device="cpu")
    return encoder, export_clip(encoder, tmp_path_factory.mktemp("onnx"))


def test_exported_hf_tower_model_gives_the_torch_vectors(tiny_export, shared_data):
    encoder, folder = tiny_export
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["model_key"] == encoder.model_key and folder.name == export_dir_name(
        encoder.model_key)
    assert min(manifest["checks"].values()) >= 0.9999
    exported = OnnxEncoder(folder, threads=1)
    texts = QUERIES + real_captions(shared_data, 200)
    assert cosines(exported.encode_texts(texts), encoder.encode_texts(texts)).min() > 0.9999
    images = real_figures(shared_data, 8) + odd_images()
    assert cosines(exported.encode_images(images), encoder.encode_images(images)).min() > 0.9999
    # the ranking of captions for a query is the torch model's
    q_onnx, q_torch = exported.encode_texts(["western blot"]), encoder.encode_texts(["western blot"])
    c_onnx, c_torch = exported.encode_texts(texts), encoder.encode_texts(texts)
    assert (np.argsort(-(c_onnx @ q_onnx[0]))[:10] == np.argsort(-(c_torch @ q_torch[0]))[:10]).all()


def test_int8_image_tower_stays_within_the_cosine_floor(tiny_model_dir, shared_data, tmp_path):
    import onnx

    encoder = load_model(str(tiny_model_dir), device="cpu")
    folder = export_clip(encoder, tmp_path, int8_image=True)
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["image"]["precision"] == "int8"
    ops = {node.op_type for node in onnx.load(str(folder / "image.onnx")).graph.node}
    assert "DynamicQuantizeLinear" in ops and ops & {"MatMulInteger", "DynamicQuantizeMatMul"}
    exported = OnnxEncoder(folder, threads=1)
    assert exported.precision == "int8"
    images = real_figures(shared_data, 12)
    assert cosines(exported.encode_images(images), encoder.encode_images(images)).min() >= 0.99
    # the text tower is not quantised: still the float model's vectors
    assert cosines(exported.encode_texts(QUERIES), encoder.encode_texts(QUERIES)).min() > 0.9999


def test_exported_clip_text_transformer_gives_the_torch_vectors(tmp_path, shared_data):
    encoder = tiny_clip()
    folder = export_clip(encoder, tmp_path)
    exported = OnnxEncoder(folder, threads=1)
    texts = QUERIES + real_captions(shared_data, 100)
    assert cosines(exported.encode_texts(texts), encoder.encode_texts(texts)).min() > 0.9999


def test_exported_caption_model_gives_the_sentence_transformers_vectors(onnx_data_dir,
                                                                        shared_data):
    from figsearch.caption_index import CaptionEncoder

    encoder = CaptionEncoder("all-MiniLM-L6-v2")
    # exported by the export verb in the fixture (export_data_dir -> export_caption_model)
    folder = find_export(onnx_root(Settings(data_dir=onnx_data_dir)), encoder.model_key)
    exported = OnnxEncoder(folder, threads=1)
    assert exported.image_session is None and exported.model_key == encoder.model_key
    texts = real_captions(shared_data, 150)
    assert cosines(exported.encode_texts(texts), encoder.encode_texts(texts)).min() > 0.9999
    with pytest.raises(ModelLoadError, match="no image tower"):
        exported.encode_images([Image.new("RGB", (8, 8))])


def test_a_failed_or_crashed_export_leaves_the_previous_one(tiny_export, tmp_path):
    encoder, folder = tiny_export
    root = tmp_path / "onnx"
    shutil.copytree(folder, root / folder.name)
    crashed = root / f".{folder.name}.tmp-123"  # what a killed export leaves
    crashed.mkdir()
    (crashed / "text.onnx").write_bytes(b"half a file")
    encoder.quantized = True  # refused before anything is written
    try:
        from figsearch.onnx_export import ExportError

        with pytest.raises(ExportError, match="float model"):
            export_clip(encoder, root)
    finally:
        encoder.quantized = False
    assert find_export(root, encoder.model_key) == root / folder.name
    export_clip(encoder, root)  # a rerun replaces it and clears what the crash left
    assert sorted(p.name for p in root.iterdir()) == [folder.name]


def test_missing_and_stale_exports_are_refused_with_what_to_do(tiny_export, tmp_path):
    encoder, folder = tiny_export
    with pytest.raises(OnnxExportMissing, match="figsearch export-onnx"):
        find_export(tmp_path, encoder.model_key)
    stale = tmp_path / export_dir_name(encoder.model_key)
    shutil.copytree(folder, stale)
    manifest = json.loads((stale / MANIFEST).read_text())
    (stale / MANIFEST).write_text(json.dumps({**manifest, "model_key": "other@123"}))
    with pytest.raises(OnnxExportMissing, match="exported from model 'other@123'"):
        find_export(tmp_path, encoder.model_key)
    (stale / MANIFEST).write_text(json.dumps({**manifest, "format": 99}))
    with pytest.raises(ModelLoadError, match="format 99"):
        find_export(tmp_path, encoder.model_key)


# --------------------------------------------------------------------------- the API
@pytest.fixture(scope="module")
def onnx_data_dir(small_index_data_dir, tiny_model_dir, tmp_path_factory):
    """The small data dir with a caption index, and both models exported by the CLI verb."""
    from figsearch.caption_index import CaptionEncoder
    from figsearch.cli import main
    from figsearch.index import current_version_dir
    from figsearch.store import FigureStore
    from indexer.captions import embed_captions, write_caption_index

    data_dir = tmp_path_factory.mktemp("onnx-data") / "data"
    shutil.copytree(small_index_data_dir, data_dir, symlinks=True)
    settings = Settings(data_dir=data_dir, caption_passages=0)
    store = FigureStore(settings.db_path, create=False)
    captions = CaptionEncoder("all-MiniLM-L6-v2")
    built = embed_captions(settings, store, captions, progress=False)
    store.close()
    version = current_version_dir(settings.indexes_dir)
    assert version is not None
    write_caption_index(version, built, captions)
    assert main(["export-onnx", "--data-dir", str(data_dir), "--model", str(tiny_model_dir)]) == 0
    return data_dir


def test_export_verb_writes_both_models(onnx_data_dir, tiny_model_dir):
    root = onnx_root(Settings(data_dir=onnx_data_dir))
    manifests = [json.loads((d / MANIFEST).read_text()) for d in sorted(root.iterdir())]
    assert sorted(bool(m["image"]) for m in manifests) == [False, True]
    assert {m["model_key"] for m in manifests} >= {load_model(str(tiny_model_dir)).model_key}


def test_onnx_backend_state_ranks_as_the_torch_backend(onnx_data_dir, tiny_model_dir):
    results = {}
    for backend in ("torch", "onnx"):
        settings = Settings(data_dir=onnx_data_dir, model=str(tiny_model_dir), device="cpu",
                            encoder_backend=backend, dedup_threshold=0.99999)
        state = AppState(settings)
        try:
            state.reload()
            assert state.current is not None
            service = state.current.service
            assert service.captions is not None
            assert (type(state.current.encoder.encoder).__name__ == "OnnxEncoder") == (
                backend == "onnx")
            results[backend] = {
                mode: [h.id for h in service.search_text(
                    "western blot of protein lysates", k=10, mode=mode).hits]
                for mode in ("dense", "caption", "hybrid")}
        finally:
            state.close()
    assert results["onnx"] == results["torch"]
    assert all(len(ids) == 10 for ids in results["onnx"].values())


def test_onnx_backend_without_an_export_does_not_load(small_index_data_dir, tmp_path):
    settings = Settings(data_dir=small_index_data_dir, encoder_backend="onnx",
                        onnx_dir=str(tmp_path / "nothing"), caption_model="")
    state = AppState(settings)
    with pytest.raises(OnnxExportMissing, match="figsearch export-onnx"):
        state.reload()
    assert state.current is None and "no ONNX export" in (state.last_error or "")
    state.close()


def test_server_with_the_onnx_backend_loads_no_torch(onnx_data_dir, shared_data):
    port = free_port()
    env = {**os.environ, "FIGSEARCH_ENCODER_BACKEND": "onnx", "FIGSEARCH_RATE_LIMIT_PER_MINUTE": "0",
           "FIGSEARCH_DEDUP_THRESHOLD": "0.99999", "FIGSEARCH_MODEL": ""}
    proc = subprocess.Popen(
        [sys.executable, "-m", "figsearch.cli", "serve", "--data-dir", str(onnx_data_dir),
         "--port", str(port), "--workers", "1"], env=env, cwd=REPO,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base}/readyz", process=proc, timeout=120)
        import httpx

        with httpx.Client(base_url=base, timeout=30) as http:
            text = http.get("/v1/search", params={"q": "western blot", "k": 5, "mode": "hybrid"})
            assert text.status_code == 200 and len(text.json()["results"]) == 5
            # an image query finds the figure it was cut from first
            hit = text.json()["results"][0]
            image = http.get(hit["image_url"])
            assert image.status_code == 200
            found = http.post("/v1/search/image", params={"k": 3},
                              files={"image": ("q.jpg", image.content, "image/jpeg")})
            assert found.status_code == 200
            assert found.json()["results"][0]["id"] == hit["id"]
            stats = http.get("/v1/stats").json()
            assert stats["encoder_backend"] == "onnx" and stats["signals"]["caption"] is True
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        assert "onnxruntime" in maps
        assert "/torch/lib/" not in maps and "libtorch" not in maps
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_sessions_let_idle_threads_sleep(tiny_export):
    """Both sessions' intra-op threads sleep when idle instead of spinning on the cores the
    request thread searches with next (bench/results/onnx_spinning.json)."""
    _encoder, folder = tiny_export
    exported = OnnxEncoder(folder, threads=2)
    for session in (exported.text_session, exported.image_session):
        options = session.get_session_options()
        assert options.intra_op_num_threads == 2
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert exported.encode_texts(["western blot"]).shape[0] == 1
