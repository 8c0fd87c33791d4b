"""When each figure arrived: the index version that first served it (feeds, issue 26).

Every version's filter columns (:mod:`figsearch.columns`) hold ``first_version.npy``: per
column row, a code into the version history ``vocab.json["first_version"]``, a list of
``{"version": <name>, "published": <ISO time>}`` oldest first, ending with the version itself.

Why a derived per-version column and not a store column written at publish: a version is an
immutable directory, so the arrival data switches, replicates and rolls back with it, and a
build that fails before its swap changes nothing anyone sees (the same reason figure types live
in the version, :mod:`figsearch.version_data`). The build never writes to the store for it.

How it is carried: :func:`first_versions` runs inside :func:`figsearch.columns.write_columns`,
which every build path calls (full, text-only and nightly delta builds all go through
``indexer.indexing.write_store_indexes``). It reads the previous version's column and history
and keeps each figure's code; figures the previous version did not hold get the new version.
"Previous" is ``current`` (the version that served last; a version that was built but never
activated, e.g. it failed validation, is skipped), or the newest kept one when there is no
``current``. A figure that left and came back (retracted, then not) arrives again.

Starting on a store whose versions predate the column: the history is rebuilt from the kept
versions, oldest first. Figures present in the oldest kept version get that version, those first
seen in a later one get that one; the same from the newest version that has a column onward.
The history only grows (one entry per build, a few dozen bytes), so "the last N versions" of a
feed counts versions even after they are pruned from disk.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from figsearch.datadir import MANIFEST_FILE, list_versions, version_name
from figsearch.sorted_ids import find_sorted, sorted_union, sorted_unique

COLUMN = "first_version"  # the column file's stem and the vocab key of the history


def now_iso() -> str:
    """The current UTC time as the history records it (ISO 8601, seconds, ``+00:00``)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _prior_versions(version_dir: Path) -> list[Path]:
    """The kept versions before ``version_dir`` whose figures count as served, oldest first:
    up to ``current`` when it is one of them (later ones were never made current)."""
    from figsearch.index import current_version_dir

    indexes_dir = Path(version_dir).parent
    name = version_name(version_dir)
    prior = [p for p in list_versions(indexes_dir) if p.name < name]
    current = current_version_dir(indexes_dir)
    names = [p.name for p in prior]
    if current is not None and current.name in names:
        prior = prior[: names.index(current.name) + 1]
    return prior


def read_history(version_dir: Path) -> tuple[np.ndarray, np.ndarray, list[dict[str, str]]] | None:
    """(sorted figure ids, codes, history) of a version's column, or None without one; the
    arrays memory-mapped (15 M ids are 120 MB: the build reads them, it need not hold them)."""
    import json

    cols = Path(version_dir) / "columns"
    path = cols / f"{COLUMN}.npy"
    if not path.is_file() or not (cols / "vocab.json").is_file():
        return None
    history = json.loads((cols / "vocab.json").read_text()).get(COLUMN)
    if not isinstance(history, list):
        return None
    return (np.load(cols / "ids.npy", mmap_mode="r"), np.load(path, mmap_mode="r"),
            list(history))


def _figure_ids(version_dir: Path) -> np.ndarray:
    """Every figure id a version serves: its columns' ids, else its image and caption ids."""
    if (version_dir / "columns" / "ids.npy").is_file():
        return np.asarray(np.load(version_dir / "columns" / "ids.npy"), np.int64)
    parts = [np.load(version_dir / rel) for rel in ("ids.npy", "captions/ids.npy")
             if (version_dir / rel).is_file()]
    return sorted_union(*parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def _published(version_dir: Path) -> str:
    """A kept version's publish time: its manifest's ``built_at``."""
    import json

    try:
        return str(json.loads((version_dir / MANIFEST_FILE).read_text()).get("built_at") or "")
    except (OSError, ValueError):
        return ""


def first_versions(version_dir: Path, ids: np.ndarray, published: str | None = None
                   ) -> tuple[np.ndarray, list[dict[str, str]]]:
    """(code per figure id in ``ids`` (sorted), history) for a version being written into
    ``version_dir`` (see the module doc for what is carried from where)."""
    prior = _prior_versions(version_dir)
    known_ids, known_codes = np.zeros(0, np.int64), np.zeros(0, np.int32)
    history: list[dict[str, str]] = []
    start = 0
    for i in range(len(prior) - 1, -1, -1):
        got = read_history(prior[i])
        if got is not None:
            known_ids, known_codes, history = got
            start = i + 1
            break
    for older in prior[start:]:  # versions without the column: bootstrap from their ids
        known_ids, known_codes = _extend(known_ids, known_codes, _figure_ids(older),
                                         len(history))
        history.append({"version": older.name, "published": _published(older)})
    own = len(history)
    history.append({"version": version_name(version_dir), "published": published or now_iso()})
    codes = np.full(len(ids), own, np.int32)
    if len(known_ids) and len(ids):
        pos = np.searchsorted(known_ids, ids).clip(0, len(known_ids) - 1)
        found = known_ids[pos] == ids
        codes[found] = known_codes[pos[found]]
    return codes, history


def _extend(known_ids: np.ndarray, known_codes: np.ndarray, ids: np.ndarray, code: int
            ) -> tuple[np.ndarray, np.ndarray]:
    """The (sorted) known ids plus those of ``ids`` not yet known, which get ``code``."""
    ids = sorted_unique(ids)
    new = ids[~find_sorted(known_ids, ids)[1]]
    all_ids = np.concatenate([known_ids, new])
    all_codes = np.concatenate([known_codes, np.full(len(new), code, np.int32)])
    order = np.argsort(all_ids, kind="stable")
    return all_ids[order], all_codes[order]


def code_dtype(n_versions: int) -> Any:
    """The narrowest integer type for codes of ``n_versions`` history entries."""
    return np.int16 if n_versions <= np.iinfo(np.int16).max else np.int32


def parse_since(text: str) -> datetime:
    """A ``since=`` value (an ISO date or date-time; naive means UTC) as an aware datetime."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"since={text!r} is not an ISO date or date-time "
                         "(e.g. 2026-12-01 or 2026-12-01T06:00:00Z)") from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def published_time(entry: dict[str, str]) -> datetime:
    """When a history entry's version was published: its recorded time, else the build start
    its name encodes (``YYYYMMDDTHHMMSSffffffZ-xxxxxx``), else the epoch."""
    try:
        return parse_since(entry.get("published") or "")
    except ValueError:
        pass
    try:
        return datetime.strptime(str(entry.get("version", "")).split("-")[0],
                                 "%Y%m%dT%H%M%S%fZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return datetime(1970, 1, 1, tzinfo=timezone.utc)


def select_versions(history: list[dict[str, str]], versions: int | None = None,
                    since: datetime | None = None) -> list[str]:
    """Names of the history's last ``versions`` entries (default 1: the newest), or, with
    ``since``, of those published at or after it."""
    if since is None:
        return [h["version"] for h in history[-max(int(versions or 1), 1):]]
    return [h["version"] for h in history if published_time(h) >= since]
