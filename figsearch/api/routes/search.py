"""Search routes: text (GET), batch text/vector (POST JSON), image (POST multipart)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from figsearch.api import feed
from figsearch.api.deps import (
    BaseUrlDep,
    DedupParam,
    FilterDep,
    KParam,
    LoadedDep,
    OffsetParam,
    PinnedDep,
    SettingsDep,
    StateDep,
    build_filter,
)
from figsearch.api.errors import PayloadTooLarge
from figsearch.api.present import json_response, search_payload
from figsearch.api.schemas import (
    BatchSearchRequest,
    BatchSearchResponse,
    ErrorResponse,
    Mode,
    SearchResponse,
)
from figsearch.arrivals import parse_since
from figsearch.imaging import open_image
from figsearch.search import SearchInputError

router = APIRouter(prefix="/v1", tags=["search"])
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Bad query or filter"},
    404: {"model": ErrorResponse,
          "description": "`version` names no version of this index (the kept ones are named)"},
    410: {"model": ErrorResponse,
          "description": "`version` names a version that has been pruned (the kept ones are "
                         "named)"},
    409: {"model": ErrorResponse,
          "description": "The served index version lacks the signal this mode needs"},
    503: {"model": ErrorResponse, "description": "No index loaded yet"},
}


@router.get(
    "/search", response_model=SearchResponse, responses=_ERRORS,
    summary="Search figures by text",
    description=(
        "Hybrid (default: weighted fusion of caption semantics, BM25 over captions/titles and -"
        " when it passed its quality check - dense CLIP image retrieval; see docs/api.md),"
        " caption, dense or keyword search. Filters apply before truncation to `k`; near-duplicate images"
        " are collapsed. Any text is accepted: FTS syntax and SQL-looking strings are searched"
        " as plain words."
    ),
)
def search(
    loaded: PinnedDep, flt: FilterDep, base_url: BaseUrlDep,
    q: Annotated[str, Query(description="Query text.", examples=["MAPK signalling pathway"])],
    k: KParam = 20, offset: OffsetParam = 0,
    mode: Annotated[Mode, Query(description="hybrid | dense | keyword | caption")] = "hybrid",
    dedup: DedupParam = True,
) -> Response:
    page = loaded.service.search_text(q, k=k, offset=offset, mode=mode, flt=flt, dedup=dedup)
    return json_response(search_payload(page, base_url, flt, dedup=dedup))


@router.post(
    "/search", response_model=BatchSearchResponse, responses=_ERRORS,
    summary="Several queries in one call (text and/or raw embedding vectors)",
    description=(
        "Each query is `{\"q\": text}` or `{\"vector\": [floats]}` (the index's dimension, "
        "finite; normalised here). Paging and filters apply to every query. A bad query fails "
        "the whole call with 400 naming it (`queries[i]: ...`)."
    ),
)
def search_batch(
    body: BatchSearchRequest, loaded: LoadedDep, state: StateDep, base_url: BaseUrlDep
) -> Response:
    flt = build_filter(state, body.year_from, body.year_to, body.journal, body.license,
                       body.figure_type, body.pmcid)
    loaded = state.pinned(loaded, body.version)
    responses = []
    for i, item in enumerate(body.queries):
        try:
            if item.vector is not None:
                page = loaded.service.search_vector(
                    item.vector, k=body.k, offset=body.offset, flt=flt, dedup=body.dedup
                )
            else:
                page = loaded.service.search_text(
                    item.q or "", k=body.k, offset=body.offset, mode=item.mode or body.mode,
                    flt=flt, dedup=body.dedup,
                )
        except SearchInputError as exc:
            raise type(exc)(f"queries[{i}]: {exc}") from exc  # keeps its status (400 or 409)
        path = None if item.vector is not None else "/v1/search"  # a vector: no URL re-runs it
        responses.append(search_payload(page, base_url, flt, path=path, dedup=body.dedup))
    return json_response({"responses": responses})


@router.post(
    "/search/image", response_model=SearchResponse,
    responses={**_ERRORS, 413: {"model": ErrorResponse, "description": "Upload too large"}},
    summary="Search figures by example image",
    description=(
        "Multipart upload in field `image` (PNG, JPEG, TIFF, GIF, WebP...). Filters and paging "
        "are query parameters. Refused with 400: files that are not images, truncated images, "
        "decompression bombs; with 413: uploads over `max_upload_mb`."
    ),
)
async def search_image(
    image: UploadFile, loaded: PinnedDep, flt: FilterDep,
    settings: SettingsDep, base_url: BaseUrlDep, k: KParam = 20, offset: OffsetParam = 0,
    dedup: DedupParam = True,
) -> Response:
    limit = int(settings.max_upload_mb * 1024 * 1024)
    data = await image.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(f"image is over the {settings.max_upload_mb:g} MB upload limit")
    if not data:
        raise HTTPException(400, "the uploaded image file is empty")
    img = await run_in_threadpool(open_image, data, settings.max_image_pixels)
    page = await run_in_threadpool(
        loaded.service.search_image, img, k=k, offset=offset, flt=flt, dedup=dedup
    )
    return json_response(search_payload(page, base_url, flt, path=None, dedup=dedup))


@router.get(
    "/search.atom", responses={**_ERRORS, 200: {
        "content": {"application/atom+xml": {}},
        "description": "An Atom 1.0 feed (RFC 4287) of the figures that arrived recently"}},
    response_class=Response,
    summary="Atom feed of new figures matching a search",
    description=(
        "The figures that arrived in the last `versions` index versions (default 1: the "
        "latest nightly run) or in versions published since `since` (an ISO date or date-time),"
        " matching `q` (optional: without it, every new figure passing the filters), newest "
        "version first. Same mode, filters and `version` as /v1/search; `k` entries at most. "
        "Entry ids are the figures' API URLs; `updated` is the publish time of the version the "
        "figure arrived in. 409 for an index version built before arrivals were recorded."
    ),
)
def search_feed(
    loaded: PinnedDep, flt: FilterDep, base_url: BaseUrlDep, state: StateDep,
    q: Annotated[str, Query(max_length=1000, description="Query text; empty: all new figures.")] = "",
    mode: Annotated[Mode, Query(description="hybrid | dense | keyword | caption")] = "hybrid",
    versions: Annotated[int | None, Query(
        ge=1, le=10_000, description="Figures that arrived in the last N index versions.")] = None,
    since: Annotated[str | None, Query(
        max_length=40, description="Figures that arrived in versions published at or after "
        "this ISO date or date-time (UTC unless it says otherwise).")] = None,
    k: Annotated[int, Query(ge=1, le=1000, description="Entries at most.")] = 50,
    dedup: DedupParam = True,
) -> Response:
    try:
        when = parse_since(since) if since is not None else None
    except ValueError as exc:
        raise SearchInputError(str(exc)) from None
    req = feed.FeedRequest(q=q.strip(), mode=mode, flt=flt, k=k, versions=versions, since=when,
                           dedup=dedup,
                           version=None if loaded is state.current else loaded.version)
    items = feed.arrivals(loaded, req)
    return Response(feed.render(req, items, loaded, base_url), media_type=feed.MEDIA_TYPE)
