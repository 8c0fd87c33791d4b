"""Admin routes (state-changing): off unless ``settings.admin_token`` is set."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException

from figsearch.api.deps import AdminDep, StateDep
from figsearch.api.schemas import ErrorResponse, ReloadResponse
from figsearch.index import IndexLoadError

router = APIRouter(prefix="/v1/admin", tags=["admin"])


@router.post(
    "/reload", response_model=ReloadResponse,
    summary="Load indexes/current now (needs `Authorization: Bearer <admin_token>`)",
    responses={
        401: {"model": ErrorResponse, "description": "No bearer token"},
        403: {"model": ErrorResponse, "description": "Wrong token"},
        404: {"model": ErrorResponse, "description": "Admin endpoints disabled (no token set)"},
        409: {"model": ErrorResponse, "description": "The current version cannot be loaded"},
    },
)
def reload_index(_auth: AdminDep, state: StateDep) -> ReloadResponse:
    previous = state.current.version if state.current else None
    try:
        swapped = state.reload()
    except (IndexLoadError, RuntimeError, OSError, ValueError) as exc:
        raise HTTPException(409, f"reload failed, still serving {previous}: {exc}") from exc
    current = state.current.version if state.current else None
    return ReloadResponse(reloaded=swapped, index_version=current, previous_version=previous)
