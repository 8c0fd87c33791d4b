"""Liveness, readiness, stats, facets and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from figsearch.api.deps import StateDep, StoreDep
from figsearch.api.schemas import (
    LICENSE_CHOICES,
    ErrorResponse,
    FacetsResponse,
    StatsResponse,
    YearRange,
)

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> JSONResponse:
    # async and a ready response: probes need no thread hop or response validation
    return JSONResponse({"status": "ok"})


@router.get(
    "/readyz", summary="Readiness: 200 once an index and its model are loaded, else 503",
    responses={503: {"model": ErrorResponse, "description": "Not ready yet"}},
)
async def readyz(state: StateDep) -> JSONResponse:
    loaded = state.current
    if loaded is None:
        reason = state.last_error or "no index has been loaded yet"
        return JSONResponse({"detail": f"not ready: {reason}"}, status_code=503)
    return JSONResponse({"status": "ready", "index_version": loaded.version,
                         "signals": loaded.service.signals()})


@router.get("/v1/stats", response_model=StatsResponse, summary="Index version, counts and model")
def stats(state: StateDep) -> StatsResponse:
    loaded = state.current
    store = state.store
    index = loaded.index if loaded else None
    manifest = index.manifest if index else {}
    service = loaded.service if loaded else None
    return StatsResponse(
        ready=loaded is not None, index_version=loaded.version if loaded else None,
        index_count=index.ntotal if index else 0,
        index_factory=manifest.get("factory"), index_built_at=manifest.get("built_at"),
        model_spec=manifest.get("model_spec"),
        model_key=getattr(loaded.encoder, "model_key", None) if loaded else None,
        encoder_backend=loaded.encoder_backend if loaded else None,
        dim=index.dim if index else None,
        store=store.counts() if store else {}, reloads=state.reloads,
        last_reload_error=state.last_error,
        filters_prepared=loaded.prepared_filters if loaded else 0,
        signals=service.signals() if service else {},
        fusion=(f"{service.fusion.describe()} over {', '.join(service.fused_signals())}"
                if service else None),
    )


@router.get(
    "/v1/facets", response_model=FacetsResponse,
    summary="Values for the filter pickers: journals, figure types, licenses, year range",
    responses={503: {"model": ErrorResponse, "description": "No figure store yet"}},
)
def facets(store: StoreDep) -> FacetsResponse:
    with store.engine.connect() as conn:
        lo, hi = conn.execute(text("SELECT min(year), max(year) FROM articles")).one()
    return FacetsResponse(
        journals=store.distinct_values("journal"),
        figure_types=store.distinct_values("figure_type"),
        license_classes=store.distinct_values("license_class"),
        license_options=list(LICENSE_CHOICES),
        years=YearRange(min=lo, max=hi),
    )


@router.get("/metrics", summary="Prometheus metrics (request counts, latency by route)",
            response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def metrics(request: Request) -> Response:
    registry = request.app.state.metrics.exposition_registry()
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
