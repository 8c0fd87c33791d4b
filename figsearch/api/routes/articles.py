"""Article route: an article's metadata and all its figures."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Path, Query
from fastapi.responses import PlainTextResponse, Response

from figsearch.api.deps import BaseUrlDep, StateDep, StoreDep
from figsearch.api.present import figure_detail
from figsearch.api.schemas import ArticleResponse, ErrorResponse
from figsearch.links import article_url
from figsearch.rights import bibtex, ris

router = APIRouter(prefix="/v1/articles", tags=["articles"])
CITATION_TYPES = {"bibtex": ("application/x-bibtex", "bib"),
                  "ris": ("application/x-research-info-systems", "ris")}


@router.get(
    "/{pmcid:path}/citation", response_class=Response,
    responses={404: {"model": ErrorResponse, "description": "No such article",
                     "content": {"application/json": {}}},
               200: {"content": {t: {"schema": {"type": "string"}}
                                 for t, _ in CITATION_TYPES.values()}}},
    summary="The article's citation as BibTeX or RIS (a file to import in a reference manager)",
)
def get_citation(
    pmcid: Annotated[str, Path(max_length=300, examples=["PMC5519703"])], store: StoreDep,
    format: Annotated[Literal["bibtex", "ris"], Query(description="bibtex or ris")] = "bibtex",
) -> PlainTextResponse:
    ids = store.figure_ids_for_article(pmcid.strip())
    figures = store.get_figures(ids[:1]) if ids else {}
    if not figures:
        raise HTTPException(404, f"no article {pmcid!r} with figures in the store")
    first = next(iter(figures.values()))
    media_type, ext = CITATION_TYPES[format]
    body = bibtex(first) if format == "bibtex" else ris(first)
    name = "".join(ch for ch in str(first.get("pmcid") or "article") if ch.isalnum()) or "article"
    return PlainTextResponse(body, media_type=media_type, headers={
        "Content-Disposition": f'attachment; filename="{name}.{ext}"'})


@router.get(
    "/{pmcid:path}", response_model=ArticleResponse,
    responses={404: {"model": ErrorResponse, "description": "No such article"}},
    summary="An article and its figures (by PMCID, or by article key for non-PMC articles)",
)
def get_article(
    pmcid: Annotated[str, Path(max_length=300, examples=["PMC5519703"])],
    store: StoreDep, state: StateDep, base_url: BaseUrlDep,
) -> ArticleResponse:
    ids = store.figure_ids_for_article(pmcid.strip())
    figures = store.get_figures(ids) if ids else {}
    if not figures:
        raise HTTPException(404, f"no article {pmcid!r} with figures in the store")
    loaded = state.current
    details = [
        figure_detail(f, base_url, bool(loaded and loaded.index and loaded.index.contains(fid)))
        for fid, f in sorted(figures.items())
    ]
    first = figures[min(figures)]
    return ArticleResponse(
        pmcid=first.get("pmcid"), key=str(first.get("article_key") or ""),
        title=first.get("title") or "", journal=first.get("journal") or "",
        year=first.get("year"), doi=first.get("doi"), license=first.get("license_class") or "none",
        license_url=first.get("license_url") or None, source=first.get("source") or "",
        article_url=article_url(first), authors=list(first.get("authors") or []),
        bibtex=bibtex(first), ris=ris(first), figures=details,
    )
