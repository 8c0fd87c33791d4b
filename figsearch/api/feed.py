"""Atom feeds of newly arrived figures (``GET /v1/search.atom``, issue 26).

A feed is a search restricted to the figures that arrived in recent index versions (the
``first_version`` column, :mod:`figsearch.arrivals`): the last ``versions=N`` versions, or those
published ``since=`` a date. With ``q`` the figures are those the search finds (same modes and
filters as ``/v1/search``, at most ``k``); without it, every arrival that passes the filters.
Entries are listed newest version first (within a version: search rank, or figure id
descending), so a feed reader or a script polling after each nightly run sees what is new.

Each entry's id is the figure's API URL (stable: figure ids never change), ``updated`` and
``published`` the publish time of the version it arrived in, its link the figure's page (else
the article's), its summary the caption, its authors the article's. The XML is built with lxml's
element tree, so every caption, title and name is escaped by the serializer.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import numpy as np
from lxml import etree
from lxml.builder import ElementMaker

from figsearch.api.present import figure_fields, filter_params
from figsearch.arrivals import published_time, select_versions
from figsearch.columns import VersionColumns
from figsearch.search import SearchInputError, SignalUnavailable
from figsearch.serving import Loaded
from figsearch.store import FigureFilter

ATOM_NS = "http://www.w3.org/2005/Atom"
MEDIA_TYPE = "application/atom+xml; charset=utf-8"
FEED_PATH = "/v1/search.atom"
_A = ElementMaker(namespace=ATOM_NS, nsmap={None: ATOM_NS})
#: characters XML 1.0 cannot hold (control characters, lone surrogates, U+FFFE/F)
_NOT_XML = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _t(text: Any) -> str:
    """``text`` as XML can hold it: a query or caption may carry control characters, which
    no XML document may contain (they are dropped, the rest is escaped by lxml)."""
    return _NOT_XML.sub("", str(text))


@dataclass(frozen=True)
class FeedRequest:
    """What a feed asks for: the search (``q`` may be empty), its filters and window."""

    q: str
    mode: str
    flt: FigureFilter
    k: int
    versions: int | None
    since: datetime | None
    dedup: bool = True
    version: str | None = None  # a pinned version (``version=``), None: current

    def params(self) -> dict[str, Any]:
        """The request as query parameters, in a fixed order (the feed's id and self link)."""
        out: dict[str, Any] = {"q": self.q} if self.q else {}
        out["mode"] = self.mode
        out.update(filter_params(self.flt))
        out["k"] = self.k
        if self.since is not None:
            out["since"] = self.since.isoformat()
        else:
            out["versions"] = self.versions or 1
        if not self.dedup:
            out["dedup"] = "false"
        if self.version:
            out["version"] = self.version
        return out


@dataclass(frozen=True)
class Arrival:
    """One feed entry: the figure's row and when (in which version) it arrived."""

    figure: dict[str, Any]
    version: str
    published: datetime


def history_of(loaded: Loaded) -> tuple[VersionColumns, list[dict[str, str]]]:
    """The served version's columns and version history; 409 for a version built before
    feeds existed (it has no arrival column)."""
    columns = loaded.service.columns
    history = columns.history if columns is not None else None
    if columns is None or not history:
        raise SignalUnavailable(
            f"index version {loaded.version} does not record when figures arrived (built "
            "before feeds); the next `figsearch index` or `figsearch rebuild` adds it")
    return columns, history


def arrivals(loaded: Loaded, req: FeedRequest) -> list[Arrival]:
    """The figures of the feed, newest version first (see the module doc)."""
    if req.versions is not None and req.since is not None:
        raise SearchInputError("give either versions= or since=, not both")
    columns, history = history_of(loaded)
    names = select_versions(history, req.versions, req.since)
    if not names:
        return []
    flt = dataclasses.replace(req.flt, first_versions=tuple(names))
    if req.q.strip():
        page = loaded.service.search_text(req.q, k=req.k, mode=req.mode, flt=flt,  # type: ignore[arg-type]
                                          dedup=req.dedup)
        ids = np.asarray([h.id for h in page.hits], np.int64)
        figures = {h.id: h.figure for h in page.hits}
        codes = _codes_of(columns, ids)
        order = np.lexsort((np.arange(len(ids)), -codes))  # newest version, then rank
    else:
        if not 1 <= req.k <= loaded.service.settings.max_k:
            raise SearchInputError(
                f"k must be between 1 and {loaded.service.settings.max_k}, got {req.k}")
        ids = np.asarray(columns.allowed(flt).ids, np.int64)
        codes = _codes_of(columns, ids)
        order = np.lexsort((-ids, -codes))[: req.k]  # newest version, then newest id
        figures = loaded.service.store.get_figures([int(i) for i in ids[order]])
    out = []
    for row in order:
        fid, entry = int(ids[row]), history[int(codes[row])]
        if fid in figures:
            out.append(Arrival(figures[fid], entry["version"], published_time(entry)))
    return out


def _codes_of(columns: VersionColumns, ids: np.ndarray) -> np.ndarray:
    """The ``first_version`` code of each figure id (all present in the columns)."""
    col_ids = columns.ids
    pos = np.searchsorted(col_ids, ids).clip(0, max(len(col_ids) - 1, 0))
    return np.asarray(columns.column("first_version"), np.int64)[pos] if len(ids) \
        else np.zeros(0, np.int64)


def _stamp(when: datetime) -> str:
    """An RFC 3339 date-time as Atom wants it."""
    return when.isoformat(timespec="seconds")


def _entry(item: Arrival, base_url: str) -> etree._Element:
    """One ``<entry>``: id, title, times, links, authors, category, rights and summary."""
    fig = figure_fields(item.figure, base_url)
    api_url = f"{base_url}/v1/figures/{fig['id']}"
    page = fig["figure_url"] or fig["article_url"] or api_url
    title = " — ".join(x for x in (fig["label"], fig["title"]) if x) or f"Figure {fig['id']}"
    parts: list[Any] = [
        _A.id(_t(api_url)), _A.title(_t(title), type="text"),
        _A.updated(_stamp(item.published)), _A.published(_stamp(item.published)),
        _A.link(rel="alternate", href=_t(page), type="text/html"),
    ]
    if fig["article_url"] and fig["article_url"] != page:
        parts.append(_A.link(rel="related", href=_t(fig["article_url"]), type="text/html",
                             title="article"))
    if fig["image_url"]:
        parts.append(_A.link(rel="enclosure", href=_t(fig["image_url"]), type="image/jpeg"))
    parts.extend(_A.author(_A.name(_t(name))) for name in fig["authors"] if name)
    if fig["figure_type"]:
        parts.append(_A.category(term=_t(fig["figure_type"])))
    parts.append(_A.category(term=f"index-version:{item.version}",
                             label=f"arrived in index version {item.version}"))
    parts.append(_A.rights(_t(fig["reuse"]), type="text"))
    parts.append(_A.summary(_t(fig["caption"] or "(no caption)"), type="text"))
    return _A.entry(*parts)


def render(req: FeedRequest, items: list[Arrival], loaded: Loaded, base_url: str) -> bytes:
    """The Atom document of a feed (UTF-8 XML with declaration)."""
    _columns, history = history_of(loaded)
    self_url = f"{base_url}{FEED_PATH}?{urlencode(req.params())}"
    what = f"“{req.q}”" if req.q else "all figures"
    window = (f"published since {_stamp(req.since)}" if req.since is not None
              else f"in the last {req.versions or 1} index version(s)")
    filters = ", ".join(f"{k}={v}" for k, v in filter_params(req.flt).items())
    updated = max([published_time(history[-1]), *(i.published for i in items)])
    feed = _A.feed(
        _A.id(_t(self_url)),
        _A.title(_t(f"figsearch: new figures for {what}"), type="text"),
        _A.subtitle(_t(f"Figures matching {what}{' (' + filters + ')' if filters else ''} "
                       f"that arrived {window}; index version {loaded.version}."), type="text"),
        _A.updated(_stamp(updated)),
        _A.link(rel="self", href=_t(self_url), type="application/atom+xml"),
        _A.author(_A.name("figsearch")),
        _A.generator("figsearch"),
        *(_entry(item, base_url) for item in items),
    )
    return bytes(etree.tostring(feed, xml_declaration=True, encoding="utf-8",
                                pretty_print=True))
