"""Panel queries (issue #25): does a query written for one panel of a compound figure find that
figure first, and the right panel of it?

    FIGSEARCH_DATA_DIR=/path/to/data PYTHONPATH=$PWD .venv/bin/python -m bench.panel_queries_eval \
        [--data-dir DIR] [--split dev|test] [--mode keyword ...]

Reads ``bench/eval/panel_queries.jsonl`` (format: ``bench/eval/README.md``), opens the data dir's
served version with :func:`figsearch.serving.open_current` (as the API does: near-duplicate
collapse on, no filters) and runs every query in each mode (hybrid, keyword, caption, dense; a
mode the version cannot answer is left out). Per split and mode it reports:

- ``figure@1`` / ``figure@10``: the target figure (pmcid + label, resolved to store ids the way
  ``figsearch eval`` resolves ``bench/eval/queries.jsonl``) is first / in the top 10;
- ``panel@1``: the figure is first *and* its hit names the right panel: the hit's ``panel`` has
  the query's letter, or, where the panel has no letter, a box at IoU >= 0.5 against the
  ground-truth box;
- ``panel|figure``: panel@1 over figure@1, the share of first-place figures whose panel is right;
- ``panel missing``: first-place target figures whose hit carries no panel at all.

The hit's panel is read with ``getattr(hit, "panel", None)`` (``figsearch.search.SearchHit.panel``,
a ``figsearch.panel_index.PanelMatch`` with ``number``, ``box``, ``letter``, ``subcaption``,
``signal`` and ``score``), so the scorer runs on versions without panel search too: every panel
is then missing and panel@1 is 0, the baseline. Ground-truth boxes are in pixels of the original
image; the store keeps a copy resized to ``max_image_side`` (``figures.width``/``height`` against
``orig_width``/``orig_height``), which panel detection reads, so a panel's box is taken to be in
the stored image's pixels and the ground-truth box is scaled to them before the IoU.

Writes ``bench/results/panel_queries_<split>.json`` (``FIGSEARCH_BENCH_RESULTS`` to redirect),
with the command line, the index version and each query's rank and panel outcome.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import BENCH_DIR, markdown_table, write_result  # noqa: E402
from bench.eval.validate_queries import longest_shared_run  # noqa: E402
from figsearch.core.config import Settings  # noqa: E402
from figsearch.evaluation import jsonl_lines, resolve_target  # noqa: E402
from figsearch.panels import iou  # noqa: E402
from figsearch.search import SearchService  # noqa: E402
from figsearch.store import FigureStore  # noqa: E402

QUERIES_PATH = BENCH_DIR / "eval" / "panel_queries.jsonl"
PANELS_PATH = BENCH_DIR / "eval" / "panels.jsonl"
MODES = ("hybrid", "keyword", "caption", "dense")
SPLITS = ("dev", "test")
FIELDS = ("id", "split", "query", "pmcid", "figure", "letter", "box", "written_from")
IOU_MIN = 0.5
DEPTH = 10
#: a query shares at most this many consecutive words with its figure's caption (most share 2:
#: gene names and the like); :func:`copy_problems` checks it
MAX_SHARED_RUN = 4


# -- the query file -----------------------------------------------------------------------------
def load_queries(path: Path = QUERIES_PATH) -> list[dict[str, Any]]:
    """The panel queries, each checked for its fields (a bad line is an error naming it)."""
    rows = []
    for where, row, problem in jsonl_lines(path):
        if problem:
            raise ValueError(f"{where}: {problem}")
        missing = [f for f in FIELDS if f not in row] if isinstance(row, dict) else list(FIELDS)
        if missing:
            raise ValueError(f"{where}: missing field(s) {', '.join(missing)}")
        if row["split"] not in SPLITS or not str(row["query"]).strip():
            raise ValueError(f"{where}: split must be dev or test and the query non-empty")
        box = row["box"]
        if not (isinstance(box, list) and len(box) == 4 and box[0] < box[2] and box[1] < box[3]):
            raise ValueError(f"{where}: box must be [x0, y0, x1, y1] with x0 < x1, y0 < y1")
        rows.append(row)
    return rows


def copy_problems(queries: list[dict[str, Any]], captions: dict[tuple[str, str], str]) -> list[str]:
    """Queries that copy more than MAX_SHARED_RUN consecutive words of their caption
    (``captions`` by (pmcid, figure label)); one line per offender."""
    out = []
    for row in queries:
        run = longest_shared_run(row["query"], captions[(row["pmcid"], row["figure"])])
        if run > MAX_SHARED_RUN:
            out.append(f"{row['id']}: shares {run} consecutive words with its caption")
    return out


# -- scoring ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """A query's figure in the store: its id and the scale from original to stored pixels."""

    figure_id: int
    scale_x: float
    scale_y: float


def resolve(store: FigureStore, row: dict[str, Any]) -> Target | None:
    """The query's figure by pmcid + label (None when the store lacks it or has it twice)."""
    ids = resolve_target(store, {"pmcid": row["pmcid"], "label": row["figure"]})
    if len(ids) != 1:
        return None
    fig = store.get_figures(ids)[ids[0]]
    sx = (fig["width"] / fig["orig_width"]) if fig.get("width") and fig.get("orig_width") else 1.0
    sy = (fig["height"] / fig["orig_height"]) if fig.get("height") and fig.get("orig_height") else 1.0
    return Target(ids[0], sx, sy)


def panel_right(panel: Any, row: dict[str, Any], target: Target) -> bool:
    """Whether a hit's panel is the query's: same letter, or without a letter a box at
    IoU >= 0.5 against the ground-truth box scaled to the stored image."""
    letter = getattr(panel, "letter", None)
    if letter:
        return str(letter).upper() == str(row["letter"]).upper()
    box = getattr(panel, "box", None)
    if box is None:
        return False
    x0, y0, x1, y1 = row["box"]
    truth = (x0 * target.scale_x, y0 * target.scale_y, x1 * target.scale_x, y1 * target.scale_y)
    return iou(tuple(float(v) for v in box), truth) >= IOU_MIN


def score_query(service: SearchService, mode: str, row: dict[str, Any], target: Target
                ) -> dict[str, Any]:
    """One query in one mode: the target's rank in the top 10 and whether its panel is right."""
    hits = service.search_text(row["query"], k=DEPTH, mode=mode).hits
    rank = next((i for i, h in enumerate(hits, 1) if h.id == target.figure_id), None)
    out: dict[str, Any] = {"id": row["id"], "rank": rank, "panel": None}
    if rank == 1:
        panel = getattr(hits[0], "panel", None)
        out["panel"] = ("missing" if panel is None
                        else "right" if panel_right(panel, row, target) else "wrong")
    return out


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """figure@1, figure@10, panel@1, panel|figure and panel missing of one mode's rows."""
    n = len(rows)
    first = sum(r["rank"] == 1 for r in rows)
    top10 = sum(r["rank"] is not None for r in rows)
    right = sum(r["panel"] == "right" for r in rows)
    return {"n": n, "figure@1": round(first / n, 4) if n else 0.0,
            "figure@10": round(top10 / n, 4) if n else 0.0,
            "panel@1": round(right / n, 4) if n else 0.0,
            "panel|figure": round(right / first, 4) if first else 0.0,
            "panel missing": sum(r["panel"] == "missing" for r in rows)}


def available_modes(service: SearchService, wanted: tuple[str, ...] = MODES) -> list[str]:
    """The wanted modes the version can answer (as ``figsearch eval`` decides it)."""
    have = {"hybrid": True, "keyword": True, "caption": service.captions is not None,
            "dense": service.index is not None and service.encoder is not None}
    return [m for m in wanted if have[m]]


def evaluate(settings: Settings, queries: list[dict[str, Any]], splits: tuple[str, ...] = SPLITS,
             modes: tuple[str, ...] = MODES) -> dict[str, Any]:
    """Every split x mode over the served version of ``settings.data_dir``.

    Returns ``{"index_version", "modes", "unresolved": [query ids], "splits": {split: {mode:
    summary}}, "per_query": {split: {mode: rows}}}``; queries whose figure the store lacks are
    listed as unresolved and left out of the means."""
    from figsearch.serving import open_current

    opened = open_current(settings, warm_up=False)
    try:
        service = opened.service
        found = {r["id"]: resolve(service.store, r) for r in queries}
        targets = {qid: t for qid, t in found.items() if t is not None}
        used = available_modes(service, modes)
        out: dict[str, Any] = {"index_version": service.index_version, "modes": used,
                               "unresolved": sorted(set(found) - set(targets)),
                               "splits": {}, "per_query": {}}
        for split in splits:
            chosen = [r for r in queries if r["split"] == split and r["id"] in targets]
            per_mode = {m: [score_query(service, m, r, targets[r["id"]]) for r in chosen]
                        for m in used}
            out["splits"][split] = {m: summarise(rows) for m, rows in per_mode.items()}
            out["per_query"][split] = per_mode
    finally:
        opened.close()
    return out


# -- CLI ----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Score the panel queries on a data dir and write one result file per split."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, default=None,
                    help="the data dir to search (default: FIGSEARCH_DATA_DIR / the settings)")
    ap.add_argument("--queries", type=Path, default=QUERIES_PATH)
    ap.add_argument("--split", choices=SPLITS, action="append", help="split(s) (default both)")
    ap.add_argument("--mode", choices=MODES, action="append", help="mode(s) (default all)")
    args = ap.parse_args(argv)
    settings = Settings(data_dir=args.data_dir) if args.data_dir else Settings()
    queries = load_queries(args.queries)
    splits = tuple(args.split or SPLITS)
    started = time.monotonic()
    result = evaluate(settings, queries, splits, tuple(args.mode or MODES))
    seconds = round(time.monotonic() - started, 1)
    command = "python -m bench.panel_queries_eval " + shlex.join(
        argv if argv is not None else sys.argv[1:])
    if args.data_dir is None:  # the data dir came from the environment: say which
        command = f"FIGSEARCH_DATA_DIR={shlex.quote(str(settings.data_dir))} {command}"
    if result["unresolved"]:
        print(f"not in the store (left out): {', '.join(result['unresolved'])}", file=sys.stderr)
    table = []
    for split in splits:
        summaries = result["splits"][split]
        figures = {f"{mode} {k}": v for mode, s in summaries.items() for k, v in s.items()}
        write_result(f"panel_queries_{split}", {
            "split": split, "command": command, "data_dir": str(settings.data_dir),
            "queries": str(args.queries), "index_version": result["index_version"],
            "iou_min": IOU_MIN, "unresolved": result["unresolved"], "seconds": seconds,
            "per_query": result["per_query"][split]}, figures)
        table += [[split, mode, s["n"], s["figure@1"], s["figure@10"], s["panel@1"],
                   s["panel|figure"], s["panel missing"]] for mode, s in summaries.items()]
    print(markdown_table(["split", "mode", "queries", "figure@1", "figure@10", "panel@1",
                          "panel|figure", "panel missing"], table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
