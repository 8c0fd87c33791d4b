"""``figsearch search "query"``: search the current index from the terminal."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from figsearch.core.config import Settings
from figsearch.search import MODES, SearchInputError, SearchPage, SearchService


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("query", nargs="?", default="", help="query text (omit with --image)")
    parser.add_argument("--image", type=Path, default=None, help="search by this image file")
    parser.add_argument("--k", type=int, default=10, help="results to show (default 10)")
    parser.add_argument("--offset", type=int, default=0, help="results to skip")
    parser.add_argument("--mode", choices=MODES, default="hybrid", help="text search mode")
    parser.add_argument("--license", choices=("any", "commercial", "reusable"), default="any",
                        help="commercial = only licenses allowing commercial reuse; reusable = "
                             "only figures whose own rights allow reuse")
    parser.add_argument("--year-from", type=int, default=None)
    parser.add_argument("--year-to", type=int, default=None)
    parser.add_argument("--no-dedup", action="store_true", help="keep near-duplicate images")


def open_service(settings: Settings, need_model: bool = True) -> SearchService:
    """The current version's :class:`SearchService`, opened as the API opens it
    (:func:`figsearch.serving.open_current`; its encoders live until exit).

    ``need_model=False`` (keyword search) loads no model: BM25 and the near-duplicate collapse
    only need the store and the index's stored vectors, and loading a model is most of the
    command's run time.
    """
    from figsearch.serving import open_current

    return open_current(settings, load_models=need_model).service


def format_page(page: SearchPage, width: int = 70) -> str:
    """One line per hit: rank, score, figure id, label, caption start."""
    lines = [f"{page.mode} search for {page.query!r} on index {page.index_version} "
             f"({page.took_ms:.0f} ms)"]
    for hit in page.hits:
        caption = " ".join((hit.figure.get("caption") or "").split())
        if len(caption) > width:
            caption = caption[: width - 1] + "…"
        label = (hit.figure.get("label") or "")[:14]
        lines.append(f"{hit.rank:>4}  {hit.score:8.4f}  {hit.id:>9}  {label:<14}  {caption}")
    if not page.hits:
        lines.append("   (no results)")
    return "\n".join(lines)


def command(args: argparse.Namespace) -> int:
    """Run one search and print the results; 2 on bad input, 1 when nothing can be loaded."""
    from figsearch.encoders import ModelLoadError
    from figsearch.imaging import ImageError, open_image
    from figsearch.index import IndexLoadError
    from figsearch.store import FigureFilter

    settings: Settings = args.settings
    flt = FigureFilter(year_from=args.year_from, year_to=args.year_to,
                       commercial_only=args.license == "commercial",
                       reusable_only=args.license == "reusable")
    from figsearch.serving import open_current

    opened = None
    try:
        opened = open_current(
            settings, load_models=args.image is not None or args.mode != "keyword")
        service = opened.service
        if args.image is not None:
            image = open_image(args.image.read_bytes(), settings.max_image_pixels)
            page = service.search_image(image, k=args.k, offset=args.offset, flt=flt,
                                        dedup=not args.no_dedup)
        else:
            page = service.search_text(args.query, k=args.k, offset=args.offset, mode=args.mode,
                                       flt=flt, dedup=not args.no_dedup)
    except (IndexLoadError, ModelLoadError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (SearchInputError, ImageError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if opened is not None:
            opened.close()
    print(format_page(page))
    return 0
