"""The default (hybrid) query at 15 M figures, unfiltered and filtered, first use and after.

The product's own :class:`~figsearch.search.SearchService` over the 15 M parts this machine
holds: the version's filter columns (16.2 M live figures), the keyword index
(``bench.keyword_scale``: 15 M real-language captions, two shards) and two memory-mapped
15 M-vector indexes of the image index's factory (``bench.vector_scale``; the second, opened
again, stands in for the whole-caption index). Both query encoders run the real ONNX text
models of ``--onnx-encoders`` on the API's model thread (``BatchingEncoder``, no embedding
cache), then hand back vectors of the vector index's own mixture. A query is
``search_text``'s hybrid path up to fusion: :meth:`SearchService.start_signals` (encoding,
and meanwhile the keyword search, then the filter's plans on its first use; where the filter
is ready, the vector searches overlap the keyword search), the vector signals with their exact
scores of the other signals' candidates, fusion. The page's figures, highlights and
explanations come from the store, which is not built at 15 M: they cost what they cost at
1 M (``pmc_scale_1m_onnx_sleeping_r*.json``).

Each filter runs in a fresh process (nothing cached but the page cache): a few unfiltered
queries warm it, ``--queries`` unfiltered ones are timed, then the filter's first query
(start and signal stages apart), then ``--queries`` more with it. Every query text is new.
The three filters are ``bench.keyword_scale``'s: commercial use (~57 %), one year (~5 %),
one journal (~0.1 %).

The columns are written once into ``--columns-dir`` (``prepare``): ids 1-15 M take year,
journal and license from the keyword index's own draws (so the engine's filter fields and
the columns agree); the vector indexes' ids beyond them get draws from the same rows. By
default the columns hold both indexes' figures, so each vector index holds 92 % of them (the
generator's share of figures with images) and a bitmap plan compresses the column mask for
both: pessimistic for the caption index, which holds every figure. With
``--every-figure-indexed`` they hold the vector indexes' figures only (see :func:`prepare`).

    python -m bench.first_filter prepare --keyword-dir /work/bench-data/kw-15m-s2 \\
        --vector-dir /work/bench-data/vec-15m-r32 --columns-dir /work/bench-data/cols-15m
    python -m bench.first_filter measure --keyword-dir ... --vector-dir ... --columns-dir ... \\
        --onnx-encoders /work/eval-data/models/onnx --name first_filter_15m
    python -m bench.first_filter repeat ... --rounds 6 --name first_filter_15m_repeat
    python -m bench.first_filter swap ... --rounds 3 --name first_filter_15m_swap

``repeat`` times each filter's first use ``--rounds`` times in one process, dropping its
allowed set and plans before each: what a first use computes and reads, without the process's
first touches of mapped files, which vary by tens of ms on this VM. ``swap`` measures a version
swap as the API makes it: the new version prepares the filters the served one answered last
(``SearchService.prepare_filters``) before it is swapped in, so their first queries on it cost
what later ones do. ``measure --touch-all-lists`` also reads the worker's memory after probing
every inverted list of both vector indexes (every PQ code page touched).

The default caption signal also searches caption passages (``caption_passages``, MaxP:
:class:`figsearch.caption_index.PassageIndex`), which the runs above leave out. ``passages``
writes a stand-in passage index beside the vector index (the same index file and vectors, hard
linked, keyed ``figure id x PASSAGE_SLOTS + 1``: one passage a figure where the JATS corpus has
3.25) and ``passage-cost`` answers each query with and without it in one process:

    python -m bench.first_filter passages --keyword-dir ... --vector-dir ... --columns-dir ... \\
        --passages-dir /work/bench-data/passages-15m
    python -m bench.first_filter passage-cost ... --passages-dir /work/bench-data/passages-15m \\
        --onnx-encoders ... --rounds 3 --queries 80 --name first_filter_15m_passages
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import markdown_table, process_memory_mb, write_result  # noqa: E402

TYPES = ["chart/plot", "microscopy", "diagram/pathway", "multi-panel figure", "photograph",
         "gel/blot"]
K = 100  # what the default query fetches per signal (fusion_depth)


def prepare(keyword_dir: Path, vector_dir: Path, columns_dir: Path, seed: int = 0,
            every_figure_indexed: bool = False) -> dict[str, Any]:
    """Write ``columns_dir/columns/`` for the union of the keyword and vector indexes' ids, or
    (``every_figure_indexed``) for the vector indexes' ids alone: then both vector indexes hold
    every live figure, as a caption index does (and an image index where every figure has an
    image), and their row masks are the column mask itself; the keyword index's other
    figures are not live, so filters exclude them."""
    from bench.keyword_scale import LICENSE_MIX, _shares
    from figsearch.columns import COLUMNS_DIR, FORMAT, VOCAB_FILE, sql_lower

    t0 = time.perf_counter()
    kw_ids = np.load(keyword_dir / "ids.npy")
    vec_ids = np.load(vector_dir / "ids.npy")
    ids = np.asarray(vec_ids) if every_figure_indexed else np.union1d(kw_ids, vec_ids)
    rng = np.random.default_rng(seed)
    draws = {name: np.load(keyword_dir / f"bench_{name}.npy") for name in ("year", "journal",
                                                                           "license")}
    # row of the keyword draws each column row takes: its own, or a random one beyond them
    pos = np.searchsorted(kw_ids, ids).clip(0, len(kw_ids) - 1)
    own = kw_ids[pos] == ids
    pos[~own] = rng.integers(0, len(kw_ids), int((~own).sum()))
    journals = (keyword_dir / "bench_journals.txt").read_text().splitlines()
    licenses, _p = _shares(LICENSE_MIX)
    arrays = {"ids": ids.astype(np.int64), "year": draws["year"][pos].astype(np.int16),
              "journal": draws["journal"][pos].astype(np.int32),
              "license": draws["license"][pos].astype(np.int8),
              "figure_type": rng.integers(0, len(TYPES), len(ids)).astype(np.int8),
              "article": (ids // 3).astype(np.int32), "has_image": np.isin(ids, vec_ids)}
    out = columns_dir / COLUMNS_DIR
    out.mkdir(parents=True, exist_ok=False)
    for name, arr in arrays.items():
        np.save(out / f"{name}.npy", arr)
    (out / VOCAB_FILE).write_text(json.dumps({
        "format": FORMAT, "count": len(ids), "max_id": int(ids[-1]),
        "figure_types_from": "store", "journal": [sql_lower(j) for j in journals],
        "license_class": list(licenses), "figure_type": TYPES}))
    info = {"columns": len(ids), "keyword_figures": len(kw_ids), "vector_figures": len(vec_ids),
            "prepare_s": round(time.perf_counter() - t0, 1)}
    print(f"first_filter: columns of {len(ids):,} figures in {info['prepare_s']} s",
          file=sys.stderr)
    return info


def prepare_passages(vector_dir: Path, passages_dir: Path) -> dict[str, Any]:
    """Write a stand-in caption-passage index into ``passages_dir``: the vector index's own
    index file and vectors (hard links: no disk, and the same page cache), its figures keyed as
    their first passage (``id x PASSAGE_SLOTS + 1``). A query pays what a passage layer costs
    (its search with re-ranking, every candidate's part keys looked up and read), at one passage
    a figure where the JATS corpus has 3.25: fewer part rows read than a real layer reads."""
    from figsearch.caption_index import PASSAGE_SLOTS
    from figsearch.index import IDS_FILE, INDEX_FILE, VECTORS_FILE

    passages_dir.mkdir(parents=True, exist_ok=False)
    for name in (INDEX_FILE, VECTORS_FILE):
        (passages_dir / name).hardlink_to(vector_dir / name)
    ids = np.load(vector_dir / IDS_FILE)
    np.save(passages_dir / IDS_FILE, ids.astype(np.int64) * PASSAGE_SLOTS + 1)
    manifest = json.loads((vector_dir / "manifest.json").read_text())
    manifest["bench_passages"] = {"standin_for": str(vector_dir), "passages_per_figure": 1}
    (passages_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    print(f"first_filter: {len(ids):,} stand-in passages in {passages_dir}", file=sys.stderr)
    return {"passages": len(ids)}


def _filters(keyword_dir: Path) -> dict[str, Any]:
    from bench.keyword_scale import filters

    return {name: flt for name, (flt, _allowed) in filters(keyword_dir).items()}


def _ms(t: float) -> float:
    return round((time.perf_counter() - t) * 1000, 2)


class MixtureCostEncoder:
    """Runs a real ONNX text model on each query (its cost, on the service's model thread), then
    returns a query vector of the vector index's own mixture (``bench.vector_scale.queries``),
    picked by a hash of the text: a real model's vectors would land nowhere in particular in
    generated data."""

    def __init__(self, real: Any, model_key: str, table: np.ndarray) -> None:
        self.real, self.table = real, table
        self.model_key, self.dim, self.spec = model_key, table.shape[1], model_key

    def encode_texts(self, texts: list[str], progress: bool = False) -> np.ndarray:
        if self.real is not None:
            self.real.encode_texts(texts)
        return self.table[[zlib.crc32(t.encode()) % len(self.table) for t in texts]]


def _service(args: dict[str, Any], scratch: Path) -> Any:
    """The search service over the 15 M parts: an empty store (nothing is hydrated here), the
    image index and a second copy as the caption index, both behind the API's batching encoder
    on the model thread, the keyword index and the columns."""
    from bench.pmc_scale import onnx_exports
    from bench.vector_scale import queries as vector_queries
    from figsearch.api.batching import BatchingEncoder
    from figsearch.caption_index import CaptionSignal
    from figsearch.columns import VersionColumns
    from figsearch.core.config import Settings
    from figsearch.encoders import load_encoder
    from figsearch.index import SearchIndex
    from figsearch.keyword_index import KeywordIndex
    from figsearch.search import SearchService
    from figsearch.serving import one_blas_thread
    from figsearch.store import FigureStore

    one_blas_thread()  # as the API's version loader does
    settings = Settings(data_dir=scratch, query_cache_size=0)
    image = SearchIndex.load(args["vector_dir"], nprobe=settings.nprobe, mmap_index=True)
    caption = SearchIndex.load(args["vector_dir"], nprobe=settings.nprobe, mmap_index=True)
    key = str(image.manifest["model_key"])
    intrinsic = int(image.manifest.get("bench_vector_scale", {}).get("intrinsic_dim", 0))
    table = vector_queries(image.dim, 0, 500, intrinsic)
    real_image = real_caption = None  # without exports: no model cost (smoke runs)
    if args["onnx_encoders"]:
        root = Path(args["onnx_encoders"])
        real_image, real_caption = (load_encoder(k, "onnx", onnx_root=root)
                                    for k in onnx_exports(root))
        real_image.share_trunk_with(real_caption)  # one MiniLM run a query, as the API does
    encoder = BatchingEncoder(MixtureCostEncoder(real_image, key, table))
    captions = CaptionSignal(caption, BatchingEncoder(MixtureCostEncoder(real_caption, key, table)))
    columns = VersionColumns.load(Path(args["columns_dir"]))
    keywords = KeywordIndex.open(Path(args["keyword_dir"]))
    assert columns is not None and keywords is not None
    return SearchService(FigureStore(scratch / "empty.db"), image, encoder, settings,
                         captions=captions, columns=columns, keywords=keywords)


def _with_passages(service: Any, passages_dir: Path, scratch: Path,
                   part_rerank_share: float | None = None,
                   common_share: float | None = None) -> Any:
    """A second service over ``service``'s parts whose caption signal also searches the
    passages of ``passages_dir`` (MaxP), as a version built with ``caption_passages`` does;
    the same encoders, on the same model thread. ``part_rerank_share``: how deep its passage
    search re-ranks instead of the product's :attr:`~figsearch.caption_index.MaxPIndex.
    part_rerank_share`; ``common_share``: its ``Settings.keyword_common_share`` instead of
    ``service``'s."""
    from figsearch.caption_index import CaptionSignal, PassageIndex
    from figsearch.index import SearchIndex
    from figsearch.search import SearchService
    from figsearch.store import FigureStore

    settings = service.settings if common_share is None else \
        service.settings.model_copy(update={"keyword_common_share": common_share})
    parts = SearchIndex.load(passages_dir, nprobe=settings.nprobe, mmap_index=True)
    layer = PassageIndex(service.captions.index, parts)
    if part_rerank_share is not None:
        layer.part_rerank_share = part_rerank_share
    captions = CaptionSignal(layer, service.captions.encoder)
    return SearchService(FigureStore(scratch / "empty.db"), service.index, service.encoder,
                         settings, captions=captions, columns=service.columns,
                         keywords=service.keywords)


def _one_filter(args: dict[str, Any], name: str, out: Any) -> None:
    """In a fresh process: load the service, warm it with unfiltered queries (timed), then
    time the filter's first use stage by stage, and ``queries`` more with it."""
    from bench.pmc_scale import load_queries
    from figsearch.store import FigureFilter

    flt = _filters(Path(args["keyword_dir"]))[name]
    texts = load_queries()
    with tempfile.TemporaryDirectory() as scratch:
        t = time.perf_counter()
        service = _service(args, Path(scratch))
        load_s = round(time.perf_counter() - t, 1)
        prepared: dict[str, float] = {}
        if args.get("prepared"):  # as the API's load does for one-click and carried filters
            t = time.perf_counter()
            service.prepare_filters([flt])
            prepared["prepare_ms"] = _ms(t)
        use = service.fused_signals()
        depth = service.settings.fusion_depth

        leaked: list[int] = []  # fused candidates a filter excludes (must stay 0)

        def query(i: int, query_flt: FigureFilter) -> dict[str, float]:
            """search_text's hybrid path up to fusion (the page's figures are not fetched)."""
            text = f"{texts[i % len(texts)]} {i}"  # never an earlier query's text
            t0 = time.perf_counter()
            got = service.start_signals(text, "hybrid", query_flt, use)
            started = _ms(t0)
            t = time.perf_counter()
            fused = service._fuse(service.signal_results(
                text, depth, query_flt, use, got.qvec, got.cvec, keyword=got.keyword,
                searched=got.vectors))
            stages = {"start_ms": started, "signals_ms": _ms(t), "total_ms": _ms(t0)}
            if not query_flt.is_empty():
                allowed = service.columns.allowed(query_flt)
                leaked.append(int((~allowed.contains(np.asarray(fused.ids, np.int64))).sum()))
            return stages

        for i in range(args["warmup"]):
            query(i, FigureFilter())
        i = args["warmup"]
        unfiltered = [query(i + j, FigureFilter())["total_ms"] for j in range(args["queries"])]
        i += args["queries"]
        first = query(i, flt)
        after = [query(i + 1 + j, flt)["total_ms"] for j in range(args["queries"])]
        allowed = service.columns.allowed(flt)
        plan = service.index.plan(allowed)
        rss = process_memory_mb()  # after the queries: what a worker holds at this point
        if args.get("touch_all_lists"):
            _probe_every_list(service)
            rss.update({f"all_lists_{key}": value for key, value in process_memory_mb().items()})
    out.put({"filter": name, "allowed": allowed.count, "share": round(allowed.selectivity, 4),
             "plan": plan, "load_s": load_s, "signals": ",".join(use), **rss, **prepared,
             "outside_filter": sum(leaked),
             **{f"first_{key}": value for key, value in first.items()},
             "after_p50_ms": round(float(np.percentile(after, 50)), 2),
             "after_p95_ms": round(float(np.percentile(after, 95)), 2),
             "unfiltered_p50_ms": round(float(np.percentile(unfiltered, 50)), 2),
             "unfiltered_p95_ms": round(float(np.percentile(unfiltered, 95)), 2)})


def _fused_ids(service: Any, text: str, flt: Any) -> list[int]:
    """``search_text``'s hybrid path up to fusion for one query (the page's figures are not
    fetched: no store at 15 M)."""
    use, depth = service.fused_signals(), service.settings.fusion_depth
    got = service.start_signals(text, "hybrid", flt, use)
    return list(service._fuse(service.signal_results(
        text, depth, flt, use, got.qvec, got.cvec, keyword=got.keyword,
        searched=got.vectors)).ids)


def _fused_ids_in_turn(service: Any, text: str, flt: Any) -> list[int]:
    """The same query in the order ``start_signals`` kept before ``aa25ce2``: the keyword
    search while the model thread encodes, the filter's plans, then each vector index in
    turn."""
    use, depth = service.fused_signals(), service.settings.fusion_depth
    text_vector, caption_vector = service._start_text(text), service._start_caption_query(text)
    keyword = service._keyword(text, depth, flt, hybrid=True)
    service._prepare_filter(flt, use)
    qvec, cvec = text_vector(), caption_vector()
    return list(service._fuse(service.signal_results(
        text, depth, flt, use, qvec, cvec, keyword=keyword)).ids)


def _timed_query(service: Any, text: str, flt: Any) -> float:
    """ms of :func:`_fused_ids` for one query."""
    t0 = time.perf_counter()
    _fused_ids(service, text, flt)
    return (time.perf_counter() - t0) * 1000


def _overlap_in_process(args: dict[str, Any], out: Any) -> None:
    """In one process, every filter prepared: ``queries`` rounds of one new query text, unfiltered
    and with each filter, asked both ways (overlapped as the service does, and in turn as
    before), which goes first alternating. The same process and texts for both: fresh processes on this VM
    differ by more than the change (unfiltered p50 57-78 ms between processes)."""
    from bench.pmc_scale import load_queries
    from figsearch.store import FigureFilter

    filters = {"unfiltered": FigureFilter(), **_filters(Path(args["keyword_dir"]))}
    texts = load_queries()
    ways = {"now": _fused_ids, "before": _fused_ids_in_turn}
    times: dict[str, list[float]] = {}
    differ = 0
    with tempfile.TemporaryDirectory() as scratch:
        service = _service(args, Path(scratch))
        service.prepare_filters(list(filters.values()))
        for i in range(args["warmup"]):
            _fused_ids(service, f"{texts[i % len(texts)]} {i}", FigureFilter())
        for i in range(args["warmup"], args["warmup"] + args["queries"]):
            for name, flt in filters.items():
                order = list(ways.items()) if i % 2 else list(reversed(ways.items()))
                got = {}
                for way, run in order:
                    t0 = time.perf_counter()
                    got[way] = run(service, f"{texts[i % len(texts)]} {i}", flt)
                    times.setdefault(f"{name}_{way}", []).append(_ms(t0))
                differ += got["now"][:20] != got["before"][:20]
    out.put({"top20_differ": differ, **_latency_figures(times)})


def _passage_cost_in_process(args: dict[str, Any], out: Any) -> None:
    """In one process, every filter prepared: ``queries`` rounds of one new query text,
    unfiltered and with each filter, asked of the service without caption passages and of the
    same service with them (and, given ``compare_share``, with them re-ranked that share of
    the depth instead), which goes first rotating; the CPU time of each way too."""
    from bench.pmc_scale import load_queries
    from figsearch.store import FigureFilter

    filters = {"unfiltered": FigureFilter(), **_filters(Path(args["keyword_dir"]))}
    texts = load_queries()
    times: dict[str, list[float]] = {}
    cpu: dict[str, float] = {}
    leaked = 0
    with tempfile.TemporaryDirectory() as scratch:
        whole = _service(args, Path(scratch))
        services = {"whole": whole,
                    "passages": _with_passages(whole, Path(args["passages_dir"]), Path(scratch))}
        if args.get("compare_share") is not None:
            services[_share_way(args["compare_share"])] = _with_passages(
                whole, Path(args["passages_dir"]), Path(scratch), args["compare_share"])
        if args.get("compare_common_share") is not None:
            services[_common_way(args["compare_common_share"])] = _with_passages(
                whole, Path(args["passages_dir"]), Path(scratch),
                common_share=args["compare_common_share"])
        for service in services.values():
            service.prepare_filters(list(filters.values()))
            for i in range(args["warmup"]):
                _fused_ids(service, f"{texts[i % len(texts)]} {i}", FigureFilter())
        ways = list(services.items())
        kept: dict[str, list[float]] = {}
        for i in range(args["warmup"], args["warmup"] + args["queries"]):
            for name, flt in filters.items():
                fused: dict[str, list[int]] = {}
                for way, service in ways[i % len(ways):] + ways[: i % len(ways)]:
                    c0, t0 = time.process_time(), time.perf_counter()
                    ids = fused[way] = _fused_ids(service, f"{texts[i % len(texts)]} {i}", flt)
                    times.setdefault(f"{name}_{way}", []).append(_ms(t0))
                    cpu[way] = cpu.get(way, 0.0) + time.process_time() - c0
                    if not flt.is_empty():
                        allowed = service.columns.allowed(flt)
                        leaked += int((~allowed.contains(np.asarray(ids, np.int64))).sum())
                for way, ids in fused.items():  # the fused top 20 each way keeps of passages'
                    if way.startswith("passages_") and fused["passages"]:
                        base = fused["passages"][:20]
                        kept.setdefault(way, []).append(len(set(ids[:20]) & set(base)) / len(base))
    asked = args["queries"] * len(filters)
    out.put({"outside_filter": leaked, **{
        f"{way}_cpu_ms_per_query": round(total * 1000 / asked, 1) for way, total in cpu.items()},
        **{f"{way}_top20_kept_mean": round(float(np.mean(v)), 4) for way, v in kept.items()},
        **{f"{way}_top20_kept_min": round(float(np.min(v)), 4) for way, v in kept.items()},
        **_latency_figures(times)})


def _common_way(share: float) -> str:
    """The name of the way whose keyword signal leaves out words more than ``share`` of the
    figures hold (``Settings.keyword_common_share``)."""
    return f"passages_common_{share:g}"


def _share_way(share: float) -> str:
    """The name of the way that re-ranks passages ``share`` of the depth."""
    return f"passages_share_{share:g}"


def _latency_figures(times: dict[str, list[float]]) -> dict[str, float]:
    """``<key>_p50_ms``, ``_p95_ms`` and ``_mean_ms`` of each list of query times."""
    figures: dict[str, float] = {}
    for key, values in times.items():
        figures.update({f"{key}_p50_ms": round(float(np.percentile(values, 50)), 1),
                        f"{key}_p95_ms": round(float(np.percentile(values, 95)), 1),
                        f"{key}_mean_ms": round(float(np.mean(values)), 1)})
    return figures


def _probe_every_list(service: Any) -> None:
    """One query probing every inverted list of both vector indexes: every PQ code and id
    page is touched, so the RSS read after it is the most those indexes' mapped pages add."""
    import faiss

    for index in (service.index, service.captions.index):
        ivf = faiss.try_extract_index_ivf(index.index)
        if ivf is None:
            continue
        before = ivf.nprobe
        ivf.nprobe = ivf.nlist
        try:
            index.index.search(np.zeros((1, index.dim), np.float32), 1)
        finally:
            ivf.nprobe = before


def _forget_filters(service: Any) -> None:
    """Drop every cached allowed set and plan, so the next filtered query is a first use."""
    service.columns._cache.clear()
    for index in (service.index, service.captions.index):
        index._subsets.clear()


def _repeat_in_process(args: dict[str, Any], out: Any) -> None:
    """In one process: ``rounds`` times, each filter's first use (its caches dropped, two
    unfiltered queries first) and the query after it."""
    from bench.pmc_scale import load_queries
    from figsearch.store import FigureFilter

    filters = _filters(Path(args["keyword_dir"]))
    texts = load_queries()
    with tempfile.TemporaryDirectory() as scratch:
        service = _service(args, Path(scratch))

        def query(i: int, flt: FigureFilter) -> float:
            return _timed_query(service, f"{texts[i % len(texts)]} {i}", flt)

        times: dict[str, list[float]] = {}
        i = 0
        for i in range(args["warmup"]):
            query(i, FigureFilter())
        for _ in range(args["rounds"]):
            for name, flt in filters.items():
                _forget_filters(service)
                for _ in range(2):
                    i += 1
                    times.setdefault("unfiltered", []).append(query(i, FigureFilter()))
                times.setdefault(f"{name}_first", []).append(query(i + 1, flt))
                times.setdefault(f"{name}_after", []).append(query(i + 2, flt))
                i += 2
    out.put({f"{key}_p50_ms": round(float(np.percentile(v, 50)), 1) for key, v in times.items()})


def _swap_in_process(args: dict[str, Any], out: Any) -> None:
    """In one process: a served version (service A) answers each filter once (its first use,
    timed) and once more; then a new version (service B over the same parts) is loaded and
    prepares A's recent filters, as the API does before a swap (each timed); then each
    filter's first query on B."""
    from bench.pmc_scale import load_queries
    from figsearch.store import FigureFilter

    filters = _filters(Path(args["keyword_dir"]))
    texts = load_queries()
    counter = iter(range(10**9))

    def query(service: Any, flt: FigureFilter) -> float:
        text = f"{texts[next(counter) % len(texts)]} swap"
        return round(_timed_query(service, text, flt), 2)

    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as scratch:
        served = _service(args, Path(scratch))
        for _ in range(args["warmup"]):
            query(served, FigureFilter())
        for name, flt in filters.items():
            figures[f"{name}_first_unprepared_ms"] = query(served, flt)
            figures[f"{name}_after_ms"] = query(served, flt)
        carried = served.recent_filters()
        new = _service(args, Path(scratch))
        for name, flt in zip(filters, carried, strict=True):
            t = time.perf_counter()
            new.prepare_filters([flt])
            figures[f"{name}_prepare_ms"] = _ms(t)
        for _ in range(args["warmup"]):
            query(new, FigureFilter())
        for name, flt in filters.items():
            figures[f"{name}_first_prepared_ms"] = query(new, flt)
    out.put(figures)


def _in_fresh_process(args: dict[str, Any], target: Any, *extra: Any,
                      timeout: float = 3600) -> tuple[dict[str, Any], float]:
    """``target(args, *extra, queue)`` in a fresh process, after every file is read into the
    page cache: (what it put on the queue, MB read). The goals are for a warm cache, and this
    VM pages out what was not touched for a minute (DAMON), so reading once at the start would
    leave later processes on a cold cache (about 19 GB of this machine's 23)."""
    from bench.pmc_scale import warm_page_cache

    warmed = sum(warm_page_cache(Path(args[key])) for key in (
        "vector_dir", "keyword_dir", "columns_dir"))
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(args, *extra, queue))
    proc.start()
    result = queue.get(timeout=timeout)
    proc.join()
    return result, warmed


def _median_of_rounds(args: dict[str, Any], target: Any, digits: int) -> dict[str, Any]:
    """``target`` in ``rounds`` fresh processes (:func:`_in_fresh_process`): the median of
    each figure, rounded to ``digits`` (shares of a top list kept: 4), and every round's value
    as ``<figure>_runs``."""
    runs, warmed = [], 0.0
    for _ in range(args["rounds"]):
        run, warmed = _in_fresh_process(args, target)
        runs.append(run)
    figures: dict[str, Any] = {"page_cache_warmed_mb": warmed}
    for key in runs[0]:
        values = [r[key] for r in runs]
        figures[key] = round(float(np.median(values)), 4 if "_kept_" in key else digits)
        figures[f"{key}_runs"] = values
    return figures


def swap(args: dict[str, Any]) -> dict[str, Any]:
    """A version swap at 15 M: each filter's first query on a version that prepared the
    filters its predecessor answered, against its first use unprepared (one process, every
    file read into the page cache first; ``rounds`` processes, medians)."""
    figures = _median_of_rounds(args, _swap_in_process, digits=2)
    names = list(_filters(Path(args["keyword_dir"])))
    print(markdown_table(
        ["filter", "first use, unprepared ms", "prepared before the swap ms",
         "first query after the swap ms", "a later query ms"],
        [[n, figures[f"{n}_first_unprepared_ms"], figures[f"{n}_prepare_ms"],
          figures[f"{n}_first_prepared_ms"], figures[f"{n}_after_ms"]] for n in names]))
    return figures


def overlap(args: dict[str, Any]) -> dict[str, Any]:
    """A hybrid query as the service runs it (vector searches overlapping the keyword search)
    against the same query in the order before (in turn): one process per round, every file
    read into the page cache first; medians of the rounds."""
    figures = _median_of_rounds(args, _overlap_in_process, digits=1)
    names = ["unfiltered", *_filters(Path(args["keyword_dir"]))]
    print(markdown_table(
        ["filter", "before: in turn, p50 / p95 / mean ms",
         "now: overlapped, p50 / p95 / mean ms"],
        [[n, *(" / ".join(str(figures[f"{n}_{way}_{stat}_ms"]) for stat in ("p50", "p95", "mean"))
               for way in ("before", "now"))] for n in names]))
    print(f"top 20 differing between the two ways: {figures['top20_differ']}")
    return figures


def passage_cost(args: dict[str, Any]) -> dict[str, Any]:
    """A default query with and without the caption signal's passage layer: one process per
    round (every file read into the page cache first), medians of the rounds."""
    figures = _median_of_rounds(args, _passage_cost_in_process, digits=1)
    names = ["unfiltered", *_filters(Path(args["keyword_dir"]))]
    ways = ["whole", "passages"]
    if args.get("compare_share") is not None:
        ways.append(_share_way(args["compare_share"]))
    if args.get("compare_common_share") is not None:
        ways.append(_common_way(args["compare_common_share"]))
    print(markdown_table(
        ["filter", *(f"{way}: p50 / p95 / mean ms" for way in ways)],
        [[n, *(" / ".join(str(figures[f"{n}_{way}_{stat}_ms"]) for stat in ("p50", "p95", "mean"))
               for way in ways)] for n in names]))
    print("CPU per query: " + ", ".join(
        f"{way} {figures[f'{way}_cpu_ms_per_query']} ms" for way in ways))
    for way in ways[2:]:
        print(f"{way}: fused top 20 kept of passages' {figures[f'{way}_top20_kept_mean']} "
              f"(mean), {figures[f'{way}_top20_kept_min']} (min)")
    return figures


def repeat(args: dict[str, Any]) -> dict[str, Any]:
    """Each filter's first use ``rounds`` times in one process (after every file is read into
    the page cache): steadier than fresh processes on this VM, whose page cache is full at
    15 M and whose first touches of mapped files vary by tens of ms, at the price of leaving
    out those first touches."""
    figures, warmed = _in_fresh_process(args, _repeat_in_process)
    figures["page_cache_warmed_mb"] = warmed
    print(markdown_table(["filter", "first use p50 ms", "the query after, p50 ms"], [
        [name, figures[f"{name}_first_p50_ms"], figures[f"{name}_after_p50_ms"]]
        for name in _filters(Path(args["keyword_dir"]))]))
    return figures


def measure(args: dict[str, Any]) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    rows = []
    for name in _filters(Path(args["keyword_dir"])):
        runs = []
        for _ in range(args["repeat"]):
            run, figures["page_cache_warmed_mb"] = _in_fresh_process(
                args, _one_filter, name, timeout=1800)
            runs.append(run)
        r = sorted(runs, key=lambda x: x["first_total_ms"])[len(runs) // 2]
        r["first_total_ms_max"] = max(x["first_total_ms"] for x in runs)
        figures.update({f"{name}_{key}": value for key, value in r.items() if key != "filter"})
        rows.append([name, f"{r['share']:.2%}", r["plan"], r["first_total_ms"],
                     r["first_total_ms_max"], r["first_start_ms"], r["first_signals_ms"],
                     r["after_p50_ms"], r["after_p95_ms"], r["unfiltered_p50_ms"],
                     r["unfiltered_p95_ms"]])
        print(f"first_filter: {name}: first use {r['first_total_ms']} ms, after "
              f"{r['after_p50_ms']} ms p50", file=sys.stderr, flush=True)
    print(markdown_table(["filter", "share", "image plan", "first use ms", "max ms",
                          "of it: encoding, keyword, plans", "vector signals, fusion",
                          "after p50", "after p95", "unfiltered p50", "unfiltered p95"], rows))
    return figures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("verb", choices=["prepare", "passages", "measure", "repeat", "swap",
                                       "overlap", "passage-cost"])
    ap.add_argument("--keyword-dir", type=Path, required=True)
    ap.add_argument("--vector-dir", type=Path, required=True)
    ap.add_argument("--columns-dir", type=Path, required=True)
    ap.add_argument("--onnx-encoders", type=Path,
                    help="measure: the ONNX export root (without: queries pay no model)")
    ap.add_argument("--queries", type=int, default=30,
                    help="measure: queries after the first; overlap: query texts a process")
    ap.add_argument("--warmup", type=int, default=5, help="measure: unfiltered queries first")
    ap.add_argument("--repeat", type=int, default=3, help="measure: fresh processes per filter")
    ap.add_argument("--rounds", type=int, default=6,
                    help="repeat: first uses of each filter in the one process; swap, overlap: "
                    "processes")
    ap.add_argument("--name", default="first_filter_15m")
    ap.add_argument("--prepared", action="store_true",
                    help="measure: each process prepares its filter when it loads "
                    "(SearchService.prepare_filters), as the API does for the one-click "
                    "filters and those the previous version answered")
    ap.add_argument("--touch-all-lists", action="store_true",
                    help="measure: after the queries, probe every list and read RSS again")
    ap.add_argument("--passages-dir", type=Path,
                    help="passages: where to write the stand-in passage index; passage-cost: "
                    "the one to search")
    ap.add_argument("--compare-share", type=float,
                    help="passage-cost: also answer each query with the passages re-ranked "
                    "this share of the depth (MaxPIndex.part_rerank_share; 1 = as deep as "
                    "the whole captions)")
    ap.add_argument("--compare-common-share", type=float,
                    help="passage-cost: also answer each query with the keyword signal's "
                    "any-word candidates found by the words at most this share of figures "
                    "hold (Settings.keyword_common_share)")
    ap.add_argument("--every-figure-indexed", action="store_true",
                    help="prepare: columns over the vector indexes' ids only (see prepare())")
    args = ap.parse_args(argv)
    if args.verb == "prepare":
        prepare(args.keyword_dir, args.vector_dir, args.columns_dir,
                every_figure_indexed=args.every_figure_indexed)
        return 0
    if args.verb in ("passages", "passage-cost") and args.passages_dir is None:
        ap.error(f"{args.verb} needs --passages-dir")
    if args.verb == "passages":
        prepare_passages(args.vector_dir, args.passages_dir)
        return 0
    params = {"keyword_dir": str(args.keyword_dir), "vector_dir": str(args.vector_dir),
              "columns_dir": str(args.columns_dir), "onnx_encoders": str(args.onnx_encoders or ""),
              "queries": args.queries, "warmup": args.warmup, "repeat": args.repeat,
              "touch_all_lists": args.touch_all_lists, "prepared": args.prepared}
    if args.verb in ("swap", "repeat"):  # counted in --rounds, not --repeat x --queries
        params = {**params, "rounds": args.rounds}
        del params["repeat"], params["queries"], params["touch_all_lists"], params["prepared"]
    if args.verb == "swap":
        figures = swap(params)
        note = ("a default query up to fusion at 15 M (module doc): each filter's first query "
                "on a version that prepared its predecessor's recent filters before the swap "
                "(SearchService.prepare_filters), against its first use unprepared; medians "
                "of --rounds processes")
    elif args.verb == "overlap":
        figures = overlap({**params, "rounds": args.rounds})
        note = ("a default query up to fusion at 15 M (module doc), unfiltered and with each "
                "filter prepared: its vector searches overlapping the keyword search, as the "
                "service runs it, against the same query with them in turn (the order before "
                "aa25ce2); both in one process per round, alternating which goes first; both "
                "ways re-rank as this checkout does")
    elif args.verb == "passage-cost":
        figures = passage_cost({**params, "rounds": args.rounds,
                                "passages_dir": str(args.passages_dir),
                                "compare_share": args.compare_share,
                                "compare_common_share": args.compare_common_share})
        note = ("a default query up to fusion at 15 M (module doc), unfiltered and with each "
                "filter prepared, with the caption signal's passage layer (a stand-in: the "
                "vector index keyed as one passage a figure) and without it (and with "
                "--compare-share, with the passages re-ranked that share of the depth; with "
                "--compare-common-share, with the keyword signal's common words left out of "
                "its any-word candidates); all "
                "in one process per round, rotating which goes first; CPU of the whole "
                "process per query")
    elif args.verb == "repeat":
        figures = repeat(params)
        note = ("a filtered default query up to fusion at 15 M (module doc): each filter's "
                "first use --rounds times in one process, its allowed set and plans dropped "
                "before each; 2 cores shared by the model thread's ONNX encoding and the "
                "request thread")
    else:
        figures = measure(params)
        note = ("request-thread stages of a filtered default query at 15 M (module doc); each "
                "filter in a fresh process, the median of --repeat by first-use total; 2 cores "
                "shared by the model thread's ONNX encoding and the request thread")
    path = write_result(args.name, {**params, "k": K, "note": note}, figures)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
