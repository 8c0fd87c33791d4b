"""PMC Cloud Service source: ingest from the public S3 bucket ``pmc-oa-opendata``.

PMC distributes its open-access articles as one S3 prefix per article version
(``PMC<id>.<version>/``, every file its own object) plus a JSON metadata object per version
(``metadata/PMC<id>.<version>.json``, md5 of every object in its URLs) and a daily S3
Inventory of ``metadata/``. This module reads that layout anonymously with boto3 (unsigned
requests), so the same code reads AWS or any S3 API server (``--endpoint-url``).

Two ways in:

- ``s3://<bucket>``: the newest inventory is loaded into a small SQLite staging file and
  compared with the store's ``pmc_versions`` table (the ETag each version had when it was last
  processed). Exactly the articles with a version whose ETag changed, appeared or disappeared
  are processed, so a nightly run needs no date and a skipped night is covered by the next.
- ``pmc:PMC123``: named articles; their versions and ETags come from ListObjectsV2 on
  ``metadata/PMC123.``.

Per article the newest version that passes the :class:`Policy` is used (older ones are
``superseded``); ``is_retracted`` removes the article. Its XML is fetched and parsed, then only
the media objects that its figures' ``xlink:href`` values name (extension optional, image files
only: never supplements or PDFs), every object md5-checked; the parse/normalise/store step is
:func:`indexer.workers.process_unit`, as for packages. Downloads sit in a per-version folder of
``<data_dir>/pmc-cloud/cache`` only until their article is written (a bounded number in
flight). The version rows are written after their article, so a killed run redoes at most the
articles in flight and a rerun converges to the same store.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import json
import posixpath
import re
import shutil
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from sqlalchemy import select
from tqdm import tqdm

from figsearch.core.config import Settings
from figsearch.faults import maybe_crash
from figsearch.licenses import COMMERCIAL_CLASSES, LICENSE_CLASSES, normalise_license
from figsearch.store import FigureStore, PmcVersion
from indexer.jats import JatsError, normalise_pmcid, parse_article, resolve_graphic
from indexer.readers import ArticleUnit, InputError
from indexer.sources import is_cloud_source
from indexer.workers import (
    IngestSummary,
    Outcome,
    Problem,
    Task,
    WorkerConfig,
    process_unit,
    task_results,
    write_outcome,
)

DEFAULT_BUCKET = "pmc-oa-opendata"
#: Where the bucket's daily inventory of ``metadata/`` lives (the same path in a mirror).
INVENTORY_PREFIX = "inventory-reports/pmc-oa-opendata/metadata/"
_INVENTORY_DAY = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}-\d{2}Z")
_METADATA_KEY = re.compile(r"metadata/(PMC\d+)\.(\d+)\.json")
_MD5 = re.compile(r"[0-9a-f]{32}")
META_LAST_INVENTORY = "pmc_last_inventory"
META_POLICY = "pmc_policy"


class CloudError(RuntimeError):
    """The bucket or its inventory cannot be used at all; the message says why."""


class Refused(ValueError):
    """An object that will not be used as it is (bad JSON, bad key, md5, size); says why."""


class Transient(RuntimeError):
    """A request that failed after botocore's retries (network, 5xx): retried next run."""


# -- policy -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Policy:
    """Which article versions are ingested.

    Defaults: every license, author manuscripts on (PMC releases them for text mining, license
    code ``TDM``), scanned historical articles off (OCR text, page scans rather than figures).
    """

    licenses: frozenset[str] | None = None  # license classes kept; None = all
    author_manuscripts: bool = True
    historical_ocr: bool = False

    @staticmethod
    def parse_licenses(spec: str) -> frozenset[str] | None:
        """``any`` -> None, ``commercial`` -> the commercial classes, else a comma list."""
        spec = spec.strip().lower()
        if spec in ("", "any", "all"):
            return None
        if spec == "commercial":
            return COMMERCIAL_CLASSES
        classes = frozenset(c.strip() for c in spec.split(",") if c.strip())
        unknown = sorted(classes - set(LICENSE_CLASSES))
        if unknown:
            raise ValueError(f"unknown license class(es) {', '.join(unknown)}; use any, "
                             f"commercial or some of {', '.join(LICENSE_CLASSES)}")
        return classes

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        return cls(cls.parse_licenses(settings.pmc_license), settings.pmc_author_manuscripts,
                   settings.pmc_historical_ocr)

    def fingerprint(self) -> str:
        lic = ",".join(sorted(self.licenses)) if self.licenses is not None else "any"
        return f"licenses={lic};manuscripts={self.author_manuscripts};ocr={self.historical_ocr}"

    def refuse_reason(self, meta: VersionMeta) -> str | None:
        """Why the policy skips this version, or None to ingest it."""
        if not meta.is_open_access:
            return "not in the open-access subset (is_pmc_openaccess false)"
        if meta.is_manuscript and not self.author_manuscripts:
            return "author manuscript (excluded by policy: --no-author-manuscripts)"
        if meta.is_historical_ocr and not self.historical_ocr:
            return "historical OCR scan (excluded by policy: --historical-ocr to include)"
        if self.licenses is not None and meta.license_class not in self.licenses:
            return (f"license {meta.license_code or '(none)'} ({meta.license_class}) not in "
                    f"the policy's classes {','.join(sorted(self.licenses))}")
        return None


# -- metadata JSON ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ObjectRef:
    """One object named by a version's JSON: its key and the md5 it must have."""

    key: str
    md5: str

    @property
    def name(self) -> str:
        return posixpath.basename(self.key)


@dataclass
class VersionMeta:
    """The fields of ``metadata/PMC<id>.<v>.json`` that ingest uses (validated)."""

    pmcid: str
    version: int
    license_code: str
    is_open_access: bool
    is_manuscript: bool
    is_historical_ocr: bool
    is_retracted: bool
    xml: ObjectRef | None
    media: list[ObjectRef] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # media entries refused
    citation: str = ""  # "Vikas Vikram Singh, et al. PLoS One. 2013;8(4):e62845."

    @property
    def license_class(self) -> str:
        return normalise_license(self.license_code)

    @property
    def authors(self) -> list[str]:
        """The authors the ``citation`` names (its first author, and "et al." when it says
        so): what an article gets when its XML has no ``<contrib-group>``."""
        return citation_authors(self.citation)


_CITATION_AUTHOR = re.compile(r"^\s*([^.,;]+?(?:\s+[A-Z]\.)*(?:\s+[^.,;\s]+)?)(,\s*et al\.|[.,])")


def citation_authors(citation: str) -> list[str]:
    """``"Vikas Vikram Singh, et al. PLoS One. 2013;…"`` -> ``["Vikas Vikram Singh", "et al."]``;
    ``[]`` when the citation does not start with a name."""
    m = _CITATION_AUTHOR.match(citation or "")
    if not m or not any(ch.isalpha() for ch in m.group(1)):
        return []
    return [m.group(1).strip(), *(["et al."] if "et al" in m.group(2) else [])]


def parse_object_url(url: Any, version_key: str, buckets: Iterable[str]) -> ObjectRef:
    """``s3://bucket/<version_key>/name?md5=hex`` -> ObjectRef; refuse anything else.

    A key must stay inside its version's prefix (no ``..``, no other article's objects).
    """
    if not isinstance(url, str):
        raise Refused(f"object URL is not a string: {url!r}")
    parts = urlsplit(url)
    if parts.scheme != "s3" or parts.netloc not in set(buckets):
        raise Refused(f"object URL {url!r} is not in the bucket")
    key = unquote(parts.path.lstrip("/"))
    clean = posixpath.normpath(key)
    if clean != key or ".." in key.split("/") or not key.startswith(f"{version_key}/") \
            or key.count("/") != 1:
        raise Refused(f"object key {key!r} climbs out of its prefix {version_key}/")
    md5 = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p).get("md5", "")
    if not _MD5.fullmatch(md5.lower()):
        raise Refused(f"object URL {url!r} has no md5")
    return ObjectRef(key, md5.lower())


def _flag(doc: dict[str, Any], name: str) -> bool:
    value = doc.get(name, False)
    if not isinstance(value, bool):
        raise Refused(f"field {name!r} is not true/false: {value!r}")
    return value


def parse_metadata(data: bytes, version_key: str, buckets: Iterable[str]) -> VersionMeta:
    """Validate one version's JSON; :class:`Refused` says what is wrong with it."""
    try:
        doc = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise Refused(f"metadata {version_key}.json is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise Refused(f"metadata {version_key}.json is not a JSON object")
    pmcid, _, version = version_key.partition(".")
    if normalise_pmcid(str(doc.get("pmcid") or "")) != pmcid or str(doc.get("version")) != version:
        raise Refused(f"metadata {version_key}.json describes {doc.get('pmcid')!r} version "
                      f"{doc.get('version')!r}, not {version_key}")
    buckets = list(buckets)
    meta = VersionMeta(
        pmcid, int(version), str(doc.get("license_code") or ""),
        _flag(doc, "is_pmc_openaccess"), _flag(doc, "is_manuscript"),
        _flag(doc, "is_historical_ocr"), _flag(doc, "is_retracted"),
        parse_object_url(doc["xml_url"], version_key, buckets) if doc.get("xml_url") else None,
        citation=str(doc.get("citation") or "") if isinstance(doc.get("citation"), str) else "",
    )
    media = doc.get("media_urls") or []
    if not isinstance(media, list):
        raise Refused(f"metadata {version_key}.json: media_urls is not a list")
    for url in media:
        try:
            meta.media.append(parse_object_url(url, version_key, buckets))
        except Refused as exc:  # one bad media entry costs only that object
            meta.problems.append(str(exc))
    return meta


# -- the bucket -------------------------------------------------------------------------------
class RateLimiter:
    """Spaces calls at least ``1/rate`` seconds apart across threads (0 = no cap).

    Hooked into botocore's ``before-send`` event, so every HTTP attempt, retries included,
    counts against the cap.
    """

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def acquire(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            slot = max(self._next, now)
            self._next = slot + self.interval
        if slot > now:
            time.sleep(slot - now)


@dataclass
class CloudLimits:
    """Largest objects read (a hostile bucket costs at most this much per object)."""

    max_json_bytes: int = 1 << 20
    max_xml_bytes: int = 64 << 20
    max_media_bytes: int = 100 << 20
    max_inventory_bytes: int = 8 << 30


class Bucket:
    """Anonymous S3 reads of one bucket: retries and backoff by botocore, a rate cap, counters."""

    def __init__(self, bucket: str, endpoint_url: str = "", concurrency: int = 8,
                 max_requests_per_s: float = 50.0, max_attempts: int = 5) -> None:
        import boto3
        from botocore import UNSIGNED
        from botocore.config import Config

        config = Config(
            signature_version=UNSIGNED, max_pool_connections=max(1, concurrency),
            retries={"max_attempts": max_attempts, "mode": "standard"},
            connect_timeout=10, read_timeout=60,
            s3={"addressing_style": "path" if endpoint_url else "auto"},
        )
        self.name = bucket
        self.buckets = {bucket, DEFAULT_BUCKET}
        self.client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url or None, region_name="us-east-1", config=config)
        self.limiter = RateLimiter(max_requests_per_s)
        self.requests = 0
        self.bytes = 0
        self._lock = threading.Lock()
        self.client.meta.events.register("before-send.s3", self._before_send)

    def _before_send(self, **_kwargs: Any) -> None:
        self.limiter.acquire()
        with self._lock:
            self.requests += 1

    def _call(self, what: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(Bucket=self.name, **kwargs)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code == "NoSuchBucket":
                raise CloudError(f"bucket {self.name!r} not found at the endpoint") from exc
            if code in ("NoSuchKey", "404"):
                raise Refused(f"{what}: no such object") from exc
            raise Transient(f"{what}: {code or exc}") from exc
        except BotoCoreError as exc:
            raise Transient(f"{what}: {exc}") from exc

    def get(self, key: str, max_bytes: int, md5: str | None = None) -> tuple[bytes, str]:
        """(bytes, ETag) of an object; refuse it when larger than ``max_bytes`` or md5 differs."""
        response = self._call(key, self.client.get_object, Key=key)
        body = response["Body"]
        try:
            size = int(response.get("ContentLength") or 0)
            if size > max_bytes:
                raise Refused(f"{key}: object of {size} bytes is larger than the "
                              f"{max_bytes}-byte limit")
            data = body.read(max_bytes + 1)
        finally:
            body.close()
        with self._lock:
            self.bytes += len(data)
        if len(data) > max_bytes:
            raise Refused(f"{key}: object larger than the {max_bytes}-byte limit")
        if md5 is not None:
            got = hashlib.md5(data, usedforsecurity=False).hexdigest()
            if got != md5:
                raise Refused(f"{key}: md5 mismatch (metadata says {md5}, got {got})")
        return data, str(response.get("ETag") or "").strip('"')

    def download(self, key: str, dest: Path, max_bytes: int, md5: str | None) -> None:
        """Stream an object to ``dest`` (for inventory files, which can be large)."""
        response = self._call(key, self.client.get_object, Key=key)
        digest, size = hashlib.md5(usedforsecurity=False), 0
        with dest.open("wb") as fh:
            for chunk in response["Body"].iter_chunks(1 << 20):
                size += len(chunk)
                if size > max_bytes:
                    raise Refused(f"{key}: larger than the {max_bytes}-byte limit")
                digest.update(chunk)
                fh.write(chunk)
        with self._lock:
            self.bytes += size
        if md5 and digest.hexdigest() != md5:
            raise Refused(f"{key}: md5 mismatch (manifest says {md5}, got {digest.hexdigest()})")

    def list(self, prefix: str, delimiter: str = "") -> tuple[list[str], list[tuple[str, str]]]:
        """(common prefixes, [(key, etag)]) under ``prefix``, all pages."""
        prefixes: list[str] = []
        objects: list[tuple[str, str]] = []
        extra = {"Delimiter": delimiter} if delimiter else {}
        token: dict[str, str] = {}
        while True:
            page = self._call(prefix, self.client.list_objects_v2, Prefix=prefix, **extra, **token)
            prefixes += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
            objects += [(o["Key"], str(o.get("ETag", "")).strip('"'))
                        for o in page.get("Contents", [])]
            if not page.get("IsTruncated"):
                return prefixes, objects
            token = {"ContinuationToken": page["NextContinuationToken"]}


# -- inventory --------------------------------------------------------------------------------
def latest_inventory(bucket: Bucket) -> str:
    """Name of the newest inventory folder (``YYYY-MM-DDTHH-MMZ``; ``data``/``hive`` skipped)."""
    prefixes, _ = bucket.list(INVENTORY_PREFIX, "/")
    days = sorted(p[len(INVENTORY_PREFIX):].rstrip("/") for p in prefixes)
    days = [d for d in days if _INVENTORY_DAY.fullmatch(d)]
    if not days:
        raise CloudError(f"no inventory under s3://{bucket.name}/{INVENTORY_PREFIX}")
    return days[-1]


def inventory_files(bucket: Bucket, day: str, limits: CloudLimits) -> list[tuple[str, str]]:
    """``[(csv.gz key, md5)]`` from ``<day>/manifest.json``; keys must stay in the inventory."""
    key = f"{INVENTORY_PREFIX}{day}/manifest.json"
    data, _ = bucket.get(key, limits.max_json_bytes)
    try:
        files = json.loads(data)["files"]
        out = [(str(f["key"]), str(f.get("MD5checksum") or "").lower()) for f in files]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise CloudError(f"inventory manifest {key} is not a valid manifest: {exc}") from exc
    for name, _md5 in out:
        if posixpath.normpath(name) != name or not name.startswith(INVENTORY_PREFIX + "data/"):
            raise CloudError(f"inventory manifest {key} names {name!r}, outside "
                             f"{INVENTORY_PREFIX}data/; refused")
    return out


def inventory_rows(path: Path) -> Iterator[tuple[str, str, int, str] | str]:
    """``(version_key, pmcid, version, etag)`` per metadata row of a csv.gz, or a problem."""
    with gzip.open(path, "rt", encoding="utf-8", newline="") as fh:
        for n, row in enumerate(csv.reader(fh), start=1):
            if len(row) < 4:
                yield f"{path.name}:{n}: expected bucket,key,last-modified,etag"
                continue
            m = _METADATA_KEY.fullmatch(unquote(row[1]))
            if m is None:
                yield f"{path.name}:{n}: not a metadata/PMC<id>.<version>.json key: {row[1]!r}"
                continue
            yield f"{m.group(1)}.{m.group(2)}", m.group(1), int(m.group(2)), row[3].strip('"')


class Staging:
    """The inventory in a SQLite file beside the store, diffed against ``pmc_versions``.

    Millions of rows never sit in memory: the diff is one SQL statement over the attached store.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        self.path = path
        self.db = sqlite3.connect(path, uri=True)
        self.db.executescript(
            "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;"
            "CREATE TABLE inv (version_key TEXT PRIMARY KEY, pmcid TEXT, version INT, etag TEXT);"
            "CREATE TABLE todo (pmcid TEXT PRIMARY KEY);"
        )

    def load(self, rows: Iterable[tuple[str, str, int, str]]) -> None:
        self.db.executemany("INSERT OR REPLACE INTO inv VALUES (?, ?, ?, ?)", rows)
        self.db.execute("CREATE INDEX IF NOT EXISTS inv_pmcid ON inv (pmcid)")
        self.db.commit()

    def count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM inv").fetchone()[0])

    def diff(self, store_path: Path, everything: bool = False) -> int:
        """Articles to process: a version whose ETag changed, appeared or disappeared."""
        self.db.execute("ATTACH DATABASE ? AS st", (f"file:{quote(str(store_path))}?mode=ro",))
        changed = "1" if everything else "v.etag IS NULL OR v.etag != i.etag"
        self.db.execute(
            "INSERT OR IGNORE INTO todo SELECT pmcid FROM ("
            f"SELECT i.pmcid FROM inv i LEFT JOIN st.pmc_versions v "
            f"ON v.version_key = i.version_key WHERE {changed} "
            "UNION SELECT v.pmcid FROM st.pmc_versions v LEFT JOIN inv i "
            "ON i.version_key = v.version_key WHERE i.version_key IS NULL AND v.inventory != '') "
            "ORDER BY pmcid"
        )
        self.db.commit()
        self.db.execute("DETACH DATABASE st")
        return int(self.db.execute("SELECT count(*) FROM todo").fetchone()[0])

    def todo(self) -> Iterator[tuple[str, dict[int, str]]]:
        """``(pmcid, {version: etag})`` for every article to process, in PMCID order."""
        last = ""
        while True:
            batch = [r[0] for r in self.db.execute(
                "SELECT pmcid FROM todo WHERE pmcid > ? ORDER BY pmcid LIMIT 1000", (last,))]
            if not batch:
                return
            for pmcid in batch:
                rows = self.db.execute("SELECT version, etag FROM inv WHERE pmcid = ?", (pmcid,))
                yield pmcid, {int(v): str(e) for v, e in rows}
            last = batch[-1]

    def close(self) -> None:
        self.db.close()
        self.path.unlink(missing_ok=True)


def _stage_inventory(bucket: Bucket, staging: Staging, day: str, limits: CloudLimits,
                     problems: list[Problem]) -> None:
    tmp = staging.path.parent / "inventory-part.csv.gz"
    for key, md5 in inventory_files(bucket, day, limits):
        try:
            bucket.download(key, tmp, limits.max_inventory_bytes, md5 or None)
        except (Refused, Transient) as exc:
            raise CloudError(f"inventory {day}: {exc}") from exc
        rows: list[tuple[str, str, int, str]] = []
        try:
            for row in inventory_rows(tmp):
                if isinstance(row, str):
                    problems.append(Problem(f"s3://{bucket.name}/{key}", key, row, "inventory"))
                    continue
                rows.append(row)
                if len(rows) >= 50_000:
                    staging.load(rows)
                    rows = []
        except (csv.Error, OSError, EOFError, UnicodeDecodeError) as exc:
            raise CloudError(f"inventory {day}: {key} is not a readable csv.gz: {exc}") from exc
        staging.load(rows)
        tmp.unlink(missing_ok=True)


# -- one article: plan and download (threads) -------------------------------------------------
@dataclass
class CloudTask(Task):
    """An article version downloaded into its cache folder, ready for the parse step."""

    version_key: str = ""
    source_url: str = ""
    refused: dict[str, str] = field(default_factory=dict)  # media name -> why it has no image
    rows: list[dict[str, Any]] = field(default_factory=list)  # pmc_versions rows, once written


@dataclass
class Plan:
    """What to do with one article: ``ingest`` (task), ``remove``, ``record`` or ``retry``."""

    pmcid: str
    action: str
    rows: list[dict[str, Any]] = field(default_factory=list)  # pmc_versions rows to write
    problems: list[Problem] = field(default_factory=list)
    task: CloudTask | None = None
    objects: int = 0
    figures: int = 0


def _row(version_key: str, etag: str, inventory: str, status: str, reason: str = "") -> dict:
    pmcid, _, version = version_key.partition(".")
    return {"version_key": version_key, "pmcid": pmcid, "version": int(version), "etag": etag,
            "inventory": inventory, "status": status, "reason": reason}


@dataclass
class Planner:
    """Reads a version's JSON, applies the policy and downloads what its figures need."""

    bucket: Bucket
    policy: Policy
    cache_dir: Path
    limits: CloudLimits

    def plan(self, pmcid: str, versions: dict[int, str], inventory: str) -> Plan:
        """The plan for one article given its versions and their ETags."""
        plan = Plan(pmcid, "record")
        for version in sorted(versions, reverse=True):
            vk, etag = f"{pmcid}.{version}", versions[version]
            url = f"s3://{self.bucket.name}/{vk}/"
            try:
                data, _ = self.bucket.get(f"metadata/{vk}.json", self.limits.max_json_bytes)
                plan.objects += 1
                meta = parse_metadata(data, vk, self.bucket.buckets)
            except Transient as exc:
                return Plan(pmcid, "retry", problems=[Problem(url, vk, str(exc), "download")])
            except Refused as exc:
                plan.problems.append(Problem(url, vk, str(exc), "metadata"))
                plan.rows.append(_row(vk, etag, inventory, "refused", str(exc)))
                continue
            if meta.is_retracted:
                plan.action = "remove"
                plan.rows += [_row(f"{pmcid}.{v}", versions[v], inventory, "retracted",
                                   f"{vk} is retracted") for v in versions if v <= version]
                return plan
            reason = self.policy.refuse_reason(meta)
            if reason:
                plan.rows.append(_row(vk, etag, inventory, "skipped", reason))
                continue
            fetched = self._fetch(plan, meta, versions, etag, inventory)
            if fetched is not None:
                return fetched
        plan.action = "remove"  # no usable version (all gone, refused or skipped by policy)
        return plan

    def _fetch(self, plan: Plan, meta: VersionMeta, versions: dict[int, str], etag: str,
               inventory: str) -> Plan | None:
        """Download a chosen version; None when its XML is refused (an older one may do)."""
        vk = f"{meta.pmcid}.{meta.version}"
        url = f"s3://{self.bucket.name}/{vk}/"
        folder = self.cache_dir / vk
        try:
            if meta.xml is None:
                raise Refused(f"{vk}: metadata has no xml_url")
            xml, _ = self.bucket.get(meta.xml.key, self.limits.max_xml_bytes, meta.xml.md5)
            plan.objects += 1
            parsed = parse_article(xml)
            if parsed.pmcid and parsed.pmcid != meta.pmcid:
                raise Refused(f"{vk}: the XML is article {parsed.pmcid}, not {meta.pmcid}")
        except Transient as exc:
            return Plan(meta.pmcid, "retry", problems=[Problem(url, vk, str(exc), "download")])
        except (Refused, JatsError) as exc:
            plan.problems.append(Problem(url, vk, str(exc), "parse"))
            plan.rows.append(_row(vk, etag, inventory, "refused", str(exc)))
            return None
        plan.problems += [Problem(url, vk, f"media entry skipped: {p}", "metadata")
                          for p in meta.problems]
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        (folder / f"{vk}.xml").write_bytes(xml)
        media = {ref.name: ref for ref in meta.media}
        refused: dict[str, str] = {}
        for fig in parsed.figures:
            name = resolve_graphic(fig.href, media)
            if name is None or name in refused or (folder / name).exists():
                continue
            plan.figures += 1
            try:
                data, _ = self.bucket.get(media[name].key, self.limits.max_media_bytes,
                                          media[name].md5)
                plan.objects += 1
                (folder / name).write_bytes(data)
            except Refused as exc:
                refused[name] = str(exc)
            except Transient as exc:
                shutil.rmtree(folder, ignore_errors=True)
                return Plan(meta.pmcid, "retry", problems=[Problem(url, vk, str(exc), "download")])
        plan.action = "ingest"
        plan.rows.append(_row(vk, etag, inventory, "ingested"))
        plan.rows += self._older(meta, versions, inventory)
        plan.task = CloudTask(str(folder), last_updated=etag, pmcid=meta.pmcid,
                              license=meta.license_code, authors=meta.authors,
                              version_key=vk, source_url=url,
                              refused=refused, rows=plan.rows)
        return plan

    @staticmethod
    def _older(meta: VersionMeta, versions: dict[int, str], inventory: str) -> list[dict]:
        vk = f"{meta.pmcid}.{meta.version}"
        return [_row(f"{meta.pmcid}.{v}", versions[v], inventory, "superseded",
                     f"superseded by {vk}") for v in versions if v < meta.version]


# -- worker side: the existing parse/normalise step -------------------------------------------
def process_cloud_task(task: Task) -> list[Outcome]:
    """Parse a downloaded version with :func:`indexer.workers.process_unit` (runs in workers)."""
    assert isinstance(task, CloudTask)
    folder = Path(task.path)
    xml_name = f"{task.version_key}.xml"
    try:
        xml = (folder / xml_name).read_bytes()
        names = sorted(p.name for p in folder.iterdir() if p.name != xml_name)
    except OSError as exc:
        return [Outcome("failed", problems=[Problem(task.source_url, task.version_key,
                                                    f"download folder unreadable: {exc}",
                                                    "read")])]

    def fetch(name: str) -> bytes:
        if name in task.refused:
            raise InputError(task.refused[name])
        return (folder / name).read_bytes()

    unit = ArticleUnit(task.version_key, xml_name, xml, names + sorted(task.refused), fetch)
    outcome = process_unit(unit, task)
    for p in outcome.problems:
        p.source = task.source_url
    return [outcome]


# -- store state ------------------------------------------------------------------------------
def record_versions(store: FigureStore, rows: list[dict[str, Any]]) -> None:
    """Write the ``pmc_versions`` rows of one article (one transaction)."""
    now = datetime.now(timezone.utc)
    with store.session() as s:
        for row in rows:
            s.merge(PmcVersion(**row, updated_at=now))


def forget_gone_versions(store: FigureStore, pmcid: str, present: Iterable[str]) -> None:
    """Delete version rows of ``pmcid`` that the inventory no longer lists."""
    keep = set(present)
    with store.session() as s:
        for row in s.execute(select(PmcVersion).where(PmcVersion.pmcid == pmcid)).scalars():
            if row.version_key not in keep and row.inventory:
                s.delete(row)


def version_states(store: FigureStore) -> dict[str, tuple[str, str]]:
    """``{version_key: (etag, status)}`` of every recorded version (tests and stats)."""
    with store.session() as s:
        rows = s.execute(select(PmcVersion.version_key, PmcVersion.etag, PmcVersion.status))
        return {r[0]: (r[1], r[2]) for r in rows}


# -- the run ----------------------------------------------------------------------------------
@dataclass
class CloudSummary:
    """Counts of one PMC Cloud run (besides the article counts of :class:`IngestSummary`)."""

    bucket: str = ""
    inventory: str = ""
    inventory_versions: int = 0
    articles_todo: int = 0
    versions_ingested: int = 0
    versions_skipped: int = 0
    versions_refused: int = 0
    articles_removed: int = 0
    articles_retry: int = 0
    media_fetched: int = 0
    objects: int = 0
    requests: int = 0
    bytes: int = 0
    elapsed_s: float = 0.0

    def line(self) -> str:
        rate = self.objects / self.elapsed_s if self.elapsed_s > 0 else 0.0
        where = f"inventory {self.inventory} ({self.inventory_versions} versions)" \
            if self.inventory else "named articles"
        return (
            f"pmc-cloud: s3://{self.bucket} {where}: {self.articles_todo} articles to process; "
            f"{self.versions_ingested} versions ingested, {self.versions_skipped} skipped by "
            f"policy, {self.versions_refused} refused, {self.articles_removed} articles removed, "
            f"{self.articles_retry} left for the next run; {self.objects} objects "
            f"({self.media_fetched} figure images), {self.requests} requests, "
            f"{self.bytes / 1e6:.1f} MB; {self.elapsed_s:.1f} s, {rate:.1f} objects/s"
        )


@dataclass
class CloudReport:
    ingest: IngestSummary
    cloud: CloudSummary


class CloudIngest:
    """One run: plans in threads (``concurrency``), parsing in ``workers`` processes."""

    def __init__(self, settings: Settings, store: FigureStore, bucket: Bucket, policy: Policy,
                 workers: int, limits: CloudLimits, progress: bool) -> None:
        self.settings, self.store, self.bucket = settings, store, bucket
        self.workers, self.progress = workers, progress
        self.cache_dir = settings.data_dir / "pmc-cloud" / "cache"
        shutil.rmtree(self.cache_dir, ignore_errors=True)  # a killed run's leftovers
        self.cache_dir.mkdir(parents=True)
        self.planner = Planner(bucket, policy, self.cache_dir, limits)
        self.summary = IngestSummary()
        self.cloud = CloudSummary(bucket=bucket.name)

    def _plans(self, groups: Iterable[tuple[str, dict[int, str]]], inventory: str,
               concurrency: int) -> Iterator[Plan]:
        """Plans as they complete, at most ``2 * concurrency`` articles in flight."""
        with ThreadPoolExecutor(max(1, concurrency)) as pool:
            pending: dict[Future[Plan], str] = {}
            for pmcid, versions in groups:
                if not versions:  # every version left the inventory
                    yield Plan(pmcid, "remove")
                    continue
                pending[pool.submit(self.planner.plan, pmcid, versions, inventory)] = pmcid
                while len(pending) >= 2 * max(1, concurrency):
                    yield from self._done(pending, FIRST_COMPLETED)
            while pending:
                yield from self._done(pending, FIRST_COMPLETED)

    @staticmethod
    def _done(pending: dict[Future[Plan], str], when: str) -> Iterator[Plan]:
        done, _ = wait(pending, return_when=when)
        for future in done:
            pmcid = pending.pop(future)
            try:
                yield future.result()
            except Exception as exc:  # one article must not stop the run
                yield Plan(pmcid, "retry", problems=[Problem(
                    pmcid, pmcid, f"failed: {type(exc).__name__}: {exc}", "download")])

    def _tasks(self, plans: Iterable[Plan], bar: tqdm) -> Iterator[Task]:
        """Write removals and policy results here; hand ingest plans on as tasks."""
        for plan in plans:
            self.cloud.objects += plan.objects
            self.cloud.media_fetched += plan.figures
            self._record_problems(plan.problems)
            if plan.action == "ingest" and plan.task is not None:
                yield plan.task
                continue
            if plan.action == "retry":  # nothing recorded: the next run tries again
                self.cloud.articles_retry += 1
            else:
                if plan.action == "remove":
                    self._remove(plan.pmcid)
                self._finish(plan.pmcid, plan.rows)
            bar.update(1)

    def _record_problems(self, problems: Iterable[Problem]) -> None:
        for p in problems:
            self.store.record_error(p.source, p.reason, p.item, p.stage)
            self.summary.skipped_items.append((p.item, p.reason))
            self.summary.skipped += 1

    def _remove(self, pmcid: str) -> None:
        key = self.store.find_article_key(pmcid)
        if key is not None:
            self.store.remove_article(key)
            self.summary.removed += 1
            self.summary.removed_keys.append(key)
            self.cloud.articles_removed += 1

    def _finish(self, pmcid: str, rows: list[dict[str, Any]]) -> None:
        """Record the article's versions (they cover every version still listed)."""
        for row in rows:
            status = row["status"]
            self.cloud.versions_ingested += status == "ingested"
            self.cloud.versions_skipped += status == "skipped"
            self.cloud.versions_refused += status == "refused"
        if rows:
            record_versions(self.store, rows)
        forget_gone_versions(self.store, pmcid, [r["version_key"] for r in rows])

    def run(self, groups: Iterable[tuple[str, dict[int, str]]], total: int, inventory: str,
            concurrency: int) -> None:
        """Plan, download, parse and write every article of ``groups``."""
        start = time.perf_counter()
        config = WorkerConfig.from_settings(self.settings)
        with tqdm(total=total, desc="pmc-cloud", unit="article", mininterval=0.5,
                  file=sys.stderr, disable=not self.progress) as bar:
            tasks = self._tasks(self._plans(groups, inventory, concurrency), bar)
            for task, outcomes in task_results(tasks, config, self.workers, process_cloud_task):
                assert isinstance(task, CloudTask)
                self.summary.inputs += 1
                failed = False
                for outcome in outcomes:
                    if outcome.status == "failed":
                        failed = True
                    write_outcome(self.store, outcome, self.summary)
                rows = task.rows
                if failed:
                    reason = "; ".join(p.reason for o in outcomes for p in o.problems)[:500]
                    rows = [dict(r, status="refused", reason=reason)
                            if r["status"] == "ingested" else r for r in rows]
                self._finish(task.pmcid or "", rows)
                shutil.rmtree(task.path, ignore_errors=True)
                bar.update(1)
                bar.set_postfix(added=self.summary.added, figs=self.summary.figures,
                                requests=self.bucket.requests, refresh=False)
        self.summary.elapsed_s += time.perf_counter() - start


def _open_bucket(settings: Settings, bucket: str | None, endpoint_url: str | None,
                 concurrency: int | None) -> Bucket:
    return Bucket(bucket or settings.pmc_bucket,
                  settings.pmc_endpoint_url if endpoint_url is None else endpoint_url,
                  concurrency or settings.download_concurrency, settings.pmc_max_requests_per_s)


def ingest_cloud(
    settings: Settings, *, bucket: str | None = None, endpoint_url: str | None = None,
    pmcids: Iterable[str] | None = None, policy: Policy | None = None,
    workers: int | None = None, concurrency: int | None = None,
    limits: CloudLimits | None = None, progress: bool = True,
) -> CloudReport:
    """Ingest from the PMC Cloud bucket: named ``pmcids``, else what the newest inventory changed.

    Raises :class:`CloudError` when the bucket or its inventory cannot be read at all.
    """
    start = time.perf_counter()
    policy = policy or Policy.from_settings(settings)
    limits = limits or CloudLimits()
    workers = settings.ingest_workers if workers is None else workers
    concurrency = concurrency or settings.download_concurrency
    s3 = _open_bucket(settings, bucket, endpoint_url, concurrency)
    store = FigureStore(settings.db_path)
    try:
        job = CloudIngest(settings, store, s3, policy, workers, limits, progress)
        if pmcids is not None:
            _run_named(job, s3, list(pmcids), concurrency)
        else:
            _run_inventory(job, s3, store, settings, policy, limits, concurrency)
        job.cloud.requests, job.cloud.bytes = s3.requests, s3.bytes
        job.cloud.elapsed_s = job.summary.elapsed_s = time.perf_counter() - start
        return CloudReport(job.summary, job.cloud)
    finally:
        store.close()


def _versions_of(s3: Bucket, pmcid: str) -> dict[int, str]:
    """``{version: ETag}`` of an article, from ListObjectsV2 on ``metadata/PMC<id>.``."""
    _, objects = s3.list(f"metadata/{pmcid}.")
    versions = {}
    for key, etag in objects:
        m = _METADATA_KEY.fullmatch(key)
        if m and m.group(1) == pmcid:
            versions[int(m.group(2))] = etag
    return versions


def _run_named(job: CloudIngest, s3: Bucket, pmcids: list[str], concurrency: int) -> None:
    groups: list[tuple[str, dict[int, str]]] = []
    named = []
    for raw in pmcids:
        pmcid = normalise_pmcid(raw.removeprefix("pmc:"))
        if pmcid is None:
            job._record_problems([Problem("pmc:", raw, "not a PMCID", "find")])
        elif pmcid not in named:
            named.append(pmcid)
    with ThreadPoolExecutor(max(1, concurrency)) as pool:
        listings = list(pool.map(lambda p: _versions_of(s3, p), named))
    for pmcid, versions in zip(named, listings, strict=True):
        if not versions:
            job._record_problems([Problem(f"s3://{s3.name}/metadata/", pmcid,
                                          "no version of this article in the bucket", "find")])
            continue
        groups.append((pmcid, versions))
    job.cloud.articles_todo = len(groups)
    job.run(groups, len(groups), "", concurrency)


def _run_inventory(job: CloudIngest, s3: Bucket, store: FigureStore, settings: Settings,
                   policy: Policy, limits: CloudLimits, concurrency: int) -> None:
    day = latest_inventory(s3)
    staging = Staging(settings.data_dir / "pmc-cloud" / "inventory.sqlite")
    try:
        problems: list[Problem] = []
        _stage_inventory(s3, staging, day, limits, problems)
        job._record_problems(problems)
        job.cloud.inventory, job.cloud.inventory_versions = day, staging.count()
        policy_changed = store.get_meta(META_POLICY) not in (None, policy.fingerprint())
        job.cloud.articles_todo = staging.diff(store.path, everything=policy_changed)
        job.run(staging.todo(), job.cloud.articles_todo, day, concurrency)
    finally:
        staging.close()
    store.set_meta(META_POLICY, policy.fingerprint())
    store.set_meta(META_LAST_INVENTORY, json.dumps({
        "bucket": s3.name, "inventory": day, "versions": job.cloud.inventory_versions,
        "articles_processed": job.cloud.articles_todo, "left_for_next_run":
        job.cloud.articles_retry, "finished_at": datetime.now(timezone.utc).isoformat(
            timespec="seconds"),
    }))
    maybe_crash("pmc-inventory-done")


# -- CLI ----------------------------------------------------------------------------------------
def read_pmcid_file(path: str | Path) -> list[str]:
    """PMCIDs from a file, one per line (``#`` comments and blank lines ignored)."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(line)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The PMC Cloud flags shared by ``figsearch ingest`` and ``figsearch rebuild``."""
    group = parser.add_argument_group("PMC Cloud (s3://pmc-oa-opendata, pmc:PMCID)")
    group.add_argument("--endpoint-url", default=None,
                       help="S3 API endpoint (default: $FIGSEARCH_PMC_ENDPOINT_URL, else AWS)")
    group.add_argument("--license", default=None, metavar="POLICY",
                       help="any | commercial | comma list of license classes "
                            "(default: $FIGSEARCH_PMC_LICENSE)")
    group.add_argument("--author-manuscripts", action=argparse.BooleanOptionalAction,
                       default=None, help="ingest author manuscripts (TDM); default on")
    group.add_argument("--historical-ocr", action=argparse.BooleanOptionalAction, default=None,
                       help="ingest scanned historical articles; default off")
    group.add_argument("--concurrency", type=int, default=None,
                       help="concurrent S3 requests (default: $FIGSEARCH_DOWNLOAD_CONCURRENCY)")


def settings_from_args(settings: Settings, args: argparse.Namespace) -> Settings:
    """Settings with the PMC Cloud flags applied (flags override the environment)."""
    update: dict[str, Any] = {}
    if getattr(args, "endpoint_url", None) is not None:
        update["pmc_endpoint_url"] = args.endpoint_url
    if getattr(args, "license", None) is not None:
        update["pmc_license"] = args.license
    if getattr(args, "author_manuscripts", None) is not None:
        update["pmc_author_manuscripts"] = args.author_manuscripts
    if getattr(args, "historical_ocr", None) is not None:
        update["pmc_historical_ocr"] = args.historical_ocr
    if getattr(args, "concurrency", None):
        update["download_concurrency"] = args.concurrency
    return settings.model_copy(update=update) if update else settings


def ingest_cloud_sources(settings: Settings, sources: list[str], workers: int | None = None,
                         progress: bool = True) -> list[CloudReport]:
    """Ingest ``s3://bucket`` sources (inventory) and ``pmc:`` names (one named run); any other
    source is an error (:func:`indexer.sources.route_sources` sorts them first)."""
    others = [s for s in sources if not is_cloud_source(s)]
    if others:
        raise ValueError(f"not PMC Cloud sources (s3://BUCKET or pmc:PMCID): {others}")
    reports = []
    named = [s for s in sources if s.lower().startswith("pmc:")]
    for source in sources:
        if source.startswith("s3://"):
            name = urlsplit(source).netloc or settings.pmc_bucket
            reports.append(ingest_cloud(settings, bucket=name, workers=workers,
                                        progress=progress))
    if named:
        reports.append(ingest_cloud(settings, pmcids=named, workers=workers, progress=progress))
    return reports
