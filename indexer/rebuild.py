"""``figsearch rebuild``: the nightly job — ingest, embed what changed, build, validate, swap.

1. Ingest every ``--source`` (default: the PMC Cloud bucket, ``s3://$FIGSEARCH_PMC_BUCKET``):
   routed by :func:`indexer.sources.route_sources` and read by
   :func:`indexer.ingest.ingest_route`, as ``figsearch ingest`` does: ``s3://`` and ``pmc:``
   sources from PMC Cloud (the versions whose inventory ETag changed, appeared or disappeared
   since the store last saw them: no date needed), legacy PMC OA file lists (csv / txt /
   oa.fcgi XML from a mirror), anything else (packages, directories, manifests) as paths.
2. Embed: images unchanged since the current version (same sha256, same model) reuse its
   vectors, so only new or changed images are encoded.
3. Build a new index version *without* activating it; its figure types live in the version
   directory, so nothing users see changes before the swap. A small change (under 20 % of the
   rows since the index was last trained, same model and factory family) is applied to the
   current version's trained indexes instead of training new ones (:mod:`indexer.delta`);
   ``--full`` always trains.
4. Validate it: the count equals the store's indexable figures minus unreadable ones, and a
   sample of self-queries returns each figure top-1.
5. Switch ``indexes/current``. Any failure exits non-zero with ``current`` untouched.

The whole run holds ``indexes/.lock``. A cron line and systemd units are in docs/indexing.md.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from figsearch.core.config import Settings
from figsearch.datadir import index_model_spec, resolve_path
from figsearch.faults import build_hook, maybe_crash
from figsearch.index import SearchIndex, current_version_dir, read_manifest
from figsearch.store import FigureStore
from indexer.build import BuildLockedError, StageHook, activate_version, index_lock
from indexer.indexing import build_from_store, discard_work, indexable_count, load_encoder
from indexer.sources import route_sources

SELF_QUERY_SAMPLE = 200


class ValidationError(RuntimeError):
    """A freshly built version failed its checks; it was not activated."""


@dataclass
class RebuildReport:
    """Outcome of one nightly rebuild."""

    ingest_lines: list[str] = field(default_factory=list)
    version: str = ""
    previous: str = ""
    count: int = 0
    previous_count: int = 0
    elapsed_s: float = 0.0

    def line(self) -> str:
        return (
            f"rebuild: version {self.version} active with {self.count} figures "
            f"(was {self.previous or 'none'} with {self.previous_count}; "
            f"{self.count - self.previous_count:+d}); {self.elapsed_s:.1f} s"
        )


def ingest_for_rebuild(settings: Settings, sources: list[str], since: date | None,
                       progress: bool = True) -> list[str]:
    """Ingest every source (routed as ``figsearch ingest`` routes them); returns the summary
    lines. RuntimeError when local paths were given and nothing in them was readable."""
    from indexer.ingest import SourceOptions, ingest_route

    route = route_sources(sources)
    results = ingest_route(settings, route, SourceOptions(since=since, progress=progress))
    lines = []
    for result in results:
        summary = result.summary
        if result.kind == "paths" and not summary.read_anything and summary.skipped:
            raise RuntimeError(f"nothing readable in {route.paths}: {summary.line()}")
        lines += result.lines()
    return lines


def validate_version(version_dir: Path, store: FigureStore, model_key: str,
                     sample: int = SELF_QUERY_SAMPLE, min_self_hit: float = 0.98) -> SearchIndex:
    """Raise :class:`ValidationError` unless the version is complete and finds itself."""
    index = SearchIndex.load(version_dir, full_hash=True)
    index.check_model(model_key, index.dim)
    manifest = read_manifest(version_dir)
    expected = indexable_count(store) - int(manifest.get("unreadable", 0))
    if index.ntotal != expected:
        raise ValidationError(
            f"version {version_dir.name} holds {index.ntotal} figures, the store has {expected} "
            "indexable ones (figures with images of live articles minus unreadable)"
        )
    rng = np.random.default_rng(0)
    ids = rng.choice(index.ids, size=min(sample, index.ntotal), replace=False)
    vectors = index.vectors_for(ids)
    scores, got = index.search(vectors, 1)
    self_scores = np.einsum("ij,ij->i", vectors, vectors)
    # an identical image elsewhere (same vector) ties with the figure itself: that is a hit too
    hits = (got[:, 0] == ids) | (scores[:, 0] >= self_scores - 1e-3)
    if hits.mean() < min_self_hit:
        raise ValidationError(
            f"version {version_dir.name}: only {hits.mean():.1%} of {len(ids)} self-queries "
            f"returned the figure itself top-1 (need {min_self_hit:.0%})"
        )
    return index


def _model_for_rebuild(settings: Settings, model_spec: str | None) -> str | None:
    """Explicit spec, else the current index's model (nightly runs keep the model), else None."""
    if model_spec or settings.model:
        return model_spec or resolve_path(settings.model, settings.data_dir)
    return index_model_spec(settings.data_dir, settings.indexes_dir)


def rebuild(settings: Settings, sources: list[str] | None = None, model_spec: str | None = None,
            since: date | None = None, *, encoder: Any = None, factory: str | None = None,
            hook: StageHook | None = None, progress: bool = True,
            full: bool = False) -> RebuildReport:
    """Ingest ``sources``, build a new version, validate it and only then activate it.

    ``sources`` defaults to the PMC Cloud bucket (``s3://`` + ``settings.pmc_bucket``). A small
    change to a current version of the same model is applied to its trained indexes
    (:mod:`indexer.delta`) unless ``full``: then the index is trained and filled anew.
    """
    start = time.perf_counter()
    sources = sources or [f"s3://{settings.pmc_bucket}"]
    report = RebuildReport()
    with index_lock(settings.indexes_dir):
        previous = current_version_dir(settings.indexes_dir)
        if previous is not None:
            report.previous = previous.name
            report.previous_count = int(read_manifest(previous)["count"])
        report.ingest_lines = ingest_for_rebuild(settings, sources, since, progress)
        maybe_crash("ingest-done")  # test-only fault injection (FIGSEARCH_FAULT_AT)
        if encoder is None:
            spec, encoder = load_encoder(settings, _model_for_rebuild(settings, model_spec))
        else:
            spec = model_spec or encoder.spec
        store = FigureStore(settings.db_path, create=False)
        try:
            built = build_from_store(settings, store, spec, encoder, factory=factory,
                                     activate=False, hook=hook, progress=progress,
                                     delta=not full)
            assert built is not None  # rebuild runs single-process
            try:
                validate_version(built.version_dir, store, encoder.model_key)
            except Exception:
                shutil.rmtree(built.version_dir, ignore_errors=True)
                raise
        finally:
            store.close()
        activate_version(settings.indexes_dir, built.version_dir, settings.index_keep_versions, hook)
        discard_work(settings, encoder.model_key)
    report.version, report.count = built.version_dir.name, built.count
    report.elapsed_s = time.perf_counter() - start
    return report


# -- CLI ----------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``figsearch rebuild [--source S3_PATH_OR_FILE_LIST...] [--model SPEC] [--since DATE]``."""
    from indexer.pmc_cloud import add_arguments as add_cloud_arguments

    parser.add_argument("--source", action="append", metavar="SOURCE",
                        help="s3://BUCKET (PMC Cloud, the default: s3://$FIGSEARCH_PMC_BUCKET), "
                             "pmc:PMCID, package, directory, manifest, or a legacy PMC OA file "
                             "list (path or URL); repeatable")
    add_cloud_arguments(parser)
    parser.add_argument("--model", help="model spec (default: the current index's model)")
    parser.add_argument("--since", type=date.fromisoformat, metavar="YYYY-MM-DD",
                        help="legacy file lists only: entries updated on or after this date "
                             "(PMC Cloud sources need no date)")
    parser.add_argument("--factory", help="faiss factory string (default: the size/memory rule)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--full", action="store_true",
                        help="train a new index from every vector instead of applying a small "
                             "change to the current version's indexes (a delta)")


def command(args: argparse.Namespace) -> int:
    """Run the nightly rebuild; non-zero (with the reason) on any failure."""
    from figsearch.encoders import ModelLoadError
    from figsearch.index import IndexLoadError
    from indexer.pmc_cloud import CloudError, Transient, settings_from_args

    settings: Settings = settings_from_args(args.settings, args)
    try:
        report = rebuild(settings, args.source, args.model, args.since, factory=args.factory,
                         progress=not args.no_progress, hook=build_hook,
                         full=getattr(args, "full", False))
    except (BuildLockedError, ModelLoadError, IndexLoadError, RuntimeError, ValueError,
            OSError, CloudError, Transient) as exc:
        print(f"figsearch rebuild failed, index unchanged: {exc}", file=sys.stderr)
        return 1
    for line in report.ingest_lines:
        print(line)
    print(report.line())
    return 0
