"""Legacy: download PMC OA packages named by a file list: concurrent, retried, resumable.

PMC removed its FTP packages and file lists in 2026 (the current source is
:mod:`indexer.pmc_cloud`); this reader stays for local mirrors of the legacy layout. Paths
from the file list are resolved against a configurable base URL (``settings.pmc_base_url``,
empty by default; absolute links into PMC's old FTP tree are rebased onto it). Each package is downloaded to
``<cache>/<path>.part`` and renamed when complete, so a killed run leaves no half package
behind under the final name, a rerun skips every package it already has, and an interrupted
``.part`` is continued with an HTTP range request when the server supports it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from indexer.readers import InputError, safe_member_name

#: Absolute links into PMC's tree (oa.fcgi answers with these) are rebased onto the base URL.
PMC_PREFIXES = (
    "ftp://ftp.ncbi.nlm.nih.gov/pub/pmc/",
    "https://ftp.ncbi.nlm.nih.gov/pub/pmc/",
    "http://ftp.ncbi.nlm.nih.gov/pub/pmc/",
)
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class DownloadError(RuntimeError):
    """A package that could not be downloaded; the message says why."""


def resolve_url(path: str, base_url: str) -> str:
    """The URL of a file-list path: relative paths and PMC links resolve against ``base_url``.

    Without a base URL (the default since PMC removed its FTP packages) absolute URLs are kept
    and a relative path raises :class:`DownloadError`.
    """
    if not base_url:
        if urlsplit(path).scheme:
            return path
        raise DownloadError(
            f"relative file-list path {path!r} needs --base-url / FIGSEARCH_PMC_BASE_URL (a "
            "mirror of the legacy packages); PMC itself now serves s3://pmc-oa-opendata"
        )
    base = base_url if base_url.endswith("/") else base_url + "/"
    for prefix in PMC_PREFIXES:
        if path.startswith(prefix):
            return urljoin(base, path[len(prefix):])
    if urlsplit(path).scheme:
        return path
    return urljoin(base, path.lstrip("/"))


def cache_path(cache_dir: Path, url: str) -> Path:
    """Where a download lands: the URL's path under the cache dir, never outside it."""
    try:
        rel = safe_member_name(urlsplit(url).path.lstrip("/"))
    except InputError as exc:
        raise DownloadError(f"refusing URL path {url!r}: {exc}") from exc
    if not rel:
        raise DownloadError(f"URL has no file name: {url!r}")
    return cache_dir / rel


def fetch_bytes(source: str, timeout: float = 60.0) -> bytes:
    """Contents of a local path or an http(s) URL (used for the file list itself)."""
    if urlsplit(source).scheme in ("http", "https"):
        # httpx's own retries cover refused and reset connections (the common transient
        # failure for a single request); an HTTP error status is reported as it is.
        transport = httpx.HTTPTransport(retries=3)
        with httpx.Client(timeout=timeout, follow_redirects=True, transport=transport) as client:
            response = client.get(source)
            response.raise_for_status()
            return response.content
    return Path(source).read_bytes()


@dataclass
class Downloader:
    """Downloads URLs into a cache directory with retries and exponential backoff."""

    cache_dir: Path
    concurrency: int = 8
    retries: int = 4
    backoff_s: float = 0.5
    timeout_s: float = 60.0

    def download(self, client: httpx.Client, url: str) -> Path:
        """The cached file for ``url``, downloading it first unless already complete."""
        dest = cache_path(self.cache_dir, url)
        if dest.is_file():
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        # Transient failures (5xx, timeouts, dropped or short transfers) are retried with
        # exponential backoff: backoff_s, 2*backoff_s, ... capped at a minute.
        retrying = Retrying(
            retry=retry_if_exception_type(_Retryable), stop=stop_after_attempt(self.retries + 1),
            wait=wait_exponential(multiplier=self.backoff_s, max=60.0),
        )
        try:
            retrying(self._fetch_to, client, url, dest)
        except RetryError as exc:
            raise DownloadError(f"{url}: gave up after {self.retries + 1} attempts "
                                f"({exc.last_attempt.exception()})") from None
        return dest

    def _fetch_to(self, client: httpx.Client, url: str, dest: Path) -> None:
        part = dest.with_name(dest.name + ".part")
        have = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            with client.stream("GET", url, headers=headers) as response:
                if response.status_code in RETRY_STATUSES:
                    raise _Retryable(f"HTTP {response.status_code}")
                if response.status_code >= 400:
                    raise DownloadError(f"{url}: HTTP {response.status_code}")
                resumed = response.status_code == 206
                expected = _expected_size(response, have if resumed else 0)
                with part.open("ab" if resumed else "wb") as fh:
                    for chunk in response.iter_bytes(1 << 16):
                        fh.write(chunk)
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            raise _Retryable(f"{type(exc).__name__}: {exc}") from exc
        size = part.stat().st_size
        if expected is not None and size != expected:
            raise _Retryable(f"incomplete download: {size} of {expected} bytes")
        part.replace(dest)

    def download_all(self, urls: Iterable[str]) -> Iterator[tuple[str, Path | Exception]]:
        """``(url, path or error)`` for each URL as downloads complete, ``concurrency`` at once.

        URLs are submitted a few at a time, so a file list of millions costs no memory.
        """
        workers = max(1, self.concurrency)
        limits = httpx.Limits(max_connections=workers)
        with httpx.Client(timeout=self.timeout_s, follow_redirects=True, limits=limits) as client:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                pending: dict[Future[Path], str] = {}
                for url in urls:
                    pending[pool.submit(self.download, client, url)] = url
                    if len(pending) >= 2 * workers:
                        yield from _drain(pending, FIRST_COMPLETED)
                yield from _drain(pending, ALL_COMPLETED)


def _drain(
    pending: dict[Future[Path], str], when: str
) -> Iterator[tuple[str, Path | Exception]]:
    done, _ = wait(pending, return_when=when)
    for future in done:
        url = pending.pop(future)
        try:
            yield url, future.result()
        except (DownloadError, OSError) as exc:
            yield url, exc


class _Retryable(Exception):
    """A transient failure (5xx, timeout, dropped connection): try again after a pause."""


def _expected_size(response: httpx.Response, offset: int) -> int | None:
    length = response.headers.get("content-length")
    if length is None or not length.isdigit():
        return None
    return offset + int(length)
