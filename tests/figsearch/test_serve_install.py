"""The fast path by default, and an install per role.

``figsearch index`` exports the version's models to ONNX (checked against torch), and the API's
default backend (``auto``) then encodes queries on ONNX Runtime, falling back to torch with a
log line that says why. The serve path imports no torch, open_clip or matplotlib; and a venv with
only the ``serve`` extra serves a data dir that the full install built (slow: it installs).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from figsearch.api.state import AppState, onnx_root
from figsearch.core.config import Settings
from figsearch.index import read_manifest
from figsearch.netutil import free_port, wait_for_http
from figsearch.store import FigureStore
from tests.figsearch.api_fixtures import populate_store

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "open_clip", "matplotlib", "sentence_transformers", "transformers")


@pytest.fixture(scope="module")
def built(shared_data, tiny_model_dir, tmp_path_factory) -> Path:
    """A data dir of real PMC figures built by `figsearch index` (tiny image model, the default
    caption model), with the ONNX exports that build wrote."""
    from indexer.indexing import index_all

    data_dir = tmp_path_factory.mktemp("built") / "data"
    populate_store(data_dir, shared_data).close()
    settings = Settings(data_dir=data_dir, device="cpu", num_workers=0, batch_size=8,
                        caption_passages=0, onnx_export=True)
    assert index_all(settings, str(tiny_model_dir), progress=False) is not None
    return data_dir


def a_captioned_figure(data_dir: Path) -> tuple[int, str]:
    """(id, query) of a real figure with a long caption no other figure shares: the query is
    its caption's first 60 words, which caption search must find it by."""
    store = FigureStore(Settings(data_dir=data_dir).db_path, create=False)
    try:
        figures = store.get_figures(range(1, 100))
    finally:
        store.close()
    captions = [f.get("caption") or "" for f in figures.values()]
    fid, figure = next((i, f) for i, f in sorted(figures.items())
                       if len((f.get("caption") or "").split()) > 25 and f["source"] != "synthetic"
                       and captions.count(f["caption"]) == 1)
    return fid, " ".join(figure["caption"].split()[:60])


def test_build_exports_its_models_and_serve_uses_them_by_default(built, caplog):
    manifest = read_manifest(Path(os.path.realpath(built / "indexes" / "current")))
    note = manifest["onnx"]
    root = onnx_root(Settings(data_dir=built))
    for part in ("model", "caption_model"):
        export = json.loads((root / note[part]["export"] / "figsearch_onnx.json").read_text())
        assert export["model_key"] == note[part]["model_key"] and export["checks"]
    assert note["model"]["model_key"] == manifest["model_key"]

    state = AppState(Settings(data_dir=built, device="cpu"))  # encoder_backend: auto
    try:
        state.reload()
        loaded = state.current
        assert loaded is not None and loaded.encoder_backend == "onnx"
        assert type(loaded.encoder.encoder).__name__ == "OnnxEncoder"
        captions = loaded.service.captions
        assert captions is not None and type(captions.encoder.encoder).__name__ == "OnnxEncoder"
        fid, query = a_captioned_figure(built)
        hits = loaded.service.search_text(query, k=3, mode="caption").hits
        assert fid in [h.id for h in hits]
    finally:
        state.close()

    # without an export: torch, and the log says why
    caplog.set_level(logging.WARNING, logger="figsearch.api")
    state = AppState(Settings(data_dir=built, device="cpu", onnx_dir=str(built / "no-exports")))
    try:
        state.reload()
        assert state.current is not None and state.current.encoder_backend == "torch"
        assert type(state.current.encoder.encoder).__name__ == "Encoder"
    finally:
        state.close()
    why = [r.getMessage() for r in caplog.records if "encoding queries with torch" in r.getMessage()]
    assert len(why) == 2 and all("no ONNX export" in m for m in why)


def test_text_only_build_exports_the_caption_model_and_notes_what_it_skipped(built, tmp_path):
    from indexer.indexing import index_text_only

    data_dir = tmp_path / "data"
    shutil.copytree(built, data_dir, symlinks=True, ignore=shutil.ignore_patterns("indexes"))
    version = index_text_only(Settings(data_dir=data_dir, caption_passages=0, onnx_export=True),
                              progress=False)
    note = read_manifest(version)["onnx"]
    assert set(note) == {"caption_model"} and note["caption_model"]["reused"] is True
    # with the step off (FIGSEARCH_ONNX_EXPORT=0) the build says so and exports nothing
    off = tmp_path / "off"
    shutil.copytree(built, off, symlinks=True, ignore=shutil.ignore_patterns("indexes", "models"))
    version = index_text_only(Settings(data_dir=off, caption_passages=0, onnx_export=False),
                              progress=False)
    assert "FIGSEARCH_ONNX_EXPORT is off" in read_manifest(version)["onnx"]["skipped"]
    assert not onnx_root(Settings(data_dir=off)).exists()

    from figsearch.onnx_export import export_for_build

    assert export_for_build(tmp_path / "onnx", None, None) == {
        "onnx": {"skipped": "no model to export (no image model, no caption model)"}}


def test_load_encoder_is_one_entry_point_for_both_backends(built, tiny_model_dir):
    from figsearch.encoders import ModelLoadError, load_encoder

    key = read_manifest(Path(os.path.realpath(built / "indexes" / "current")))["model_key"]
    onnx = load_encoder(key, "onnx", onnx_root=onnx_root(Settings(data_dir=built)))
    torch = load_encoder(str(tiny_model_dir), "torch", device="cpu")
    assert type(onnx).__name__ == "OnnxEncoder" and type(torch).__name__ == "Encoder"
    assert onnx.model_key == torch.model_key == key
    texts = ["MAPK signalling pathway", "western blot of p53"]
    assert (onnx.encode_texts(texts) * torch.encode_texts(texts)).sum(1).min() > 0.9999
    with pytest.raises(ValueError, match="torch, onnx"):
        load_encoder(key, "tensorflow")
    with pytest.raises(ModelLoadError, match="no ONNX export"):
        load_encoder("other@123", "onnx", onnx_root=onnx_root(Settings(data_dir=built)))


def test_the_serve_path_imports_no_torch(built):
    """The API app, the encoders' spec part and a loaded version (onnx backend, auto-chosen):
    torch, open_clip, matplotlib and sentence-transformers stay out of the process."""
    code = f"""
import sys
from figsearch.api.main import create_app
from figsearch.api.state import AppState
from figsearch.core.config import Settings
from figsearch.encoders import ModelLoadError, normalise_spec, resolve_model_spec
import figsearch.serving, figsearch.onnx_encoder
settings = Settings(data_dir={str(built)!r}, device="cpu")
create_app(settings)
state = AppState(settings)
state.reload()
assert state.current.encoder_backend == "onnx", state.current.encoder_backend
state.close()
print(sorted(m for m in {HEAVY!r} if m in sys.modules))
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.slow
def test_a_venv_with_only_the_serve_extra_serves_a_prebuilt_data_dir(built, tmp_path):
    """``pip install 'figsearch[serve]'`` into a fresh venv (the package registry and pip's
    cache), then that venv's ``figsearch serve`` answers text queries over HTTP."""
    source = tmp_path / "src"  # a copy: pip builds in the source tree (build/, egg-info)
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    for package in ("figsearch", "indexer", "trainer", "ui"):
        shutil.copytree(REPO / package, source / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", f"{source}[serve]"],
                             env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stderr[-3000:]
    print(f"serve-only venv installed in {time.perf_counter() - started:.0f} s")
    found = subprocess.run(
        [str(python), "-c", "import importlib.util as u; "
         f"print(sorted(m for m in {HEAVY!r} if u.find_spec(m)))"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True)
    assert found.stdout.strip() == "[]"

    port = free_port()
    proc = subprocess.Popen(
        [str(venv / "bin" / "figsearch"), "serve", "--data-dir", str(built), "--port", str(port),
         "--workers", "1"],
        env={**env, "FIGSEARCH_RATE_LIMIT_PER_MINUTE": "0", "FIGSEARCH_MODEL": ""},
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base}/readyz", process=proc, timeout=180)
        fid, query = a_captioned_figure(built)
        with httpx.Client(base_url=base, timeout=30) as http:
            for mode in ("caption", "hybrid"):
                r = http.get("/v1/search", params={"q": query, "k": 5, "mode": mode})
                assert r.status_code == 200, r.text
                assert fid in [hit["id"] for hit in r.json()["results"]][:3], mode
            stats = http.get("/v1/stats").json()
            assert stats["encoder_backend"] == "onnx" and stats["signals"]["caption"] is True
    finally:
        proc.terminate()
        proc.wait(timeout=30)
