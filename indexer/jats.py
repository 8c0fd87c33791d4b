"""JATS article XML -> article metadata and figures, with a parser that refuses hostile XML.

The parser never loads DTDs, never touches the network, never expands entities and refuses
documents that declare their own entities (XXE, "billion laughs"), so a package can only
ever cost us its own bytes. Figures are every ``<fig>`` (also inside ``<fig-group>``) with
their ``<label>``, a clean caption (title + paragraphs, inline markup and MathML flattened to
whitespace-normalised text) and the ``xlink:href`` of their ``<graphic>``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from html.entities import html5, name2codepoint
from pathlib import PurePosixPath
from typing import Any

from lxml import etree

XLINK_HREF = "{http://www.w3.org/1999/xlink}href"
IMAGE_EXTENSIONS = (".tif", ".tiff", ".jpg", ".jpeg", ".gif", ".png")
PUB_DATE_PREFERENCE = ("epub", "ppub", "collection", "pub", "epub-ppub", "ecorrected")
TRUTH_ID_TYPE = "figsearch-truth"
SOURCE_META_NAME = "figsearch-source"

# Text inside these elements is never caption text (TeX duplicates of MathML, images, links).
_SKIP_TEXT = {"tex-math", "graphic", "inline-graphic", "object-id", "alt-text"}
_ENTITY_DECL = re.compile(rb"<!ENTITY", re.I)
_WS = re.compile(r"\s+")


class JatsError(ValueError):
    """The XML cannot be used as a JATS article; the message says why."""


@dataclass
class ParsedFigure:
    """One ``<fig>``: its id, label, caption and the graphic href it points at (if any)."""

    fig_id: str
    label: str
    caption: str
    href: str | None
    attributes: dict[str, Any] = field(default_factory=dict)
    #: the figure's own ``<permissions>`` (empty strings when it has none)
    license_text: str = ""
    license_url: str = ""
    has_license: bool = False
    copyright_statement: str = ""
    copyright_holder: str = ""
    #: the figure's ``<attrib>`` line(s), where JATS puts "Reprinted from …" credits
    attrib: str = ""


@dataclass
class ParsedArticle:
    """Article metadata and figures read from one JATS document."""

    pmcid: str | None = None
    pmid: str | None = None
    doi: str | None = None
    other_id: str | None = None
    title: str = ""
    journal: str = ""
    year: int | None = None
    license_text: str = ""
    license_url: str = ""
    #: authors from ``<contrib-group>``: "Surname, Given" per person, a group by its name
    authors: list[str] = field(default_factory=list)
    synthetic: bool = False
    figures: list[ParsedFigure] = field(default_factory=list)

    def key(self, fallback: str) -> str:
        """Stable article key: synthetic id, else PMCID, else ``doi:...``, else ``fallback``."""
        if self.synthetic and self.other_id:
            return f"synthetic:{self.other_id}"
        if self.pmcid:
            return self.pmcid
        if self.doi:
            return f"doi:{self.doi}"
        return fallback


def secure_parser() -> etree.XMLParser:
    """An lxml parser that loads no DTD, resolves no entity and reaches no network."""
    return etree.XMLParser(
        resolve_entities=False, no_network=True, huge_tree=False, load_dtd=False,
        dtd_validation=False, remove_comments=True, remove_pis=True,
    )


def parse_xml(data: bytes) -> etree._Element:
    """Parse bytes with :func:`secure_parser`; raise :class:`JatsError` saying what is wrong."""
    if not data.strip():
        raise JatsError("empty XML file")
    root_at = data.find(b"<article")
    prolog = data[: root_at if root_at >= 0 else 65536]
    if _ENTITY_DECL.search(prolog):
        raise JatsError(
            "XML declares its own entities (<!ENTITY>); refused as a possible XXE or "
            "entity-expansion attack"
        )
    try:
        root = etree.fromstring(data, parser=secure_parser())
    except etree.XMLSyntaxError as exc:
        raise JatsError(f"malformed XML: {exc}") from exc
    dtd = root.getroottree().docinfo.internalDTD
    if dtd is not None and any(True for _ in dtd.iterentities()):
        # Second line of defence: the entities were not expanded, but refuse the document.
        raise JatsError("XML declares its own entities in its DTD; refused")
    return root


def normalise_space(text: str) -> str:
    """Collapse runs of whitespace into single spaces and trim."""
    return _WS.sub(" ", text).strip()


def _localname(el: etree._Element) -> str:
    tag = el.tag
    if not isinstance(tag, str):
        return ""
    return tag.rsplit("}", 1)[-1]


def _entity_text(name: str) -> str:
    """A named entity left unexpanded (its DTD is never loaded) as its character."""
    return html5.get(f"{name};") or (chr(name2codepoint[name]) if name in name2codepoint else "")


def _text_parts(el: etree._Element) -> Iterable[str]:
    if el.tag is etree.Entity:
        yield _entity_text(el.name)
        return
    name = _localname(el)
    if name in _SKIP_TEXT:
        return
    if name == "alternatives" and any(_localname(c) == "math" for c in el):
        # Keep only the MathML rendering, not its TeX / image alternatives.
        for child in el:
            if _localname(child) == "math":
                yield from _text_parts(child)
        return
    if isinstance(el.tag, str) and el.text:
        yield el.text
    for child in el:
        yield from _text_parts(child)
        if child.tail:
            yield child.tail


def flat_text(el: etree._Element | None) -> str:
    """All text of an element, markup flattened, whitespace normalised."""
    if el is None:
        return ""
    return normalise_space("".join(_text_parts(el)))


def _children(el: etree._Element, name: str) -> list[etree._Element]:
    return [c for c in el if _localname(c) == name]


def _first(el: etree._Element | None, name: str) -> etree._Element | None:
    if el is None:
        return None
    return next(el.iter(f"{{*}}{name}"), None)


def caption_text(caption: etree._Element | None) -> str:
    """Caption title and paragraphs joined with single spaces."""
    if caption is None:
        return ""
    blocks = [flat_text(c) for c in caption if isinstance(c.tag, str)]
    if not blocks:
        return flat_text(caption)
    return normalise_space(" ".join(b for b in blocks if b))


def normalise_pmcid(value: str | None) -> str | None:
    """``'3166277'``, ``'PMC3166277'`` or ``'pmc3166277'`` -> ``'PMC3166277'``."""
    if not value:
        return None
    m = re.fullmatch(r"(?i)\s*(?:pmc)?\s*(\d+)\s*", value)
    return f"PMC{m.group(1)}" if m else None


def _graphic_href(fig: etree._Element) -> str | None:
    for g in fig.iter("{*}graphic"):
        href = g.get(XLINK_HREF) or g.get("href")
        if href and href.strip():
            return href.strip()
    return None


def _truth(fig: etree._Element) -> dict[str, Any]:
    for oid in _children(fig, "object-id"):
        if oid.get("pub-id-type") == TRUTH_ID_TYPE and oid.text:
            try:
                value = json.loads(oid.text)
            except json.JSONDecodeError:
                return {}
            return value if isinstance(value, dict) else {}
    return {}


def parse_figures(root: etree._Element) -> list[ParsedFigure]:
    """Every ``<fig>`` of the document in document order, with unique fig ids."""
    figures: list[ParsedFigure] = []
    seen: set[str] = set()
    for n, fig in enumerate(root.iter("{*}fig"), start=1):
        fig_id = (fig.get("id") or "").strip() or f"fig{n}"
        base, k = fig_id, 2
        while fig_id in seen:
            fig_id, k = f"{base}-{k}", k + 1
        seen.add(fig_id)
        label = next((flat_text(c) for c in _children(fig, "label")), "")
        caption = next((caption_text(c) for c in _children(fig, "caption")), "")
        parsed = ParsedFigure(fig_id, label, caption, _graphic_href(fig), _truth(fig))
        _fig_permissions(fig, parsed)
        parsed.attrib = normalise_space(" ".join(flat_text(a) for a in _children(fig, "attrib")))
        figures.append(parsed)
    return figures


def _fig_permissions(fig: etree._Element, parsed: ParsedFigure) -> None:
    """The figure's own ``<permissions>`` (a direct child, or inside its ``<caption>`` or
    ``<graphic>``; never those of a nested element such as a table)."""
    holders = [fig, *_children(fig, "caption"), *_children(fig, "graphic")]
    perms = next((p for h in holders for p in _children(h, "permissions")), None)
    if perms is None:
        return
    parsed.copyright_statement = next(
        (flat_text(c) for c in _children(perms, "copyright-statement")), "")
    parsed.copyright_holder = next(
        (flat_text(c) for c in _children(perms, "copyright-holder")), "")
    lic = next(iter(_children(perms, "license")), None)
    if lic is not None:
        parsed.has_license = True
        parsed.license_text, parsed.license_url = _license_of(lic)


def _article_ids(meta: etree._Element | None, art: ParsedArticle) -> None:
    if meta is None:
        return
    for aid in _children(meta, "article-id"):
        kind, value = (aid.get("pub-id-type") or "").lower(), normalise_space(aid.text or "")
        if not value:
            continue
        if kind in ("pmc", "pmcid") and not art.pmcid:
            art.pmcid = normalise_pmcid(value)
        elif kind == "pmid" and not art.pmid:
            art.pmid = value
        elif kind == "doi" and not art.doi:
            art.doi = value
        elif kind == "other" and not art.other_id:
            art.other_id = value


def _year(meta: etree._Element | None) -> int | None:
    if meta is None:
        return None
    years: dict[str, int] = {}
    for pd in _children(meta, "pub-date"):
        kind = (pd.get("pub-type") or pd.get("date-type") or "pub").lower()
        y = _first(pd, "year")
        if y is not None and (y.text or "").strip().isdigit():
            years.setdefault(kind, int((y.text or "").strip()))
    for kind in PUB_DATE_PREFERENCE:
        if kind in years:
            return years[kind]
    return next(iter(years.values()), None)


def _license(meta: etree._Element | None, art: ParsedArticle) -> None:
    lic = _first(meta, "license")
    if lic is None:
        return
    art.license_text, art.license_url = _license_of(lic)


def _license_of(lic: etree._Element) -> tuple[str, str]:
    """(text, url) of one ``<license>``."""
    url = lic.get(XLINK_HREF) or ""
    ref = _first(lic, "license_ref")
    if ref is not None and (ref.text or "").strip():
        url = url or (ref.text or "").strip()
    if not url:  # some publishers only link the license inside its text
        links = (e.get(XLINK_HREF) or "" for e in lic.iter("{*}ext-link", "{*}uri"))
        url = next((u for u in links if "creativecommons.org" in u), "")
    paragraphs = [flat_text(p) for p in lic if _localname(p) == "license-p"]
    return normalise_space(" ".join(paragraphs)) or flat_text(lic), url.strip()


def _authors(meta: etree._Element | None) -> list[str]:
    """Authors of the article, in order: ``contrib[@contrib-type="author"]`` of the
    article-meta's ``<contrib-group>`` s (not those of sub-articles or references)."""
    out: list[str] = []
    if meta is None:
        return out
    for group in _children(meta, "contrib-group"):
        group_kind = (group.get("content-type") or "author").lower()
        for contrib in _children(group, "contrib"):
            kind = (contrib.get("contrib-type") or "author").lower()
            # "person" in a group of authors (eLife's manuscripts); editors etc. are not
            if not (kind == "author" or (kind == "person" and group_kind == "author")):
                continue
            name = next((c for c in contrib.iter("{*}name", "{*}string-name")), None)
            if name is not None:
                surname = flat_text(_first(name, "surname"))
                given = flat_text(_first(name, "given-names"))
                if surname or given:
                    out.append(f"{surname}, {given}" if surname and given else surname or given)
                    continue
                if flat_text(name):
                    out.append(flat_text(name))
                    continue
            collab = _first(contrib, "collab")
            if collab is not None and flat_text(collab):
                out.append(flat_text(collab))
    return out


def _is_synthetic(meta: etree._Element | None) -> bool:
    if meta is None:
        return False
    for cm in meta.iter("{*}custom-meta"):
        name, value = _first(cm, "meta-name"), _first(cm, "meta-value")
        if flat_text(name) == SOURCE_META_NAME and flat_text(value) == "synthetic":
            return True
    return False


def parse_article(data: bytes) -> ParsedArticle:
    """Parse one JATS article; raise :class:`JatsError` when it is not one."""
    root = parse_xml(data)
    if _localname(root) != "article":
        raise JatsError(f"root element is <{_localname(root)}>, not a JATS <article>")
    front = _first(root, "front")
    meta = _first(front, "article-meta") if front is not None else _first(root, "article-meta")
    art = ParsedArticle()
    _article_ids(meta, art)
    art.title = flat_text(_first(_first(meta, "title-group"), "article-title"))
    art.journal = flat_text(_first(root, "journal-title"))
    art.year = _year(meta)
    _license(meta, art)
    art.authors = _authors(meta)
    art.synthetic = _is_synthetic(meta)
    art.figures = parse_figures(root)
    return art


def resolve_graphic(href: str | None, names: Iterable[str]) -> str | None:
    """The package file a graphic href points at (extension optional, case-insensitive).

    Tries the exact path, then the href with each image extension, then the same by
    basename anywhere in the package; only image files are ever returned.
    """
    if not href:
        return None
    images = [n for n in names if n.lower().endswith(IMAGE_EXTENSIONS)]
    by_path = {n.lower(): n for n in images}
    by_base: dict[str, str] = {}
    for n in sorted(images):
        by_base.setdefault(PurePosixPath(n).name.lower(), n)
    wanted = href.strip().lower().split("#", 1)[0]
    for prefix in ("file://", "./"):
        if wanted.startswith(prefix):
            wanted = wanted[len(prefix):]
    candidates = [wanted] + [wanted + ext for ext in IMAGE_EXTENSIONS]
    for cand in candidates:
        if cand in by_path:
            return by_path[cand]
    for cand in candidates:
        base = PurePosixPath(cand).name
        if base in by_base:
            return by_base[base]
    return None
