"""Links and attribution of a figure, by the collection it came from.

A figure's ``source`` names its collection: ``pmc`` (PubMed Central), ``synthetic`` (made by
``figsearch synth``, never linked), ``publisher`` (JATS without a PMCID) or any name a JSONL
manifest gives (``--collection NAME`` or a ``collection`` field). Links the collection itself
supplied (``url`` / ``article_url`` of the manifest row, stored as ``figure_page_url`` /
``article_page_url``) come first; PMC figures get their PMC pages; an article with a DOI and no
other link gets its doi.org address.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

PMC_ARTICLE_URL = "https://pmc.ncbi.nlm.nih.gov/articles/{pmcid}/"
DOI_URL = "https://doi.org/{doi}"
#: collection names with a fixed meaning (any other name is a collection of its own)
PMC, SYNTHETIC, PUBLISHER = "pmc", "synthetic", "publisher"


def is_web_url(value: Any) -> bool:
    """Whether ``value`` is an http(s) URL (the only links figsearch passes on)."""
    text = str(value or "").strip().lower()
    return text.startswith(("https://", "http://")) and len(text) > len("https://")


def _pmc_article(figure: dict[str, Any]) -> str | None:
    pmcid = str(figure.get("pmcid") or "")
    if figure.get("source") == SYNTHETIC or not pmcid.upper().startswith("PMC"):
        return None
    return PMC_ARTICLE_URL.format(pmcid=pmcid)


def article_url(figure: dict[str, Any]) -> str | None:
    """The article's page: the collection's own link, else PMC, else doi.org; None for synthetic."""
    if figure.get("source") == SYNTHETIC:
        return None
    own = figure.get("article_page_url")
    if is_web_url(own):
        return str(own)
    pmc = _pmc_article(figure)
    if pmc:
        return pmc
    doi = str(figure.get("doi") or "").strip()
    return DOI_URL.format(doi=quote(doi, safe="/:;()._-")) if doi.startswith("10.") else None


def figure_url(figure: dict[str, Any]) -> str | None:
    """The figure's page: the collection's own link, else PMC's figure page, else None."""
    if figure.get("source") == SYNTHETIC:
        return None
    own = figure.get("figure_page_url")
    if is_web_url(own):
        return str(own)
    base = _pmc_article(figure)
    return f"{base}figure/{figure['fig_id']}/" if base and figure.get("fig_id") else None


def collection_name(source: str | None) -> str:
    """How a collection is named to people: "PMC" for pmc, else the name it gave itself."""
    return "PMC" if (source or "") == PMC else (source or "")
