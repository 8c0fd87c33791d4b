"""Turning store rows and search pages into the API's response models."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from fastapi.responses import Response

from figsearch import timing
from figsearch.api.schemas import FigureDetail, SearchResponse, SearchResult
from figsearch.links import article_url, figure_url
from figsearch.rights import attribution, effective_license, is_reusable, reuse
from figsearch.search import SearchHit, SearchPage
from figsearch.store import FigureFilter

#: the route that re-runs a text search (``permalink``'s default)
SEARCH_PATH = "/v1/search"


def links(figure: dict[str, Any], base_url: str) -> dict[str, str | None]:
    """Image links on this API (None without an image) and PMC links (None for synthetic)."""
    has_image = bool(figure.get("has_image") and figure.get("image_path"))
    fid = int(figure["id"])
    return {
        "thumbnail_url": f"{base_url}/v1/figures/{fid}/thumbnail" if has_image else None,
        "image_url": f"{base_url}/v1/figures/{fid}/image" if has_image else None,
        "article_url": article_url(figure),
        "figure_url": figure_url(figure),
    }


def _common(figure: dict[str, Any], base_url: str) -> dict[str, Any]:
    license_class, _text, license_url = effective_license(figure)
    return {
        "id": int(figure["id"]), "label": figure.get("label") or "",
        "caption": figure.get("caption") or "", "figure_type": figure.get("figure_type"),
        "figure_type_score": figure.get("figure_type_score"), "pmcid": figure.get("pmcid"),
        "title": figure.get("title") or "", "journal": figure.get("journal") or "",
        "year": figure.get("year"), "license": license_class,
        "license_url": license_url or None, "article_license": figure.get("license_class") or "none",
        "figure_license": figure.get("rights_license_class") or None,
        "rights_statement": figure.get("rights_statement") or None,
        "rights_holder": figure.get("rights_holder") or None,
        "third_party": figure.get("third_party") or None, "reuse": reuse(figure),
        "reusable": is_reusable(figure), "authors": list(figure.get("authors") or []),
        "attribution": attribution(figure), "doi": figure.get("doi"),
        "source": figure.get("source") or "", **links(figure, base_url),
    }


def panel_crop_url(base_url: str, figure_id: int, number: int) -> str:
    """This API's URL of one panel's crop."""
    return f"{base_url}/v1/figures/{int(figure_id)}/panels/{int(number)}/image"


def figure_size(figure: dict[str, Any]) -> list[int] | None:
    """[width, height] of the stored figure image, the pixel grid of panel boxes (so that a
    client can outline a box on any rendering of the image), or None when unknown."""
    w, h = figure.get("width"), figure.get("height")
    return [int(w), int(h)] if w and h else None


def panel_payload(hit: SearchHit, base_url: str) -> dict[str, Any] | None:
    """A hit's matched panel as the API returns it (with its crop URL), or None."""
    if hit.panel is None:
        return None
    return {**hit.panel.as_dict(), "figure_size": figure_size(hit.figure),
            "crop_url": panel_crop_url(base_url, hit.id, hit.panel.number)}


def figure_panels_payload(figure: dict[str, Any], panels: list[Any], base_url: str
                          ) -> dict[str, Any]:
    """A figure's aligned panels (:meth:`FigureStore.figure_panels`) as the API lists them."""
    from figsearch.panel_index import own_subcaption

    figure_id, size = int(figure["id"]), figure_size(figure)
    return {"figure_id": figure_id, "compound": len(panels) > 1, "panels": [
        {"number": n, "box": [int(v) for v in p.box], "letter": p.letter,
         "subcaption": own_subcaption(p), "figure_size": size,
         "crop_url": panel_crop_url(base_url, figure_id, n)}
        for n, p in enumerate(panels, 1)]}


def filter_params(flt: FigureFilter | None) -> dict[str, Any]:
    """``flt`` as the API's filter parameters (only those set): what a response echoes and a
    permalink carries, so that the same search can be run again."""
    flt = flt or FigureFilter()
    license = ("commercial" if flt.commercial_only else "reusable" if flt.reusable_only
               else flt.license_class)
    values = {"year_from": flt.year_from, "year_to": flt.year_to, "journal": flt.journal,
              "license": license, "figure_type": flt.figure_type, "pmcid": flt.pmcid}
    return {key: v for key, v in values.items() if v not in (None, "")}


def permalink(page: SearchPage, flt: FigureFilter | None, path: str | None = SEARCH_PATH,
              dedup: bool = True) -> str | None:
    """Relative URL that runs this search again against the same index version
    (``version=`` pinned, answered while the version is kept): ``path`` with the query and
    mode (for ``/v1/search``), the filters, paging and dedup. None when ``path`` is None (an
    uploaded image or a raw vector cannot be put in a URL)."""
    if path is None:
        return None
    params: dict[str, Any] = {"q": page.query, "mode": page.mode} if path == SEARCH_PATH else {}
    params.update(filter_params(flt))
    params["k"] = page.k
    if page.offset:
        params["offset"] = page.offset
    if not dedup:
        params["dedup"] = "false"
    params["version"] = page.index_version
    return f"{path}?{urlencode(params)}"


def figure_fields(figure: dict[str, Any], base_url: str) -> dict[str, Any]:
    """The fields every figure answer shares (metadata, rights, links), e.g. a feed entry's."""
    return _common(figure, base_url)


def search_payload(page: SearchPage, base_url: str, flt: FigureFilter | None = None, *,
                   path: str | None = SEARCH_PATH, dedup: bool = True) -> dict[str, Any]:
    """The JSON of one search page as plain dicts: what :func:`search_response` dumps, built
    without pydantic models (the hot path; tests check both agree). ``flt``, ``path`` and
    ``dedup`` describe the request, echoed as ``filters`` and ``permalink``."""
    results = []
    for h in page.hits:
        item = _common(h.figure, base_url)
        item.update(rank=h.rank, score=round(float(h.score), 6),
                    caption_highlighted=h.caption_highlighted, ocr_snippet=h.ocr_snippet,
                    signals=[s.as_dict() for s in h.signals], panel=panel_payload(h, base_url))
        results.append(item)
    return {"query": page.query, "mode": page.mode, "k": page.k, "offset": page.offset,
            "index_version": page.index_version, "took_ms": page.took_ms,
            "filters": filter_params(flt),
            "permalink": permalink(page, flt, path, dedup), "results": results,
            **_match(page)}


def _match(page: SearchPage) -> dict[str, Any]:
    """The response's match_quality / match_note / match_evidence (null quality: not a text
    query)."""
    m = page.match
    if m is None:
        return {"match_quality": None, "match_note": "", "match_evidence": {}}
    return {"match_quality": m.quality, "match_note": m.note, "match_evidence": m.evidence()}


def json_response(payload: dict[str, Any]) -> Response:
    """A JSON response from plain data, timed as the ``serialise`` stage."""
    with timing.stage("serialise"):
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    return Response(body, media_type="application/json")


def search_response(page: SearchPage, base_url: str, flt: FigureFilter | None = None, *,
                    path: str | None = SEARCH_PATH, dedup: bool = True) -> SearchResponse:
    """The JSON of one search page."""
    results = [
        SearchResult(
            rank=h.rank, score=round(float(h.score), 6), caption_highlighted=h.caption_highlighted,
            ocr_snippet=h.ocr_snippet, signals=[s.as_dict() for s in h.signals],
            panel=panel_payload(h, base_url), **_common(h.figure, base_url),
        )
        for h in page.hits
    ]
    return SearchResponse(
        query=page.query, mode=page.mode, k=page.k, offset=page.offset,
        index_version=page.index_version, took_ms=page.took_ms, results=results, **_match(page),
        filters=filter_params(flt), permalink=permalink(page, flt, path, dedup),
    )


def figure_detail(figure: dict[str, Any], base_url: str, in_index: bool) -> FigureDetail:
    """The JSON of one figure with its article metadata."""
    return FigureDetail(
        fig_id=str(figure.get("fig_id") or ""), width=figure.get("width"),
        height=figure.get("height"), has_image=bool(figure.get("has_image")),
        license_text=effective_license(figure)[1] or None, pmid=figure.get("pmid"), in_index=in_index,
        attributes=figure.get("attributes") or {}, ocr_text=figure.get("ocr_text"),
        **_common(figure, base_url),
    )
