"""Where a source goes (:func:`route_sources`), and the sources that are not JATS packages:
JSONL figure manifests and PMC OA file lists.

``figsearch ingest`` and ``figsearch rebuild`` route their sources with the same rule:
``s3://BUCKET`` and ``pmc:PMCID`` are PMC Cloud, a URL or ``.csv`` / ``.txt`` file or an
``oa.fcgi`` XML response is a legacy PMC OA file list, anything else a local path.

A figure manifest (the format of ``shared/data/pmc-figures/figures.jsonl``) has one figure a
line; its figures are grouped into one article per ``pmcid`` — or, for a collection other
than PMC (``--collection NAME`` or a ``collection`` field), per ``article_id`` / ``doi`` /
``id``. A PMC OA file list (legacy ``oa_file_list.csv`` / ``.txt``, the bulk list with its
``Retracted`` column, or an ``oa.fcgi`` response) becomes :class:`FileListEntry` rows that
:mod:`indexer.remote` downloads.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from figsearch.links import is_web_url
from indexer.jats import JatsError, normalise_pmcid, parse_xml

#: Manifest fields that name and link a figure outside PMC (see docs/ingest.md).
COLLECTION_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
PMC_COLLECTION = "pmc"


FILE_LIST_SUFFIXES = (".csv", ".txt")


class FileListError(ValueError):
    """A file list that cannot be read; the message says why."""


# -- routing ---------------------------------------------------------------------------------
def is_cloud_source(source: str) -> bool:
    """``s3://bucket`` and ``pmc:PMC123`` name the PMC Cloud source."""
    return source.startswith("s3://") or source.lower().startswith("pmc:")


def is_url(source: str) -> bool:
    """An http(s) URL (a remote file list), not a local path."""
    return urlsplit(source).scheme in ("http", "https")


def is_file_list(source: str) -> bool:
    """URLs and .csv/.txt files are OA file lists; so is XML that is an oa.fcgi response."""
    if is_url(source):
        return True
    path = Path(source)
    if path.suffix.lower() in FILE_LIST_SUFFIXES:
        return True
    if path.suffix.lower() == ".xml" and path.is_file():
        with open(path, "rb") as fh:
            return b"<OA" in fh.read(512)
    return False


@dataclass
class SourceRoute:
    """Sources sorted by the reader that takes them, each list in the order given."""

    cloud: list[str] = field(default_factory=list)  # s3://BUCKET, pmc:PMCID
    file_lists: list[str] = field(default_factory=list)  # legacy PMC OA file lists
    paths: list[str] = field(default_factory=list)  # packages, directories, XML, manifests

    def __bool__(self) -> bool:
        return bool(self.cloud or self.file_lists or self.paths)


def route_sources(sources: Iterable[str]) -> SourceRoute:
    """The one routing rule of ``ingest`` and ``rebuild``: cloud, file list, else a path."""
    route = SourceRoute()
    for source in sources:
        if is_cloud_source(source):
            route.cloud.append(source)
        elif is_file_list(source):
            route.file_lists.append(source)
        else:
            route.paths.append(source)
    return route


# -- JSONL figure manifests ----------------------------------------------------------------
@dataclass
class ManifestGroup:
    """The manifest rows of one article, in file order.

    ``key`` is the article's key in the store: its PMCID for PMC figures, else
    ``<collection>:<article id>`` (``article_id``, else ``doi``, else the figure's ``id``, else
    its image path).
    """

    manifest: str  # path of the .jsonl file
    key: str
    collection: str = PMC_COLLECTION
    pmcid: str | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)


def collection_name(value: str) -> str:
    """A collection's name, lower-cased; ValueError when it is not a usable name."""
    name = str(value).strip().lower()
    if not COLLECTION_NAME.match(name):
        raise ValueError(f"collection {value!r} is not a name (letters, digits, '.', '_', '-'; "
                         "at most 64 characters)")
    return name


def _collection(row: dict[str, Any], default: str | None, pmcid: str | None) -> str:
    name = str(row.get("collection") or (PMC_COLLECTION if pmcid else default) or "").strip()
    if not name:
        raise ValueError("no pmcid and no collection: name the figures' collection with "
                         "`figsearch ingest --collection NAME` or a \"collection\" field")
    name = collection_name(name)
    if name == PMC_COLLECTION and not pmcid:
        raise ValueError("collection pmc needs a pmcid; give your own collection a name")
    return name


def _article_ident(row: dict[str, Any], collection: str, pmcid: str | None) -> str:
    if collection == PMC_COLLECTION:
        return pmcid or ""
    for name in ("article_id", "doi", "id", "image"):
        value = str(row.get(name) or "").strip()
        if value:
            return f"{collection}:{value}"
    raise ValueError("no article_id, doi, id or image to identify the figure's article")


def _manifest_row(
    line: str, lineno: int, collection: str | None = None
) -> tuple[dict[str, Any], str, str | None, str]:
    """(row, collection, pmcid, article key) of one manifest line; ValueError says what is wrong."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"line {lineno}: not JSON ({exc.msg})") from exc
    if not isinstance(row, dict):
        raise ValueError(f"line {lineno}: not a JSON object")
    if not row.get("caption"):
        raise ValueError(f"line {lineno}: missing caption")
    pmcid = None
    if row.get("pmcid"):
        pmcid = normalise_pmcid(str(row["pmcid"]))
        if not pmcid:
            raise ValueError(f"line {lineno}: bad pmcid {row.get('pmcid')!r}")
    for name in ("url", "article_url"):
        if row.get(name) and not is_web_url(row[name]):
            raise ValueError(f"line {lineno}: {name} {str(row[name])[:100]!r} is not an "
                             "http(s) URL")
    try:
        name = _collection(row, collection, pmcid)
        return row, name, pmcid, _article_ident(row, name, pmcid)
    except ValueError as exc:
        raise ValueError(f"line {lineno}: {exc}") from None


def _looks_like_manifest(first_line: str) -> bool:
    try:
        row = json.loads(first_line)
    except json.JSONDecodeError:
        return True  # a broken first line is reported as such, line by line
    return not isinstance(row, dict) or "pmcid" in row or "caption" in row


def is_figure_manifest(path: Path) -> bool:
    """Whether a JSONL file's first non-empty line looks like a figure manifest row."""
    with path.open("r", encoding="utf-8", errors="replace") as fh:
        first = next((line for line in fh if line.strip()), "")
    return bool(first) and _looks_like_manifest(first)


def read_manifest(
    path: Path, collection: str | None = None
) -> tuple[list[ManifestGroup], list[tuple[str, str]]]:
    """Rows grouped by article, plus ``(item, reason)`` for every line that was skipped.

    ``collection`` names the collection of rows without a ``collection`` field; rows with a
    PMCID and no name belong to ``pmc``.
    """
    groups: dict[str, ManifestGroup] = {}
    problems: list[tuple[str, str]] = []
    with path.open("r", encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            if not groups and not problems and not _looks_like_manifest(line):
                return [], [(path.name, "not a figure manifest (first row has no pmcid and no "
                                        "caption); file skipped")]
            try:
                row, name, pmcid, key = _manifest_row(line, lineno, collection)
            except ValueError as exc:
                problems.append((f"{path.name}:{lineno}", str(exc)))
                continue
            group = groups.setdefault(key, ManifestGroup(str(path), key, name, pmcid))
            group.rows.append(row)
    return list(groups.values()), problems


def manifest_fig_id(row: dict[str, Any], n: int) -> str:
    """A figure id stable across runs: the row's ``id``, the PMC figure link's last part, the
    figure number, else its position."""
    own = re.sub(r"[^A-Za-z0-9._-]+", "-", str(row.get("id") or "")).strip("-")
    if own:
        return own[:200]
    link = str(row.get("pmc_figure_link") or "").rstrip("/")
    if "/figure/" in link:
        return link.rsplit("/", 1)[-1]
    label = re.sub(r"[^A-Za-z0-9]+", "-", str(row.get("figure_number") or "")).strip("-")
    return label or f"fig{n}"


def manifest_year(value: Any) -> int | None:
    """An int year from the manifest's ``year`` (int or string), else None."""
    m = re.search(r"\d{4}", str(value or ""))
    return int(m.group(0)) if m else None


# -- PMC OA file lists ---------------------------------------------------------------------
@dataclass
class FileListEntry:
    """One article of a PMC OA file list."""

    path: str  # relative to the base URL (or absolute URL)
    pmcid: str | None
    pmid: str | None = None
    last_updated: str | None = None
    license: str = ""
    citation: str = ""
    retracted: bool = False

    @property
    def key(self) -> str | None:
        return self.pmcid


def _clean_pmid(value: str | None) -> str | None:
    value = (value or "").strip()
    if value.upper().startswith("PMID:"):
        value = value[5:].strip()
    return value or None


def _column(row: dict[str, str], *prefixes: str) -> str:
    for name, value in row.items():
        if name and any(name.strip().lower().startswith(p) for p in prefixes):
            return (value or "").strip()
    return ""


def _parse_csv(text: str) -> list[FileListEntry]:
    entries = []
    for row in csv.DictReader(io.StringIO(text)):
        path = _column(row, "article file", "file")
        if not path:
            continue
        entries.append(FileListEntry(
            path=path,
            pmcid=normalise_pmcid(_column(row, "accession", "accessionid")),
            pmid=_clean_pmid(_column(row, "pmid")),
            last_updated=_column(row, "last updated", "lastupdated") or None,
            license=_column(row, "license"),
            citation=_column(row, "article citation"),
            retracted=_column(row, "retracted").lower() in ("yes", "y", "true", "1"),
        ))
    return entries


def _parse_txt(text: str) -> list[FileListEntry]:
    lines = text.splitlines()
    entries = []
    for line in lines[1:]:  # the first line is the list's own timestamp
        cols = line.split("\t")
        if len(cols) < 3 or not cols[0].strip():
            continue
        cols += [""] * (5 - len(cols))
        entries.append(FileListEntry(
            path=cols[0].strip(), pmcid=normalise_pmcid(cols[2]), pmid=_clean_pmid(cols[3]),
            license=cols[4].strip(), citation=cols[1].strip(),
        ))
    return entries


def _parse_fcgi(data: bytes) -> list[FileListEntry]:
    try:
        root = parse_xml(data)
    except JatsError as exc:
        raise FileListError(f"oa.fcgi response: {exc}") from exc
    entries = []
    for rec in root.iter("{*}record"):
        links = {ln.get("format"): ln for ln in rec.iter("{*}link")}
        link = links["tgz"] if "tgz" in links else next(iter(links.values()), None)
        if link is None or not link.get("href"):
            continue
        entries.append(FileListEntry(
            path=link.get("href") or "", pmcid=normalise_pmcid(rec.get("id")),
            last_updated=link.get("updated"), license=rec.get("license") or "",
            citation=rec.get("citation") or "",
            retracted=(rec.get("retracted") or "").lower() == "yes",
        ))
    return entries


def parse_file_list(data: bytes) -> list[FileListEntry]:
    """Entries of any PMC OA file-list format (detected from the content)."""
    text = data.decode("utf-8", errors="replace").lstrip("\ufeff")
    head = text.lstrip()[:200]
    if head.startswith("<"):
        return _parse_fcgi(text.encode("utf-8"))
    first = text.splitlines()[0] if text else ""
    if "," in first and ("file" in first.lower()):
        return _parse_csv(text)
    if re.match(r"\d{4}-\d{2}-\d{2}", first.strip()) or "\t" in text:
        return _parse_txt(text)
    raise FileListError("not a PMC OA file list (expected csv, tab-separated txt or oa.fcgi XML)")


def updated_since(entries: Iterable[FileListEntry], since: date | None) -> list[FileListEntry]:
    """Entries whose LastUpdated is on or after ``since`` (entries without a date are kept)."""
    if since is None:
        return list(entries)
    cutoff = since.isoformat()
    return [e for e in entries if not e.last_updated or e.last_updated[:10] >= cutoff]
