"""Hostile inputs through the real ingest: every input ends as figures or a recorded reason,
and nothing is written outside the data directory."""

from __future__ import annotations

import os
import random
import sqlite3
from pathlib import Path

from PIL import Image

from figsearch.core.config import Settings
from indexer.ingest import ingest_paths

from . import hostile
from .test_hostile_xml import CORPUS, _apply


def _tree(root: Path, skip: Path) -> dict[str, int]:
    out = {}
    for p in root.rglob("*"):
        if skip == p or skip in p.parents:
            continue
        out[p.relative_to(root).as_posix()] = p.lstat().st_size
    return out


def _settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", max_image_pixels=20_000_000)


def _db_rows(settings: Settings, sql: str) -> list[tuple]:
    con = sqlite3.connect(settings.db_path)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


HOSTILE_IMAGES = {
    "bomb": hostile.png_claiming(60_000, 60_000),
    "truncated": hostile.sample_jpeg((400, 300))[:900],
    "zero": hostile.png_claiming(0, 0),
    "strip": hostile.png_claiming(100_000, 3),
    "text": b"this is not an image",
    "animated": hostile.animated_gif(),
    "cmyk": hostile.cmyk_jpeg(),
    "png16": hostile.png16_gradient(),
    "palette_alpha": hostile.palette_alpha_png(),
    "png_named_jpg": hostile.encode(Image.new("RGB", (50, 40), (9, 99, 199)), "PNG"),
}
DECODABLE = {"animated", "cmyk", "png16", "palette_alpha", "png_named_jpg"}


def _package_with_images() -> bytes:
    figs = "".join(
        f"<fig id='{name}'><label>{name}</label><caption><p>{name} panel</p></caption>"
        f"<graphic xlink:href='{name}.jpg'/></fig>" for name in HOSTILE_IMAGES
    )
    xml = ('<?xml version="1.0"?><article xmlns:xlink="http://www.w3.org/1999/xlink"><front>'
           '<article-meta><article-id pub-id-type="pmc">PMC990777</article-id><title-group>'
           f"<article-title>Images</article-title></title-group></article-meta></front><body>{figs}"
           "</body></article>").encode()
    members = [("PMC990777/a.nxml", xml)] + [
        (f"PMC990777/{name}.jpg", data) for name, data in HOSTILE_IMAGES.items()]
    return hostile.tar_gz_bytes(members)


def test_hostile_images_in_a_package(tmp_path):
    """Each figure is kept; decodable oddities get an image, the rest a recorded reason."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "images.tar.gz").write_bytes(_package_with_images())
    settings = _settings(tmp_path)
    summary = ingest_paths([inputs], settings, workers=1)
    assert summary.added == 1
    rows = dict(_db_rows(settings, "SELECT fig_id, has_image FROM figures"))
    assert set(rows) == set(HOSTILE_IMAGES)
    for name in HOSTILE_IMAGES:
        assert bool(rows[name]) == (name in DECODABLE), name
    reasons = [r[0] for r in _db_rows(settings, "SELECT item FROM ingest_errors")]
    for name in set(HOSTILE_IMAGES) - DECODABLE:
        assert any(item.endswith(f"#{name}") for item in reasons), f"no reason for {name}"
    stored = [p for p in settings.images_dir.rglob("*.jpg")]
    assert len(stored) == 2 * len(DECODABLE)  # image + thumbnail each
    for p in stored:
        with Image.open(p) as img:
            assert img.format == "JPEG" and img.mode == "RGB"


def _hostile_packages(inputs: Path) -> dict[str, str]:
    """Write hostile packages; returns file name -> what must happen ('skip' or 'ok')."""
    art = hostile.mini_article
    jpg = hostile.sample_jpeg()
    cases = {
        "bomb.zip": (hostile.zip_bytes([("a.nxml", art(1)), ("f1.jpg", b"\0" * 30_000_000)]), "skip"),
        "traversal.zip": (hostile.zip_bytes([("a.nxml", art(2)), ("../../../escaped.jpg", jpg)]), "skip"),
        "traversal.tar.gz": (hostile.tar_gz_bytes([("p/a.nxml", art(3)), ("../escaped.xml", b"x")]), "skip"),
        "abs.tar.gz": (hostile.tar_gz_bytes([("p/a.nxml", art(4)), ("/tmp/escaped.jpg", jpg)]), "skip"),
        "symlink.zip": (hostile.zip_bytes([("a.nxml", art(5))], symlinks={"f1.jpg": "/etc/passwd"}), "skip"),
        "symlink.tar.gz": (hostile.tar_gz_bytes([("p/a.nxml", art(6))], links={"p/f1.jpg": "/etc/shadow"}), "skip"),
        "many.zip": (hostile.zip_bytes([("a.nxml", art(7))] + [(f"{i}.txt", b"") for i in range(10_100)]), "skip"),
        "claim.tar.gz": (hostile.tar_gz_claiming("p/f1.jpg", 5 * 2**30), "skip"),
        "xxe.nxml": (hostile.xxe_article(), "skip-or-clean"),
        "laughs.nxml": (hostile.billion_laughs(), "skip-or-clean"),
        "empty.zip": (b"", "skip"),
        "garbage.tar.gz": (os.urandom(5000), "skip"),
        "good.tar.gz": (hostile.tar_gz_bytes([("p/a.nxml", art(8)), ("p/f1.jpg", jpg)]), "ok"),
    }
    for name, (data, _) in cases.items():
        (inputs / name).write_bytes(data)
    return {name: want for name, (_, want) in cases.items()}


def test_hostile_packages_are_skipped_with_reasons_and_write_nothing_outside(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    wanted = _hostile_packages(inputs)
    settings = _settings(tmp_path)
    assert not Path("/tmp/escaped.jpg").exists()
    before = _tree(tmp_path, settings.data_dir), sorted(os.listdir(tmp_path.parent))
    summary = ingest_paths([inputs], settings, workers=2)
    after = _tree(tmp_path, settings.data_dir), sorted(os.listdir(tmp_path.parent))
    assert after == before, "ingest wrote outside its data dir"
    assert not Path("/tmp/escaped.jpg").exists()
    errors = _db_rows(settings, "SELECT source, reason FROM ingest_errors")
    passwd = Path("/etc/passwd").read_text()
    for _source, reason in errors:
        assert passwd[:30] not in reason
    titles = " ".join(r[0] for r in _db_rows(settings, "SELECT title || caption FROM articles "
                                                          "JOIN figures ON figures.article_id = articles.id"))
    assert "root:x:0" not in titles and "lol" * 100 not in titles
    failed_sources = {Path(s).name for s, _ in errors}
    for name, want in wanted.items():
        if want == "skip":
            assert name in failed_sources, f"{name}: no reason recorded"
    assert summary.added >= 1
    assert _db_rows(settings, "SELECT count(*) FROM figures WHERE has_image = 1")[0][0] == 1
    assert not list(settings.data_dir.rglob("escaped*"))


def _random_ops(rng: random.Random) -> list[tuple[str, int, int]]:
    kinds = ["flip", "truncate", "delete_tag", "dup_tag", "dup_span", "insert"]
    return [(rng.choice(kinds), rng.randrange(1 << 22), rng.randrange(1 << 16))
            for _ in range(rng.randint(0, 3))]


def test_mutated_articles_through_ingest_give_figures_or_reasons(tmp_path):
    """60 mutated real articles, ingested one by one: each one is stored with exactly the
    figures the parser found, or skipped with a reason naming that file."""
    from indexer.jats import JatsError, parse_article

    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = random.Random(1234)
    settings = _settings(tmp_path)
    stored = skipped = 0
    for i in range(60):
        data = _apply(CORPUS[i % len(CORPUS)], _random_ops(rng))
        path = inputs / f"m{i:03d}.nxml"
        path.write_bytes(data)
        try:
            expected: int | None = len(parse_article(data).figures)
        except JatsError:
            expected = None
        summary = ingest_paths([path], settings, workers=1)
        sources = {s for (s,) in _db_rows(settings, "SELECT source FROM ingest_errors")}
        if expected is None:
            assert summary.skipped == 1 and str(path) in sources, f"{path.name}: no reason"
            skipped += 1
            continue
        assert summary.added + summary.updated + summary.unchanged == 1, (path.name, summary)
        key = (summary.added_keys + summary.updated_keys or [None])[0]
        if key is not None:
            (count,) = _db_rows(settings, "SELECT count(f.id) FROM articles a LEFT JOIN figures f "
                                          f"ON f.article_id = a.id WHERE a.key = '{key}'")[0]
            assert count == expected, (path.name, count, expected)
        stored += 1
    print(f"\ningest of 60 mutated real articles: {stored} stored, {skipped} skipped with reasons")
    assert stored and skipped
    con = sqlite3.connect(settings.db_path)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
