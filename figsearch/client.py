"""Python client for the figsearch HTTP API (httpx).

>>> from figsearch.client import FigSearchClient, signals_line
>>> api = FigSearchClient("http://127.0.0.1:8000")  # default: $FIGSEARCH_API_URL
>>> hits = api.search("MAPK signalling pathway", k=5, license="commercial")
>>> [r["label"] for r in hits["results"]]
>>> hits["match_quality"], [signals_line(r["signals"]) for r in hits["results"]]

Every failure is a :class:`FigSearchError` carrying the HTTP status and the API's own
``detail`` message; a server that cannot be reached (connection refused, DNS, timeout) raises
the subclass :class:`APIUnavailable` (``status_code`` 0 then, or 503 when the API says it is
not ready).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx

FILTER_NAMES = ("year_from", "year_to", "journal", "license", "figure_type", "pmcid")


class FigSearchError(Exception):
    """An error answer of the API (4xx/5xx) or a transport failure."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(f"{status_code}: {message}" if status_code else message)
        self.status_code = status_code
        self.message = message


class APIUnavailable(FigSearchError):
    """The API cannot be reached, timed out, or is not ready yet (503)."""


def _detail(response: httpx.Response) -> str:
    """The API's ``detail`` message, else the response text, else the reason phrase."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("detail"):
        detail = body["detail"]
        return detail if isinstance(detail, str) else str(detail)
    text = response.text.strip()
    return text[:500] if text else response.reason_phrase


def _filters(filters: dict[str, Any]) -> dict[str, Any]:
    """Keep only known, set filters; unknown names are a programming error."""
    unknown = set(filters) - set(FILTER_NAMES)
    if unknown:
        raise TypeError(f"unknown filter(s): {', '.join(sorted(unknown))}; use {FILTER_NAMES}")
    return {name: value for name, value in filters.items() if value not in (None, "")}


def signals_line(signals: list[dict[str, Any]]) -> str:
    """A compact line of a search result's ``signals`` (why it matched), largest share of the
    score first, e.g. ``keyword 0.41 (caption, title: EGFR, NSCLC) · caption 0.22 (cos 0.63) ·
    image 0.05 (cos 0.31)``; in a single-signal mode the one number is the score itself. An
    image query's verified source says so first: ``source of the query image (87 matching
    keypoints) · image 0.31 (cos 0.31)``."""
    names = {"dense": "image", "ocr": "in-figure text"}
    parts: list[str] = []
    for s in sorted(signals, key=lambda s: -float(s.get("contribution") or 0.0)):
        name = str(s.get("name") or "?")
        if name == "source":  # image queries: orders the hits, adds nothing to the score
            parts.insert(0, f"source of the query image ({int(s.get('raw') or 0)} matching "
                         "keypoints)")
            continue
        text = f"{names.get(name, name)} {float(s.get('contribution') or 0.0):.2f}"
        if name == "keyword" and s.get("fields"):
            fields = ", ".join(names.get(f, f) for f in s["fields"])
            terms = ", ".join(s.get("terms") or [])
            text += f" ({fields}: {terms})" if terms else f" ({fields})"
        elif s.get("normalised") is not None and s.get("raw") is not None:
            text += f" (cos {float(s['raw']):.2f})"
        parts.append(text)
    return " · ".join(parts)


def _version(version: str | None) -> dict[str, str]:
    """The ``version=`` parameter of a pinned search (nothing for the current version)."""
    return {"version": version} if version else {}


class FigSearchClient:
    """Synchronous client; one pooled HTTP connection set per instance (thread-safe)."""

    def __init__(
        self, base_url: str | None = None, timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """``base_url`` defaults to the ``FIGSEARCH_API_URL`` setting (``http://127.0.0.1:8000``)."""
        if base_url is None:
            from figsearch.core.config import Settings

            base_url = Settings().api_url
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport)

    # -- plumbing ---------------------------------------------------------------------
    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> FigSearchClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise APIUnavailable(0, f"figsearch API at {self.base_url} timed out ({exc})") from exc
        except httpx.TransportError as exc:
            raise APIUnavailable(
                0, f"figsearch API at {self.base_url} is unreachable ({exc})"
            ) from exc
        if response.status_code == 503:
            raise APIUnavailable(503, _detail(response))
        if response.status_code >= 400:
            raise FigSearchError(response.status_code, _detail(response))
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        data = self._request(method, path, **kwargs).json()
        if not isinstance(data, dict):
            raise FigSearchError(0, f"unexpected answer from {path}: {type(data).__name__}")
        return data

    # -- search -----------------------------------------------------------------------
    def search(
        self, q: str, k: int = 20, offset: int = 0, mode: str = "hybrid",
        year_from: int | None = None, year_to: int | None = None, journal: str | None = None,
        license: str | None = None, figure_type: str | None = None, pmcid: str | None = None,
        version: str | None = None,
    ) -> dict[str, Any]:
        """Text search (``mode`` hybrid | dense | keyword | caption); ``version`` pins a kept
        index version (a response's ``index_version``); see docs/api.md for the fields."""
        params = {"q": q, "k": k, "offset": offset, "mode": mode, **_version(version)}
        params.update(_filters({
            "year_from": year_from, "year_to": year_to, "journal": journal,
            "license": license, "figure_type": figure_type, "pmcid": pmcid,
        }))
        return self._json("GET", "/v1/search", params=params)

    def rerun(self, permalink: str) -> dict[str, Any]:
        """Run a response's ``permalink`` again: the same search on the same index version."""
        if not permalink.startswith("/v1/"):
            raise ValueError(f"not a figsearch permalink: {permalink!r}")
        return self._json("GET", permalink)

    def feed_url(self, q: str = "", *, versions: int | None = None, since: str | None = None,
                 mode: str = "hybrid", k: int = 50, version: str | None = None,
                 **filters: Any) -> str:
        """The URL of the Atom feed of new figures matching a search (``/v1/search.atom``):
        those that arrived in the last ``versions`` index versions or ``since`` a date."""
        params: dict[str, Any] = {"q": q} if q else {}
        params.update(mode=mode, **_filters(filters), k=k)
        if since:
            params["since"] = since
        elif versions:
            params["versions"] = versions
        params.update(_version(version))
        return f"{self.base_url}/v1/search.atom?{urlencode(params)}"

    def feed(self, q: str = "", **options: Any) -> str:
        """The Atom feed (XML text) of :meth:`feed_url` with the same arguments."""
        return self._request("GET", self.feed_url(q, **options)).text

    def search_image(
        self, image: bytes | str | Path, k: int = 20, offset: int = 0,
        version: str | None = None, **filters: Any,
    ) -> dict[str, Any]:
        """Search by example image (bytes or a file path)."""
        if isinstance(image, (str, Path)):
            name, data = Path(image).name, Path(image).read_bytes()
        else:
            name, data = "query-image", bytes(image)
        params = {"k": k, "offset": offset, **_filters(filters), **_version(version)}
        files = {"image": (name, data, "application/octet-stream")}
        return self._json("POST", "/v1/search/image", params=params, files=files)

    def search_batch(self, queries: list[dict[str, Any]], **options: Any) -> dict[str, Any]:
        """Several queries in one call: each ``{"q": ...}`` or ``{"vector": [...]}``."""
        return self._json("POST", "/v1/search", json={"queries": queries, **options})

    def similar(self, figure_id: int, k: int = 20, offset: int = 0, version: str | None = None,
                **filters: Any) -> dict[str, Any]:
        """Figures similar to a stored figure (the figure itself is excluded)."""
        params = {"k": k, "offset": offset, **_filters(filters), **_version(version)}
        return self._json("GET", f"/v1/figures/{int(figure_id)}/similar", params=params)

    # -- records ----------------------------------------------------------------------
    def figure(self, figure_id: int) -> dict[str, Any]:
        """One figure with its article metadata and links."""
        return self._json("GET", f"/v1/figures/{int(figure_id)}")

    def panels(self, figure_id: int) -> dict[str, Any]:
        """A figure's panels: number, box, letter, sub-caption and crop URL of each."""
        return self._json("GET", f"/v1/figures/{int(figure_id)}/panels")

    def panel_image_bytes(self, figure_id: int, number: int) -> bytes:
        """One panel cut from the stored figure image (JPEG)."""
        return self._request("GET", self.panel_image_url(figure_id, number)).content

    def panel_image_url(self, figure_id: int, number: int) -> str:
        return f"{self.base_url}/v1/figures/{int(figure_id)}/panels/{int(number)}/image"

    def article(self, pmcid: str) -> dict[str, Any]:
        """An article and its figures."""
        return self._json("GET", f"/v1/articles/{quote(pmcid, safe='')}")

    def citation(self, pmcid: str, format: str = "bibtex") -> str:
        """The article's citation: ``bibtex`` (a BibTeX entry) or ``ris`` (an RIS record)."""
        return self._request("GET", f"/v1/articles/{quote(pmcid, safe='')}/citation",
                             params={"format": format}).text

    def facets(self) -> dict[str, Any]:
        """Journals, figure types, license classes and year range for filter pickers."""
        return self._json("GET", "/v1/facets")

    def stats(self) -> dict[str, Any]:
        """Index version, counts and model."""
        return self._json("GET", "/v1/stats")

    def health(self) -> bool:
        """True when the API is up and ready (index and model loaded)."""
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    def image_bytes(self, figure_id: int, thumbnail: bool = False) -> bytes:
        """The stored JPEG (or its thumbnail)."""
        path = self.thumbnail_url(figure_id) if thumbnail else self.image_url(figure_id)
        return self._request("GET", path).content

    def image_url(self, figure_id: int) -> str:
        return f"{self.base_url}/v1/figures/{int(figure_id)}/image"

    def thumbnail_url(self, figure_id: int) -> str:
        return f"{self.base_url}/v1/figures/{int(figure_id)}/thumbnail"
