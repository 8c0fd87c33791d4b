"""Ingest: packages, article XML, JSONL manifests or a PMC OA file list -> the figure store.

Inputs become :class:`Task` s. Worker processes (``settings.ingest_workers``) read and parse
each task, skip articles whose stored state (last_updated + content hash) is unchanged
before any image work, and normalise images with :func:`figsearch.imaging.store_image`.
The main process writes each article with one ``store.upsert_article`` call (one
transaction), so a crash never leaves an article without its figures, and records every
skipped input with its reason via ``store.record_error`` while the rest goes on.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from tqdm import tqdm

from figsearch.core.config import Settings
from figsearch.faults import maybe_crash
from figsearch.imaging import ImageError, store_image
from figsearch.licenses import normalise_license
from figsearch.records import ArticleRecord, FigureRecord
from figsearch.rights import third_party_statement
from figsearch.store import FigureStore
from indexer.jats import JatsError, ParsedArticle, ParsedFigure, parse_article, resolve_graphic
from indexer.readers import (
    XML_EXTENSIONS,
    ArticleUnit,
    InputError,
    Limits,
    is_archive,
    is_article_dir,
    read_units,
)
from indexer.sources import (
    FileListEntry,
    FileListError,
    ManifestGroup,
    collection_name,
    is_figure_manifest,
    manifest_fig_id,
    manifest_year,
    parse_file_list,
    read_manifest,
    updated_since,
)

MANIFEST_SUFFIXES = (".jsonl", ".ndjson")
MAX_PRINTED_SKIPS = 20


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


def _unchanged(key: str, last_updated: str | None, content_hash: str) -> bool:
    state = _WORKER["store"].article_state(key)
    return state is not None and state == (last_updated, content_hash)


def _store_figure_image(
    fig: FigureRecord, data: bytes, item: str, problems: list[Problem], source: str
) -> None:
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
    if _unchanged(key, task.last_updated, digest):
        return Outcome("unchanged", key)
    article = _article_record(parsed, task, key, digest)
    figures = []
    for pf in parsed.figures:
        fig = FigureRecord(pf.fig_id, pf.label, pf.caption, source=article.source,
                           attributes=pf.attributes)
        _figure_rights(fig, pf)
        data = images[pf.fig_id]
        if data is not None:
            _store_figure_image(fig, data, f"{unit.item}#{pf.fig_id}", problems, source)
        figures.append(fig)
    return Outcome("parsed", key, article, figures, problems)


def _manifest_image(group: ManifestGroup, row: dict[str, Any]) -> tuple[bytes | None, str]:
    rel = str(row.get("image") or "")
    if not rel:
        return None, "manifest row has no image"
    if os.path.isabs(rel) or os.path.normpath(rel).startswith(".."):
        # A manifest only reaches images in its own folder tree (symlinks placed there are
        # the owner's choice): an untrusted manifest must not copy arbitrary local files
        # into the served image store.
        return None, f"image {rel!r} is outside the manifest's folder"
    path = Path(group.manifest).parent / rel
    try:
        return path.read_bytes(), ""
    except OSError as exc:
        return None, f"image {rel!r} unreadable: {exc.strerror or exc}"


def process_manifest_group(task: Task) -> Outcome:
    """One article of a JSONL manifest: its figures, images from beside the manifest."""
    group = task.group
    assert group is not None
    problems: list[Problem] = []
    images = [_manifest_image(group, row) for row in group.rows]
    rows_json = json.dumps(group.rows, sort_keys=True).encode()
    digest = content_hash([rows_json, *(data or b"" for data, _ in images)])
    if _unchanged(group.key, task.last_updated, digest):
        return Outcome("unchanged", group.key)
    first = group.rows[0]
    lic_text, lic_url = str(first.get("license") or ""), str(first.get("license_url") or "")
    article = ArticleRecord(
        key=group.key, source=group.collection, pmcid=group.pmcid, doi=first.get("doi") or None,
        url=first.get("article_url") or None,
        pmid=str(first["pmid"]) if first.get("pmid") else None,
        title=str(first.get("paper_title") or ""), journal=str(first.get("journal") or ""),
        year=manifest_year(first.get("year")), license_text=lic_text, license_url=lic_url,
        license_class=normalise_license(lic_text, lic_url), content_hash=digest,
        last_updated=task.last_updated,
    )
    figures, seen = [], set()
    for n, (row, (data, why)) in enumerate(zip(group.rows, images, strict=True), start=1):
        fig_id = manifest_fig_id(row, n)
        while fig_id in seen:
            fig_id += "-dup"
        seen.add(fig_id)
        fig = FigureRecord(fig_id, str(row.get("figure_number") or ""),
                           str(row.get("caption") or ""), source=group.collection,
                           url=row.get("url") or None)
        fig.third_party = third_party_statement(fig.caption)
        item = f"{Path(group.manifest).name}:{group.key}#{fig_id}"
        if data is None:
            problems.append(Problem(group.manifest, item, f"figure kept without image: {why}",
                                    "image"))
        else:
            _store_figure_image(fig, data, item, problems, group.manifest)
        figures.append(fig)
    return Outcome("parsed", group.key, article, figures, problems)


def process_task(task: Task) -> list[Outcome]:
    """Run one task in a worker; every failure becomes an Outcome with its reason."""
    if task.group is not None:
        return [process_manifest_group(task)]
    cfg: WorkerConfig = _WORKER["config"]
    try:
        return [process_unit(unit, task) for unit in read_units(Path(task.path), cfg.limits)]
    except InputError as exc:
        return [Outcome("failed", problems=[Problem(task.path, Path(task.path).name, str(exc),
                                                    "read")])]
    except (OSError, MemoryError) as exc:
        return [Outcome("failed", problems=[Problem(task.path, Path(task.path).name,
                                                    f"unreadable: {exc}", "read")])]


# -- finding inputs -------------------------------------------------------------------------
def _is_input_file(path: Path) -> bool:
    name = path.name.lower()
    return is_archive(path) or name.endswith(XML_EXTENSIONS + MANIFEST_SUFFIXES)


def _walk(root: Path) -> Iterator[Path]:
    """Inputs under a directory: article dirs (not descended), packages, XML, manifests."""
    if is_article_dir(root):
        yield root
        return
    for entry in sorted(root.iterdir()):
        if entry.is_symlink():
            continue
        if entry.is_dir():
            yield from _walk(entry)
        elif entry.is_file() and _is_input_file(entry):
            if entry.name.lower().endswith(MANIFEST_SUFFIXES) and not is_figure_manifest(entry):
                continue  # other JSONL met while walking a folder (e.g. synth's ground truth)
            yield entry


def _tasks_for(path: Path, problems: list[Problem], collection: str | None) -> list[Task]:
    if path.name.lower().endswith(MANIFEST_SUFFIXES):
        groups, bad = read_manifest(path, collection)
        problems.extend(Problem(str(path), item, reason, "manifest") for item, reason in bad)
        return [Task(str(path), group=g) for g in groups]
    return [Task(str(path), collection=collection)]


def collect_tasks(
    paths: Sequence[str | Path], collection: str | None = None
) -> tuple[list[Task], list[Problem]]:
    """Tasks for the given paths (directories are walked) and problems found on the way.

    ``collection`` names the collection of manifest rows without a PMCID (and of articles
    without one); see :func:`indexer.sources.read_manifest`.
    """
    tasks: list[Task] = []
    problems: list[Problem] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            problems.append(Problem(str(path), path.name, "no such file or directory", "find"))
            continue
        for found in (_walk(path) if path.is_dir() else [path]):
            tasks.extend(_tasks_for(found, problems, collection))
    return tasks, problems


# -- main side --------------------------------------------------------------------------------
def _record(store: FigureStore, problems: Iterable[Problem], summary: IngestSummary) -> None:
    for p in problems:
        store.record_error(p.source, p.reason, p.item, p.stage)
        if p.stage == "image":
            summary.problems += 1
        else:
            summary.skipped += 1
            summary.skipped_items.append((p.item, p.reason))


def write_outcome(store: FigureStore, outcome: Outcome, summary: IngestSummary) -> None:
    """Write one article (one transaction) and count it."""
    _record(store, outcome.problems, summary)
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


def _new_pool(config: WorkerConfig, workers: int) -> ProcessPoolExecutor:
    # forkserver: workers start from a clean process, never from a copy of our open
    # SQLite connections (sharing those across fork corrupts locks).
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["indexer.ingest"])
    return ProcessPoolExecutor(workers, mp_context=ctx, initializer=init_worker,
                               initargs=(config,))


def pool_results(
    tasks: Iterable[Task], config: WorkerConfig, workers: int,
    fn: Callable[[Task], list[Outcome]] | None = None,
) -> Iterator[tuple[Task, list[Outcome]]]:
    """Outcomes of tasks processed by ``workers`` processes, a bounded number in flight.

    A worker that dies (a crash in an image decoder, an out-of-memory kill) costs only the
    tasks in flight: they are recorded as failed and a fresh pool takes the rest.
    """
    fn = fn or process_task
    pool = _new_pool(config, workers)
    pending: dict[Future[list[Outcome]], Task] = {}
    try:
        for task in tasks:
            try:
                pending[pool.submit(fn, task)] = task
            except BrokenProcessPool:
                yield from _collect(pending, list(pending))
                pool.shutdown(wait=True, cancel_futures=True)
                pool = _new_pool(config, workers)
                pending[pool.submit(fn, task)] = task
            if len(pending) >= 4 * workers:
                yield from _collect(pending, wait(pending, return_when=FIRST_COMPLETED)[0])
        while pending:
            yield from _collect(pending, wait(pending, return_when=FIRST_COMPLETED)[0])
    finally:
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
    return Outcome("failed", problems=[Problem(task.path, Path(task.path).name, reason, stage)])


def run_tasks(
    tasks: Iterable[Task], settings: Settings, store: FigureStore, summary: IngestSummary,
    workers: int | None = None, total: int | None = None, limits: Limits | None = None,
) -> IngestSummary:
    """Process tasks (inline when ``workers`` <= 1) and write every outcome from here."""
    workers = settings.ingest_workers if workers is None else workers
    config = WorkerConfig.from_settings(settings, limits)
    start = time.perf_counter()
    if workers <= 1:
        init_worker(config)
        results: Iterator[tuple[Task, list[Outcome]]] = ((t, process_task(t)) for t in tasks)
    else:
        results = pool_results(tasks, config, workers)
    try:
        with tqdm(total=total, desc="ingest", unit="task", mininterval=0.5,
                  file=sys.stderr) as bar:
            for _task, outcomes in results:
                summary.inputs += 1
                for outcome in outcomes:
                    write_outcome(store, outcome, summary)
                bar.update(1)
                bar.set_postfix(added=summary.added, figs=summary.figures,
                                skipped=summary.skipped, refresh=False)
    finally:
        if workers <= 1 and "store" in _WORKER:
            _WORKER.pop("store").close()
    summary.elapsed_s += time.perf_counter() - start
    return summary


def ingest_paths(
    paths: Sequence[str | Path], settings: Settings, workers: int | None = None,
    limits: Limits | None = None, collection: str | None = None,
) -> IngestSummary:
    """Ingest local inputs: packages, article dirs, XML files, JSONL manifests, directories.

    ``collection`` names a figure collection that is not PMC (manifest rows without a PMCID).
    """
    start = time.perf_counter()
    store = FigureStore(settings.db_path)
    try:
        tasks, problems = collect_tasks(paths, collection)
        summary = IngestSummary()
        _record(store, problems, summary)
        run_tasks(tasks, settings, store, summary, workers, total=len(tasks), limits=limits)
        summary.elapsed_s = time.perf_counter() - start
        return summary
    finally:
        store.close()


# -- PMC OA file lists --------------------------------------------------------------------------
def _remove_retracted(
    store: FigureStore, entries: list[FileListEntry], summary: IngestSummary
) -> None:
    for entry in entries:
        if entry.retracted and entry.pmcid and store.article_state(entry.pmcid) is not None:
            store.remove_article(entry.pmcid)
            summary.removed += 1
            summary.removed_keys.append(entry.pmcid)


def _needs_download(store: FigureStore, entry: FileListEntry, summary: IngestSummary) -> bool:
    """False when the stored article already has this entry's LastUpdated (cheap skip)."""
    if entry.pmcid and entry.last_updated:
        state = store.article_state(entry.pmcid)
        if state is not None and state[0] == entry.last_updated:
            summary.unchanged += 1
            return False
    return True


def _download_tasks(
    entries: list[FileListEntry], settings: Settings, base_url: str, store: FigureStore,
    summary: IngestSummary,
) -> Iterator[Task]:
    from indexer.remote import Downloader, DownloadError, resolve_url

    by_url: dict[str, FileListEntry] = {}
    for e in entries:
        try:
            by_url[resolve_url(e.path, base_url)] = e
        except DownloadError as exc:
            _record(store, [Problem(e.path, e.pmcid or e.path, str(exc), "download")], summary)
    downloader = Downloader(settings.data_dir / "downloads", settings.download_concurrency)
    for url, result in downloader.download_all(by_url):
        entry = by_url[url]
        if isinstance(result, Exception):
            _record(store, [Problem(url, entry.pmcid or url, str(result), "download")], summary)
            continue
        yield Task(str(result), last_updated=entry.last_updated, pmcid=entry.pmcid,
                   license=entry.license)


def ingest_file_list(
    file_list: str | Path, settings: Settings, base_url: str | None = None,
    since: date | None = None, limit: int | None = None, workers: int | None = None,
) -> IngestSummary:
    """Ingest the articles of a PMC OA file list (path or URL): download, parse, write.

    Retracted articles are removed; ``since`` keeps entries updated on or after that date;
    entries whose stored LastUpdated matches are skipped before downloading.
    """
    from indexer.remote import fetch_bytes

    start = time.perf_counter()
    entries = parse_file_list(fetch_bytes(str(file_list)))
    store = FigureStore(settings.db_path)
    try:
        summary = IngestSummary()
        _remove_retracted(store, entries, summary)
        wanted = updated_since([e for e in entries if not e.retracted], since)
        wanted = wanted[:limit] if limit is not None else wanted
        todo = [e for e in wanted if _needs_download(store, e, summary)]
        tasks = _download_tasks(todo, settings, base_url or settings.pmc_base_url, store,
                                summary)
        run_tasks(tasks, settings, store, summary, workers, total=len(todo))
        summary.elapsed_s = time.perf_counter() - start
        return summary
    finally:
        store.close()


# -- CLI ----------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``figsearch ingest PATH|s3://BUCKET|pmc:PMCID... [--pmcids FILE] [--file-list ...] ...``."""
    from indexer.pmc_cloud import add_arguments as add_cloud_arguments

    parser.add_argument("paths", nargs="*", metavar="PATH",
                        help="packages (.tar.gz, .zip, MECA), article directories, .nxml/.xml "
                             "files, .jsonl figure manifests, or directories holding them; "
                             "s3://pmc-oa-opendata (PMC Cloud: what its newest inventory "
                             "changed) or pmc:PMCID (named articles from PMC Cloud)")
    parser.add_argument("--pmcids", metavar="FILE",
                        help="a file of PMCIDs (one a line) to fetch from PMC Cloud")
    add_cloud_arguments(parser)
    parser.add_argument("--file-list", metavar="PATH_OR_URL",
                        help="legacy: a PMC OA file list (csv, txt or oa.fcgi XML) served by a "
                             "local mirror (PMC removed its FTP packages in 2026)")
    parser.add_argument("--base-url", help="legacy: mirror base URL for relative file-list "
                                           "paths (default: $FIGSEARCH_PMC_BASE_URL)")
    parser.add_argument("--since", type=date.fromisoformat, metavar="YYYY-MM-DD",
                        help="only file-list entries updated on or after this date")
    parser.add_argument("--limit", type=int, help="at most N file-list entries")
    parser.add_argument("--workers", type=int,
                        help="parser processes (default: $FIGSEARCH_INGEST_WORKERS)")
    parser.add_argument("--collection", metavar="NAME",
                        help="name of a figure collection that is not PMC: manifest rows "
                             "without a pmcid (and without their own \"collection\" field) "
                             "belong to it, with ids and links from their id/doi/url fields")


def command(args: argparse.Namespace) -> int:
    """Run the ingest; 0 when it ran (even with skipped inputs), 1 when nothing was read."""
    import httpx
    import sqlalchemy.exc

    from indexer.pmc_cloud import is_cloud_source

    settings: Settings = args.settings
    cloud = [p for p in args.paths if is_cloud_source(p)]
    args.paths = [p for p in args.paths if not is_cloud_source(p)]
    if not args.paths and not args.file_list and not cloud and not args.pmcids:
        print("figsearch ingest: give PATH(s), s3://BUCKET, pmc:PMCID, --pmcids and/or "
              "--file-list", file=sys.stderr)
        return 2
    if (args.since or args.limit is not None or args.base_url) and not args.file_list:
        print("figsearch ingest: --since/--limit/--base-url need --file-list", file=sys.stderr)
        return 2
    if args.collection:
        try:
            args.collection = collection_name(args.collection)
        except ValueError as exc:
            print(f"figsearch ingest: --collection: {exc}", file=sys.stderr)
            return 2
    missing = [p for p in args.paths if not os.path.exists(p)]
    if missing:
        print(f"figsearch ingest: no such file or directory: {', '.join(missing)}",
              file=sys.stderr)
        return 2
    summaries = []
    if args.paths:
        try:
            summaries.append(ingest_paths(args.paths, settings, args.workers,
                                          collection=args.collection))
        except (OSError, sqlalchemy.exc.OperationalError) as exc:
            # A full disk or unwritable data dir: every article written so far is whole
            # (one transaction each), so say what happened and how to resume.
            print(f"figsearch ingest: stopped: {exc}. Articles stored so far are complete; "
                  "free space or fix the data directory and rerun to resume.", file=sys.stderr)
            return 1
    if args.file_list:
        try:
            summaries.append(ingest_file_list(args.file_list, settings, args.base_url,
                                              args.since, args.limit, args.workers))
        except (FileListError, OSError, httpx.HTTPError) as exc:
            print(f"figsearch ingest: cannot read file list {args.file_list}: {exc}",
                  file=sys.stderr)
            return 1
    lines: list[str] = []
    if cloud or args.pmcids:
        status = _ingest_cloud(args, settings, cloud, summaries, lines)
        if status:
            return status
    for summary in summaries:
        for item, reason in summary.skipped_items[:MAX_PRINTED_SKIPS]:
            print(f"skipped {item}: {reason}", file=sys.stderr)
        if len(summary.skipped_items) > MAX_PRINTED_SKIPS:
            print(f"... and {len(summary.skipped_items) - MAX_PRINTED_SKIPS} more skipped "
                  "(all are in the store's ingest_errors table)", file=sys.stderr)
        print(summary.line())
    for line in lines:
        print(line)
    return 0 if any(s.read_anything for s in summaries) or lines else 1


def _ingest_cloud(args: argparse.Namespace, settings: Settings, cloud: list[str],
                  summaries: list[IngestSummary], lines: list[str]) -> int:
    """The PMC Cloud part of ``figsearch ingest``; non-zero when the bucket is unusable."""
    from indexer.pmc_cloud import (
        CloudError,
        Transient,
        ingest_sources,
        read_pmcid_file,
        settings_from_args,
    )

    try:
        sources = cloud + [f"pmc:{p}" for p in (read_pmcid_file(args.pmcids)
                                                  if args.pmcids else [])]
        cloud_settings = settings_from_args(settings, args)
        reports = ingest_sources(cloud_settings, sources, args.workers)
    except (CloudError, Transient, ValueError, OSError) as exc:
        print(f"figsearch ingest: PMC Cloud: {exc}", file=sys.stderr)
        return 1
    for report in reports:
        summaries.append(report.ingest)
        lines.append(report.cloud.line())
    return 0
