"""The FastAPI application factory.

``create_app(settings)`` wires the routers, JSON error handlers, middlewares (CORS, rate
limit, body size limit, metrics) and the background task that hot-reloads ``indexes/current``.
``app_from_env()`` is the uvicorn factory used by ``figsearch serve`` (settings from the
environment).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from figsearch.api.errors import install_error_handlers
from figsearch.api.middleware import (
    BodySizeLimitMiddleware,
    Metrics,
    MetricsMiddleware,
    RateLimitMiddleware,
)
from figsearch.api.routes import admin, articles, figures, health, search
from figsearch.api.schemas import ValidationErrorResponse
from figsearch.api.state import AppState
from figsearch.core.config import Settings, get_settings

log = logging.getLogger("figsearch.api")

DESCRIPTION = """Semantic search over the figures of PubMed Central.

Read-only: every route only reads the figure store and the current index, except
`POST /v1/admin/reload` (off unless `FIGSEARCH_ADMIN_TOKEN` is set).
Errors are JSON `{"detail": "<what is wrong>"}`; request validation errors are 422 with
`{"detail": "<summary>", "errors": [{"loc", "msg", "type"}]}`. Rate limit: 429 + `Retry-After`.
"""


def _lifespan(state: AppState, start_poller: bool):  # type: ignore[no-untyped-def]
    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(state.poll_forever()) if start_poller else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            state.close()

    return lifespan


def create_app(
    settings: Settings | None = None, state: AppState | None = None, start_poller: bool = True
) -> FastAPI:
    """A configured app. ``start_poller`` runs the reload loop (first poll at startup)."""
    settings = settings or get_settings()
    state = state or AppState(settings)
    app = FastAPI(
        title="figsearch API", version="1", description=DESCRIPTION,
        lifespan=_lifespan(state, start_poller),
        responses={422: {"model": ValidationErrorResponse, "description": "Invalid request"}},
    )
    app.state.figsearch = state
    app.state.metrics = Metrics()
    install_error_handlers(app)
    for module in (search, figures, articles, health, admin):
        app.include_router(module.router)
    _add_middlewares(app, settings)
    return app


def _add_middlewares(app: FastAPI, settings: Settings) -> None:
    # Added innermost first: metrics sees every answer, including 413 and 429.
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=int(settings.max_upload_mb * 2**20))
    if settings.rate_limit_per_minute > 0:
        app.add_middleware(RateLimitMiddleware, per_minute=settings.rate_limit_per_minute)
    origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    if origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"], max_age=600,
        )
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)


def app_from_env() -> FastAPI:
    """uvicorn factory: settings from ``FIGSEARCH_*`` environment variables."""
    return create_app(Settings())
