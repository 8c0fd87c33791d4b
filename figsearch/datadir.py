"""Paths inside the data directory, stored relative to it so that the directory can move.

An index version records the model it was built with. When that model lives inside the data
directory (``<data_dir>/models/figclip-mini``, as the demo trains it) the manifest stores
``data-dir:models/figclip-mini`` and every reader resolves it against its own data directory,
so a copied or moved data dir keeps working from any working directory. Other local paths are
stored absolute; hub ids and config names are stored as given.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_PREFIX = "data-dir:"
MANIFEST_FILE = "manifest.json"  # a version directory is complete once it holds this
#: a version is written into ``<indexes>/.building-<name>`` and renamed to ``<name>`` when done
BUILDING_PREFIX = ".building-"
_NOT_PATHS = ("hf-hub:",)
_LOCAL_PREFIX = "local-dir:"


def portable_path(value: str, data_dir: Path) -> str:
    """``value`` as it should be recorded: ``data-dir:<relative>`` inside the data dir,
    absolute for other existing local paths, unchanged otherwise."""
    if not value or value.startswith(_NOT_PATHS + (DATA_DIR_PREFIX,)):
        return value
    path = Path(value.removeprefix(_LOCAL_PREFIX)).expanduser()
    if not path.exists():
        return value  # a config name or hub id, not a path
    path = path.resolve()
    try:
        return DATA_DIR_PREFIX + path.relative_to(Path(data_dir).resolve()).as_posix()
    except ValueError:
        return str(path)


def resolve_path(value: str, data_dir: Path) -> str:
    """The usable form of a recorded ``value``: ``data-dir:`` paths joined to ``data_dir``.

    Indexes recorded before paths were portable hold a path relative to the working directory
    they were built in (``figsearch-data/models/figclip-mini``); when that does not exist from
    here, its tail is looked up inside ``data_dir`` (``models/figclip-mini``).
    """
    if value.startswith(DATA_DIR_PREFIX):
        return str(Path(data_dir) / value[len(DATA_DIR_PREFIX):])
    if not value or value.startswith(_NOT_PATHS + (_LOCAL_PREFIX,)) or "/" not in value:
        return value
    path = Path(value)
    if path.is_absolute() or path.exists():
        return value
    parts = path.parts
    for start in range(len(parts) - 1):
        candidate = Path(data_dir).joinpath(*parts[start:])
        if candidate.is_dir():
            return str(candidate)
    return value


def index_model_spec(data_dir: Path, indexes_dir: Path | None = None) -> str | None:
    """The model the current index was built with (resolved), or None without an index."""
    from figsearch.index import current_version_dir, read_manifest

    current = current_version_dir(indexes_dir or Path(data_dir) / "indexes")
    if current is None:
        return None
    spec = str(read_manifest(current).get("model_spec") or "")
    return resolve_path(spec, data_dir) or None


def version_name(version_dir: Path) -> str:
    """A version's name from its directory, also while it is still being built."""
    return Path(version_dir).name.removeprefix(BUILDING_PREFIX)


def list_versions(indexes_dir: Path) -> list[Path]:
    """Complete version directories in ``indexes_dir``, oldest first (names sort by time)."""
    if not Path(indexes_dir).is_dir():
        return []
    return sorted(p for p in Path(indexes_dir).iterdir()
                  if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")
                  and (p / MANIFEST_FILE).is_file())


def fsync_path(path: Path) -> None:
    """Flush a file or directory to disk (a directory: its entries, so a rename is durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """:func:`fsync_path` every file and directory under ``root``, deepest first, then
    ``root``: what a new index version holds is on disk before it is renamed into place."""
    for path in sorted(Path(root).rglob("*"), key=lambda p: len(p.parts), reverse=True):
        fsync_path(path)
    fsync_path(root)
