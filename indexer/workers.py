"""The task model and worker pool of ingest, shared by every source (local inputs, legacy file
lists, PMC Cloud).

A source turns its inputs into :class:`Task` s; :func:`task_results` runs them in
``settings.ingest_workers`` processes (or inline) through the source's own function, which
reads one task and calls :func:`process_unit` per article: parse, skip an article whose
stored state (last_updated + content hash) is unchanged before any image work, normalise
images with :func:`figsearch.imaging.store_image`. The main process writes each outcome with
:func:`write_outcome` (one ``store.upsert_article`` transaction per article, so a crash never
leaves an article without its figures) and records every skipped input with its reason.

This module imports no source: :mod:`indexer.ingest` and :mod:`indexer.pmc_cloud` both use it,
so neither needs the other.
"""

from __future__ import annotations

import hashlib
import multiprocessing
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from figsearch.core.config import Settings
from figsearch.faults import maybe_crash
from figsearch.imaging import ImageError, store_image
from figsearch.licenses import normalise_license
from figsearch.records import ArticleRecord, FigureRecord
from figsearch.rights import third_party_statement
from figsearch.store import FigureStore
from indexer.jats import JatsError, ParsedArticle, ParsedFigure, parse_article, resolve_graphic
from indexer.readers import ArticleUnit, InputError, Limits
from indexer.sources import ManifestGroup

#: What a worker runs for one task (a module-level function, so it pickles by name).
TaskFn = Callable[["Task"], list["Outcome"]]

# -- records passed between processes -------------------------------------------------------
@dataclass
class Task:
    """One unit of work: an input path, or one article's rows of a JSONL manifest."""

    path: str
    group: ManifestGroup | None = None
    last_updated: str | None = None  # from a file list
    pmcid: str | None = None  # from a file list, used when the XML lacks one
    license: str = ""  # from a file list, used when the XML has no <license>
    collection: str | None = None  # `--collection`: names articles that are not in PMC
    authors: list[str] = field(default_factory=list)  # PMC Cloud metadata, if the XML has none


@dataclass
class Problem:
    """Something skipped, and why (becomes a row of ``ingest_errors``)."""

    source: str
    item: str
    reason: str
    stage: str


@dataclass
class Outcome:
    """What a worker made of one article: parsed records, ``unchanged``, or ``failed``."""

    status: str
    key: str = ""
    article: ArticleRecord | None = None
    figures: list[FigureRecord] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


@dataclass
class WorkerConfig:
    """What a worker needs (picklable, unlike the store)."""

    db_path: str
    images_dir: str
    image_max_side: int
    thumb_max_side: int
    max_image_pixels: int
    limits: Limits = field(default_factory=Limits)

    @classmethod
    def from_settings(cls, settings: Settings, limits: Limits | None = None) -> WorkerConfig:
        return cls(
            str(settings.db_path), str(settings.images_dir), settings.image_max_side,
            settings.thumb_max_side, settings.max_image_pixels, limits or Limits(),
        )


@dataclass
class IngestSummary:
    """Counts of one ingest run; the ``*_keys`` lists drive incremental index rebuilds."""

    inputs: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    figures: int = 0
    figures_with_images: int = 0
    skipped: int = 0
    problems: int = 0
    elapsed_s: float = 0.0
    added_keys: list[str] = field(default_factory=list)
    updated_keys: list[str] = field(default_factory=list)
    removed_keys: list[str] = field(default_factory=list)
    skipped_items: list[tuple[str, str]] = field(default_factory=list)

    @property
    def figures_per_s(self) -> float:
        return self.figures / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def read_anything(self) -> bool:
        return self.added + self.updated + self.unchanged + self.removed > 0

    def line(self) -> str:
        """The one-line summary printed at the end of a run."""
        return (
            f"ingest: {self.added} articles added, {self.updated} updated, "
            f"{self.unchanged} unchanged, {self.removed} removed; {self.figures} figures "
            f"written ({self.figures_with_images} with images); {self.skipped} inputs skipped, "
            f"{self.problems} figure problems; {self.elapsed_s:.1f} s, "
            f"{self.figures_per_s:.1f} figures/s"
        )


# -- worker side ----------------------------------------------------------------------------
_WORKER: dict[str, Any] = {}


def init_worker(config: WorkerConfig) -> None:
    """Per-process state: the config and a read-only use of the store (article_state)."""
    _WORKER["config"] = config
    _WORKER["store"] = FigureStore(config.db_path)


def worker_config() -> WorkerConfig:
    """The config this worker process was started with (:func:`init_worker`)."""
    config: WorkerConfig = _WORKER["config"]
    return config


def is_unchanged(key: str, last_updated: str | None, content_hash: str) -> bool:
    """Whether the store already holds this article in this state (skip before image work)."""
    state = _WORKER["store"].article_state(key)
    return state is not None and state == (last_updated, content_hash)


def keep_figure_image(
    fig: FigureRecord, data: bytes, item: str, problems: list[Problem], source: str
) -> None:
    """Normalise and store one figure's image; a bad image keeps the figure, with a problem."""
    cfg: WorkerConfig = _WORKER["config"]
    try:
        stored = store_image(
            data, cfg.images_dir, cfg.image_max_side, cfg.thumb_max_side, cfg.max_image_pixels
        )
    except ImageError as exc:
        problems.append(Problem(source, item, f"figure kept without image: {exc}", "image"))
        return
    fig.image_path, fig.thumb_path = stored.image_path, stored.thumb_path
    fig.width, fig.height = stored.width, stored.height
    fig.orig_width, fig.orig_height = stored.orig_width, stored.orig_height
    fig.sha256 = stored.sha256


def _fetch_images(
    unit: ArticleUnit, parsed: ParsedArticle, source: str, problems: list[Problem]
) -> dict[str, bytes | None]:
    """Image bytes per figure id (None when missing); problems say what was missing."""
    images: dict[str, bytes | None] = {}
    for fig in parsed.figures:
        name = resolve_graphic(fig.href, unit.names)
        if name is None:
            images[fig.fig_id] = None
            if unit.names and fig.href:
                problems.append(Problem(
                    source, f"{unit.item}#{fig.fig_id}",
                    f"figure kept without image: graphic {fig.href!r} not found in package",
                    "image",
                ))
            continue
        try:
            images[fig.fig_id] = unit.fetch(name)
        except (OSError, InputError) as exc:
            images[fig.fig_id] = None
            problems.append(Problem(source, f"{unit.item}#{fig.fig_id}",
                                    f"figure kept without image: {exc}", "image"))
    return images


def content_hash(parts: Iterable[bytes]) -> str:
    """sha256 over length-prefixed parts (XML, then images in figure order)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()


def _article_record(parsed: ParsedArticle, task: Task, key: str, digest: str) -> ArticleRecord:
    license_text, license_url = parsed.license_text, parsed.license_url
    if not (license_text or license_url) and task.license:
        license_text = task.license
    pmcid = parsed.pmcid or task.pmcid
    source = "synthetic" if parsed.synthetic else ("pmc" if pmcid else task.collection or "publisher")
    return ArticleRecord(
        key=key, source=source, pmcid=pmcid, pmid=parsed.pmid, doi=parsed.doi,
        title=parsed.title, journal=parsed.journal, year=parsed.year,
        license_text=license_text, license_url=license_url,
        license_class=normalise_license(license_text, license_url),
        last_updated=task.last_updated, content_hash=digest, authors=list(parsed.authors or task.authors),
    )


def _figure_rights(fig: FigureRecord, pf: ParsedFigure) -> None:
    """The figure's own rights: its ``<permissions>`` and any third-party statement in its
    caption or ``<attrib>``; a figure-level copyright without a license is third-party too
    (the article's license does not cover it)."""
    if pf.has_license:
        fig.rights_license_class = normalise_license(pf.license_text, pf.license_url)
        fig.rights_license_text, fig.rights_license_url = pf.license_text, pf.license_url
    fig.rights_statement, fig.rights_holder = pf.copyright_statement, pf.copyright_holder
    fig.third_party = third_party_statement(pf.caption, pf.attrib)
    if not fig.third_party and not pf.has_license and (pf.copyright_statement
                                                       or pf.copyright_holder):
        fig.third_party = pf.copyright_statement or f"© {pf.copyright_holder}"


def process_unit(unit: ArticleUnit, task: Task) -> Outcome:
    """Parse one article unit; store its images unless the stored article is unchanged."""
    source = task.path
    try:
        parsed = parse_article(unit.xml)
    except JatsError as exc:
        return Outcome("failed", problems=[Problem(source, unit.item, str(exc), "parse")])
    if task.pmcid and not parsed.pmcid and not parsed.synthetic:
        parsed.pmcid = task.pmcid
    problems: list[Problem] = []
    images = _fetch_images(unit, parsed, source, problems)
    digest = content_hash([unit.xml, *(images[f.fig_id] or b"" for f in parsed.figures)])
    key = parsed.key(str(Path(task.path).resolve()))
    if is_unchanged(key, task.last_updated, digest):
        return Outcome("unchanged", key)
    article = _article_record(parsed, task, key, digest)
    figures = []
    for pf in parsed.figures:
        fig = FigureRecord(pf.fig_id, pf.label, pf.caption, source=article.source,
                           attributes=pf.attributes)
        _figure_rights(fig, pf)
        data = images[pf.fig_id]
        if data is not None:
            keep_figure_image(fig, data, f"{unit.item}#{pf.fig_id}", problems, source)
        figures.append(fig)
    return Outcome("parsed", key, article, figures, problems)



# -- main side --------------------------------------------------------------------------------
def record_problems(
    store: FigureStore, problems: Iterable[Problem], summary: IngestSummary
) -> None:
    """Store every problem in ``ingest_errors`` and count it: an image problem keeps its
    figure (``problems``), anything else skipped an input (``skipped``)."""
    for p in problems:
        store.record_error(p.source, p.reason, p.item, p.stage)
        if p.stage == "image":
            summary.problems += 1
        else:
            summary.skipped += 1
            summary.skipped_items.append((p.item, p.reason))


def write_outcome(store: FigureStore, outcome: Outcome, summary: IngestSummary) -> None:
    """Write one article (one transaction) and count it."""
    record_problems(store, outcome.problems, summary)
    if outcome.status == "unchanged":
        summary.unchanged += 1
        return
    if outcome.status != "parsed" or outcome.article is None:
        return
    result = store.upsert_article(outcome.article, outcome.figures)
    maybe_crash("ingest-article")  # test-only fault injection (FIGSEARCH_FAULT_AT)
    if result.status == "unchanged":
        summary.unchanged += 1
        return
    summary.figures += len(outcome.figures)
    summary.figures_with_images += sum(1 for f in outcome.figures if f.has_image)
    if result.status == "added":
        summary.added += 1
        summary.added_keys.append(outcome.key)
    else:
        summary.updated += 1
        summary.updated_keys.append(outcome.key)


def _new_pool(config: WorkerConfig, workers: int, fn: TaskFn) -> ProcessPoolExecutor:
    """A pool of forkserver workers: each starts from a clean process, never from a copy of
    our open SQLite connections (sharing those across fork corrupts locks); the module of
    ``fn`` is preloaded so a worker does not import it per start."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(sorted({__name__, fn.__module__}))
    return ProcessPoolExecutor(workers, mp_context=ctx, initializer=init_worker,
                               initargs=(config,))


def pool_results(
    tasks: Iterable[Task], config: WorkerConfig, workers: int, fn: TaskFn,
) -> Iterator[tuple[Task, list[Outcome]]]:
    """Outcomes of tasks processed by ``workers`` processes, a bounded number in flight.

    A worker that dies (a crash in an image decoder, an out-of-memory kill) costs only the
    tasks in flight: they are recorded as failed and a fresh pool takes the rest.
    """
    pool = _new_pool(config, workers, fn)
    pending: dict[Future[list[Outcome]], Task] = {}
    try:
        for task in tasks:
            try:
                pending[pool.submit(fn, task)] = task
            except BrokenProcessPool:
                yield from _collect(pending, list(pending))
                _shut_down(pool)
                pool = _new_pool(config, workers, fn)
                pending[pool.submit(fn, task)] = task
            if len(pending) >= 4 * workers:
                yield from _collect(pending, wait(pending, return_when=FIRST_COMPLETED)[0])
        while pending:
            yield from _collect(pending, wait(pending, return_when=FIRST_COMPLETED)[0])
    finally:
        _shut_down(pool)


def _shut_down(pool: ProcessPoolExecutor) -> None:
    """Shut a pool down and wait for it. A broken pool's surviving workers are stopped first:
    when one worker dies, Python 3.11's pool fails every pending task and then only joins the
    others, which can be blocked on the pool's queues forever (the test of a dying worker hung
    so under load); their tasks are already failed, so stopping them loses nothing."""
    if getattr(pool, "_broken", False):
        processes = getattr(pool, "_processes", None) or {}
        for process in list(processes.values()):
            if process.is_alive():
                process.terminate()
    pool.shutdown(wait=True, cancel_futures=True)


def _collect(
    pending: dict[Future[list[Outcome]], Task], done: Iterable[Future[list[Outcome]]]
) -> Iterator[tuple[Task, list[Outcome]]]:
    for future in done:
        task = pending.pop(future)
        try:
            yield task, future.result()
        except BrokenProcessPool:
            reason = ("a worker process died (crash or killed, e.g. out of memory) while this "
                      "input was being processed")
            yield task, [_failed(task, reason, "worker")]
        except Exception as exc:  # one bad task must not stop the run
            yield task, [_failed(task, f"worker failed: {type(exc).__name__}: {exc}", "worker")]


def _failed(task: Task, reason: str, stage: str) -> Outcome:
    """The outcome of a task whose worker could not report one."""
    return Outcome("failed", problems=[Problem(task.path, Path(task.path).name, reason, stage)])


def task_results(
    tasks: Iterable[Task], config: WorkerConfig, workers: int, fn: TaskFn,
) -> Generator[tuple[Task, list[Outcome]], None, None]:
    """``(task, outcomes)`` of every task run through ``fn``: in ``workers`` processes, or
    inline when ``workers`` <= 1 (no process start-up for a small run; the inline worker
    state is released when the results end)."""
    if workers > 1:
        yield from pool_results(tasks, config, workers, fn)
        return
    init_worker(config)
    try:
        for task in tasks:
            yield task, fn(task)
    finally:
        store = _WORKER.pop("store", None)
        if store is not None:
            store.close()
