"""The filters users applied last, shared by every API worker of a data dir and kept over
restarts, so that each worker prepares them before its users ask again.

A filter's first use on a version costs its allowed set and each vector index's plan: 45-100
ms more than a query at 15 M figures, and 101-155 ms in all in a freshly started worker on this
machine (docs/scale.md). A version swap already carries the filters the served version
answered (:meth:`figsearch.search.SearchService.prepare_filters`). But each uvicorn worker
has its own caches, so without this file a filter that one worker has answered is still a
first use on every other worker, and on every worker after a restart. Each worker's poll
merges its recent filters into ``<data dir>/recent_filters.json`` and prepares the ones
other workers added. A new worker prepares them at its first load, before it serves.

The file is a hint, not state. Workers replace it whole, by an atomic rename, so one that
writes at the same moment as another can drop the other's newest filter (that worker writes
it again when its own list next changes). A file that cannot be read, or a data dir that
cannot be written (a read-only replica), only costs the first uses it would have saved.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from figsearch.search import RECENT_FILTERS, newest_filters
from figsearch.store import FigureFilter

log = logging.getLogger(__name__)

FILE = "recent_filters.json"
#: As many as a version's indexes keep plans for.
KEEP = RECENT_FILTERS


def _as_json(flt: FigureFilter) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v)
            for k, v in dataclasses.asdict(flt).items() if v is not None and v is not False}


def _from_json(item: Any) -> FigureFilter:
    """A filter from the file, or ValueError for anything that is not one."""
    if not isinstance(item, dict):
        raise ValueError(f"not a filter: {item!r}")
    fields = {f.name for f in dataclasses.fields(FigureFilter)}
    if set(item) - fields:
        raise ValueError(f"unknown filter fields {sorted(set(item) - fields)}")
    values = dict(item)
    for name, value in values.items():
        if not _valid(name, value):
            raise ValueError(f"filter field {name}: {value!r}")
    if values.get("first_versions") is not None:
        values["first_versions"] = tuple(values["first_versions"])
    return FigureFilter(**values)


def _valid(name: str, value: Any) -> bool:
    """A value a filter field can hold (FigureFilter itself checks nothing)."""
    if name in ("commercial_only", "reusable_only"):
        return isinstance(value, bool)
    if value is None:
        return True
    if name in ("year_from", "year_to"):
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "first_versions":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    return isinstance(value, str)


def read_filters(path: Path) -> list[FigureFilter]:
    """The shared filters, oldest first ([] when there is no file or it is unreadable)."""
    try:
        items = json.loads(path.read_text(encoding="utf-8"))["filters"]
        return [_from_json(item) for item in items]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError) as exc:
        _warn_once(path, exc)
        return []


_warned: dict[str, int] = {}  # path -> mtime of the unreadable file last warned about


def _warn_once(path: Path, exc: Exception) -> None:
    """Warn about an unreadable file once, not at every poll of every worker until some
    worker's new filters replace it."""
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        stamp = -1
    if _warned.get(str(path)) != stamp:
        _warned[str(path)] = stamp
        log.warning("%s: ignored (%s); the filters users apply will be written again", path, exc)


def share_filters(path: Path, recent: Sequence[FigureFilter]) -> list[FigureFilter]:
    """Merge ``recent`` (this worker's, oldest first) into the file, as the newest; returns
    what the file holds now. A data dir that cannot be written is logged once per call and
    left as it is."""
    merged = newest_filters([f for f in [*read_filters(path), *recent] if not f.is_empty()],
                            KEEP)
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"filters": [_as_json(f) for f in merged]}, fh)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        log.info("%s: not written (%s); workers will not share recent filters", path, exc)
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    return merged
