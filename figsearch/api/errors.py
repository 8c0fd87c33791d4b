"""Error responses: every failure is JSON ``{"detail": "<what is wrong>"}`` with a 4xx status.

* :class:`~figsearch.search.SearchInputError` and :class:`~figsearch.imaging.ImageError` -> 400
* :class:`~figsearch.search.SignalUnavailable` (a mode the served index cannot answer: no image
  model, no caption index) -> 409
* :class:`~figsearch.search.FigureNotFound` -> 404
* :class:`VersionUnavailable` (``version=`` names a version not kept) -> 404 for a name this
  index never had, 410 for one it had but has pruned; the message names the kept versions
* request validation (wrong types, out-of-range numbers, unknown enum values) -> 422 with
  ``{"detail": "<readable summary>", "errors": [{"loc", "msg", "type"}, ...]}``
* anything unexpected -> logged with its traceback, JSON 500 (a safety net; tests show none).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from figsearch.imaging import ImageError
from figsearch.search import FigureNotFound, SearchInputError, SignalUnavailable

log = logging.getLogger("figsearch.api")

_LOCATIONS = {"query": "query parameter", "path": "path parameter", "body": "body field",
              "header": "header", "form": "form field", "cookie": "cookie"}


class PayloadTooLarge(Exception):
    """An upload or request body over the configured limit."""


class VersionUnavailable(LookupError):
    """A pinned search (``version=``) names a version that is not kept: ``gone`` when the
    version history knows it (pruned: 410), else never built here (404)."""

    def __init__(self, message: str, gone: bool) -> None:
        super().__init__(message)
        self.gone = gone


def _where(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = list(loc)
    if not parts:
        return "request"
    kind = _LOCATIONS.get(str(parts[0]), str(parts[0]))
    path = ".".join(str(p) for p in parts[1:])
    return f"{kind} {path}".strip()


def validation_message(errors: list[dict[str, Any]]) -> str:
    """One readable line for a list of pydantic errors, e.g. ``query parameter k: ...``."""
    return "; ".join(f"{_where(e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in errors)


def _plain_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Only JSON-safe fields (pydantic's ``ctx`` may hold exception objects)."""
    return [
        {"loc": [p if isinstance(p, int) else str(p) for p in e.get("loc", ())],
         "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
        for e in errors
    ]


async def _validation(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    return JSONResponse(
        {"detail": validation_message(errors), "errors": _plain_errors(errors)}, status_code=422
    )


async def _http(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return JSONResponse(
        {"detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers
    )


async def _bad_input(_request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=400)


async def _conflict(_request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=409)


async def _not_found(_request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc.args[0] if exc.args else exc)}, status_code=404)


async def _version_unavailable(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, VersionUnavailable)
    return JSONResponse({"detail": str(exc)}, status_code=410 if exc.gone else 404)


async def _too_large(_request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=413)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"detail": "internal error; it has been logged"}, status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    """Register the JSON error handlers above on ``app``."""
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(SearchInputError, _bad_input)
    app.add_exception_handler(SignalUnavailable, _conflict)
    app.add_exception_handler(ImageError, _bad_input)
    app.add_exception_handler(FigureNotFound, _not_found)
    app.add_exception_handler(PayloadTooLarge, _too_large)
    app.add_exception_handler(VersionUnavailable, _version_unavailable)
    app.add_exception_handler(Exception, _unexpected)
