"""Keyword search at PMC size: the product's keyword index over 1-15 M figures of real language.

The store and vector indexes of ``bench/pmc_scale.py`` take hours per 5 M figures to generate and
build on this 2-core machine; keyword search is the part whose cost follows how often real words
occur, so this bench builds only the keyword index, at the full target size. Figures are drawn
as ``pmc_scale`` draws them (:class:`bench.pmc_scale.Corpus`: whole real caption sentences,
PMC's caption-length shape with a 77-word mean, 40 % of images with in-figure text, Zipf
journals, PMC's licence and year mix) and written straight into the product's keyword index
(``figsearch.keyword_index``: the same schema, analyser and document rows a version build
writes). Queries go through :meth:`KeywordIndex.ranked`, the keyword signal of the search
service: the keyword mode (k 20, widening to any word) and the default hybrid mode's depth
(``fusion_depth`` 100), unfiltered and with a broad (licence, ~57 %), a mid (one year, ~5 %)
and a narrow (one journal, ~0.1 %) filter whose allowed set is drawn the way the filter columns
give it.

    .venv/bin/python -m bench.keyword_scale --n 5000000 --index /work/bench-data/kw-5m
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import markdown_table, write_result  # noqa: E402
from bench.pmc_scale import (  # noqa: E402
    LICENSE_MIX,
    Corpus,
    _shares,
    caption_lengths,
    load_queries,
    make_caption,
    percentiles,
    year_shares,
)

BATCH = 20_000


def build(index_dir: Path, n: int, seed: int = 0, mean_words: float = 77.0,
          ocr_share: float = 0.4, n_journals: int = 3000, shards: int = 0) -> dict[str, Any]:
    """Write ``n`` generated figures into a new keyword index (``shards`` 0: as a version build
    picks them); the metadata arrays for filters."""
    from tqdm import tqdm

    from figsearch.keyword_index import IDS_FILE, ShardWriters, auto_shards, shard_paths

    t0 = time.perf_counter()
    corpus = Corpus()
    rng = np.random.default_rng(seed)
    picks_rng = np.random.default_rng(seed + 1)
    years, year_p = year_shares()
    lic_names, lic_p = _shares(LICENSE_MIX)
    journals = corpus.journal_names(n_journals, seed)
    zipf = 1.0 / np.arange(1, n_journals + 1)
    zipf /= zipf.sum()
    index_dir.mkdir(parents=True, exist_ok=False)
    shards = shards or auto_shards(n)
    writers = ShardWriters(shard_paths(index_dir, shards), create=True)
    meta = {"year": np.zeros(n, np.int16), "journal": np.zeros(n, np.int32),
            "license": np.zeros(n, np.int8)}

    def picks() -> Any:
        while True:
            yield from picks_rng.integers(0, len(corpus.sentences), 1 << 16).tolist()

    pick = picks()
    with tqdm(total=n, desc="keyword_scale build", unit="fig", mininterval=10) as bar:
        for start in range(0, n, BATCH):
            m = min(BATCH, n - start)
            lengths = caption_lengths(corpus, m, mean_words, rng)
            year = years[rng.choice(len(years), m, p=year_p)]
            lic = rng.choice(len(lic_names), m, p=lic_p)
            jour = rng.choice(n_journals, m, p=zipf)
            ocr = rng.random(m) < ocr_share * 0.92
            titles = rng.integers(0, len(corpus.titles), m)
            for j in range(m):
                fid = start + j + 1
                ocr_text = " ".join(corpus.sentence_words[next(pick)][:12]) if ocr[j] else None
                row = (fid, make_caption(corpus, int(lengths[j]), pick),
                       f"Figure {1 + fid % 6}", corpus.titles[int(titles[j])], ocr_text,
                       int(year[j]), journals[int(jour[j])], lic_names[int(lic[j])],
                       f"PMC{1_000_000 + fid // 3}")
                writers.add(row)
            meta["year"][start:start + m] = year
            meta["journal"][start:start + m] = jour
            meta["license"][start:start + m] = lic
            bar.update(m)
    writers.commit()
    np.save(index_dir / IDS_FILE, np.arange(1, n + 1, dtype=np.int64))
    for name, arr in meta.items():
        np.save(index_dir / f"bench_{name}.npy", arr)
    (index_dir / "bench_journals.txt").write_text("\n".join(journals))
    seconds = time.perf_counter() - t0
    print(f"keyword_scale: {n:,} figures indexed in {shards} shard(s) in {seconds:.0f} s "
          f"({n / seconds:,.0f} figures/s)", file=sys.stderr)
    return {"build_s": round(seconds, 1), "build_figures_per_s": round(n / seconds, 1)}


class MaskAllowed:
    """An allowed set as the filter columns give one: a bitmap by figure id."""

    def __init__(self, mask: np.ndarray) -> None:
        self.bits = np.concatenate([[False], mask])  # ids start at 1
        self.count = int(mask.sum())
        self.total = len(mask)

    @property
    def selectivity(self) -> float:
        return self.count / self.total

    def contains(self, ids: np.ndarray) -> np.ndarray:
        return self.bits[np.asarray(ids, np.int64)]


def filters(index_dir: Path) -> dict[str, tuple[Any, MaskAllowed]]:
    """broad / mid / narrow filters with their allowed sets."""
    from figsearch.store import FigureFilter

    year = np.load(index_dir / "bench_year.npy")
    lic = np.load(index_dir / "bench_license.npy")
    jour = np.load(index_dir / "bench_journal.npy")
    journals = (index_dir / "bench_journals.txt").read_text().splitlines()
    lic_names, _ = _shares(LICENSE_MIX)
    from figsearch.licenses import COMMERCIAL_CLASSES

    commercial = np.isin(lic, [i for i, name in enumerate(lic_names) if name in COMMERCIAL_CLASSES])
    counts = np.bincount(jour, minlength=len(journals))
    narrow = int(np.argmin(np.abs(counts / len(jour) - 0.001)))
    return {
        "broad": (FigureFilter(commercial_only=True), MaskAllowed(commercial)),
        "mid": (FigureFilter(year_from=2019, year_to=2019), MaskAllowed(year == 2019)),
        "narrow": (FigureFilter(journal=journals[narrow]), MaskAllowed(jour == narrow)),
    }


def measure(index_dir: Path, queries: list[str], rounds: int = 2) -> dict[str, Any]:
    from figsearch.keyword_index import KeywordIndex

    t0 = time.perf_counter()
    kw = KeywordIndex.open(index_dir)
    if kw is None:
        raise SystemExit(f"{index_dir} holds no keyword index")
    out: dict[str, Any] = {"open_ms": round((time.perf_counter() - t0) * 1000, 1),
                           "figures": kw.count, "queries": len(queries),
                           "shards": len(kw.searchers)}
    plans: dict[str, tuple[int, Any, Any]] = {"keyword_k20": (20, None, None),
                                               "hybrid_depth100": (100, None, None)}
    for name, (flt, allowed) in filters(index_dir).items():
        plans[f"filtered_{name}_depth100"] = (100, flt, allowed)
        out[f"filter_{name}_share"] = round(allowed.selectivity, 4)
    for q in queries:  # warm the page cache once
        kw.ranked(q, 20)
    for name, (n, flt, allowed) in plans.items():
        wall, cpu = [], []
        for _ in range(rounds):
            for q in queries:
                w, c = time.perf_counter(), time.process_time()
                kw.ranked(q, n, allowed=allowed, flt=flt)
                wall.append((time.perf_counter() - w) * 1000)
                cpu.append((time.process_time() - c) * 1000)
        stats = percentiles(wall)
        out.update({f"{name}_{k}": v for k, v in stats.items()})
        out[f"{name}_cpu_p50_ms"] = round(float(np.percentile(cpu, 50)), 2)
        print(f"keyword_scale: {name:28s} p50 {stats['p50_ms']:7.1f} ms  p95 "
              f"{stats['p95_ms']:7.1f}  p99 {stats['p99_ms']:7.1f}", file=sys.stderr)
    out["disk_mb"] = round(sum(p.stat().st_size for p in index_dir.rglob("*") if p.is_file())
                           / 2**20, 1)
    return out


def common_shares(index_dir: Path, queries: list[str], shares: list[float],
                  rounds: int = 2, n: int = 100) -> dict[str, Any]:
    """The default mode's keyword signal (depth ``n``) with each ``Settings.
    keyword_common_share`` against the exact one (share 0), every query asked every way in
    turn, the first way rotating: wall and CPU time, and the share of the exact top 20 / top
    100 each way keeps (its candidates differ; their scores are exact)."""
    from figsearch.keyword_index import KeywordIndex

    kw = KeywordIndex.open(index_dir)
    if kw is None:
        raise SystemExit(f"{index_dir} holds no keyword index")
    ways = [0.0, *(s for s in shares if s > 0)]
    wall: dict[float, list[float]] = {s: [] for s in ways}
    cpu: dict[float, list[float]] = {s: [] for s in ways}
    kept: dict[tuple[float, int], list[float]] = {}
    for q in queries:  # warm the page cache once
        kw.ranked(q, n)
    for r in range(rounds):
        for i, q in enumerate(queries):
            turn = (i + r) % len(ways)
            got: dict[float, list[int]] = {}
            for share in ways[turn:] + ways[:turn]:
                w, c = time.perf_counter(), time.process_time()
                got[share] = [f for f, _ in kw.ranked(q, n, common_share=share)]
                wall[share].append((time.perf_counter() - w) * 1000)
                cpu[share].append((time.process_time() - c) * 1000)
            for share in ways[1:]:
                for top in (20, n):
                    exact = set(got[0.0][:top])
                    kept.setdefault((share, top), []).append(
                        len(exact & set(got[share][:top])) / max(1, len(exact)))
    out: dict[str, Any] = {}
    for share in ways:
        name = f"common_{share:g}_depth{n}"
        out.update({f"{name}_{k}": v for k, v in percentiles(wall[share]).items()})
        out[f"{name}_cpu_mean_ms"] = round(float(np.mean(cpu[share])), 2)
        line = (f"keyword_scale: common share {share:<5g} p50 {out[f'{name}_p50_ms']:6.1f} ms "
                f"mean {out[f'{name}_mean_ms']:6.1f}  CPU mean {out[f'{name}_cpu_mean_ms']:6.1f}")
        for top in (20, n):
            if (share, top) in kept:
                out[f"{name}_top{top}_kept_mean"] = round(float(np.mean(kept[share, top])), 4)
                out[f"{name}_top{top}_kept_min"] = round(float(np.min(kept[share, top])), 4)
                line += f"  top {top} kept {out[f'{name}_top{top}_kept_mean']:.3f}"
        print(line, file=sys.stderr)
    return out


def agreement(index_dir: Path, reference_dir: Path, queries: list[str]) -> dict[str, Any]:
    """How far a sharded index's answers are from one index over the same figures (built with
    the same ``--n`` and seed): the share of the reference's top 20 / 100 it returns too."""
    from figsearch.keyword_index import KeywordIndex

    kw, ref = KeywordIndex.open(index_dir), KeywordIndex.open(reference_dir)
    if kw is None or ref is None or kw.count != ref.count:
        raise SystemExit(f"{reference_dir} does not hold the same figures as {index_dir}")
    out: dict[str, Any] = {"reference_shards": len(ref.searchers)}
    for n in (20, 100):
        shares = []
        for q in queries:
            want = {f for f, _ in ref.ranked(q, n)}
            got = {f for f, _ in kw.ranked(q, n)}
            shares.append(len(want & got) / max(1, len(want)))
        out[f"top{n}_agreement_mean"] = round(float(np.mean(shares)), 4)
        out[f"top{n}_agreement_min"] = round(float(np.min(shares)), 4)
    print(f"keyword_scale: agreement with {reference_dir}: {out}", file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--index", type=Path, required=True, help="keyword index folder (new or built)")
    p.add_argument("--queries", type=int, default=0, help="first N queries only (0: all 92)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--name", default=None, help="result name (default keyword_scale_<n>)")
    p.add_argument("--shards", type=int, default=0,
                   help="shards of a new index (0: as a version build picks them)")
    p.add_argument("--common-shares", default="",
                   help="comma-separated Settings.keyword_common_share values: also time the "
                   "default mode's keyword signal with each against the exact one, in turn")
    p.add_argument("--compare", type=Path, default=None,
                   help="an index of the same figures in other shards: report top-k agreement")
    args = p.parse_args(argv)
    built: dict[str, Any] = {}
    from figsearch.keyword_index import shard_count

    if not shard_count(args.index):
        built = build(args.index, args.n, shards=args.shards)
    figures = {**built, **measure(args.index, load_queries(args.queries), args.rounds)}
    if args.compare is not None:
        figures.update(agreement(args.index, args.compare, load_queries(args.queries)))
    if args.common_shares:
        figures.update(common_shares(args.index, load_queries(args.queries),
                                     [float(x) for x in args.common_shares.split(",")],
                                     args.rounds))
    print(markdown_table(["figure", "value"], [[k, v] for k, v in figures.items()]))
    name = args.name or f"keyword_scale_{args.n}"
    write_result(name, {"n": args.n, "command": "python -m bench.keyword_scale " + " ".join(
        argv if argv is not None else sys.argv[1:]), "load_avg": list(os.getloadavg())}, figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
