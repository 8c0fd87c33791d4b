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
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi

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
from figsearch.figure_types import LABELS

log = logging.getLogger("figsearch.api")
#: The rate-limit table shared by worker processes, inside ``settings.run_dir``.
RATE_LIMIT_DB = "ratelimit.sqlite"

DESCRIPTION = """Semantic search over the figures of PubMed Central.

Read-only: every route only reads the figure store and the current index, except
`POST /v1/admin/reload` (off unless `FIGSEARCH_ADMIN_TOKEN` is set).
Errors are JSON `{"detail": "<what is wrong>"}`; request validation errors are 422 with
`{"detail": "<summary>", "errors": [{"loc", "msg", "type"}]}`. Rate limit: 429 + `Retry-After`.
"""


def _lifespan(state: AppState, start_poller: bool):  # type: ignore[no-untyped-def]
    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if state.current is None:
            # Load (and warm up) before serving: uvicorn accepts connections only after
            # startup, so with several workers a request never lands on one that is still
            # loading, and readiness of one worker means the same of all that answer.
            await asyncio.to_thread(state.poll_once)
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
    _state_limits_in_schema(app, settings)
    return app


def _state_limits_in_schema(app: FastAPI, settings: Settings) -> None:
    """Write the configured limits (max_k, max_offset, max_query_chars, figure types) into OpenAPI.

    The route signatures are fixed at import time, but the limits are settings; without this
    a client generated from the schema would send requests the server then refuses.
    """
    limits: dict[str, dict[str, object]] = {
        "k": {"maximum": settings.max_k},
        "offset": {"maximum": settings.max_offset},
        "q": {"minLength": 1, "maxLength": settings.max_query_chars, "pattern": r"\S"},
        "figure_type": {"enum": sorted(LABELS)},
    }

    def openapi() -> dict:
        dim = _served_dim(app)
        if app.openapi_schema and app.openapi_schema.get("x-index-dim") == dim:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version,
                             description=app.description, routes=app.routes)
        for path_item in schema.get("paths", {}).values():
            for operation in path_item.values():
                for param in operation.get("parameters", []):
                    if param.get("in") == "query" and param.get("name") in limits:
                        param["schema"].update(limits[param["name"]])
        components = schema.get("components", {}).get("schemas", {})
        for field, extra in limits.items():
            for name in ("BatchSearchRequest", "BatchQuery"):
                prop = components.get(name, {}).get("properties", {}).get(field)
                if prop is not None:
                    _limit_property(prop, extra)
        _batch_query_schema(components.get("BatchQuery", {}), dim)
        schema["x-index-dim"] = dim
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _add_middlewares(app: FastAPI, settings: Settings) -> None:
    # Added innermost first: metrics sees every answer, including 413 and 429.
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=int(settings.max_upload_mb * 2**20))
    if settings.rate_limit_per_minute > 0:
        shared = str(Path(settings.run_dir) / RATE_LIMIT_DB) if settings.run_dir else None
        app.add_middleware(RateLimitMiddleware, per_minute=settings.rate_limit_per_minute,
                           shared_path=shared)
    origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    if origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"], max_age=600,
        )
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)


def _served_dim(app: FastAPI) -> int | None:
    loaded = getattr(app.state.figsearch, "current", None)
    return getattr(getattr(loaded, "index", None), "dim", None)


def _batch_query_schema(query: dict, dim: int | None) -> None:
    """State in the schema what the validator enforces: exactly one of ``q`` and ``vector``,
    and a non-zero vector of the served index's dimension."""
    props = query.get("properties", {})
    for name in ("q", "vector"):
        if name in props and "anyOf" in props[name]:
            variants = [v for v in props[name]["anyOf"] if v.get("type") != "null"]
            props[name] = {**{k: v for k, v in props[name].items() if k != "anyOf"}, **variants[0]}
    query["oneOf"] = [{"required": ["q"], "not": {"required": ["vector"]}},
                      {"required": ["vector"], "not": {"required": ["q"]}}]
    vector = props.get("vector")
    if vector is not None:
        vector["contains"] = {"not": {"const": 0}}
        if dim:
            vector.update({"minItems": dim, "maxItems": dim})


def _limit_property(prop: dict, extra: dict[str, object]) -> None:
    """Apply limits to a body property, inside ``anyOf`` for optional fields."""
    for variant in prop.get("anyOf", [prop]):
        kind = "integer" if "maximum" in extra else "string"
        if variant.get("type") == kind:
            variant.update(extra)


def app_from_env() -> FastAPI:
    """uvicorn factory: settings from ``FIGSEARCH_*`` environment variables."""
    return create_app(Settings())
