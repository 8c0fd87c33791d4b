"""``figsearch index``: embed every figure, classify figure types, build and swap an index.

Steps: in-figure text when ``FIGSEARCH_OCR=true`` (:func:`indexer.ocr.ocr_step`; new images
only) -> panels of new images (:func:`indexer.panels.panels_step`) -> work list
(:mod:`indexer.worklist`: what to encode; unchanged images reuse the current version's vectors
by image hash + model key) -> embed (resumable per-rank shards, torchrun-aware,
:mod:`indexer.embed`) -> merge -> zero-shot figure types
(:func:`figsearch.figure_types.classify`) -> new index version holding vectors, image hashes and
figure types (:func:`indexer.build.build_version`; or, for a small change to a current version
of the same model, that version's trained indexes updated without training:
:mod:`indexer.delta`, unless ``full``) -> ``indexes/current`` switched atomically.
Only the process that merges writes the store (unreadable-image errors). Building holds
``indexes/.lock`` so two builds never overlap.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sqlalchemy import text

from figsearch.caption_index import CAPTIONS_DIR
from figsearch.columns import write_columns
from figsearch.core.config import Settings
from figsearch.datadir import portable_path
from figsearch.index import (
    IDS_FILE,
    MANIFEST_FILE,
    VECTORS_FILE,
    choose_factory,
    current_version_dir,
    image_budget,
    read_manifest,
)
from figsearch.keyword_index import write_or_update_keyword_index
from figsearch.sorted_ids import sorted_union
from figsearch.store import FigureStore
from figsearch.version_data import LABELS_KEY, SHA_FILE, TYPE_SCORES_FILE, TYPES_FILE, type_arrays
from indexer.build import (
    BuildLockedError,
    StageHook,
    activate_version,
    build_text_version,
    build_version,
    index_lock,
)
from indexer.captions import (
    caption_delta_stage,
    caption_stage,
    load_caption_encoder,
    model_file_name,
)
from indexer.delta import (
    IndexDelta,
    VersionContext,
    build_delta_version,
    delta_allowed,
    row_file_names,
    run_version_writers,
)
from indexer.embed import (
    DistInfo,
    EmbedConfig,
    EmbedSummary,
    barrier,
    embed_rank,
    init_distributed,
    merge_embeddings,
    merge_shards,
    rank_device,
)
from indexer.panels import panel_stage
from indexer.visual_words import visual_word_stage
from indexer.worklist import WorkList, load_worklist, write_worklist

CLASSIFY_CHUNK = 100_000
DENSE_CHECK_SAMPLE = 512


@dataclass
class IndexReport:
    """What one index run produced."""

    version_dir: Path
    count: int
    unreadable: int
    embed_line: str
    factory: str
    elapsed_s: float

    def line(self) -> str:
        rate = self.count / self.elapsed_s if self.elapsed_s > 0 else 0.0
        return (
            f"index: version {self.version_dir.name}: {self.count} figures indexed "
            f"({self.unreadable} unreadable skipped), factory {self.factory}; "
            f"{self.elapsed_s:.1f} s, {rate:.1f} figures/s"
        )


def work_dir_for(settings: Settings, model_key: str) -> Path:
    """Embedding shards of one model live here until the index is built."""
    return settings.data_dir / "work" / f"embed-{model_file_name(model_key)}"


def load_encoder(settings: Settings, model_spec: str | None,
                 device: str | None = None) -> tuple[str, Any]:
    """(spec, Encoder) for ``model_spec`` or the settings' default model, on ``device``
    (default: ``settings.device``, else auto)."""
    from figsearch.encoders import load_model, resolve_model_spec

    spec = model_spec or resolve_model_spec(settings)
    return spec, load_model(spec, device=device or settings.device or None,
                            batch_size=settings.batch_size, precision=settings.cpu_precision)


def classify_figures(encoder: Any, vectors: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Zero-shot figure types of every row: (label names, int16 codes, float16 scores)."""
    from figsearch.figure_types import classify

    labels: list[tuple[str, float]] = []
    for start in range(0, len(vectors), CLASSIFY_CHUNK):
        labels.extend(classify(encoder, np.asarray(vectors[start : start + CLASSIFY_CHUNK],
                                                   np.float32)))
    return type_arrays(labels)


def indexable_count(store: FigureStore) -> int:
    """Figures with images of non-retracted articles: what an index should hold (+ unreadable)."""
    with store.engine.connect() as conn:
        return int(conn.execute(text(
            "SELECT count(*) FROM figures f JOIN articles a ON a.id = f.article_id "
            "WHERE f.has_image = 1 AND a.retracted = 0"
        )).scalar() or 0)


def embed_config(settings: Settings, model_key: str, progress: bool = True) -> EmbedConfig:
    """Where this model's shards go and how images are read."""
    return EmbedConfig(
        work_dir=work_dir_for(settings, model_key), images_dir=settings.images_dir,
        batch_size=settings.batch_size, num_workers=settings.num_workers,
        max_pixels=settings.max_image_pixels, progress=progress,
    )


def prepare_worklist(settings: Settings, store: FigureStore, model_key: str,
                     progress: bool = False) -> WorkList:
    """Freeze the work list: the store's figure images minus those the current version has.

    In-figure text is read first when ``FIGSEARCH_OCR`` is on (new images only), and new
    images are split into panels (:mod:`indexer.panels`), since these are the store-side steps
    that run once per build, on the merging process."""
    from indexer.ocr import ocr_step
    from indexer.panels import panels_step

    ocr_step(settings, store, progress)
    panels_step(settings, store)
    return write_worklist(store, work_dir_for(settings, model_key), model_key,
                          current_version_dir(settings.indexes_dir), settings.batch_size)


def embed_worklist(settings: Settings, encoder: Any, dist: DistInfo | None = None,
                   progress: bool = True) -> EmbedSummary:
    """Encode this rank's share of the prepared work list into its shards (no store needed)."""
    cfg = embed_config(settings, encoder.model_key, progress)
    return embed_rank(load_worklist(cfg.work_dir), encoder, cfg, dist or DistInfo())


def _record_failures(store: FigureStore, wl: WorkList, failures: list[tuple[int, str]]) -> None:
    """Unreadable images into the store's error table (only the merging process writes it)."""
    if not failures:
        return
    pos = np.searchsorted(wl.ids, [i for i, _ in failures])
    for (fig_id, reason), p in zip(failures, pos, strict=True):
        store.record_error(wl.path(int(p)), reason, item=f"figure {fig_id}", stage="embed")


def dense_check(store: FigureStore, encoder: Any, ids: np.ndarray, vectors: np.ndarray,
                sample: int = DENSE_CHECK_SAMPLE, seed: int = 0) -> dict[str, Any]:
    """Can the image model find a figure from its own caption? Caption->image recall@k among up
    to ``sample`` indexed figures, against chance (a binomial z-score).

    An untrained model scores near chance; the search service then leaves the dense signal out
    of the default mode (:func:`figsearch.fusion.dense_reliable`). ``pair_cos_q999`` (99.9th
    percentile of the cosine between sampled images) tells whether the embeddings can tell
    near-duplicates from unrelated figures (:func:`figsearch.fusion.vector_dedup_ok`). Below 20 captioned figures
    nothing can be told apart from chance, and the model is trusted as before.
    """
    from figsearch.fusion import DENSE_MIN_Z
    from indexer.build import normalise

    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(ids), size=min(sample, len(ids)), replace=False))
    figures = store.get_figures([int(i) for i in ids[rows]])
    pairs = [(r, (figures.get(int(ids[r])) or {}).get("caption") or "") for r in rows]
    pairs = [(r, c[:2000]) for r, c in pairs if c.strip()]
    n = len(pairs)
    if n < 20:
        return {"n": n, "reliable": True, "note": "too few captioned figures to check"}
    texts = np.asarray(encoder.encode_texts([c for _, c in pairs]), np.float32)
    sim = normalise(texts) @ normalise(np.asarray(vectors[[r for r, _ in pairs]])).T
    rank = (sim >= np.diag(sim)[:, None]).sum(axis=1) - 1  # ties count against the model
    images = normalise(np.asarray(vectors[rows]))
    pair_cos = (images @ images.T)[np.triu_indices(len(rows), 1)]
    k = min(10, max(1, n // 10))
    p = k / n
    z = float(((rank < k).sum() - n * p) / np.sqrt(n * p * (1 - p)))
    return {"n": n, "k": k, f"recall@{k}": round(float((rank < k).mean()), 4),
            "chance": round(p, 4), "mrr": round(float(np.mean(1.0 / (rank + 1))), 4),
            "z": round(z, 2), "min_z": DENSE_MIN_Z, "reliable": z >= DENSE_MIN_Z,
            # how alike unrelated images look to the model: near-duplicate collapse by
            # embedding is only safe with a threshold above this (figsearch.fusion)
            "pair_cos_q999": round(float(np.quantile(pair_cos, 0.999)), 6)}



def build_from_worklist(
    settings: Settings, store: FigureStore, spec: str, encoder: Any, *, factory: str | None = None,
    activate: bool = True, hook: StageHook | None = None, elapsed_s: float = 0.0,
    progress: bool = True, caption_encoder: Any = None, delta: bool = True,
) -> IndexReport:
    """Merge the ranks' shards (+ reused vectors), classify, check the image model, embed
    the captions, build one version (lock held). ``caption_encoder`` defaults to
    ``settings.caption_model`` (none when empty).

    With ``delta`` (the default) a small change to a current version of the same model and
    factory family is applied to that version's trained indexes instead
    (:mod:`indexer.delta`); otherwise, or when :func:`plan_image_delta` says no, the index is
    trained and filled anew."""
    start = time.perf_counter()
    work_dir = work_dir_for(settings, encoder.model_key)
    wl = load_worklist(work_dir)
    if wl.meta.get("model_key") != encoder.model_key:
        raise RuntimeError(f"the work list in {work_dir} is for model {wl.meta.get('model_key')!r}, "
                           f"not {encoder.model_key!r}; run `figsearch index --prepare` again")
    if delta:
        planned = plan_image_delta(settings, wl, work_dir, encoder.model_key, factory)
        if isinstance(planned, ImageDelta):
            return _build_by_delta(settings, store, encoder, wl, planned, activate=activate,
                                   hook=hook, elapsed_s=elapsed_s, progress=progress,
                                   caption_encoder=caption_encoder, start=start)
        print(f"index: full build ({planned})", file=sys.stderr)
    embedded = merge_embeddings(wl, work_dir, elapsed_s)
    print(embedded.summary.line(), file=sys.stderr)
    _record_failures(store, wl, embedded.failures)
    if len(embedded.ids) == 0:
        raise RuntimeError(
            f"no figure images to index in {settings.db_path} "
            f"({len(embedded.failures)} unreadable); run `figsearch ingest` first"
        )
    names, codes, scores = classify_figures(encoder, embedded.vectors)
    check = dense_check(store, encoder, embedded.ids, embedded.vectors)
    print(f"index: image model check: {check}", file=sys.stderr)
    caption_encoder = caption_encoder or load_caption_encoder(settings)
    captions = caption_stage(settings, store, caption_encoder, progress)
    panels = panel_stage(settings, store, encoder, caption_encoder, progress)
    words = visual_word_stage(settings, store, None, progress)  # a new vocabulary

    def add_files(version_dir: Path) -> dict[str, Any]:
        out = captions(version_dir) if captions else {}
        out.update(panels(version_dir))  # after the captions: it writes into captions/
        out.update(words(version_dir))
        ids = sorted_union(embedded.ids, _caption_ids(version_dir))
        out.update(run_version_writers(VersionContext(None, version_dir, store,
                                                      np.zeros(0, np.int64), ids)))
        out.update(write_store_indexes(store, version_dir, None, names, progress,
                                       settings.keyword_shards))
        out.update(onnx_step(settings, encoder, caption_encoder))
        return out

    version = build_version(
        settings.indexes_dir, embedded.vectors, embedded.ids,
        model_spec=portable_path(spec, settings.data_dir),
        model_key=encoder.model_key, factory=factory,
        memory_gb=image_budget(settings.index_memory_gb),
        keep=settings.index_keep_versions, hook=hook, activate=activate,
        use_gpu=settings.index_gpu_training,
        extra={"unreadable": len(embedded.failures), "indexable": indexable_count(store),
               "reused": embedded.summary.reused, "encoded": embedded.summary.encoded,
               LABELS_KEY: names, "dense_check": check},
        row_files={SHA_FILE: embedded.sha, TYPES_FILE: codes, TYPE_SCORES_FILE: scores},
        add_files=add_files,
    )
    if activate:
        discard_work(settings, encoder.model_key)
    return IndexReport(version, len(embedded.ids), len(embedded.failures),
                       embedded.summary.line(), _factory_of(version),
                       elapsed_s + time.perf_counter() - start)


def onnx_step(settings: Settings, encoder: Any, caption_encoder: Any) -> dict[str, Any]:
    """The version's models exported to ONNX beside the data dir's other models (kept when an
    export of the same model key is there), so `figsearch serve` encodes queries without torch;
    returns the manifest's ``onnx`` entry (what was exported, or why not)."""
    if not settings.onnx_export:
        return {"onnx": {"skipped": "FIGSEARCH_ONNX_EXPORT is off (`figsearch export-onnx` "
                                    "exports later)"}}
    from figsearch.onnx_export import export_for_build
    from figsearch.serving import onnx_root

    started = time.perf_counter()
    note = export_for_build(onnx_root(settings), encoder, caption_encoder)
    print(f"index: ONNX export {time.perf_counter() - started:.1f} s: {note['onnx']}",
          file=sys.stderr)
    return note


def write_store_indexes(store: FigureStore, version_dir: Path, previous_dir: Path | None = None,
                        type_names: list[str] | None = None, progress: bool = True,
                        keyword_shards: int = 0) -> dict[str, Any]:
    """Write the version's indexes derived from the store besides the vector indexes, so that
    they switch, replicate and roll back with it: the filter columns (they read the version's
    ids.npy and figure types, written by then; ``type_names`` names those types) and the
    keyword index, updated from ``previous_dir``'s when it has one (a nightly delta), else
    built in full (in ``keyword_shards`` shards, ``Settings.keyword_shards``). Returns their
    manifest entries."""
    out = write_columns(store, version_dir, type_names=type_names)
    out.update(write_or_update_keyword_index(store, version_dir, previous_dir, progress,
                                             keyword_shards))
    return out


# -- the delta path (indexer.delta) --------------------------------------------------------------
@dataclass
class ImageDelta:
    """The image-index change against the work list's previous version."""

    prev_dir: Path
    delta: IndexDelta  # figure types are added by _build_by_delta
    failures: list[tuple[int, str]]
    unchanged: int
    encoded: int
    reused: int

    def line(self) -> str:
        d = self.delta
        return (f"index: delta against version {self.prev_dir.name}: {self.unchanged} figures "
                f"unchanged, {len(d.remove_ids)} rows removed, {len(d.add_ids)} added "
                f"({self.encoded} encoded, {self.reused} reused, {len(self.failures)} unreadable)")


def plan_image_delta(settings: Settings, wl: WorkList, work_dir: Path, model_key: str,
                     factory: str | None = None) -> ImageDelta | str:
    """The delta from the work list's previous version to what the store holds now, or why
    the index must be built in full (a string).

    Rows of the previous version whose figure id and image hash both still hold stay; every
    other previous row goes; every other indexable figure is added, with the vector its shard
    holds or, for an image the previous version has under another figure, that row's vector.
    """
    prev = wl.previous_dir
    if prev is None or not (prev / MANIFEST_FILE).is_file():
        return "no previous version to apply a delta to"
    manifest = read_manifest(prev)
    if factory and factory != manifest.get("factory"):
        return f"factory {factory} asked, the previous version has {manifest.get('factory')}"
    if set(row_file_names(manifest)) != {SHA_FILE, TYPES_FILE, TYPE_SCORES_FILE}:
        return "the previous version lacks image hashes or figure types"
    if manifest.get("model_key") != model_key:
        return "the previous version was built with another model"
    enc_ids, enc_vecs, failures = merge_shards(work_dir, wl.digest)
    got = sorted_union(enc_ids, np.asarray([i for i, _ in failures], np.int64))
    if not np.array_equal(got, wl.ids):
        raise RuntimeError(f"the shards in {work_dir} cover {int(np.isin(wl.ids, got).sum())} of "
                           f"{len(wl.ids)} work-list figures; rerun the ranks")
    dim = int(manifest["dim"])
    prev_ids = np.load(prev / IDS_FILE)
    same = prev_ids[wl.reuse_rows] == wl.reuse_ids  # same figure, same image: the row stays
    other = np.flatnonzero(~same)
    rows = wl.reuse_rows[other]
    order = np.argsort(rows, kind="stable")  # read the memory map front to back
    reused = np.empty((len(rows), dim), np.float16)
    reused[order] = np.load(prev / VECTORS_FILE, mmap_mode="r")[rows[order]]
    add_ids = np.concatenate([enc_ids, wl.reuse_ids[other]])
    if len(add_ids) + int(same.sum()) == 0:
        return "no figure images to index"
    add_sha = np.concatenate([wl.sha[np.searchsorted(wl.ids, enc_ids)].reshape(-1, 32),
                              wl.reuse_sha[other]])
    delta = IndexDelta(np.setdiff1d(prev_ids, wl.reuse_ids[same]), add_ids,
                       np.concatenate([enc_vecs.reshape(-1, dim), reused]), {SHA_FILE: add_sha})
    why = delta_allowed(manifest, delta.size, model_key=model_key, dim=dim,
                        factory=factory or choose_factory(int(same.sum()) + len(add_ids), dim,
                                                          image_budget(settings.index_memory_gb)))
    if why:
        return why
    return ImageDelta(prev, delta, failures, int(same.sum()), len(enc_ids), len(other))


def _caption_ids(version_dir: Path) -> np.ndarray:
    path = Path(version_dir) / CAPTIONS_DIR / IDS_FILE
    return np.load(path) if path.is_file() else np.zeros(0, np.int64)


def _code_map(table: list[int]) -> Callable[[np.ndarray], np.ndarray]:
    lut = np.asarray(table or [0], np.int16)
    return lambda codes: np.where(codes >= 0, lut[np.clip(codes, 0, None)], -1).astype(np.int16)


def _build_by_delta(settings: Settings, store: FigureStore, encoder: Any, wl: WorkList,
                    plan: ImageDelta, *, activate: bool, hook: StageHook | None,
                    elapsed_s: float, progress: bool, caption_encoder: Any,
                    start: float) -> IndexReport:
    """Classify the added figures, plan the caption delta, apply both to the previous version."""
    print(plan.line(), file=sys.stderr)
    _record_failures(store, wl, plan.failures)
    prev, delta = plan.prev_dir, plan.delta
    manifest = read_manifest(prev)
    names, codes, scores = classify_figures(encoder, delta.add_vectors)
    prev_names = [str(n) for n in manifest.get(LABELS_KEY, [])]
    labels = sorted(set(prev_names) | set(names))
    delta.add_rows[TYPES_FILE] = _code_map([labels.index(n) for n in names])(codes)
    delta.add_rows[TYPE_SCORES_FILE] = scores
    delta.prev_row_maps[TYPES_FILE] = _code_map([labels.index(n) for n in prev_names])
    caption_encoder = caption_encoder or load_caption_encoder(settings)
    captions, caption_delta = caption_delta_stage(settings, store, caption_encoder, prev, progress)
    # the small panel indexes are written anew from the vector caches (only new panels embed)
    panels = panel_stage(settings, store, encoder, caption_encoder, progress)
    # the visual-word index is written anew under the previous vocabulary from the word cache
    # (only new images' features are computed)
    words = visual_word_stage(settings, store, prev, progress)

    def extra(version_dir: Path) -> dict[str, Any]:
        ids = np.load(version_dir / IDS_FILE)
        check = dense_check(store, encoder, ids, np.load(version_dir / VECTORS_FILE,
                                                         mmap_mode="r"))
        print(f"index: image model check: {check}", file=sys.stderr)
        return {"unreadable": len(plan.failures), "indexable": indexable_count(store),
                "reused": plan.unchanged + plan.reused, "encoded": plan.encoded,
                LABELS_KEY: labels, "dense_check": check}

    def add_files(version_dir: Path) -> dict[str, Any]:
        out = captions(version_dir) if captions else {}
        out.update(panels(version_dir))
        out.update(words(version_dir))
        before = sorted_union(np.load(prev / IDS_FILE), _caption_ids(prev))
        after = sorted_union(np.load(version_dir / IDS_FILE), _caption_ids(version_dir))
        changed_captions = (caption_delta.upserted_ids if caption_delta is not None
                            else _caption_ids(version_dir))  # a full caption build: all
        upserted = sorted_union(delta.add_ids, changed_captions)
        out.update(run_version_writers(VersionContext(
            prev, version_dir, store, np.setdiff1d(before, after, assume_unique=True),
            upserted)))
        out.update(write_store_indexes(store, version_dir, prev, labels, progress,
                                       settings.keyword_shards))
        out.update(onnx_step(settings, encoder, caption_encoder))
        return out

    version = build_delta_version(settings.indexes_dir, prev, delta,
                                  keep=settings.index_keep_versions, extra=extra,
                                  add_files=add_files, hook=hook, activate=activate)
    if activate:
        discard_work(settings, encoder.model_key)
    count = int(read_manifest(version)["count"])
    line = plan.line().removeprefix("index: ")
    return IndexReport(version, count, len(plan.failures), line, _factory_of(version),
                       elapsed_s + time.perf_counter() - start)


def discard_work(settings: Settings, model_key: str) -> None:
    """Remove the work list and shards once their version is live."""
    shutil.rmtree(work_dir_for(settings, model_key), ignore_errors=True)


def build_from_store(
    settings: Settings, store: FigureStore, spec: str, encoder: Any, *, factory: str | None = None,
    activate: bool = True, hook: StageHook | None = None, progress: bool = True,
    caption_encoder: Any = None, delta: bool = True,
) -> IndexReport:
    """Work list + embed + classify + caption-embed + build one version in this process (lock
    held). ``caption_encoder`` defaults to ``settings.caption_model`` (none when empty);
    ``delta``: see :func:`build_from_worklist`.

    With ``activate=False`` the work dir stays until the caller activates the version (then
    :func:`discard_work`), so a rerun after a failed validation resumes the shards."""
    start = time.perf_counter()
    prepare_worklist(settings, store, encoder.model_key, progress)
    embed_worklist(settings, encoder, DistInfo(), progress)
    return build_from_worklist(settings, store, spec, encoder, factory=factory,
                               activate=activate, hook=hook,
                               elapsed_s=time.perf_counter() - start, progress=progress,
                               caption_encoder=caption_encoder, delta=delta)


def _factory_of(version_dir: Path) -> str:
    return str(read_manifest(version_dir)["factory"])


STEPS = ("all", "prepare", "embed", "merge")


def index_all(settings: Settings, model_spec: str | None = None, *, encoder: Any = None,
              factory: str | None = None, hook: StageHook | None = None,
              progress: bool = True, step: str = "all",
              caption_encoder: Any = None, full: bool = False) -> IndexReport | None:
    """Embed all stored figures and build + activate a new index version.

    ``step`` runs one part alone: ``prepare`` (write the work list), ``embed`` (this rank's
    share, RANK / WORLD_SIZE from the environment, no store), ``merge`` (merge the shards,
    build, swap). ``all`` runs them in turn; under torchrun rank 0 writes the work list and
    merges, with a barrier before and after the ranks embed. Returns the report of the build
    (None for ``prepare``, ``embed`` and ranks other than 0). ``full``: train a new index
    even when the change could be applied to the current version (:mod:`indexer.delta`).
    """
    if step not in STEPS:
        raise ValueError(f"unknown step {step!r}; use one of {', '.join(STEPS)}")
    dist = DistInfo.from_env()
    if encoder is not None:
        spec = model_spec or encoder.spec
    else:
        spec, encoder = load_encoder(settings, model_spec, rank_device(settings.device, dist))
    if step == "embed":
        print(embed_worklist(settings, encoder, dist, progress).line(), file=sys.stderr)
        return None
    joined = init_distributed(dist) if step == "all" else False
    try:
        if dist.rank != 0 and step == "all":
            barrier(dist)  # rank 0 writes the work list
            embed_worklist(settings, encoder, dist, progress)
            barrier(dist)  # rank 0 merges
            return None
        return _rank0(settings, spec, encoder, dist, step, factory, hook, progress,
                      caption_encoder, delta=not full)
    finally:
        if joined:
            torch.distributed.destroy_process_group()


def _rank0(settings: Settings, spec: str, encoder: Any, dist: DistInfo, step: str,
           factory: str | None, hook: StageHook | None, progress: bool,
           caption_encoder: Any = None, delta: bool = True) -> IndexReport | None:
    """The store-side steps (work list, merge, build) under the build lock, embedding between."""
    start = time.perf_counter()
    with index_lock(settings.indexes_dir):
        store = FigureStore(settings.db_path, create=False)
        try:
            if step in ("all", "prepare"):
                print(prepare_worklist(settings, store, encoder.model_key, progress).line(),
                      file=sys.stderr)
            if step == "prepare":
                return None
            if step == "all":
                barrier(dist)
                embed_worklist(settings, encoder, dist, progress)
                barrier(dist)
            return build_from_worklist(settings, store, spec, encoder, factory=factory, hook=hook,
                                       elapsed_s=time.perf_counter() - start, progress=progress,
                                       caption_encoder=caption_encoder, delta=delta)
        finally:
            store.close()


def index_text_only(settings: Settings, *, caption_encoder: Any = None,
                    progress: bool = True) -> Path:
    """A version with the caption index and no image index: keyword + caption search before
    any image model exists (the demo serves this while figclip-mini trains)."""
    start = time.perf_counter()
    caption_encoder = caption_encoder or load_caption_encoder(settings)
    if caption_encoder is None:
        raise ValueError("a text-only index needs a caption model; FIGSEARCH_CAPTION_MODEL is empty")
    store = FigureStore(settings.db_path, create=False)
    try:
        captions = caption_stage(settings, store, caption_encoder, progress)
        assert captions is not None
        version = build_text_version(
            settings.indexes_dir,
            lambda d: {**captions(d), **write_store_indexes(
                store, d, progress=progress, keyword_shards=settings.keyword_shards),
                       **onnx_step(settings, None, caption_encoder)},
                                     keep=settings.index_keep_versions)
    finally:
        store.close()
    print(f"index: text-only version {version.name} (keyword + caption search); "
          f"{time.perf_counter() - start:.1f} s", file=sys.stderr)
    return version


__all__ = ["IndexReport", "index_all", "build_from_store", "activate_version", "indexable_count"]


# -- CLI ----------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``figsearch index [--model SPEC] [--factory STR] [--prepare | --embed-only | --merge]``."""
    parser.add_argument("--model", help="model spec (default: $FIGSEARCH_MODEL, else the current "
                                        "index's model, else figclip-mini in <data-dir>/models, "
                                        "else BiomedCLIP)")
    parser.add_argument("--factory", help="faiss factory string (default: the size/memory rule)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    steps = parser.add_mutually_exclusive_group()
    steps.add_argument("--prepare", dest="step", action="store_const", const="prepare",
                       help="only write the work list (needs the store)")
    steps.add_argument("--embed-only", dest="step", action="store_const", const="embed",
                       help="only encode this rank's share of the work list into shards "
                            "(RANK / WORLD_SIZE from the environment; needs no store)")
    steps.add_argument("--merge", dest="step", action="store_const", const="merge",
                       help="only merge every rank's shards, build and swap the version")
    parser.add_argument("--text-only", action="store_true",
                        help="build only the caption index (keyword + caption search, no model)")
    parser.add_argument("--full", action="store_true",
                        help="train a new index from every vector instead of applying a small "
                             "change to the current version's indexes (a delta)")
    parser.add_argument("--gpu-training", choices=["auto", "on", "off"],
                        help="coarse k-means on the GPU (default: $FIGSEARCH_INDEX_GPU_TRAINING, auto)")


def command(args: argparse.Namespace) -> int:
    """Build a new index version; 1 with a clear message when it cannot."""
    import sqlalchemy.exc

    from figsearch.encoders import ModelLoadError

    settings: Settings = args.settings
    step = getattr(args, "step", None) or "all"
    # only the process that prepares and merges reads the store; other ranks may have none
    needs_store = step in ("prepare", "merge") or (step == "all" and DistInfo.from_env().rank == 0)
    if needs_store and not settings.db_path.is_file():
        print(f"figsearch index: no figure store at {settings.db_path}; run `figsearch ingest` "
              "first", file=sys.stderr)
        return 1
    if getattr(args, "gpu_training", None):
        settings = settings.model_copy(update={"index_gpu_training": args.gpu_training})
    try:
        from indexer.gpu import resolve_training_device

        resolve_training_device(settings.index_gpu_training)  # fail before hours of embedding
        if args.text_only:
            index_text_only(settings, progress=not args.no_progress)
            return 0
        report = index_all(settings, args.model, factory=args.factory,
                           progress=not args.no_progress, step=step,
                           full=getattr(args, "full", False))
    except (BuildLockedError, ModelLoadError, RuntimeError, ValueError) as exc:
        print(f"figsearch index: {exc}", file=sys.stderr)
        return 1
    except (OSError, sqlalchemy.exc.OperationalError) as exc:
        # e.g. a full disk under the index files or the store: `current` is untouched, say so
        reason = str(exc).splitlines()[0]
        print(f"figsearch index: {reason}; the current index is unchanged", file=sys.stderr)
        return 1
    if report is not None:
        print(report.line())
    return 0
