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
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from tqdm import tqdm

from figsearch.core.config import Settings
from figsearch.licenses import normalise_license
from figsearch.records import ArticleRecord, FigureRecord
from figsearch.rights import third_party_statement
from figsearch.store import FigureStore
from indexer.readers import (
    XML_EXTENSIONS,
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
    SourceRoute,
    collection_name,
    is_cloud_source,
    is_figure_manifest,
    is_url,
    manifest_fig_id,
    manifest_year,
    parse_file_list,
    read_manifest,
    route_sources,
    updated_since,
)
from indexer.workers import (
    IngestSummary,
    Outcome,
    Problem,
    Task,
    WorkerConfig,
    content_hash,
    is_unchanged,
    keep_figure_image,
    process_unit,
    record_problems,
    task_results,
    worker_config,
    write_outcome,
)

MANIFEST_SUFFIXES = (".jsonl", ".ndjson")
MAX_PRINTED_SKIPS = 20


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
    if is_unchanged(group.key, task.last_updated, digest):
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
            keep_figure_image(fig, data, item, problems, group.manifest)
        figures.append(fig)
    return Outcome("parsed", group.key, article, figures, problems)


def process_task(task: Task) -> list[Outcome]:
    """Run one task in a worker; every failure becomes an Outcome with its reason."""
    if task.group is not None:
        return [process_manifest_group(task)]
    cfg = worker_config()
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


def run_tasks(
    tasks: Iterable[Task], settings: Settings, store: FigureStore, summary: IngestSummary,
    workers: int | None = None, total: int | None = None, limits: Limits | None = None,
) -> IngestSummary:
    """Process tasks (inline when ``workers`` <= 1) and write every outcome from here."""
    workers = settings.ingest_workers if workers is None else workers
    config = WorkerConfig.from_settings(settings, limits)
    start = time.perf_counter()
    results = task_results(tasks, config, workers, process_task)
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
        results.close()  # releases the inline worker's store even when a write failed
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
        record_problems(store, problems, summary)
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
            record_problems(store, [Problem(e.path, e.pmcid or e.path, str(exc), "download")], summary)
    downloader = Downloader(settings.data_dir / "downloads", settings.download_concurrency)
    for url, result in downloader.download_all(by_url):
        entry = by_url[url]
        if isinstance(result, Exception):
            record_problems(store, [Problem(url, entry.pmcid or url, str(result), "download")], summary)
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


@dataclass
class SourceOptions:
    """How ``ingest_route`` reads its sources; None means the setting's default."""

    workers: int | None = None
    collection: str | None = None  # names manifest rows / articles without a PMCID
    since: date | None = None  # file lists: entries updated on or after this date
    limit: int | None = None  # file lists: at most this many entries
    base_url: str | None = None  # file lists: mirror base URL for relative paths
    progress: bool = True  # PMC Cloud progress bar


@dataclass
class SourceResult:
    """What one reader made of its sources; ``note`` is the PMC Cloud run's own line."""

    kind: str  # "paths" | "file-list" | "cloud"
    summary: IngestSummary
    note: str = ""

    def lines(self) -> list[str]:
        """The summary lines printed for this reader."""
        return [self.summary.line()] + ([self.note] if self.note else [])


class SourceError(RuntimeError):
    """A source could not be read at all; the message says which and how to go on."""


def ingest_route(settings: Settings, route: SourceRoute,
                 options: SourceOptions | None = None) -> list[SourceResult]:
    """Ingest routed sources (local paths, then file lists, then PMC Cloud): the one ingest
    step of ``figsearch ingest`` and ``figsearch rebuild``. Raises :class:`SourceError`
    when a source stops the run (full disk, unreadable file list, unusable bucket)."""
    import httpx
    import sqlalchemy.exc

    from indexer.pmc_cloud import CloudError, Transient, ingest_cloud_sources

    opts = options or SourceOptions()
    results = []
    if route.paths:
        try:
            summary = ingest_paths(route.paths, settings, opts.workers,
                                   collection=opts.collection)
        except (OSError, sqlalchemy.exc.OperationalError) as exc:
            # A full disk or unwritable data dir: every article written so far is whole
            # (one transaction each), so say what happened and how to resume.
            raise SourceError(f"stopped: {exc}. Articles stored so far are complete; free space "
                              "or fix the data directory and rerun to resume.") from exc
        results.append(SourceResult("paths", summary))
    for file_list in route.file_lists:
        try:
            summary = ingest_file_list(file_list, settings, opts.base_url, opts.since,
                                       opts.limit, opts.workers)
        except (FileListError, OSError, httpx.HTTPError) as exc:
            raise SourceError(f"cannot read file list {file_list}: {exc}") from exc
        results.append(SourceResult("file-list", summary))
    if route.cloud:
        try:
            reports = ingest_cloud_sources(settings, route.cloud, opts.workers, opts.progress)
        except (CloudError, Transient, ValueError, OSError) as exc:
            raise SourceError(f"PMC Cloud: {exc}") from exc
        results += [SourceResult("cloud", r.ingest, r.cloud.line()) for r in reports]
    return results


def _route_of(args: argparse.Namespace, pmcids: list[str]) -> SourceRoute | str:
    """The sources of ``figsearch ingest``'s arguments, or the usage error to print."""
    route = route_sources(args.paths + [f"pmc:{p}" for p in pmcids])
    if args.file_list:
        route.file_lists.append(args.file_list)
    if not route and not args.pmcids:
        return "give PATH(s), s3://BUCKET, pmc:PMCID, --pmcids and/or --file-list"
    if (args.since or args.limit is not None or args.base_url) and not route.file_lists:
        return "--since/--limit/--base-url need --file-list"
    local = [p for p in args.paths if not is_cloud_source(p) and not is_url(p)]
    missing = [p for p in local if not os.path.exists(p)]
    if missing:
        return f"no such file or directory: {', '.join(missing)}"
    return route


def command(args: argparse.Namespace) -> int:
    """Run the ingest; 0 when it ran (even with skipped inputs), 1 when nothing was read."""
    from indexer.pmc_cloud import read_pmcid_file, settings_from_args

    try:
        pmcids = read_pmcid_file(args.pmcids) if args.pmcids else []
    except OSError as exc:
        print(f"figsearch ingest: PMC Cloud: {exc}", file=sys.stderr)
        return 1
    route = _route_of(args, pmcids)
    if isinstance(route, str):
        print(f"figsearch ingest: {route}", file=sys.stderr)
        return 2
    options = SourceOptions(args.workers, None, args.since, args.limit, args.base_url)
    if args.collection:
        try:
            options.collection = collection_name(args.collection)
        except ValueError as exc:
            print(f"figsearch ingest: --collection: {exc}", file=sys.stderr)
            return 2
    try:
        results = ingest_route(settings_from_args(args.settings, args), route, options)
    except SourceError as exc:
        print(f"figsearch ingest: {exc}", file=sys.stderr)
        return 1
    for result in results:
        _print_skips(result.summary)
        print(result.summary.line())
    for result in results:
        if result.note:
            print(result.note)
    read = any(r.summary.read_anything or r.kind == "cloud" for r in results)
    return 0 if read else 1


def _print_skips(summary: IngestSummary) -> None:
    """The first skipped inputs with their reasons (all are in ``ingest_errors``)."""
    for item, reason in summary.skipped_items[:MAX_PRINTED_SKIPS]:
        print(f"skipped {item}: {reason}", file=sys.stderr)
    if len(summary.skipped_items) > MAX_PRINTED_SKIPS:
        print(f"... and {len(summary.skipped_items) - MAX_PRINTED_SKIPS} more skipped "
              "(all are in the store's ingest_errors table)", file=sys.stderr)
