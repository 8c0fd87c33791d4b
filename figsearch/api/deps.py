"""Dependencies shared by the routes, as ``Annotated[..., Depends(...)]`` aliases.

They are ``async def`` because none of them blocks: FastAPI runs a plain ``def`` dependency in
its thread pool, one thread hop per dependency and request (five on a search), which cost more
than the work they do.

Tests point the API at temporary data with ``app.dependency_overrides[get_app_state] = ...``
(or simply build the app with ``create_app(Settings(data_dir=tmp))``).
"""

from __future__ import annotations

import hmac
from typing import Annotated, Literal

from fastapi import Depends, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool

from figsearch.api.schemas import LICENSE_CHOICES
from figsearch.api.state import AppState, Loaded
from figsearch.core.config import Settings
from figsearch.figure_types import LABELS
from figsearch.store import FigureFilter, FigureStore


async def get_app_state(request: Request) -> AppState:
    """The process's :class:`AppState` (set by ``create_app``)."""
    state: AppState = request.app.state.figsearch
    return state


StateDep = Annotated[AppState, Depends(get_app_state)]


async def get_settings(state: StateDep) -> Settings:
    return state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_loaded(state: StateDep) -> Loaded:
    """The current snapshot, taken once per request (a swap never changes it mid-request)."""
    loaded = state.current
    if loaded is None:
        reason = state.last_error or "no index has been loaded yet"
        raise HTTPException(503, f"search is not ready: {reason}", headers={"Retry-After": "5"})
    return loaded


LoadedDep = Annotated[Loaded, Depends(get_loaded)]


async def get_pinned(
    state: StateDep, loaded: LoadedDep,
    version: Annotated[str | None, Query(
        max_length=100, description="Answer from this kept index version (a pinned search: "
        "the `index_version` of an earlier response); default: the current version.")] = None,
) -> Loaded:
    """The snapshot a search route answers from: the current one, or the kept version that
    ``version=`` names (opened on demand; 404/410 naming the kept versions otherwise). Only a
    pinned search leaves the event loop (opening a version blocks): an unpinned one costs no
    thread hop."""
    if not version or version == loaded.version:
        return loaded
    return await run_in_threadpool(state.pinned, loaded, version)


PinnedDep = Annotated[Loaded, Depends(get_pinned)]


async def get_store(state: StateDep) -> FigureStore:
    """The store as the served version sees it (its figure types), else the plain store."""
    loaded = state.current
    if loaded is not None:
        return loaded.service.store
    store = state.store
    if store is None:
        raise HTTPException(503, f"no figure store at {state.settings.db_path} yet")
    return store


StoreDep = Annotated[FigureStore, Depends(get_store)]


async def get_base_url(request: Request, settings: SettingsDep) -> str:
    """Base of the image links in results: ``settings.public_base_url`` or the request's."""
    return (settings.public_base_url or str(request.base_url)).rstrip("/")


BaseUrlDep = Annotated[str, Depends(get_base_url)]

LicenseParam = Literal[LICENSE_CHOICES]  # type: ignore[valid-type]


def build_filter(
    state: AppState, year_from: int | None, year_to: int | None, journal: str | None,
    license: str | None, figure_type: str | None, pmcid: str | None,
) -> FigureFilter:
    """A FigureFilter from API parameters; unknown values -> HTTP 400 saying which."""
    if year_from is not None and year_to is not None and year_from > year_to:
        raise HTTPException(400, f"year_from ({year_from}) is after year_to ({year_to})")
    if figure_type:
        known = set(LABELS) | (state.current.figure_types if state.current else frozenset())
        if figure_type not in known:
            raise HTTPException(
                400, f"unknown figure_type {figure_type!r}; known: {', '.join(sorted(known))}"
            )
    license = license or "any"
    return FigureFilter(
        year_from=year_from, year_to=year_to, journal=(journal or "").strip() or None,
        commercial_only=license == "commercial", reusable_only=license == "reusable",
        license_class=None if license in ("any", "commercial", "reusable") else license,
        figure_type=figure_type or None, pmcid=(pmcid or "").strip() or None,
    )


async def search_filters(
    state: StateDep,
    year_from: Annotated[int | None, Query(ge=1000, le=3000, description="Earliest year.")] = None,
    year_to: Annotated[int | None, Query(ge=1000, le=3000, description="Latest year.")] = None,
    journal: Annotated[str | None, Query(max_length=300, description="Journal (exact, any case).")] = None,
    license: Annotated[
        LicenseParam | None,
        Query(description="`commercial` = the article's license allows commercial reuse; "
                          "`reusable` = the figure's own rights allow reuse (open license, no "
                          "third-party statement); `any`; or one class."),
    ] = None,
    figure_type: Annotated[
        str | None, Query(max_length=100, description="Figure type (see /v1/facets).")
    ] = None,
    pmcid: Annotated[str | None, Query(max_length=40, description="Only this article.")] = None,
) -> FigureFilter:
    """Filter query parameters shared by every search route."""
    return build_filter(state, year_from, year_to, journal, license, figure_type, pmcid)


FilterDep = Annotated[FigureFilter, Depends(search_filters)]

KParam = Annotated[int, Query(ge=1, le=1000, description="Results per page (<= settings.max_k).")]
OffsetParam = Annotated[
    int, Query(ge=0, le=100_000, description="Results to skip (<= settings.max_offset).")
]

DedupParam = Annotated[
    bool, Query(description="Collapse near-duplicate images (same sha256 or cosine > "
                            "settings.dedup_threshold). Default true.")
]


async def require_admin(request: Request, settings: SettingsDep) -> None:
    """Bearer-token check; admin routes answer 404 while ``settings.admin_token`` is empty."""
    token = settings.admin_token
    if not token:
        raise HTTPException(404, "admin endpoints are disabled (set FIGSEARCH_ADMIN_TOKEN)")
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise HTTPException(
            401, "missing `Authorization: Bearer <token>` header",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise HTTPException(403, "wrong admin token")


AdminDep = Annotated[None, Depends(require_admin)]
