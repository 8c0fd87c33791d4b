"""The figure store: SQLAlchemy 2 over SQLite (WAL) with an FTS5 index over captions.

One class, :class:`FigureStore`, owns the database. Every article is written in one
transaction, so a crash never leaves half an article; figures are upserted by their key so
that their integer ids (also the FAISS ids) stay stable across re-ingests.
"""

from __future__ import annotations

import html
import json
import re
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock
from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    select,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from figsearch.licenses import COMMERCIAL_CLASSES
from figsearch.records import ArticleRecord, FigureRecord
from figsearch.rights import REUSABLE_CLASSES, third_party_statement

SCHEMA_VERSION = 6


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class Article(Base):
    __tablename__ = "articles"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String, unique=True, index=True)
    pmcid: Mapped[str | None] = mapped_column(String, index=True)
    pmid: Mapped[str | None] = mapped_column(String)
    doi: Mapped[str | None] = mapped_column(String)
    title: Mapped[str] = mapped_column(Text, default="")
    journal: Mapped[str] = mapped_column(String, default="", index=True)
    year: Mapped[int | None] = mapped_column(Integer, index=True)
    license_text: Mapped[str] = mapped_column(Text, default="")
    license_url: Mapped[str] = mapped_column(String, default="")
    license_class: Mapped[str] = mapped_column(String, default="none", index=True)
    source: Mapped[str] = mapped_column(String, default="")
    url: Mapped[str | None] = mapped_column(String)  # the collection's own article page
    authors: Mapped[str] = mapped_column(Text, default="[]", server_default="[]")  # JSON list (schema 5)
    last_updated: Mapped[str | None] = mapped_column(String)
    content_hash: Mapped[str] = mapped_column(String, default="")
    retracted: Mapped[bool] = mapped_column(Boolean, default=False)
    ingested_at: Mapped[datetime] = mapped_column(DateTime, default=_now)

    figures: Mapped[list[Figure]] = relationship(
        back_populates="article", cascade="all, delete-orphan", passive_deletes=True
    )


class Figure(Base):
    __tablename__ = "figures"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String, unique=True, index=True)
    article_id: Mapped[int] = mapped_column(
        ForeignKey("articles.id", ondelete="CASCADE"), index=True
    )
    fig_id: Mapped[str] = mapped_column(String)
    label: Mapped[str] = mapped_column(String, default="")
    caption: Mapped[str] = mapped_column(Text, default="")
    image_path: Mapped[str | None] = mapped_column(String)
    thumb_path: Mapped[str | None] = mapped_column(String)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    orig_width: Mapped[int | None] = mapped_column(Integer)
    orig_height: Mapped[int | None] = mapped_column(Integer)
    sha256: Mapped[str | None] = mapped_column(String, index=True)
    has_image: Mapped[bool] = mapped_column(Boolean, default=False)
    source: Mapped[str] = mapped_column(String, default="")
    url: Mapped[str | None] = mapped_column(String)  # the collection's own figure page
    figure_type: Mapped[str | None] = mapped_column(String, index=True)
    figure_type_score: Mapped[float | None] = mapped_column(Float)
    attributes: Mapped[str] = mapped_column(Text, default="{}")  # JSON (synthetic ground truth)
    # The figure's own rights (schema 5; figsearch.rights): NULL class = the article's governs.
    rights_license_class: Mapped[str | None] = mapped_column(String)
    rights_license_text: Mapped[str | None] = mapped_column(Text)
    rights_license_url: Mapped[str | None] = mapped_column(String)
    rights_statement: Mapped[str | None] = mapped_column(Text)
    rights_holder: Mapped[str | None] = mapped_column(Text)
    third_party: Mapped[str | None] = mapped_column(Text)  # the caption's statement, or NULL

    article: Mapped[Article] = relationship(back_populates="figures")


class IngestError(Base):
    """A skipped input and why. One row per (source, item, reason); reruns bump ``count``."""

    __tablename__ = "ingest_errors"
    __table_args__ = (UniqueConstraint("source", "item", "reason"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source: Mapped[str] = mapped_column(String)
    item: Mapped[str] = mapped_column(String, default="")
    stage: Mapped[str] = mapped_column(String, default="")
    reason: Mapped[str] = mapped_column(Text)
    count: Mapped[int] = mapped_column(Integer, default=1)
    last_seen: Mapped[datetime] = mapped_column(DateTime, default=_now)


class FigureOcr(Base):
    """Text drawn inside an image (OCR), cached by image hash: one row per distinct image.

    ``error`` is set (and ``text`` empty) for an image that could not be read, so that a
    rerun does not try it again; the reason is also in ``ingest_errors``.
    """

    __tablename__ = "figure_ocr"

    sha256: Mapped[str] = mapped_column(String, primary_key=True)
    text: Mapped[str] = mapped_column(Text, default="")
    boxes: Mapped[int] = mapped_column(Integer, default=0)
    engine: Mapped[str] = mapped_column(String, default="")
    error: Mapped[str | None] = mapped_column(Text)
    ocr_at: Mapped[datetime] = mapped_column(DateTime, default=_now)


class FigurePanels(Base):
    """The panels of an image (figsearch.panels), cached by image hash: one row per image.

    ``panels`` is JSON ``[[x0, y0, x1, y1], ...]`` in reading order; ``expected`` the panel
    count the caption named when they were found (the layout search depends on it; an image
    reused under a caption naming another count keeps its first layout); ``algo`` the detector
    version (a new one recomputes); ``error`` is set for an unreadable image (not retried).
    Sub-captions are not stored: they come from the caption at read time
    (:meth:`FigureStore.figure_panels`).
    """

    __tablename__ = "figure_panels"

    sha256: Mapped[str] = mapped_column(String, primary_key=True)
    expected: Mapped[int] = mapped_column(Integer, default=1)
    panels: Mapped[str] = mapped_column(Text, default="[]")
    algo: Mapped[str] = mapped_column(String, default="")
    error: Mapped[str | None] = mapped_column(Text)
    panels_at: Mapped[datetime] = mapped_column(DateTime, default=_now)


class PmcVersion(Base):
    """What the PMC Cloud source last did with one article version (``PMC<id>.<version>``).

    ``etag`` is the ETag of the version's ``metadata/`` JSON when it was processed and
    ``inventory`` the S3 Inventory it came from (empty for a named fetch); a nightly run
    processes exactly the versions whose ETag changed, appeared or disappeared.
    """

    __tablename__ = "pmc_versions"

    version_key: Mapped[str] = mapped_column(String, primary_key=True)
    pmcid: Mapped[str] = mapped_column(String, index=True)
    version: Mapped[int] = mapped_column(Integer)
    etag: Mapped[str] = mapped_column(String, default="")
    inventory: Mapped[str] = mapped_column(String, default="")
    status: Mapped[str] = mapped_column(String, default="")  # ingested|superseded|skipped|...
    reason: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=_now)


class Meta(Base):
    __tablename__ = "meta"

    key: Mapped[str] = mapped_column(String, primary_key=True)
    value: Mapped[str] = mapped_column(Text)


# Schema 1's FTS table (caption, label, title); kept so that migration 1 stays what it was.
FTS_DDL_V1 = [
    "CREATE VIRTUAL TABLE IF NOT EXISTS figures_fts USING fts5("
    "caption, label, title, tokenize='porter unicode61 remove_diacritics 2')",
    # Triggers keep the FTS rows in sync with every writer, ORM or not.
    "CREATE TRIGGER IF NOT EXISTS figures_ai AFTER INSERT ON figures BEGIN "
    "INSERT INTO figures_fts(rowid, caption, label, title) VALUES (new.id, new.caption, "
    "new.label, (SELECT title FROM articles WHERE id = new.article_id)); END",
    "CREATE TRIGGER IF NOT EXISTS figures_ad AFTER DELETE ON figures BEGIN "
    "DELETE FROM figures_fts WHERE rowid = old.id; END",
    "CREATE TRIGGER IF NOT EXISTS figures_au AFTER UPDATE OF caption, label, article_id "
    "ON figures BEGIN DELETE FROM figures_fts WHERE rowid = old.id; "
    "INSERT INTO figures_fts(rowid, caption, label, title) VALUES (new.id, new.caption, "
    "new.label, (SELECT title FROM articles WHERE id = new.article_id)); END",
    "CREATE TRIGGER IF NOT EXISTS articles_au AFTER UPDATE OF title ON articles BEGIN "
    "UPDATE figures_fts SET title = new.title WHERE rowid IN "
    "(SELECT id FROM figures WHERE article_id = new.id); END",
]

#: FTS5 columns, in order; their index is the column number of highlight()/snippet()/bm25().
FTS_COLUMNS = ("caption", "label", "title", "ocr")
#: Default BM25 weight per FTS column (higher = a match there counts more). The search
#: service passes its own (``Settings.fts_weights``); the fusion step may tune them.
DEFAULT_FTS_WEIGHTS: dict[str, float] = {"caption": 1.0, "label": 0.5, "title": 0.3, "ocr": 0.5}

_OCR_OF_NEW = "(SELECT text FROM figure_ocr WHERE sha256 = new.sha256)"
_FTS_ROW_OF_NEW = (
    "INSERT INTO figures_fts(rowid, caption, label, title, ocr) VALUES (new.id, new.caption, "
    f"new.label, (SELECT title FROM articles WHERE id = new.article_id), {_OCR_OF_NEW}); "
)
# The current FTS table: schema 1's columns plus ``ocr``, the in-figure text of the figure's
# image (figure_ocr, by sha256). Triggers keep it in sync with figures, articles and OCR rows.
FTS_DDL = [
    "CREATE VIRTUAL TABLE IF NOT EXISTS figures_fts USING fts5("
    "caption, label, title, ocr, tokenize='porter unicode61 remove_diacritics 2')",
    f"CREATE TRIGGER IF NOT EXISTS figures_ai AFTER INSERT ON figures BEGIN {_FTS_ROW_OF_NEW}END",
    "CREATE TRIGGER IF NOT EXISTS figures_ad AFTER DELETE ON figures BEGIN "
    "DELETE FROM figures_fts WHERE rowid = old.id; END",
    "CREATE TRIGGER IF NOT EXISTS figures_au AFTER UPDATE OF caption, label, article_id, sha256 "
    "ON figures BEGIN DELETE FROM figures_fts WHERE rowid = old.id; "
    f"{_FTS_ROW_OF_NEW}END",
    "CREATE TRIGGER IF NOT EXISTS articles_au AFTER UPDATE OF title ON articles BEGIN "
    "UPDATE figures_fts SET title = new.title WHERE rowid IN "
    "(SELECT id FROM figures WHERE article_id = new.id); END",
    "CREATE TRIGGER IF NOT EXISTS figure_ocr_ai AFTER INSERT ON figure_ocr BEGIN "
    "UPDATE figures_fts SET ocr = new.text WHERE rowid IN "
    "(SELECT id FROM figures WHERE sha256 = new.sha256); END",
    "CREATE TRIGGER IF NOT EXISTS figure_ocr_au AFTER UPDATE OF text ON figure_ocr BEGIN "
    "UPDATE figures_fts SET ocr = new.text WHERE rowid IN "
    "(SELECT id FROM figures WHERE sha256 = new.sha256); END",
    "CREATE TRIGGER IF NOT EXISTS figure_ocr_ad AFTER DELETE ON figure_ocr BEGIN "
    "UPDATE figures_fts SET ocr = NULL WHERE rowid IN "
    "(SELECT id FROM figures WHERE sha256 = old.sha256); END",
]

# Migration 2: in-figure text. The figure_ocr table itself comes from create_all (it runs
# first, for new and old databases alike); the FTS table gains an ``ocr`` column, which FTS5
# cannot ALTER, so table and triggers are dropped, created anew and refilled from the store.
OCR_FTS_MIGRATION = [
    *(f"DROP TRIGGER IF EXISTS {name}" for name in (
        "figures_ai", "figures_ad", "figures_au", "articles_au",
        "figure_ocr_ai", "figure_ocr_au", "figure_ocr_ad")),
    "DROP TABLE IF EXISTS figures_fts",
    *FTS_DDL,
    "INSERT INTO figures_fts(rowid, caption, label, title, ocr) "
    "SELECT f.id, f.caption, f.label, a.title, o.text FROM figures f "
    "JOIN articles a ON a.id = f.article_id LEFT JOIN figure_ocr o ON o.sha256 = f.sha256",
]
# Migration 3 (PMC Cloud source): per article version, the inventory ETag last processed.
# create_all already makes the table on new and old databases; IF NOT EXISTS keeps this a no-op
# there and documents the DDL for databases written by other tools.
PMC_VERSIONS_DDL = [
    "CREATE TABLE IF NOT EXISTS pmc_versions (version_key VARCHAR NOT NULL PRIMARY KEY, "
    "pmcid VARCHAR NOT NULL, version INTEGER NOT NULL, etag VARCHAR NOT NULL, "
    "inventory VARCHAR NOT NULL, status VARCHAR NOT NULL, reason TEXT NOT NULL, "
    "updated_at DATETIME NOT NULL)",
    "CREATE INDEX IF NOT EXISTS ix_pmc_versions_pmcid ON pmc_versions (pmcid)",
]


# Links of figures from collections other than PMC (schema 4): stores created before it
# get the two columns here; new stores already have them from create_all.
COLLECTION_URL_COLUMNS = (("articles", "url", "TEXT"), ("figures", "url", "TEXT"))


def _add_collection_url_columns(conn: Any) -> None:
    for table, column, kind in COLLECTION_URL_COLUMNS:
        present = {row[1] for row in conn.execute(text(f"PRAGMA table_info({table})"))}
        if column not in present:
            conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {kind}"))


# Rights and citation (schema 5): the article's authors and the figure's own rights. Stores
# created before it get the columns here and the caption statements of third-party material
# found in the captions they already hold; figure-level <permissions> and authors need the
# XML, so they arrive when an article is next ingested (``figsearch ingest --force``).
RIGHTS_COLUMNS = (
    ("articles", "authors", "TEXT NOT NULL DEFAULT '[]'"),
    ("figures", "rights_license_class", "VARCHAR"), ("figures", "rights_license_text", "TEXT"),
    ("figures", "rights_license_url", "VARCHAR"), ("figures", "rights_statement", "TEXT"),
    ("figures", "rights_holder", "TEXT"), ("figures", "third_party", "TEXT"),
)
# Captions worth a regex (the statements' words; ``lower`` is ASCII-only, "©" is not cased).
_THIRD_PARTY_LIKE = ("permission", "reprinted", "reproduced", "adapted", "modified", "redrawn",
                     "©", "(c)", "copyright", "courtesy")


def _add_rights_columns(conn: Any) -> None:
    for table, column, kind in RIGHTS_COLUMNS:
        present = {row[1] for row in conn.execute(text(f"PRAGMA table_info({table})"))}
        if column not in present:
            conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {kind}"))
    likes = " OR ".join(f"lower(caption) LIKE :w{i}" for i in range(len(_THIRD_PARTY_LIKE)))
    rows = conn.execute(text(f"SELECT id, caption FROM figures WHERE {likes}"),
                        {f"w{i}": f"%{w}%" for i, w in enumerate(_THIRD_PARTY_LIKE)}).all()
    found = [{"i": int(r[0]), "s": s} for r in rows if (s := third_party_statement(r[1] or ""))]
    if found:
        conn.execute(text("UPDATE figures SET third_party = :s WHERE id = :i"), found)


# Migrations: version -> SQL statements (or callables taking the connection) that bring the
# schema from version-1.
MIGRATIONS: dict[int, list[Any]] = {
    1: FTS_DDL_V1, 2: OCR_FTS_MIGRATION, 3: PMC_VERSIONS_DDL, 4: [_add_collection_url_columns],
    5: [_add_rights_columns],
    # 6: figure_panels, made by create_all (which runs first, for old stores too)
    6: [],
}

#: The ``reusable`` filter over ``figures f JOIN articles a`` (figsearch.rights): no
#: third-party statement, and the figure's own license, else its article's, is an open one.
REUSABLE_SQL = ("coalesce(f.third_party, '') = '' AND "
                "coalesce(f.rights_license_class, a.license_class) IN ({marks})")


@dataclass
class FigureFilter:
    """Filters shared by dense, keyword and hybrid search."""

    year_from: int | None = None
    year_to: int | None = None
    journal: str | None = None
    commercial_only: bool = False
    figure_type: str | None = None
    pmcid: str | None = None
    license_class: str | None = None
    #: only figures whose own rights allow reuse (figsearch.rights.is_reusable)
    reusable_only: bool = False
    #: only figures that arrived in one of these index versions (feeds, figsearch.arrivals);
    #: None = any. Answered by a version's columns only: it has no SQL form
    first_versions: tuple[str, ...] | None = None

    def is_empty(self) -> bool:
        """No condition besides "not retracted": the same tests as :meth:`sql` (a year bound
        of 0 is a bound)."""
        return not (
            self.year_from is not None or self.year_to is not None or self.journal
            or self.commercial_only or self.figure_type or self.pmcid or self.license_class
            or self.reusable_only or self.first_versions is not None
        )

    def sql(self) -> tuple[str, dict[str, Any]]:
        """A WHERE fragment over ``figures f JOIN articles a`` and its parameters."""
        if self.first_versions is not None:
            raise ValueError("the first_versions filter needs the index version's columns "
                             "(figsearch.columns); it has no SQL form")
        clauses: list[str] = ["a.retracted = 0"]
        params: dict[str, Any] = {}
        if self.year_from is not None:
            clauses.append("a.year >= :year_from")
            params["year_from"] = self.year_from
        if self.year_to is not None:
            clauses.append("a.year <= :year_to")
            params["year_to"] = self.year_to
        if self.journal:
            clauses.append("lower(a.journal) = lower(:journal)")
            params["journal"] = self.journal
        if self.commercial_only:
            names = sorted(COMMERCIAL_CLASSES)
            marks = ", ".join(f":lc{i}" for i in range(len(names)))
            clauses.append(f"a.license_class IN ({marks})")
            params.update({f"lc{i}": n for i, n in enumerate(names)})
        if self.license_class:
            clauses.append("a.license_class = :license_class")
            params["license_class"] = self.license_class
        if self.reusable_only:
            names = sorted(REUSABLE_CLASSES)
            clauses.append(REUSABLE_SQL.format(
                marks=", ".join(f":rc{i}" for i in range(len(names)))))
            params.update({f"rc{i}": n for i, n in enumerate(names)})
        if self.figure_type:
            clauses.append("f.figure_type = :figure_type")
            params["figure_type"] = self.figure_type
        if self.pmcid:
            clauses.append("a.pmcid = :pmcid")
            params["pmcid"] = self.pmcid
        return " AND ".join(clauses), params


@dataclass
class UpsertResult:
    status: str  # "added" | "updated" | "unchanged"
    figures_added: int = 0
    figures_updated: int = 0
    figures_removed: int = 0


_FTS_TOKEN = re.compile(r"\w+", re.UNICODE)


def fts_query(user_text: str, operator: str = "OR") -> str:
    """Turn free text into a safe FTS5 query: quoted terms joined by OR (or ``operator``).

    User input never reaches FTS5's query syntax (quotes, ``*``, ``NEAR``, parentheses), so
    no query can raise a syntax error; BM25 still ranks documents matching more terms first.
    """
    terms = [t for t in _FTS_TOKEN.findall(user_text.lower()) if t]
    seen: list[str] = []
    for t in terms:
        if t not in seen:
            seen.append(t)
    return f" {'AND' if operator == 'AND' else 'OR'} ".join(f'"{t}"' for t in seen[:32])


def bm25_weights(weights: Mapping[str, float] | None = None) -> str:
    """The weight arguments of ``bm25(figures_fts, ...)`` in FTS column order."""
    merged = {**DEFAULT_FTS_WEIGHTS, **(weights or {})}
    unknown = set(merged) - set(FTS_COLUMNS)
    if unknown:
        raise ValueError(f"unknown FTS column(s) {sorted(unknown)}; use {', '.join(FTS_COLUMNS)}")
    return ", ".join(repr(float(merged[c])) for c in FTS_COLUMNS)


# Private-use characters mark FTS5 highlights until the text is HTML-escaped.
_MARK_OPEN, _MARK_CLOSE = "\ue000", "\ue001"


def marked_html(marked: str, original: str | None) -> str:
    """HTML-escape FTS5 highlight() output and turn its markers into ``<mark>`` tags.

    When ``original`` (the column's text) already holds a marker character, the markers
    cannot be told apart: the plain escaped ``original`` is returned instead.
    """
    if original is not None and (_MARK_OPEN in original or _MARK_CLOSE in original):
        return html.escape(original)
    escaped = html.escape(marked)
    return escaped.replace(_MARK_OPEN, "<mark>").replace(_MARK_CLOSE, "</mark>")


# Live figures with an image whose hash has no OCR row yet (a WHERE follows; append AND ...).
_OCR_PENDING_FROM = (
    "figures f JOIN articles a ON a.id = f.article_id "
    "WHERE f.has_image = 1 AND a.retracted = 0 AND f.sha256 IS NOT NULL AND f.image_path "
    "IS NOT NULL AND NOT EXISTS (SELECT 1 FROM figure_ocr o WHERE o.sha256 = f.sha256)"
)


# Live figures with a stored image (a WHERE follows; append AND ...).
_LIVE_IMAGES_FROM = (
    "figures f JOIN articles a ON a.id = f.article_id "
    "WHERE f.has_image = 1 AND a.retracted = 0 AND f.sha256 IS NOT NULL AND f.image_path "
    "IS NOT NULL"
)


def parse_boxes(raw: str) -> list[tuple[int, int, int, int]]:
    """Panel boxes as ``figure_panels.panels`` stores them (JSON ``[[x0, y0, x1, y1], ...]``)."""
    return [(int(b[0]), int(b[1]), int(b[2]), int(b[3])) for b in json.loads(raw)]


BUSY_TIMEOUT_S = 30.0  # how long a connection waits for another's lock


def _set_sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cur = dbapi_connection.cursor()
    cur.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
    _use_wal(cur)
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _use_wal(cur: Any) -> None:
    """Put the store file in WAL mode, which it keeps once set. Only a new file needs the
    switch, and when several processes open a new store at once (API workers and a build)
    their switches can deadlock: SQLite then answers "database is locked" at once instead of
    waiting (2 of 320 opens, 8 processes at a time). Such a switch is tried again until the
    busy timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            if str(cur.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


class FigureStore:
    """The SQLite figure store. Safe to open from many processes (WAL, busy timeout)."""

    def __init__(self, db_path: str | Path, create: bool = True) -> None:
        self.path = Path(db_path)
        if not create and not self.path.exists():
            raise FileNotFoundError(f"no figure store at {self.path}; run `figsearch ingest` first")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = create_engine(
            f"sqlite:///{self.path}", connect_args={"timeout": BUSY_TIMEOUT_S, "check_same_thread": False}
        )
        event.listen(self.engine, "connect", _set_sqlite_pragmas)
        self._migrate()

    # -- schema -----------------------------------------------------------------------
    def _migrate(self) -> None:
        """Bring the schema up to date; at most one process at a time does it.

        API workers and a nightly build often open an upgraded store at the same moment;
        without the lock two ``create_all`` calls race and one fails with "table exists"."""
        if self._schema_is_current():
            return
        with FileLock(f"{self.path}.migrate.lock"):
            self._apply_migrations()

    def _schema_is_current(self) -> bool:
        try:
            with self.engine.connect() as conn:
                row = conn.execute(
                    text("SELECT value FROM meta WHERE key='schema_version'")).first()
        except OperationalError:  # a new file: no meta table yet
            return False
        return row is not None and int(row[0]) == SCHEMA_VERSION

    def _apply_migrations(self) -> None:
        Base.metadata.create_all(self.engine)
        with self.engine.begin() as conn:
            row = conn.execute(text("SELECT value FROM meta WHERE key='schema_version'")).first()
            current = int(row[0]) if row else 0
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for stmt in MIGRATIONS.get(version, []):
                    if callable(stmt):
                        stmt(conn)
                    else:
                        conn.execute(text(stmt))
            if current != SCHEMA_VERSION:
                conn.execute(
                    text("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', :v)"),
                    {"v": str(SCHEMA_VERSION)},
                )

    def schema_version(self) -> int:
        return int(self.get_meta("schema_version") or 0)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on error."""
        with Session(self.engine, expire_on_commit=False) as s, s.begin():
            yield s

    def close(self) -> None:
        self.engine.dispose()

    # -- meta -------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        with self.session() as s:
            m = s.get(Meta, key)
            return m.value if m else None

    def set_meta(self, key: str, value: str) -> None:
        with self.session() as s:
            s.merge(Meta(key=key, value=value))

    # -- writing ----------------------------------------------------------------------
    def article_state(self, key: str) -> tuple[str | None, str] | None:
        """(last_updated, content_hash) of a stored article, or None."""
        with self.session() as s:
            row = s.execute(
                select(Article.last_updated, Article.content_hash).where(Article.key == key)
            ).first()
            return (row[0], row[1]) if row else None

    def upsert_article(self, rec: ArticleRecord, figures: Sequence[FigureRecord]) -> UpsertResult:
        """Write an article and its figures in one transaction (skip when unchanged)."""
        with self.session() as s:
            art = s.execute(select(Article).where(Article.key == rec.key)).scalar_one_or_none()
            if art is not None and art.content_hash == rec.content_hash and rec.content_hash:
                if art.last_updated == rec.last_updated and not art.retracted:
                    return UpsertResult("unchanged")
            status = "updated" if art is not None else "added"
            if art is None:
                art = Article(key=rec.key)
                s.add(art)
            for name in ("pmcid", "pmid", "doi", "title", "journal", "year", "license_text",
                         "license_url", "license_class", "source", "url", "last_updated",
                         "content_hash"):
                setattr(art, name, getattr(rec, name))
            art.authors = json.dumps(rec.authors, ensure_ascii=False)
            art.retracted = False
            art.ingested_at = _now()
            s.flush()
            result = UpsertResult(status)
            self._sync_figures(s, art, figures, result)
            return result

    def _sync_figures(
        self, s: Session, art: Article, figures: Sequence[FigureRecord], result: UpsertResult
    ) -> None:
        existing = {
            f.fig_id: f for f in s.execute(select(Figure).where(Figure.article_id == art.id)).scalars()
        }
        wanted = {f.fig_id for f in figures}
        for fig_id, old in existing.items():
            if fig_id not in wanted:
                s.delete(old)
                result.figures_removed += 1
        for rec in figures:
            row = existing.get(rec.fig_id)
            if row is None:
                row = Figure(key=f"{art.key}/{rec.fig_id}", article_id=art.id, fig_id=rec.fig_id)
                s.add(row)
                result.figures_added += 1
            else:
                result.figures_updated += 1
                if row.sha256 != rec.sha256:
                    row.figure_type, row.figure_type_score = None, None
            for name in ("label", "caption", "image_path", "thumb_path", "width", "height",
                         "orig_width", "orig_height", "sha256", "source", "url",
                         "rights_license_class"):
                setattr(row, name, getattr(rec, name))
            for name in ("rights_license_text", "rights_license_url", "rights_statement",
                         "rights_holder", "third_party"):
                setattr(row, name, getattr(rec, name) or None)
            row.has_image = rec.has_image
            row.attributes = json.dumps(rec.attributes, sort_keys=True)

    def remove_article(self, key: str) -> int:
        """Delete an article (e.g. retracted) and its figures; returns figures removed."""
        with self.session() as s:
            art = s.execute(select(Article).where(Article.key == key)).scalar_one_or_none()
            if art is None:
                return 0
            n = len(art.figures)
            s.delete(art)
            return n

    def find_article_key(self, pmcid: str) -> str | None:
        with self.session() as s:
            return s.execute(select(Article.key).where(Article.pmcid == pmcid)).scalar()

    def record_error(self, source: str, reason: str, item: str = "", stage: str = "") -> None:
        """Record a skipped input; the same (source, item, reason) is counted, not duplicated."""
        with self.session() as s:
            row = s.execute(
                select(IngestError).where(
                    IngestError.source == source, IngestError.item == item,
                    IngestError.reason == reason,
                )
            ).scalar_one_or_none()
            if row is None:
                s.add(IngestError(source=source, item=item, stage=stage, reason=reason))
            else:
                row.count += 1
                row.last_seen = _now()

    def errors(self) -> list[dict[str, Any]]:
        with self.session() as s:
            rows = s.execute(select(IngestError).order_by(IngestError.id)).scalars()
            return [
                {"source": r.source, "item": r.item, "stage": r.stage, "reason": r.reason,
                 "count": r.count}
                for r in rows
            ]

    def set_figure_types(self, rows: Iterable[tuple[int, str, float]]) -> None:
        """Store zero-shot figure types: (figure id, label, score)."""
        with self.engine.begin() as conn:
            conn.execute(
                text("UPDATE figures SET figure_type = :t, figure_type_score = :s WHERE id = :i"),
                [{"i": int(i), "t": t, "s": float(sc)} for i, t, sc in rows],
            )

    # -- reading ----------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        """Articles, figures, figures with images, recorded errors — one consistent snapshot."""
        sql = (
            "SELECT (SELECT count(*) FROM articles), (SELECT count(*) FROM figures), "
            "(SELECT count(*) FROM figures WHERE has_image = 1), "
            "(SELECT count(*) FROM ingest_errors)"
        )
        with self.engine.connect() as conn:
            a, f, fi, e = conn.execute(text(sql)).one()
        return {"articles": a, "figures": f, "figures_with_images": fi, "errors": e}

    def iter_figure_rows(
        self, with_images_only: bool = True, batch: int = 2000
    ) -> Iterator[list[tuple[int, str | None, str | None]]]:
        """Batches of (id, image_path, sha256) in id order, for embedding."""
        last = -1
        cond = "AND f.has_image = 1" if with_images_only else ""
        while True:
            with self.engine.connect() as conn:
                rows = conn.execute(
                    text(
                        "SELECT f.id, f.image_path, f.sha256 FROM figures f "
                        "JOIN articles a ON a.id = f.article_id "
                        f"WHERE f.id > :last AND a.retracted = 0 {cond} ORDER BY f.id LIMIT :n"
                    ),
                    {"last": last, "n": batch},
                ).all()
            if not rows:
                return
            yield [(int(r[0]), r[1], r[2]) for r in rows]
            last = int(rows[-1][0])

    _FIGURE_COLUMNS = (
        "f.id, f.key, f.fig_id, f.label, f.caption, f.image_path, f.thumb_path, f.width, "
        "f.height, f.orig_width, f.orig_height, f.sha256, f.has_image, f.source, f.figure_type, "
        "f.figure_type_score, f.attributes, a.pmcid, a.pmid, a.doi, a.title, a.journal, a.year, "
        "a.license_class, a.license_text, a.license_url, a.key AS article_key, "
        "(SELECT o.text FROM figure_ocr o WHERE o.sha256 = f.sha256) AS ocr_text, "
        "f.url AS figure_page_url, a.url AS article_page_url, a.authors, "
        "f.rights_license_class, f.rights_license_text, f.rights_license_url, "
        "f.rights_statement, f.rights_holder, f.third_party"
    )

    def get_figures(self, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """Figure + article metadata for the given ids (missing ids are absent).

        On the search hot path: one plain SQL query per 500 ids on the driver's own sqlite3
        connection, rows zipped into dicts (no ORM objects, no per-row SQLAlchemy work).
        """
        out: dict[int, dict[str, Any]] = {}
        sql = (f"SELECT {self._FIGURE_COLUMNS} FROM figures f JOIN articles a "
               "ON a.id = f.article_id WHERE f.id IN ({ids}) AND a.retracted = 0")
        for cur in self._raw_in_chunks(sql, [int(i) for i in ids]):
            names = [c[0] for c in cur.description]
            for row in cur:
                d = dict(zip(names, row, strict=True))
                attrs = d["attributes"]
                d["attributes"] = json.loads(attrs) if attrs and attrs != "{}" else {}
                d["has_image"] = bool(d["has_image"])
                d["authors"] = json.loads(d["authors"]) if d["authors"] else []
                out[int(d["id"])] = d
        return out

    def _raw_in_chunks(
        self, sql: str, ids: Sequence[int], params: Sequence[Any] = ()
    ) -> Iterator[Any]:
        """``sql`` run on the driver's own sqlite3 connection (no per-row SQLAlchemy work: the
        search hot path) once per 500 ids, with the chunk's placeholders where ``sql`` says
        ``{ids}`` and ``params`` bound before them: one cursor per chunk."""
        with self.engine.connect() as conn:
            raw = conn.connection.driver_connection
            assert raw is not None
            for i in range(0, len(ids), 500):
                chunk = list(ids[i : i + 500])
                yield raw.execute(sql.replace("{ids}", ",".join("?" * len(chunk))),
                                  [*params, *chunk])

    def get_figure(self, figure_id: int) -> dict[str, Any] | None:
        return self.get_figures([figure_id]).get(int(figure_id))

    def figure_ids_for_article(self, pmcid: str) -> list[int]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                text("SELECT f.id FROM figures f JOIN articles a ON a.id = f.article_id "
                     "WHERE (a.pmcid = :p OR a.key = :p) AND a.retracted = 0 ORDER BY f.id"),
                {"p": pmcid},
            ).all()
        return [int(r[0]) for r in rows]

    def filtered_ids(self, flt: FigureFilter) -> np.ndarray:
        """All figure ids passing the filter (int64, sorted)."""
        where, params = flt.sql()
        with self.engine.connect() as conn:
            rows = conn.execute(
                text(f"SELECT f.id FROM figures f JOIN articles a ON a.id = f.article_id "
                     f"WHERE {where} ORDER BY f.id"),
                params,
            ).all()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def keyword_search(
        self, query: str, limit: int, flt: FigureFilter | None = None, match_all: bool = False,
        weights: Mapping[str, float] | None = None,
    ) -> list[tuple[int, float]]:
        """BM25 search over caption, label, title and in-figure text: [(figure id, score)].

        Scores are ``-bm25`` so that higher is better, best first. ``match_all`` requires
        every term. ``weights`` maps FTS columns to BM25 weights (missing ones: defaults).
        """
        match = fts_query(query, "AND" if match_all else "OR")
        if not match:
            return []
        where, params = (flt or FigureFilter()).sql()
        params.update({"match": match, "limit": int(limit)})
        bm25 = f"bm25(figures_fts, {bm25_weights(weights)})"
        sql = (
            f"SELECT f.id, -{bm25} AS score FROM figures_fts "
            "JOIN figures f ON f.id = figures_fts.rowid JOIN articles a ON a.id = f.article_id "
            f"WHERE figures_fts MATCH :match AND {where} ORDER BY {bm25} LIMIT :limit"
        )
        with self.engine.connect() as conn:
            rows = conn.execute(text(sql), params).all()
        return [(int(r[0]), float(r[1])) for r in rows]

    def highlights(
        self, query: str, ids: Sequence[int], snippet_tokens: int = 16
    ) -> dict[int, tuple[str, str]]:
        """FTS5's own highlights of ``query`` in the given figures: {id: (caption, ocr snippet)}.

        Both are HTML: escaped text with the tokens FTS5 matched (porter stems included)
        wrapped in ``<mark>``; the OCR snippet is the best window of the in-figure text, or ""
        when the query matched none of it. Figures the query matches nowhere are absent.
        Any query word counts (OR), so highlights show every matching term even for
        results found by the dense index or by an all-words query.
        """
        match = fts_query(query, "OR")
        if not match or not ids:
            return {}
        cap, ocr = FTS_COLUMNS.index("caption"), FTS_COLUMNS.index("ocr")
        marks = f"'{_MARK_OPEN}', '{_MARK_CLOSE}'"
        wanted = list(dict.fromkeys(int(i) for i in ids))
        out: dict[int, tuple[str, str]] = {}
        # One statement for the page (a SQLAlchemy round trip per id cost more than FTS5's
        # work); FTS5 seeks to each rowid of the IN list in turn.
        sql = (f"SELECT rowid, highlight(figures_fts, {cap}, {marks}), "
               f"snippet(figures_fts, {ocr}, {marks}, '…', {int(snippet_tokens)}), "
               "caption, ocr FROM figures_fts WHERE figures_fts MATCH ? AND rowid IN ({ids})")
        for rows in self._raw_in_chunks(sql, wanted, [match]):
            for fid, caption_mark, ocr_mark, caption, ocr_text in rows:
                ocr_html = marked_html(ocr_mark or "", ocr_text or "")
                out[int(fid)] = (marked_html(caption_mark or "", caption or ""),
                                 ocr_html if _MARK_OPEN in (ocr_mark or "") else "")
        return out

    # -- in-figure text (OCR) -------------------------------------------------------------
    def ocr_pending_count(self) -> int:
        """Distinct images of live figures that have no OCR row yet."""
        with self.engine.connect() as conn:
            return int(conn.execute(text(
                f"SELECT count(DISTINCT f.sha256) FROM {_OCR_PENDING_FROM}"
            )).scalar() or 0)

    def ocr_done_count(self) -> int:
        """Images with an OCR row (text or error)."""
        with self.engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM figure_ocr")).scalar() or 0)

    def iter_ocr_pending(self, batch: int = 256) -> Iterator[list[tuple[str, str]]]:
        """Batches of (sha256, image_path) of images without OCR, one row per image, by hash."""
        last = ""
        while True:
            with self.engine.connect() as conn:
                rows = conn.execute(text(
                    f"SELECT f.sha256, min(f.image_path) FROM {_OCR_PENDING_FROM} "
                    "AND f.sha256 > :last GROUP BY f.sha256 ORDER BY f.sha256 LIMIT :n"
                ), {"last": last, "n": int(batch)}).all()
            if not rows:
                return
            yield [(str(r[0]), str(r[1])) for r in rows]
            last = str(rows[-1][0])

    def put_ocr(self, rows: Iterable[tuple[str, str, int, str, str | None]]) -> None:
        """Store OCR results: (sha256, text, boxes, engine, error or None); the FTS follows."""
        with self.engine.begin() as conn:
            conn.execute(
                text("INSERT INTO figure_ocr(sha256, text, boxes, engine, error, ocr_at) "
                     "VALUES (:s, :t, :b, :e, :err, :at) ON CONFLICT(sha256) DO UPDATE SET "
                     "text = excluded.text, boxes = excluded.boxes, engine = excluded.engine, "
                     "error = excluded.error, ocr_at = excluded.ocr_at"),
                [{"s": sha, "t": txt, "b": int(boxes), "e": engine, "err": err, "at": _now()}
                 for sha, txt, boxes, engine, err in rows],
            )

    # -- panels (figsearch.panels, indexer.panels) ----------------------------------------
    def iter_panels_pending(self, algo: str, batch: int = 256
                            ) -> Iterator[list[tuple[str, str, str]]]:
        """Batches of (sha256, image_path, caption) of live images with no panels row of this
        ``algo``, one per image (its lowest figure id's caption), in hash order."""
        last = ""
        while True:
            with self.engine.connect() as conn:
                rows = conn.execute(text(
                    "SELECT f.sha256, f.image_path, f.caption FROM figures f JOIN ("
                    f"SELECT f.sha256 AS s, min(f.id) AS fid FROM {_LIVE_IMAGES_FROM} "
                    "AND f.sha256 > :last AND NOT EXISTS (SELECT 1 FROM figure_panels p "
                    "WHERE p.sha256 = f.sha256 AND p.algo = :algo) "
                    "GROUP BY f.sha256 ORDER BY f.sha256 LIMIT :n) t ON f.id = t.fid "
                    "ORDER BY f.sha256"
                ), {"last": last, "n": int(batch), "algo": algo}).all()
            if not rows:
                return
            yield [(str(r[0]), str(r[1]), str(r[2] or "")) for r in rows]
            last = str(rows[-1][0])

    def panels_pending_count(self, algo: str) -> int:
        """How many distinct live images have no panels row of this ``algo``."""
        with self.engine.connect() as conn:
            return int(conn.execute(text(
                f"SELECT count(DISTINCT f.sha256) FROM {_LIVE_IMAGES_FROM} AND NOT EXISTS "
                "(SELECT 1 FROM figure_panels p WHERE p.sha256 = f.sha256 AND p.algo = :algo)"
            ), {"algo": algo}).scalar() or 0)

    def put_panels(self, rows: Iterable[tuple[str, int, list[tuple[int, int, int, int]], str,
                                              str | None]]) -> None:
        """Store panel boxes: (sha256, expected count, boxes, algo, error or None)."""
        with self.engine.begin() as conn:
            conn.execute(
                text("INSERT INTO figure_panels(sha256, expected, panels, algo, error, panels_at) "
                     "VALUES (:s, :e, :p, :a, :err, :at) ON CONFLICT(sha256) DO UPDATE SET "
                     "expected = excluded.expected, panels = excluded.panels, "
                     "algo = excluded.algo, error = excluded.error, panels_at = excluded.panels_at"),
                [{"s": sha, "e": int(expected), "p": json.dumps([list(b) for b in boxes]),
                  "a": algo, "err": err, "at": _now()}
                 for sha, expected, boxes, algo, err in rows],
            )

    def panel_boxes(self, sha256: str) -> list[tuple[int, int, int, int]] | None:
        """The stored panel boxes of an image, or None when it has no row (or was unreadable)."""
        return self.panel_boxes_many([sha256]).get(sha256)

    def panel_boxes_many(self, sha256s: Sequence[str]) -> dict[str, list[tuple[int, int, int, int]]]:
        """Stored panel boxes by image hash (images without a row, or unreadable: absent)."""
        rows = self._rows_by_sha(
            "SELECT sha256, panels FROM figure_panels WHERE sha256 IN ({}) AND error IS NULL",
            sorted({s for s in sha256s if s}))
        return {str(r[0]): parse_boxes(r[1]) for r in rows}

    def _rows_by_sha(self, sql: str, sha256s: Sequence[str], chunk: int = 500) -> list[Any]:
        """The rows of ``sql``, whose ``{}`` is an ``IN`` list, for the given image hashes,
        queried ``chunk`` hashes at a time (SQLite caps the parameters of one statement)."""
        rows: list[Any] = []
        with self.engine.connect() as conn:
            for i in range(0, len(sha256s), chunk):
                part = list(sha256s[i : i + chunk])
                marks = ", ".join(f":s{j}" for j in range(len(part)))
                rows += conn.execute(text(sql.format(marks)),
                                     {f"s{j}": v for j, v in enumerate(part)}).all()
        return rows

    def compound_panels(self, figures: dict[int, dict[str, Any]]) -> dict[int, list[Any]]:
        """{figure id: aligned panels} of the given figure rows (id -> row with ``sha256`` and
        ``caption``) whose image has more than one panel: one query for all of them (a search
        page), where :meth:`figure_panels` reads one figure."""
        from figsearch.panels import Panel, align, split_caption

        boxes = self.panel_boxes_many([str(f.get("sha256") or "") for f in figures.values()])
        out: dict[int, list[Any]] = {}
        for fid, figure in figures.items():
            found = boxes.get(str(figure.get("sha256") or ""))
            if found and len(found) > 1:
                out[int(fid)] = align([Panel(b) for b in found],
                                      split_caption(str(figure.get("caption") or "")))
        return out

    def figure_panels(self, figure_id: int) -> list[Any] | None:
        """A figure's panels (:class:`figsearch.panels.Panel`) with letters and sub-captions
        from its own caption; None when its image has no panels row yet."""
        from figsearch.panels import Panel, align, split_caption

        with self.engine.connect() as conn:
            row = conn.execute(text("SELECT sha256, caption FROM figures WHERE id = :i"),
                               {"i": int(figure_id)}).first()
        if row is None:
            raise KeyError(f"no figure with id {figure_id}")
        boxes = self.panel_boxes(str(row[0])) if row[0] else None
        if boxes is None:
            return None
        return align([Panel(b) for b in boxes], split_caption(str(row[1] or "")))

    def ocr_texts(self, sha256s: Sequence[str]) -> dict[str, str]:
        """In-figure text by image hash (images without OCR are absent)."""
        rows = self._rows_by_sha("SELECT sha256, text FROM figure_ocr WHERE sha256 IN ({})",
                                 sha256s)
        return {str(r[0]): str(r[1] or "") for r in rows}

    def distinct_values(self, column: str) -> list[str]:
        """Distinct journals / figure types / license classes for UI pickers."""
        allowed = {"journal": "a.journal", "figure_type": "f.figure_type",
                   "license_class": "a.license_class"}
        col = allowed[column]
        with self.engine.connect() as conn:
            rows = conn.execute(
                text(f"SELECT DISTINCT {col} FROM figures f JOIN articles a ON a.id = f.article_id "
                     f"WHERE {col} IS NOT NULL AND {col} != '' ORDER BY {col}")
            ).all()
        return [str(r[0]) for r in rows]

    def integrity_ok(self) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(text("PRAGMA integrity_check")).scalar() == "ok"
