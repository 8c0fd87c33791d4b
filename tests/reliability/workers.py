"""Subprocess workers for the reliability tests (``python -m tests.reliability.workers ...``).

Separate processes, so that SQLite sees real concurrent connections and SIGKILL hits a real
process, not a thread.
"""

from __future__ import annotations

import sys
import time

from figsearch.records import ArticleRecord, FigureRecord
from figsearch.store import FigureStore

FIGURES_PER_ARTICLE = 4


def article(n: int, revision: int = 0) -> tuple[ArticleRecord, list[FigureRecord]]:
    """Article ``n`` with FIGURES_PER_ARTICLE figures; ``revision`` changes its content."""
    rec = ArticleRecord(
        key=f"test:{n}", source="reliability", pmcid=f"PMC{9_000_000 + n}",
        title=f"Article {n} about kinase signalling rev {revision}", journal="J Test",
        year=2000 + n % 20, license_class="cc-by", content_hash=f"h{n}-{revision}",
    )
    figs = [
        FigureRecord(fig_id=f"F{i}", label=f"Figure {i}",
                     caption=f"MAPK pathway panel {i} of article {n} revision {revision}",
                     source="reliability")
        for i in range(FIGURES_PER_ARTICLE)
    ]
    return rec, figs


def write_forever(db: str, start: int) -> None:
    """Upsert articles (new ones and revisions) as fast as possible until killed."""
    store = FigureStore(db)
    n = start
    print("ready", flush=True)
    while True:
        store.upsert_article(*article(n, revision=0))
        store.upsert_article(*article(max(start, n - 3), revision=n))  # rewrite an older one
        if n % 7 == 0:
            store.record_error("reliability", f"reason {n}", item=str(n))
        n += 1


def write_count(db: str, start: int, count: int) -> None:
    """Upsert ``count`` articles then exit; prints the elapsed seconds."""
    store = FigureStore(db)
    t0 = time.monotonic()
    for n in range(start, start + count):
        store.upsert_article(*article(n))
    print(f"wrote {count} in {time.monotonic() - t0:.2f}s", flush=True)


if __name__ == "__main__":
    verb, db, *rest = sys.argv[1:]
    if verb == "forever":
        write_forever(db, int(rest[0]))
    elif verb == "count":
        write_count(db, int(rest[0]), int(rest[1]))
    else:
        raise SystemExit(f"unknown verb {verb}")
