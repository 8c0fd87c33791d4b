"""PMC OA file lists against a local HTTP server that speaks PMC's layout.

The server (``http.server`` on 127.0.0.1, port 0) serves legacy packages at
``oa_package/xx/yy/PMCn.tar.gz`` built from the real shared .nxml files plus generated
images, bare article XML for the bulk list, answers byte ranges, and can fail the first
request for a file with 503 or stall it past the client's timeout.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter
from datetime import date
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from figsearch.cli import main as cli_main
from figsearch.core.config import Settings
from figsearch.store import FigureStore
from indexer.ingest import ingest_file_list
from indexer.remote import Downloader, DownloadError, resolve_url
from indexer.sources import parse_file_list, updated_since
from tests.indexer.packages import build_pmc_package

WITH_FIGURES = ["1471-2180-11-174", "pone.0000217", "mds526", "pone.0046493"]  # 4+3+2+4 figs


class PMCServer:
    """A threaded HTTP server over a directory, with failure injection and a request log."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: Counter[str] = Counter()
        self.ranges: list[str] = []
        self.fail_first: set[str] = set()
        self.stall_first: set[str] = set()
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests[self.path] += 1
                first = server.requests[self.path] == 1
                if first and self.path in server.fail_first:
                    self.send_error(503, "busy")
                    return
                if first and self.path in server.stall_first:
                    time.sleep(1.5)
                rng = self.headers.get("Range")
                if rng and (root / self.path.lstrip("/")).is_file():
                    server.ranges.append(rng)
                    self._send_range(rng)
                    return
                super().do_GET()

            def _send_range(self, rng: str):
                data = (root / self.path.lstrip("/")).read_bytes()
                start = int(rng.split("=")[1].split("-")[0])
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                self.wfile.write(data[start:])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def pmc(shared_data, tmp_path):
    """A PMC-like server with 4 packages (13 figures) and bare XML for the bulk list."""
    root = tmp_path / "pmc"
    packages = {}
    for n, stem in enumerate(WITH_FIGURES):
        pmcid, path = build_pmc_package(shared_data / f"jats/pmc-nxml/{stem}.nxml", root, seed=n)
        packages[pmcid] = path.relative_to(root).as_posix()
        bulk = root / "oa_bulk" / f"PMC{pmcid[3:].rjust(9, '0')[:3]}xxxxxx" / f"{pmcid}.xml"
        bulk.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared_data / f"jats/pmc-nxml/{stem}.nxml", bulk)
    server = PMCServer(root)
    server.packages = packages
    yield server
    server.close()


def legacy_csv(packages: dict[str, str], dates: dict[str, str] | None = None) -> bytes:
    lines = ["File,Article Citation,Accession ID,Last Updated (YYYY-MM-DD HH:MM:SS),PMID,License"]
    for i, (pmcid, rel) in enumerate(sorted(packages.items())):
        day = (dates or {}).get(pmcid, f"2020-01-0{i + 1} 10:00:00")
        lines.append(f'{rel},"J Test. 2020; {i}:1-2",{pmcid},{day},{1000 + i},CC BY')
    return ("\n".join(lines) + "\n").encode()


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_parse_all_file_list_formats(shared_data):
    lists = shared_data / "oa-file-lists"
    [csv_e] = parse_file_list((lists / "oa_file_list.sample.csv").read_bytes())
    assert (csv_e.path, csv_e.pmcid, csv_e.pmid, csv_e.last_updated, csv_e.license) == (
        "oa_package/08/e0/PMC13900.tar.gz", "PMC13900", "11250746", "2019-11-05 11:56:12",
        "NO-CC CODE")
    txt = parse_file_list((lists / "oa_file_list.sample.txt").read_bytes())
    assert [(e.path, e.pmcid, e.pmid) for e in txt] == [
        ("oa_package/08/e0/PMC13900.tar.gz", "PMC13900", "11250746"),
        ("oa_package/b0/ac/PMC13901.tar.gz", "PMC13901", "11250747"),
        ("oa_package/b0/ac/PMC13902.tar.gz", "PMC13902", None)]
    [bulk] = parse_file_list((lists / "oa_bulk_filelist.sample.csv").read_bytes())
    assert (bulk.path, bulk.pmcid, bulk.last_updated, bulk.license, bulk.retracted) == (
        "PMC006xxxxxx/PMC6908519.xml", "PMC6908519", "2024-02-07 23:35:31", "CC BY", False)
    [fcgi] = parse_file_list((lists / "oa_fcgi_response.sample.xml").read_bytes())
    assert (fcgi.pmcid, fcgi.last_updated, fcgi.license) == ("PMC5334499", "2021-12-16 16:16:38",
                                                            "CC BY-NC")
    assert resolve_url(fcgi.path, "http://mirror.test/pmc/") == (
        "http://mirror.test/pmc/oa_package/8e/71/PMC5334499.tar.gz")
    assert updated_since([csv_e, bulk], date(2020, 1, 1)) == [bulk]


def test_legacy_csv_download_ingest_retry_and_rerun(pmc, tmp_path):
    rel = pmc.packages["PMC3166277"]
    pmc.fail_first.add("/" + rel)
    file_list = _write(tmp_path, "oa_file_list.csv", legacy_csv(pmc.packages))
    settings = Settings(data_dir=tmp_path / "data", pmc_base_url=pmc.url, download_concurrency=3)
    summary = ingest_file_list(file_list, settings, workers=1)
    assert (summary.added, summary.figures, summary.figures_with_images) == (4, 13, 13)
    assert pmc.requests["/" + rel] == 2  # 503, then the retry
    assert (settings.data_dir / "downloads" / rel).is_file()
    assert not list((settings.data_dir / "downloads").rglob("*.part"))
    store = FigureStore(settings.db_path)
    assert store.article_state("PMC3166277")[0] == "2020-01-02 10:00:00"  # 2nd row, sorted
    licenses = {f["pmcid"]: f["license_class"] for f in store.get_figures(range(1, 14)).values()}
    # The XML's <license> wins; the list's "CC BY" fills in where the XML has none.
    assert licenses == {"PMC1790863": "cc-by", "PMC3166277": "cc-by", "PMC3460867": "cc-by",
                        "PMC3574550": "cc-by-nc"}
    # Second run: LastUpdated unchanged -> nothing downloaded, nothing written.
    before = sum(pmc.requests.values())
    again = ingest_file_list(file_list, settings, workers=1)
    assert (again.added, again.updated, again.unchanged) == (0, 0, 4)
    assert sum(pmc.requests.values()) == before


def test_since_limit_and_fcgi_rebased_on_base_url(pmc, tmp_path):
    dates = {"PMC3166277": "2019-05-01 00:00:00", "PMC1790863": "2021-03-01 00:00:00",
             "PMC3574550": "2022-07-01 00:00:00", "PMC3460867": "2023-01-01 00:00:00"}
    file_list = _write(tmp_path, "list.csv", legacy_csv(pmc.packages, dates))
    settings = Settings(data_dir=tmp_path / "data", pmc_base_url="http://unused.invalid/")
    summary = ingest_file_list(file_list, settings, base_url=pmc.url, since=date(2021, 3, 1),
                               limit=2, workers=1)
    assert sorted(summary.added_keys) == ["PMC1790863", "PMC3460867"]  # first 2 since 2021-03
    rel = pmc.packages["PMC3574550"]
    fcgi = (f'<OA><records><record id="PMC3574550" citation="x" license="CC BY" retracted="no">'
            f'<link format="pdf" href="x.pdf"/><link format="tgz" updated="2022-07-01 00:00:00" '
            f'href="ftp://ftp.ncbi.nlm.nih.gov/pub/pmc/{rel}"/></record></records></OA>')
    fcgi_path = _write(tmp_path, "oa.fcgi.xml", fcgi.encode())
    summary = ingest_file_list(fcgi_path, settings, base_url=pmc.url, workers=1)
    assert summary.added_keys == ["PMC3574550"] and summary.figures == 2


def test_bulk_list_xml_and_retraction(pmc, tmp_path):
    settings = Settings(data_dir=tmp_path / "data", pmc_base_url=pmc.url)
    ingest_file_list(_write(tmp_path, "a.csv", legacy_csv(pmc.packages)), settings, workers=1)
    header = "Article File,Article Citation,AccessionID,LastUpdated (YYYY-MM-DD HH:MM:SS),PMID,License,Retracted"
    rows = [header,
            'PMC001xxxxxx/PMC1790863.xml,"PLoS ONE",PMC1790863,"2024-02-07 23:35:31",1,"CC BY",yes',
            'PMC003xxxxxx/PMC3574550.xml,"AO",PMC3574550,"2024-02-08 10:00:00",2,"CC BY-NC",no']
    bulk = _write(tmp_path, "oa_comm.filelist.csv", ("\n".join(rows) + "\n").encode())
    summary = ingest_file_list(bulk, settings, base_url=pmc.url + "oa_bulk/", workers=1)
    assert summary.removed_keys == ["PMC1790863"]
    assert summary.updated_keys == ["PMC3574550"]  # newer LastUpdated, now from bare XML
    store = FigureStore(settings.db_path)
    assert store.article_state("PMC1790863") is None
    assert store.counts()["articles"] == 3
    assert store.article_state("PMC3574550")[0] == "2024-02-08 10:00:00"


def test_download_failures_are_recorded_and_the_rest_goes_on(pmc, tmp_path):
    packages = dict(pmc.packages)
    packages["PMC999999"] = "oa_package/99/99/PMC999999.tar.gz"  # 404
    settings = Settings(data_dir=tmp_path / "data", pmc_base_url=pmc.url)
    summary = ingest_file_list(_write(tmp_path, "l.csv", legacy_csv(packages)), settings,
                               workers=1)
    assert (summary.added, summary.skipped) == (4, 1)
    [error] = FigureStore(settings.db_path).errors()
    assert error["stage"] == "download" and "HTTP 404" in error["reason"]


def test_downloader_resumes_partial_file_and_retries_timeouts(pmc, tmp_path):
    rel = pmc.packages["PMC3574550"]
    full = (pmc.root / rel).read_bytes()
    cache = tmp_path / "cache"
    part = cache / (rel + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(full[:1000])
    stalled = pmc.packages["PMC1790863"]
    pmc.stall_first.add("/" + stalled)
    downloader = Downloader(cache, concurrency=2, backoff_s=0.05, timeout_s=0.5)
    results = dict(downloader.download_all([pmc.url + rel, pmc.url + stalled]))
    assert results[pmc.url + rel].read_bytes() == full
    assert pmc.ranges == ["bytes=1000-"]
    assert results[pmc.url + stalled].read_bytes() == (pmc.root / stalled).read_bytes()
    assert pmc.requests["/" + stalled] == 2


def test_downloader_gives_up_after_retries(pmc, tmp_path):
    downloader = Downloader(tmp_path / "c", retries=1, backoff_s=0.01)
    with httpx.Client() as client:
        pmc.fail_first.add("/oa_package/x.tar.gz")
        with pytest.raises(DownloadError, match="HTTP 404"):
            downloader.download(client, pmc.url + "oa_package/x.tar.gz")
    with pytest.raises(DownloadError, match="refusing URL path"):
        with httpx.Client() as client:
            downloader.download(client, pmc.url + "a/../../etc/passwd")


def test_cli_file_list_by_url(pmc, tmp_path, capsys):
    dates = {"PMC3166277": "2019-05-01 00:00:00", "PMC1790863": "2021-03-01 00:00:00",
             "PMC3574550": "2022-07-01 00:00:00", "PMC3460867": "2023-01-01 00:00:00"}
    (pmc.root / "oa_file_list.csv").write_bytes(legacy_csv(pmc.packages, dates))
    argv = ["ingest", "--file-list", pmc.url + "oa_file_list.csv", "--base-url", pmc.url,
            "--since", "2022-01-01", "--data-dir", str(tmp_path / "d"), "--workers", "1"]
    assert cli_main(argv) == 0
    assert "ingest: 2 articles added" in capsys.readouterr().out
    assert cli_main(["ingest", "--since", "2022-01-01", str(tmp_path)]) == 2  # needs a list
    assert cli_main(["ingest", "--file-list", pmc.url + "missing.csv",
                     "--data-dir", str(tmp_path / "d")]) == 1
    assert "cannot read file list" in capsys.readouterr().err
