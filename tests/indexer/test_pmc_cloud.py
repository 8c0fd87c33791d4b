"""The PMC Cloud source against a real S3 API: moto's server on loopback holding the sample.

Each test loads ``../shared/data/pmc-cloud/bucket-day1`` (and ``day2-overlay``) into a bucket
of its own on one module-wide server; the server's request log says what was downloaded.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from figsearch.cli import main as cli_main
from figsearch.core.config import Settings
from figsearch.index import SearchIndex, current_version_dir
from figsearch.search import SearchService
from figsearch.store import SCHEMA_VERSION, FigureFilter, FigureStore
from indexer.pmc_cloud import (
    INVENTORY_PREFIX,
    CloudError,
    CloudLimits,
    Policy,
    RateLimiter,
    Refused,
    ingest_cloud,
    parse_object_url,
    version_states,
)
from indexer.rebuild import rebuild
from indexer.s3_sample import S3TestServer, load_folder, writer_client

REPO = Path(__file__).resolve().parents[2]
_buckets = itertools.count()


@pytest.fixture(scope="module")
def sample(shared_data) -> Path:
    return shared_data / "pmc-cloud"


@pytest.fixture(scope="module")
def truth(sample) -> dict:
    return json.loads((sample / "ground_truth.json").read_text())


@pytest.fixture(scope="module")
def s3():
    server = S3TestServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def writer(s3):
    return writer_client(s3.url)


@pytest.fixture(scope="module")
def encoder(tiny_model_dir):
    from figsearch.encoders import load_model

    return load_model(str(tiny_model_dir), device="cpu", batch_size=8)


@pytest.fixture(scope="module")
def day1(s3, writer, sample, tmp_path_factory):
    """One clean day-1 ingest (read-only for tests: copy its data dir to change it).

    Returns the bucket (left at day 1), the settings and the GETs the run made.
    """
    bucket = new_bucket(writer, sample)
    settings = settings_for(tmp_path_factory.mktemp("day1"), s3, bucket)
    s3.clear()
    ingest_cloud(settings, progress=False)
    return bucket, settings, s3.gets(bucket)


def copy_of(settings: Settings, tmp_path: Path, name: str, bucket: str) -> Settings:
    shutil.copytree(settings.data_dir, tmp_path / name, symlinks=True)
    return settings.model_copy(update={"data_dir": tmp_path / name, "pmc_bucket": bucket})


def new_bucket(writer, sample: Path, day2: bool = False) -> str:
    name = f"pmc-test-{next(_buckets)}"
    load_folder(writer, name, sample / "bucket-day1")
    if day2:
        load_folder(writer, name, sample / "day2-overlay")
    return name


def settings_for(tmp_path: Path, s3, bucket: str, name: str = "data", **kw) -> Settings:
    values = dict(data_dir=tmp_path / name, pmc_endpoint_url=s3.url, pmc_bucket=bucket,
                  ingest_workers=1, pmc_max_requests_per_s=0, num_workers=0, batch_size=8,
                  image_max_side=384, thumb_max_side=64)
    return Settings(**{**values, **kw})


def put(writer, bucket: str, key: str, data: bytes) -> str:
    writer.put_object(Bucket=bucket, Key=key, Body=data)
    return hashlib.md5(data).hexdigest()


def clone_version(writer, sample: Path, bucket: str, src: str, dst: str,
                  xml_edit=None, **fields) -> None:
    """Copy a day-1 version under another PMCID (XML, media, JSON with fresh md5s)."""
    folder = sample / "bucket-day1" / src
    old_id, new_id = src.split(".")[0], dst.split(".")[0]
    xml = (folder / f"{src}.xml").read_bytes().replace(old_id.encode(), new_id.encode())
    xml = xml_edit(xml) if xml_edit else xml
    meta = json.loads((folder / f"{src}.json").read_text())
    meta.update(pmcid=new_id, xml_url=f"s3://pmc-oa-opendata/{dst}/{dst}.xml?md5="
                + put(writer, bucket, f"{dst}/{dst}.xml", xml), pdf_url=None, text_url=None)
    media = []
    for url in meta["media_urls"]:
        name = url.split("?")[0].rsplit("/", 1)[1]
        md5 = put(writer, bucket, f"{dst}/{name}", (folder / name).read_bytes())
        media.append(f"s3://pmc-oa-opendata/{dst}/{name}?md5={md5}")
    meta.update(media_urls=media, **fields)
    put(writer, bucket, f"metadata/{dst}.json", json.dumps(meta).encode())


def write_inventory(writer, bucket: str, day: str, rows: list[list[str]]) -> None:
    """A day's inventory: one csv.gz of ``bucket,key,last-modified,etag`` and its manifest."""
    body = gzip.compress("".join(",".join(f'"{c}"' for c in r) + "\n" for r in rows).encode())
    key = f"{INVENTORY_PREFIX}data/{day}.csv.gz"
    md5 = put(writer, bucket, key, body)
    manifest = {"files": [{"key": key, "size": len(body), "MD5checksum": md5}]}
    put(writer, bucket, f"{INVENTORY_PREFIX}{day}/manifest.json", json.dumps(manifest).encode())


def inventory(sample: Path, day: str) -> list[list[str]]:
    folder = "bucket-day1" if day.startswith("2026-11-30") else "day2-overlay"
    path = next((sample / folder / INVENTORY_PREFIX / "data").glob("*.csv.gz"))
    return [[c.strip('"') for c in line.split(",")]
            for line in gzip.decompress(path.read_bytes()).decode().splitlines()]


def snapshot(settings: Settings) -> dict:
    """Everything ingest decides, without ids and timestamps."""
    con = sqlite3.connect(settings.db_path)
    try:
        return {
            "articles": con.execute("SELECT key, pmcid, title, license_class, last_updated, "
                                    "content_hash FROM articles ORDER BY key").fetchall(),
            "figures": con.execute("SELECT key, caption, sha256, has_image FROM figures "
                                   "ORDER BY key").fetchall(),
            "versions": con.execute("SELECT version_key, etag, status FROM "
                                    "pmc_versions ORDER BY version_key").fetchall(),
        }
    finally:
        con.close()


def figures_per_article(settings: Settings) -> dict[str, int]:
    con = sqlite3.connect(settings.db_path)
    try:
        return dict(con.execute("SELECT a.pmcid, count(f.id) FROM articles a LEFT JOIN figures f "
                                "ON f.article_id = a.id GROUP BY a.pmcid").fetchall())
    finally:
        con.close()


class CountingEncoder:
    """The real tiny encoder, counting the images it encodes."""

    def __init__(self, encoder) -> None:
        self.inner, self.images = encoder, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode_pixels(self, pixels):
        self.images += len(pixels)
        return self.inner.encode_pixels(pixels)


def _ids(service: SearchService, query: str, mode: str, **flt) -> set[int]:
    page = service.search_text(query, k=100, mode=mode, flt=FigureFilter(**flt), dedup=False)
    return {h.id for h in page.hits}


# -- day 1 and day 2 ------------------------------------------------------------------------------
def test_day1_then_nightly_day2(s3, writer, sample, truth, tmp_path, encoder, day1):
    bucket = new_bucket(writer, sample)
    settings = copy_of(day1[1], tmp_path, "data", bucket)  # the store after a day-1 ingest
    report = rebuild(settings, encoder=encoder, progress=False)  # source: the PMC bucket
    assert "0 articles to process" in report.ingest_lines[1]  # same ETags: nothing to redo

    # day 1: exactly the ground truth's versions and figures, in the store and the index
    day1_versions = set(truth["day1_article_versions"])
    store = FigureStore(settings.db_path)
    states = version_states(store)
    assert set(states) == day1_versions and {s for _, s in states.values()} == {"ingested"}
    per_article = figures_per_article(settings)
    assert per_article == {p: n for p, n in truth["figures_per_article"].items()
                           if f"{p}.1" in day1_versions}
    with_image = {r[0] for b in store.iter_figure_rows() for r in b}
    index = SearchIndex.load(current_version_dir(settings.indexes_dir))
    assert set(index.ids.tolist()) == with_image
    assert len(with_image) == sum(per_article.values()) - 2 - 1  # no media; one corrupt image
    no_media = store.figure_ids_for_article(truth["xml_but_no_media"][:-2])
    assert len(no_media) == 2 and not any(store.get_figure(i)["has_image"] for i in no_media)
    bad = truth["media_md5_mismatch"]
    bad_figs = [store.get_figure(i) for i in store.figure_ids_for_article(bad[:-2])]
    assert [f["has_image"] for f in bad_figs] == [False, True]  # the rest of it is kept
    errors = [e for e in store.errors() if e["item"].startswith(bad)]
    assert len(errors) == 1 and "md5 mismatch" in errors[0]["reason"]
    assert errors[0]["item"] == f"{bad}#{bad_figs[0]['fig_id']}"
    manuscript = truth["author_manuscript_TDM"][:-2]  # default policy: manuscripts on
    assert per_article[manuscript] == 3

    # requests: inventory (list, manifest, csv), one JSON + one XML per version and exactly the
    # figure images; never the supplement, the text or a PDF
    gets = day1[2]
    assert not [k for k in gets if k.endswith((".xlsx", ".txt", ".pdf"))]
    images = [k for k in gets if k.endswith(".jpg")]
    assert len(images) == len(set(images)) == sum(per_article.values()) - 2  # 3694812 has none
    assert len(gets) == 3 + 2 * len(day1_versions) + len(images)

    # day 2: `rebuild` processes exactly the four changes
    changes = truth["day2_changes"]
    gone = changes["retracted"][:-2]
    gone_ids = set(store.figure_ids_for_article(gone))
    assert len(gone_ids) == 5
    replaced = set(store.figure_ids_for_article(changes["image_replaced"][:-2]))
    before = {i: store.get_figure(i)["sha256"] for i in replaced}
    old_vectors = dict(zip(sorted(replaced), index.vectors_for(sorted(replaced)), strict=True))
    load_folder(writer, bucket, sample / "day2-overlay")
    counting = CountingEncoder(encoder)
    s3.clear()
    report = rebuild(settings, encoder=counting, progress=False)
    assert "1 articles added, 2 updated, 0 unchanged, 1 removed" in report.ingest_lines[0]
    changed_ids = {v[:-2] for v in changes.values()}
    assert {re.search(r"PMC\d+", k).group(0) for k in s3.gets(bucket)
            if not k.startswith(("inventory", "?"))} == changed_ids
    # Encoded: the new article's image only. The replacement image is, byte for byte, a figure
    # of PMC4878077 already in the store, so its embedding comes from the content-addressed
    # cache; every unchanged image (PMC3967167's six included) is reused as well.
    assert counting.images == 1
    states = version_states(store)
    assert states[changes["new_version"]][1] == "ingested"
    assert states[changes["new_version"][:-1] + "1"][1] == "superseded"
    assert states[changes["retracted"]][1] == "retracted"
    assert states[changes["new_article"]][1] == "ingested"

    service = SearchService(store, SearchIndex.load(current_version_dir(settings.indexes_dir)),
                            encoder, settings.model_copy(update={"dedup_threshold": 1.1}))
    new_pmcid = changes["new_article"][:-2]
    new_figs = set(store.figure_ids_for_article(new_pmcid))
    new_caption = store.get_figure(next(iter(new_figs)))["caption"]
    assert new_figs and new_figs <= set(service.index.ids.tolist())
    assert new_figs & _ids(service, new_caption[:80], "keyword")
    v2 = set(store.figure_ids_for_article(changes["new_version"][:-2]))
    assert _ids(service, "corrected legend", "keyword") == v2 and len(v2) == 6
    assert store.figure_ids_for_article(gone) == [] and store.find_article_key(gone) is None
    title = "Pattern Recognition Receptor Signaling Cord Blood Birth Weight Newborns"
    for mode in ("keyword", "dense", "hybrid"):
        assert not _ids(service, title, mode) & gone_ids
        assert not _ids(service, title, mode, pmcid=gone)
    assert not set(service.index.ids.tolist()) & gone_ids
    assert set(store.figure_ids_for_article(changes["image_replaced"][:-2])) == replaced
    after = {i: store.get_figure(i)["sha256"] for i in replaced}
    (fig_id,) = [i for i in replaced if before[i] != after[i]]  # exactly one image replaced
    twin = [i for b in store.iter_figure_rows() for i, _, sha in b
            if sha == after[fig_id] and i != fig_id]
    new_vectors = service.index.vectors_for([fig_id, *twin])
    assert not np.allclose(new_vectors[0], old_vectors[fig_id])  # its vector was replaced
    assert twin and np.allclose(new_vectors[0], new_vectors[1])  # by its image's embedding
    for i in replaced - {fig_id}:
        assert np.allclose(service.index.vectors_for([i])[0], old_vectors[i])
    store.close()


# -- kill and resume, skipped night ----------------------------------------------------------------
@pytest.mark.slow  # two interpreter starts and a full day-1 ingest (~15 s)
def test_sigkill_mid_run_then_rerun_equals_an_uninterrupted_run(s3, tmp_path, day1):
    bucket, clean, _ = day1
    settings = settings_for(tmp_path, s3, bucket, "killed")
    cmd = [sys.executable, "-m", "figsearch.cli", "ingest", f"s3://{bucket}", "--endpoint-url",
           s3.url, "--data-dir", str(settings.data_dir)]
    env = dict(os.environ, PYTHONPATH=str(REPO), FIGSEARCH_INGEST_WORKERS="1",
               FIGSEARCH_IMAGE_MAX_SIDE="384", FIGSEARCH_THUMB_MAX_SIDE="64",
               FIGSEARCH_PMC_MAX_REQUESTS_PER_S="0", FIGSEARCH_FAULT_AT="ingest-article@8")
    killed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr[-2000:]
    partial = snapshot(settings)
    assert 8 <= len(partial["articles"]) < 20 and len(partial["versions"]) < 20
    s3.clear()
    env.pop("FIGSEARCH_FAULT_AT")
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    json_gets = [k for k in s3.gets(bucket) if k.startswith("metadata/")]
    assert len(json_gets) == 20 - len(partial["versions"])  # only what was not finished
    assert snapshot(settings) == snapshot(clean)
    assert not list((settings.data_dir / "pmc-cloud" / "cache").iterdir())  # cache emptied


def test_a_skipped_night_is_covered_by_the_next_run(s3, writer, sample, tmp_path, capsys, day1):
    day3 = "2026-12-02T01-00Z"

    def advance_to_day3(bucket: str) -> None:
        load_folder(writer, bucket, sample / "day2-overlay")
        meta = json.loads((sample / "bucket-day1/metadata/PMC6906418.1.json").read_text())
        meta["title"] += " (updated)"
        etag = put(writer, bucket, "metadata/PMC6906418.1.json", json.dumps(meta).encode())
        rows = inventory(sample, "2026-12-01T01-00Z")
        write_inventory(writer, bucket, day3, [
            r[:3] + [etag] if r[1] == "metadata/PMC6906418.1.json" else r for r in rows])

    bucket = new_bucket(writer, sample)
    nightly = copy_of(day1[1], tmp_path, "nightly", bucket)  # both ran day 1
    skipped = copy_of(day1[1], tmp_path, "skipped", bucket)
    load_folder(writer, bucket, sample / "day2-overlay")
    assert ingest_cloud(nightly, progress=False).cloud.articles_todo == 4  # day 2, not `skipped`
    advance_to_day3(bucket)
    assert ingest_cloud(nightly, progress=False).cloud.articles_todo == 1
    report = ingest_cloud(skipped, progress=False)
    assert report.cloud.inventory == day3 and report.cloud.articles_todo == 5  # 4 + 1 changes
    assert snapshot(skipped) == snapshot(nightly)
    assert len(snapshot(skipped)["articles"]) == 20
    again = ingest_cloud(skipped, progress=False)  # nothing left to do
    assert again.cloud.articles_todo == 0 and again.cloud.requests == 3
    capsys.readouterr()
    assert cli_main(["stats", "--data-dir", str(skipped.data_dir)]) == 0
    assert f"pmc inventory: s3://{bucket} {day3} (22 versions" in capsys.readouterr().out

    # a version that leaves the inventory leaves the store
    rows = [r for r in inventory(sample, "2026-12-01T01-00Z")
            if r[1] != "metadata/PMC6906418.1.json"]
    write_inventory(writer, bucket, "2026-12-03T01-00Z", rows)
    gone = ingest_cloud(skipped, progress=False)
    assert gone.cloud.articles_todo == 1 and gone.ingest.removed_keys == ["PMC6906418"]
    assert "PMC6906418.1" not in version_states(FigureStore(skipped.db_path))
    assert len(snapshot(skipped)["articles"]) == 19


# -- hostile inputs ------------------------------------------------------------------------------
def test_hostile_objects_are_refused_with_reasons(s3, writer, sample, tmp_path):
    bucket = new_bucket(writer, sample)
    put(writer, bucket, "metadata/PMC9000001.1.json", b'{"pmcid": "PMC9000001", "version": 1,')
    clone_version(writer, sample, bucket, "PMC1298938.1", "PMC9000002.1",
                  xml_url="s3://pmc-oa-opendata/PMC9000002.1/../PMC3967167.1/PMC3967167.1.xml"
                          "?md5=" + "0" * 32)
    clone_version(writer, sample, bucket, "PMC1298938.1", "PMC9000003.1",
                  xml_edit=lambda x: x.replace(b"<article ", b'<!DOCTYPE article [<!ENTITY e '
                                               b'"boom">]>\n<article ', 1))
    clone_version(writer, sample, bucket, "PMC1298938.1", "PMC9000004.1",
                  xml_edit=lambda x: x.replace(b"</article>", b"<!--" + b"x" * 300_000
                                               + b"--></article>"))
    settings = settings_for(tmp_path, s3, bucket)
    names = ["pmc:PMC9000001", "pmc:PMC9000002", "pmc:PMC9000003", "pmc:PMC9000004",
             "pmc:PMC1298938"]
    report = ingest_cloud(settings, pmcids=names, progress=False,
                          limits=CloudLimits(max_xml_bytes=200_000))
    store = FigureStore(settings.db_path)
    states = version_states(store)
    assert {k: s for k, (_, s) in states.items()} == {
        "PMC9000001.1": "refused", "PMC9000002.1": "refused", "PMC9000003.1": "refused",
        "PMC9000004.1": "refused", "PMC1298938.1": "ingested"}
    reasons = {e["item"]: e["reason"] for e in store.errors()}
    assert "is not JSON" in reasons["PMC9000001.1"]
    assert "climbs out of its prefix" in reasons["PMC9000002.1"]
    assert "declares its own entities" in reasons["PMC9000003.1"]
    assert "larger than the 200000-byte limit" in reasons["PMC9000004.1"]
    assert [a[0] for a in snapshot(settings)["articles"]] == ["PMC1298938"]  # the rest goes on
    assert report.cloud.bytes < 200_000  # the huge object's body was never read
    assert not [k for k in s3.gets(bucket) if "PMC3967167" in k]
    store.close()

    # an inventory manifest naming a file outside the inventory is refused as a whole
    write_inventory(writer, bucket, "2026-12-09T01-00Z", [])
    put(writer, bucket, f"{INVENTORY_PREFIX}2026-12-09T01-00Z/manifest.json", json.dumps(
        {"files": [{"key": f"{INVENTORY_PREFIX}data/../../../../PMC1298938.1/x.csv.gz"}]}
    ).encode())
    with pytest.raises(CloudError, match="outside"):
        ingest_cloud(settings, progress=False)


def test_object_urls_stay_in_their_prefix():
    good = parse_object_url("s3://pmc-oa-opendata/PMC1.2/a.jpg?md5=" + "a" * 32, "PMC1.2",
                            ["pmc-oa-opendata"])
    assert good.key == "PMC1.2/a.jpg" and good.name == "a.jpg"
    for bad in ["s3://pmc-oa-opendata/PMC1.2/../PMC9.1/a.jpg?md5=" + "a" * 32,
                "s3://pmc-oa-opendata/PMC1.22/a.jpg?md5=" + "a" * 32,
                "s3://pmc-oa-opendata/PMC1.2/sub/a.jpg?md5=" + "a" * 32,
                "s3://pmc-oa-opendata/PMC1.2/%2e%2e/x?md5=" + "a" * 32,
                "s3://other-bucket/PMC1.2/a.jpg?md5=" + "a" * 32,
                "s3://pmc-oa-opendata/PMC1.2/a.jpg", "https://example.org/PMC1.2/a.jpg", 7]:
        with pytest.raises(Refused):
            parse_object_url(bad, "PMC1.2", ["pmc-oa-opendata"])


# -- policy, settings, CLI, retries ------------------------------------------------------------------
def test_cli_named_articles_policy_flags_and_endpoint(s3, writer, sample, tmp_path, capsys,
                                                      monkeypatch):
    bucket = new_bucket(writer, sample)
    # the environment points at a dead local port: the flag must win
    monkeypatch.setenv("FIGSEARCH_PMC_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("FIGSEARCH_PMC_BUCKET", bucket)
    monkeypatch.setenv("FIGSEARCH_INGEST_WORKERS", "1")
    data = str(tmp_path / "data")
    assert cli_main(["ingest", "pmc:PMC4856261", "pmc:PMC2739295", "--endpoint-url", s3.url,
                     "--no-author-manuscripts", "--data-dir", data]) == 0
    out = capsys.readouterr().out
    assert "pmc-cloud: s3://" in out and "1 versions ingested, 1 skipped by policy" in out
    store = FigureStore(Path(data) / "figsearch.db")
    assert version_states(store)["PMC4856261.1"][1] == "skipped"
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("# named articles\nPMC3531707\nPMC4101967\nPMC4856261\n")
    assert cli_main(["ingest", "--pmcids", str(ids_file), "--license", "commercial",
                     "--endpoint-url", s3.url, "--data-dir", data]) == 0
    states = version_states(store)
    assert states["PMC3531707.1"][1] == "skipped"  # CC BY-NC
    assert states["PMC4101967.1"][1] == "ingested"  # CC0
    assert states["PMC4856261.1"][1] == "skipped"  # TDM is not a commercial license
    assert sorted(figures_per_article(Settings(data_dir=Path(data)))) == [
        "PMC2739295", "PMC4101967"]
    assert cli_main(["stats", "--data-dir", data]) == 0
    store.close()


def test_policy_settings_and_historical_ocr(s3, writer, sample, tmp_path):
    bucket = new_bucket(writer, sample)
    clone_version(writer, sample, bucket, "PMC1298938.1", "PMC9000006.1", is_historical_ocr=True)
    default = settings_for(tmp_path, s3, bucket, "default")
    ingest_cloud(default, pmcids=["PMC9000006", "PMC4856261", "PMC3531707"], progress=False)
    assert sorted(figures_per_article(default)) == ["PMC3531707", "PMC4856261"]
    custom = settings_for(tmp_path, s3, bucket, "custom", pmc_historical_ocr=True,
                          pmc_author_manuscripts=False, pmc_license="cc-by,cc-by-nc")
    ingest_cloud(custom, pmcids=["PMC9000006", "PMC4856261", "PMC3531707"], progress=False)
    assert sorted(figures_per_article(custom)) == ["PMC3531707", "PMC9000006"]
    with pytest.raises(ValueError, match="unknown license class"):
        Policy.parse_licenses("cc-by,free")
    with pytest.raises(CloudError, match="not found"):
        ingest_cloud(settings_for(tmp_path, s3, "no-such-bucket", "x"), progress=False)


def test_retries_by_botocore_and_the_request_rate_cap(s3, writer, sample, tmp_path):
    bucket = new_bucket(writer, sample)
    s3.fail_first.add(f"/{bucket}/PMC3967167.1/PMC3967167.1.xml")
    settings = settings_for(tmp_path, s3, bucket, pmc_max_requests_per_s=25)
    s3.clear()
    start = time.perf_counter()
    report = ingest_cloud(settings, pmcids=["PMC3967167"], progress=False)
    elapsed = time.perf_counter() - start
    assert report.cloud.versions_ingested == 1 and report.ingest.figures_with_images == 6
    assert s3.gets(bucket).count("PMC3967167.1/PMC3967167.1.xml") == 2  # 503, then retried
    assert report.cloud.requests == len(s3.gets(bucket)) == 10  # list, json, 2 xml, 6 images
    assert elapsed >= 9 / 25  # ten requests at most 25 per second
    limiter, start = RateLimiter(50), time.perf_counter()
    for _ in range(11):
        limiter.acquire()
    assert time.perf_counter() - start >= 0.19


def test_migration_3_adds_the_version_table_to_an_old_store(tmp_path):
    db = tmp_path / "old.db"
    store = FigureStore(db)
    store.close()
    con = sqlite3.connect(db)
    con.execute("DROP TABLE pmc_versions")
    con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    store = FigureStore(db)
    assert store.schema_version() == SCHEMA_VERSION >= 3
    assert version_states(store) == {}
    store.close()


def test_legacy_file_lists_have_no_ftp_default(tmp_path):
    from indexer.ingest import ingest_file_list
    from indexer.remote import DownloadError, resolve_url

    assert Settings().pmc_base_url == ""
    with pytest.raises(DownloadError, match="needs --base-url"):
        resolve_url("oa_package/08/e0/PMC13900.tar.gz", "")
    assert resolve_url("http://mirror.test/a.tar.gz", "") == "http://mirror.test/a.tar.gz"
    listing = tmp_path / "oa_file_list.csv"
    listing.write_text("File,Article Citation,Accession ID,Last Updated (YYYY-MM-DD HH:MM:SS),"
                       "PMID,License\noa_package/08/e0/PMC13900.tar.gz,Cit,PMC13900,"
                       "2025-01-01 00:00:00,1,CC BY\n")
    summary = ingest_file_list(listing, Settings(data_dir=tmp_path / "data"), workers=1)
    assert summary.skipped == 1 and "needs --base-url" in summary.skipped_items[0][1]
