"""Rights and citation of a figure: may it be reused, under what terms, and how to credit it.

A PMC article's license does not always cover every figure in it: a ``<fig>`` can carry its
own ``<permissions>`` (a publisher's copyright, another license), and captions say
"Reprinted with permission from …", "Adapted from …", "© 2010 Elsevier" or "Courtesy of …"
of material the article's authors do not own. Such a figure is *third-party* material: the
article's CC BY does not let anyone reuse it.

The figure's **effective license** is its own license when its ``<permissions>`` has one,
else its article's. A figure is **reusable** when its effective license is an open one
(:data:`REUSABLE_CLASSES`) and nothing marks it as third-party: no caption statement and no
figure-level copyright without a license. :func:`reuse` says so in words for the API;
:func:`attribution` writes the credit line a CC BY reuse needs (label, title, authors,
journal, year, DOI / PMCID link, license with its URL); :func:`bibtex` and :func:`ris` cite
the article.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from figsearch.licenses import LICENSE_CLASSES
from figsearch.links import (
    DOI_URL,
    PMC,
    PUBLISHER,
    SYNTHETIC,
    article_url,
    collection_name,
    figure_url,
)

#: Effective license classes under which a figure may be reused (with attribution, and the
#: class's own conditions: non-commercial, share-alike, no derivatives).
REUSABLE_CLASSES = frozenset(c for c in LICENSE_CLASSES if c not in ("other", "none"))

LICENSE_NAMES = {
    "cc0": "CC0", "public-domain": "Public domain", "cc-by": "CC BY", "cc-by-sa": "CC BY-SA",
    "cc-by-nd": "CC BY-ND", "cc-by-nc": "CC BY-NC", "cc-by-nc-sa": "CC BY-NC-SA",
    "cc-by-nc-nd": "CC BY-NC-ND", "other": "other license", "none": "no license stated",
}
_TERMS = {
    "cc0": "free to reuse", "public-domain": "free to reuse",
    "cc-by": "reuse with attribution",
    "cc-by-sa": "reuse with attribution, share alike",
    "cc-by-nd": "reuse with attribution, no derivatives",
    "cc-by-nc": "non-commercial reuse with attribution",
    "cc-by-nc-sa": "non-commercial reuse with attribution, share alike",
    "cc-by-nc-nd": "non-commercial reuse with attribution, no derivatives",
}
THIRD_PARTY = "third-party: ask the rights holder"
ET_AL = "et al."  # the last "author" of a list known only in part (PMC Cloud's citation)
UNKNOWN = "unknown: no reuse license found"

# Caption statements of material the article's authors do not own. Each is one pattern so
# that the store and the shared-data counts can say which kind was found.
THIRD_PARTY_PATTERNS: dict[str, re.Pattern[str]] = {
    "with-permission": re.compile(
        r"\b(?:reprinted|reproduced|adapted|modified|used|republished|published|redrawn)"
        r"\b[^.;]{0,80}?\bwith\s+(?:kind\s+|the\s+)?permission\b", re.I),
    "permission-from": re.compile(r"\bpermission\s+(?:from|of|by)\b", re.I),
    "reprinted-from": re.compile(r"\b(?:reprinted|reproduced)\s+(?:\w+\s+){0,3}?from\b", re.I),
    "adapted-from": re.compile(r"\b(?:adapted|modified|redrawn)\s+from\b", re.I),
    "copyright": re.compile(r"©|\(c\)\s*(?:19|20)\d\d\b|\bcopyright\s+(?:\(c\)\s*)?(?:19|20)\d\d",
                            re.I),
    "courtesy": re.compile(r"\bcourtesy\s+of\b", re.I),
}
# A sentence ends at ". " / "; " before a capital, bracket or "©", but not after "et al.",
# "Fig.", "Dr." or an initial.
_SENTENCE_END = re.compile(
    r"(?<=[.;])(?<!\bal\.)(?<!\bFig\.)(?<!\bfig\.)(?<!\bDr\.)(?<!\b[A-Z]\.)\s+(?=[A-Z(\[©])")
MAX_STATEMENT = 300


def third_party_kinds(text: str) -> list[str]:
    """Which kinds of third-party statement ``text`` holds (names of THIRD_PARTY_PATTERNS)."""
    return [name for name, pat in THIRD_PARTY_PATTERNS.items() if pat.search(text or "")]


def third_party_statement(*texts: str) -> str:
    """The first sentence of the texts (caption, ``<attrib>``) that states third-party
    material, trimmed to MAX_STATEMENT characters; "" when none does."""
    for text in texts:
        if not text:
            continue
        for sentence in _SENTENCE_END.split(text):
            if any(p.search(sentence) for p in THIRD_PARTY_PATTERNS.values()):
                s = sentence.strip()
                return s if len(s) <= MAX_STATEMENT else s[: MAX_STATEMENT - 1] + "…"
    return ""


def effective_license(fig: Mapping[str, Any]) -> tuple[str, str, str]:
    """(class, text, url) of the license that governs the figure: its own, else its article's.

    ``fig`` is a store row (``FigureStore.get_figures``): ``rights_license_*`` are the
    figure's own, ``license_*`` its article's."""
    own = fig.get("rights_license_class")
    if own is not None:  # as SQL's coalesce(): only NULL defers to the article
        return (str(own), str(fig.get("rights_license_text") or ""),
                str(fig.get("rights_license_url") or ""))
    return (str(fig.get("license_class") or "none"), str(fig.get("license_text") or ""),
            str(fig.get("license_url") or ""))


def is_third_party(fig: Mapping[str, Any]) -> bool:
    return bool(fig.get("third_party"))


def is_reusable(fig: Mapping[str, Any]) -> bool:
    """The ``reusable`` filter's meaning for one store row (``FigureFilter.sql`` says the same)."""
    return not is_third_party(fig) and effective_license(fig)[0] in REUSABLE_CLASSES


def reuse(fig: Mapping[str, Any]) -> str:
    """"<class>: <terms>" for the API, e.g. ``cc-by: reuse with attribution``,
    ``third-party: ask the rights holder``, ``unknown: no reuse license found``."""
    if is_third_party(fig):
        return THIRD_PARTY
    cls = effective_license(fig)[0]
    return f"{cls}: {_TERMS[cls]}" if cls in _TERMS else UNKNOWN


def authors_of(fig: Mapping[str, Any]) -> list[str]:
    """The article's authors as stored ("Surname, Given" or a group's name)."""
    value = fig.get("authors")
    if isinstance(value, str):
        try:
            value = json.loads(value) if value else []
        except ValueError:
            value = []
    return [str(a) for a in value or [] if str(a).strip()]


def display_name(author: str) -> str:
    """"Surname, Given" -> "Given Surname" (a group's name unchanged)."""
    if ", " in author:
        surname, given = author.split(", ", 1)
        return f"{given} {surname}".strip()
    return author


def author_line(authors: Sequence[str], most: int = 10) -> str:
    """Authors for a credit line: all of them up to ``most``, else the first three, et al."""
    names = [display_name(a) for a in authors]
    if len(names) > most:
        names = [*names[:3], "et al."]
    return ", ".join(names)


def article_link(fig: Mapping[str, Any]) -> str:
    """https://doi.org/<doi>, else the article's page (its collection's, else PMC's); ""."""
    doi = str(fig.get("doi") or "").strip()
    if doi:
        return DOI_URL.format(doi=quote(doi, safe="/:;()._-"))
    return article_url(dict(fig)) or ""


def _where(fig: Mapping[str, Any]) -> list[str]:
    """The credit's links: the DOI link, then "PMCID <id>" (PMC articles) or "<collection>
    collection (<figure page>)" (other collections); synthetic figures have none."""
    source = fig.get("source") or PMC
    if source == SYNTHETIC:
        return []
    out = []
    doi = str(fig.get("doi") or "").strip()
    if doi:
        out.append(DOI_URL.format(doi=quote(doi, safe="/:;()._-")))
    own_collection = source not in (PMC, PUBLISHER)
    if fig.get("pmcid") and not own_collection:
        out.append(f"PMCID {fig['pmcid']}" + ("" if doi else f" ({article_url(dict(fig))})"))
    elif own_collection:
        link = figure_url(dict(fig)) or article_url(dict(fig))
        out.append(f"{collection_name(source)} collection" + (f" ({link})" if link else ""))
    elif not doi and article_url(dict(fig)):
        out.append(str(article_url(dict(fig))))
    return out


def attribution(fig: Mapping[str, Any]) -> str:
    """A ready credit line for the figure, e.g. ``Figure 2 from "Title" by A. Author, B.
    Author. Journal (2020). https://doi.org/…. PMCID PMC123. License: CC BY
    (https://creativecommons.org/licenses/by/4.0/).`` Third-party figures say whose they are
    instead of offering the article's license."""
    label = (fig.get("label") or "").strip() or "Figure"
    title = (fig.get("title") or "").strip().rstrip(".")
    parts = [f'{label} from "{title}"' if title else f"{label} from an untitled article"]
    authors = author_line(authors_of(fig))
    if authors:
        parts[0] += f" by {authors}"
    venue = " ".join(s for s in (str(fig.get("journal") or "").strip(),
                                 f"({fig['year']})" if fig.get("year") else "") if s)
    if venue:
        parts.append(venue)
    parts.extend(_where(fig))
    cls, _text, url = effective_license(fig)
    name = LICENSE_NAMES.get(cls, cls)
    if is_third_party(fig):
        holder = fig.get("rights_holder") or fig.get("rights_statement") or fig.get("third_party")
        parts.append(f"Third-party material: {holder}; reuse needs the rights holder's "
                     "permission")
    else:
        parts.append(f"License: {name}" + (f" ({url})" if url else ""))
    return ". ".join(p.rstrip(".") for p in parts) + "."


def _bib_escape(value: str) -> str:
    return re.sub(r"([{}&%$#_])", r"\\\1", value)


def citation_key(art: Mapping[str, Any]) -> str:
    """First author's surname + year, e.g. ``Smith2020`` (else the PMCID)."""
    authors = authors_of(art)
    # "Surname, Given" -> Surname; a bare name (PMC Cloud's citation) -> its last word
    name = (authors[0].split(",", 1)[0] if "," in authors[0] else authors[0].split()[-1]
            ) if authors else ""
    first = re.sub(r"[^A-Za-z0-9]", "", name)
    year = str(art.get("year") or "")
    return (first + year) or re.sub(r"[^A-Za-z0-9]", "", str(art.get("pmcid") or "article"))


def bibtex(art: Mapping[str, Any]) -> str:
    """A BibTeX ``@article`` entry for the article of a store row."""
    fields = [
        ("title", art.get("title")),
        ("author", " and ".join("others" if a == ET_AL else a for a in authors_of(art))),
        ("journal", art.get("journal")), ("year", art.get("year")), ("doi", art.get("doi")),
        ("pmid", art.get("pmid")), ("pmcid", art.get("pmcid")), ("url", article_link(art)),
    ]
    body = ",\n".join(f"  {k} = {{{_bib_escape(str(v))}}}" for k, v in fields if v)
    return f"@article{{{citation_key(art)},\n{body}\n}}\n"


def ris(art: Mapping[str, Any]) -> str:
    """An RIS record (``TY  - JOUR`` … ``ER  -``) for the article of a store row."""
    lines = ["TY  - JOUR"]
    if art.get("title"):
        lines.append(f"TI  - {art['title']}")
    lines += [f"AU  - {a}" for a in authors_of(art) if a != ET_AL]
    for tag, key in (("JO", "journal"), ("PY", "year"), ("DO", "doi")):
        if art.get(key):
            lines.append(f"{tag}  - {art[key]}")
    if art.get("pmid"):
        lines.append(f"AN  - PMID:{art['pmid']}")
    if art.get("pmcid"):
        lines.append(f"C2  - {art['pmcid']}")
    link = article_link(art)
    if link:
        lines.append(f"UR  - {link}")
    lines.append("ER  - ")
    return "\n".join(lines) + "\n"
