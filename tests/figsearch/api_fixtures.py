"""Builders for a small, real search data dir (SQLite store + images + FAISS index + tiny model).

Used by the fixtures ``small_index_data_dir`` / ``small_index_settings`` in tests/conftest.py and
directly by tests that need their own, mutable copy (hot reload).

The data: ``N_REAL`` real PMC figures from ``shared/data/pmc-figures`` (real JPEGs stored through
:func:`figsearch.imaging.store_image`), spread over licenses (cc-by, cc-by-nc), with zero-shot
figure types set to ``diagram/pathway`` / ``multi-panel figure`` (labels of
:mod:`figsearch.figure_types`); one *copy* of the first figure's image in a second
article (same sha256 -> collapsed by dedup); and one synthetic article with two figures
(``source="synthetic"``, no PMC links, type ``chart/plot``). Vectors come from the tiny model, the
index from :func:`indexer.build.build_version`. The store has the panel boxes of the images
(``figure_panels``), the version no panel index (a version built before panel search).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from figsearch.core.config import Settings
from figsearch.imaging import open_image, store_image
from figsearch.records import ArticleRecord, FigureRecord
from figsearch.store import FigureStore

N_REAL = 36
SYNTHETIC_KEY = "synthetic:SYNTH-7-1"
COPY_PMCID = "PMC0000001"


def _figure_record(row: dict[str, Any], stored: Any, fig_id: str) -> FigureRecord:
    return FigureRecord(
        fig_id=fig_id, label=row.get("figure_number") or "", caption=row.get("caption") or "",
        image_path=stored.image_path, thumb_path=stored.thumb_path, width=stored.width,
        height=stored.height, orig_width=stored.orig_width, orig_height=stored.orig_height,
        sha256=stored.sha256, source=row.get("source", "pmc"),
    )


def _article(row: dict[str, Any], key: str, license_class: str, source: str = "pmc") -> ArticleRecord:
    return ArticleRecord(
        key=key, source=source, pmcid=row.get("pmcid"), title=row.get("paper_title") or "",
        journal=row.get("journal") or "", year=row.get("year"), license_class=license_class,
        license_url="https://creativecommons.org/licenses/by/4.0/" if license_class == "cc-by" else "",
        content_hash=key,
    )


def populate_store(data_dir: Path, shared_data: Path, n_real: int = N_REAL) -> FigureStore:
    """Write the real figures, one duplicate image and a synthetic article into a new store."""
    settings = Settings(data_dir=data_dir)
    store = FigureStore(settings.db_path)
    lines = (shared_data / "pmc-figures" / "figures.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines[:n_real]]
    by_article: dict[str, list[tuple[dict[str, Any], Any]]] = {}
    for row in rows:
        data = (shared_data / "pmc-figures" / row["image"]).read_bytes()
        stored = store_image(data, settings.images_dir, 256, 64)
        by_article.setdefault(row["pmcid"], []).append((row, stored))
    for i, (pmcid, figs) in enumerate(sorted(by_article.items())):
        license_class = "cc-by-nc" if i % 4 == 3 else "cc-by"
        records = [_figure_record(r, s, f"F{j + 1}") for j, (r, s) in enumerate(figs)]
        store.upsert_article(_article(figs[0][0], f"pmc:{pmcid}", license_class), records)
    first_row, first_stored = by_article[sorted(by_article)[0]][0]
    copy_row = {**first_row, "pmcid": COPY_PMCID, "paper_title": "A reprint with the same figure"}
    store.upsert_article(
        _article(copy_row, f"pmc:{COPY_PMCID}", "cc-by"),
        [_figure_record(copy_row, first_stored, "F1")],
    )
    _add_synthetic(store, settings)
    _set_types(store)
    return store


def _add_synthetic(store: FigureStore, settings: Settings) -> None:
    from PIL import Image

    figs = []
    for j, colour in enumerate(((200, 30, 30), (30, 30, 200))):
        import io

        buf = io.BytesIO()
        Image.new("RGB", (120, 80), colour).save(buf, format="PNG")
        stored = store_image(buf.getvalue(), settings.images_dir, 256, 64)
        row = {"figure_number": f"Figure {j + 1}", "source": "synthetic",
               "caption": f"Synthetic bar chart number {j + 1} of survival rates."}
        figs.append(_figure_record(row, stored, f"fig{j + 1}"))
    article = ArticleRecord(
        key=SYNTHETIC_KEY, source="synthetic", title="Synthetic charts", journal="Synthetic Journal",
        year=2001, license_class="cc0", content_hash="synthetic",
    )
    store.upsert_article(article, figs)


def _set_types(store: FigureStore) -> None:
    rows = []
    for fid, figure in sorted(store.get_figures(range(1, 10_000)).items()):
        kind = ("chart/plot" if figure["source"] == "synthetic"
                else "multi-panel figure" if fid % 5 == 0 else "diagram/pathway")
        rows.append((fid, kind, 0.9))
    store.set_figure_types(rows)


def embed_all(store: FigureStore, images_dir: Path, encoder: Any) -> tuple[np.ndarray, np.ndarray]:
    """(vectors, ids) of every figure with an image, encoded by ``encoder``."""
    ids, images = [], []
    for batch in store.iter_figure_rows():
        for fid, rel, _sha in batch:
            ids.append(fid)
            images.append(open_image((images_dir / str(rel)).read_bytes()))
    vectors = encoder.encode_images(images)
    return np.asarray(vectors, np.float32), np.asarray(ids, np.int64)


def build_index(data_dir: Path, encoder: Any, model_spec: str, perturb: float = 0.0) -> Path:
    """Embed the store's figures and build + switch to a new index version; returns its dir.

    ``perturb`` adds seeded noise so that a rebuilt version differs from the previous one.
    """
    from indexer.build import build_version
    from indexer.indexing import write_store_indexes

    settings = Settings(data_dir=data_dir)
    store = FigureStore(settings.db_path)
    try:
        vectors, ids = embed_all(store, settings.images_dir, encoder)
        if perturb:
            noise = np.random.default_rng(1).normal(0, perturb, vectors.shape)
            vectors = vectors + noise.astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return build_version(
            settings.indexes_dir, vectors, ids, model_spec=model_spec,
            model_key=encoder.model_key, use_gpu=False,
            add_files=lambda d: write_store_indexes(store, d, progress=False),
        )
    finally:
        store.close()


def make_small_index_data_dir(data_dir: Path, shared_data: Path, model_dir: Path) -> Path:
    """A complete data dir: store, images, one index version built with the tiny model."""
    from figsearch.encoders import load_model
    from indexer.panels import run_panels

    store = populate_store(data_dir, shared_data)
    run_panels(store, Settings(data_dir=data_dir).images_dir)  # boxes only: no panel index
    store.close()
    encoder = load_model(str(model_dir), device="cpu")
    build_index(data_dir, encoder, str(model_dir))
    return data_dir


# -- app / server helpers -------------------------------------------------------------------
def loaded_app(settings: Settings, start_poller: bool = False) -> Any:
    """A FastAPI app whose state has already loaded ``indexes/current`` (ready at once)."""
    from figsearch.api.main import create_app
    from figsearch.api.state import AppState

    state = AppState(settings)
    state.reload()
    return create_app(settings, state=state, start_poller=start_poller)


@contextlib.contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """Run ``app`` under a real uvicorn server on 127.0.0.1 (random port); yields its base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@contextlib.contextmanager
def small_search_service(data_dir: Path, model_dir: Path) -> Iterator[Any]:
    """A SearchService over the small index data dir with the tiny model; near-duplicates only
    when practically identical (dedup_threshold 0.99999), so tests see every distinct figure."""
    from figsearch.encoders import load_model
    from figsearch.index import SearchIndex, current_version_dir
    from figsearch.keyword_index import KeywordIndex
    from figsearch.search import SearchService

    settings = Settings(data_dir=data_dir, model=str(model_dir), dedup_threshold=0.99999)
    store = FigureStore(settings.db_path, create=False)
    version_dir = current_version_dir(settings.indexes_dir)
    index = SearchIndex.load(version_dir)
    try:
        yield SearchService(store, index, load_model(str(model_dir), device="cpu"), settings,
                            keywords=KeywordIndex.load(version_dir))
    finally:
        store.close()
