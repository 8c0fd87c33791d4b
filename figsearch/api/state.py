"""The hot-reloadable search state: one loaded index version + model, swapped atomically.

:class:`AppState` holds a reference to a frozen :class:`Loaded` snapshot. A request takes the
snapshot once (``state.current``) and uses it to the end, so a swap never changes the index
under a request in flight: the old version stays alive until its last request drops it.

Versions are opened by :class:`figsearch.serving.VersionLoader` (the CLI and the evaluation use
it too). A reload loads the new version *fully* (FAISS index, ids, vectors, model, ``check_model``) before
assigning the new snapshot - a single reference assignment, atomic in CPython. A version that
fails to load is logged and remembered (``last_error``); the previous version keeps serving.

Pinned searches (``version=<name>`` on the search routes) are answered by :meth:`AppState.
pinned`: an older version still kept on disk (``index_keep_versions``) is opened on demand by the
same loader and kept in a small LRU of :data:`PINNED_VERSIONS` snapshots, so memory stays
bounded by that many extra versions (their indexes, columns and keyword index; models are
shared by spec with the current version). A version pruned from disk stops answering at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import threading
import time
from collections import OrderedDict
from pathlib import Path

from figsearch.api.batching import run_in_own_thread, stop_model_thread
from figsearch.api.errors import VersionUnavailable
from figsearch.core.config import Settings
from figsearch.datadir import list_versions
from figsearch.index import IndexLoadError, current_version_dir
from figsearch.search import ONE_CLICK_FILTERS
from figsearch.serving import QUERY_BATCH, Loaded, VersionLoader, onnx_root
from figsearch.shared_filters import FILE as SHARED_FILTERS_FILE
from figsearch.shared_filters import read_filters, share_filters
from figsearch.store import FigureFilter, FigureStore

__all__ = ["AppState", "Loaded", "QUERY_BATCH", "onnx_root", "PINNED_VERSIONS"]
log = logging.getLogger("figsearch.api")
#: older versions kept open at once for pinned (``version=``) searches, least recently used
#: closed first: each holds a version's indexes in memory, so this bounds what pins can cost
PINNED_VERSIONS = 2
_VERSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


class AppState:
    """Store, current snapshot and reload logic of one API process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._store: FigureStore | None = None
        self.current: Loaded | None = None
        self.last_error: str | None = None
        self._failed: tuple[Path, float] | None = None  # (version dir, mtime) that failed
        self._reload_lock = threading.Lock()
        #: opens versions and owns their encoders (figsearch.serving: the CLI and the
        #: evaluation open versions the same way)
        self.loader = VersionLoader(settings)
        self.reloads = 0
        self._pinned: OrderedDict[str, Loaded] = OrderedDict()
        self._pinned_lock = threading.Lock()
        self._shared_mine: list[FigureFilter] = []  # this worker's recent filters when last shared

    # -- store ---------------------------------------------------------------------------
    @property
    def store(self) -> FigureStore | None:
        """The figure store, opened on first use (None while the database does not exist)."""
        if self._store is None and self.settings.db_path.exists():
            self._store = FigureStore(self.settings.db_path, create=False)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
        self.loader.close()
        stop_model_thread()

    # -- reloading -----------------------------------------------------------------------
    def reload(self, force: bool = False) -> bool:
        """Load ``indexes/current`` if it changed (or ``force``); True when a swap happened.

        Raises :class:`IndexLoadError` / model errors when the new version cannot be served;
        the old snapshot stays in place then.
        """
        with self._reload_lock:
            target = current_version_dir(self.settings.indexes_dir)
            if target is None:
                raise IndexLoadError(f"no index in {self.settings.indexes_dir}; run `figsearch index`")
            old = self.current
            if not force and old is not None and old.version_dir == target:
                self.last_error, self._failed = None, None  # `current` points at what we serve
                return False
            carried = [*ONE_CLICK_FILTERS, *read_filters(self._shared_filters_path),
                       *(old.service.recent_filters() if old is not None else [])]
            try:
                # a thread of its own: the OpenMP team that loading and warming up a model
                # gives it ends with it (figsearch.api.batching says why that matters)
                loaded = run_in_own_thread(lambda: self._load(target, carried))
            except Exception as exc:
                self.last_error = f"{target.name}: {exc}"
                self._failed = (target, _mtime(target))
                raise
            self.current = loaded  # the atomic swap
            self.last_error, self._failed = None, None
            self.reloads += 1
            self._drop_unused_encoders()
            log.info("serving index version %s (%d vectors; signals %s)", loaded.version,
                     loaded.index.ntotal if loaded.index else 0, loaded.service.signals())
            return True

    def poll_once(self) -> None:
        """One poll of ``indexes/current``: reload if it moved; errors are logged, not raised."""
        target = current_version_dir(self.settings.indexes_dir)
        if target is None:
            return
        if self.current is not None and self.current.version_dir == target:
            self.last_error, self._failed = None, None  # e.g. rolled back to the served version
            try:
                self.share_filters()
            except Exception as exc:  # a hint: it must never stop the poller
                log.warning("recent filters not shared: %s", exc)
            return
        if self._failed == (target, _mtime(target)):
            return  # already failed on this exact version; wait for a new one
        try:
            self.reload()
        except Exception as exc:  # keep serving the old version whatever went wrong
            log.error("cannot load index version %s: %s", target.name, exc)

    @property
    def _shared_filters_path(self) -> Path:
        return self.settings.data_dir / SHARED_FILTERS_FILE

    def share_filters(self) -> int:
        """Merge the filters this worker answered last into the data dir's shared list (when
        they changed since its last poll), then prepare on the served version the ones other
        workers put there (:mod:`figsearch.shared_filters`). Returns how many it prepared.
        Runs on the poll thread, off the request path."""
        current = self.current
        if current is None:
            return 0
        service = current.service
        mine = service.recent_filters()
        if mine != self._shared_mine:
            shared = share_filters(self._shared_filters_path, mine)
            self._shared_mine = mine
        else:
            shared = read_filters(self._shared_filters_path)
        missing = [flt for flt in shared if not service.filter_prepared(flt)]
        if not missing:
            return 0
        prepared = service.prepare_filters(missing)
        self._shared_mine = service.recent_filters()  # preparing made them recent here too
        return prepared

    async def poll_forever(self) -> None:
        """Background task: poll every ``settings.reload_interval_s`` seconds."""
        while True:
            await asyncio.to_thread(self.poll_once)
            await asyncio.sleep(max(self.settings.reload_interval_s, 0.05))

    def _load(self, version_dir: Path, filters: list[FigureFilter]) -> Loaded:
        """Open ``version_dir`` and prepare ``filters`` (the UI's one-click filters and those
        the served version answered last) before it is served: their first queries on it then
        cost what any query costs, rather than each paying for its allowed set and plans."""
        store = self.store
        if store is None:
            raise IndexLoadError(f"no figure store at {self.settings.db_path}")
        loaded = self.loader.load(version_dir, store)
        if not filters:
            return loaded
        start = time.perf_counter()
        prepared = loaded.service.prepare_filters(filters)
        log.info("%s: prepared %d filters (the one-click ones and those %s answered last) "
                 "in %.0f ms", loaded.version, prepared,
                 self.current.version if self.current else "no version",
                 (time.perf_counter() - start) * 1000)
        return dataclasses.replace(loaded, prepared_filters=prepared)

    def _drop_unused_encoders(self) -> None:
        self.loader.drop_unused(self.current, *self._pinned.values())

    # -- pinned versions -----------------------------------------------------------------
    def pinned(self, current: Loaded, version: str | None) -> Loaded:
        """The snapshot answering a search pinned to ``version`` (``current`` for None or
        the served version); raises :class:`VersionUnavailable` for one not kept on disk."""
        if not version or version == current.version:
            return current
        version_dir = self._kept_dir(current, version)
        with self._pinned_lock:  # one load at a time: two pins of one version load it once
            hit = self._pinned.get(version)
            if hit is not None:
                self._pinned.move_to_end(version)
                return hit
            loaded = run_in_own_thread(lambda: self._load(version_dir, []))
            self._pinned[version] = loaded
            while len(self._pinned) > PINNED_VERSIONS:
                self._pinned.popitem(last=False)
            self._drop_unused_encoders()
            log.info("opened pinned index version %s", version)
            return loaded

    def kept_version_names(self) -> list[str]:
        """The versions on disk that ``version=`` can pin, oldest first."""
        return [p.name for p in list_versions(self.settings.indexes_dir)]

    def _kept_dir(self, current: Loaded, version: str) -> Path:
        """The directory of a kept version, or :class:`VersionUnavailable` saying which are
        kept (410 when the served version's history knows the name: it was pruned)."""
        kept = self.kept_version_names()
        if _VERSION_NAME.fullmatch(version) and version in kept:
            return Path(self.settings.indexes_dir) / version
        with self._pinned_lock:
            self._pinned.pop(version, None)  # pruned while open: it stops answering
        columns = current.service.columns
        history = (columns.history if columns is not None else None) or []
        gone = any(h.get("version") == version for h in history)
        what = ("was pruned (index_keep_versions keeps the newest "
                f"{self.settings.index_keep_versions} besides current)" if gone
                else "is not a version of this index")
        raise VersionUnavailable(
            f"index version {version!r} {what}; kept versions: {', '.join(kept) or 'none'}",
            gone=gone)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
