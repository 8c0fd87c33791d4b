"""A SIGKILLed ingest leaves a consistent store, and a rerun completes to a clean run's state."""

from __future__ import annotations

import io
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from figsearch.core.config import Settings
from indexer.ingest import ingest_paths
from tests.indexer.packages import GRAPHIC_HREF, write_tar

REPO = Path(__file__).resolve().parents[2]
SOURCES = ["1471-2180-11-174", "ehp-116-1694", "mds526", "pone.0046493"]
N_PACKAGES = 100


def _big_jpegs(n: int) -> list[bytes]:
    """Smooth-noise 800x600 JPEGs: some decode/resize work per figure, cheap to gzip."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        small = Image.fromarray(rng.integers(0, 255, (21, 28, 3), dtype=np.uint8))
        buf = io.BytesIO()
        small.resize((800, 600), Image.Resampling.BICUBIC).save(buf, format="JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def _corpus(shared: Path, out: Path) -> Path:
    """N legacy packages made from the real .nxml files, each under its own PMCID."""
    images = _big_jpegs(5)
    for i in range(N_PACKAGES):
        stem = SOURCES[i % len(SOURCES)]
        xml = (shared / f"jats/pmc-nxml/{stem}.nxml").read_bytes()
        pmcid = f"PMC9{i:06d}"
        xml = re.sub(rb'(<article-id pub-id-type="pmc">)\d+', rb"\g<1>" + pmcid[3:].encode(), xml)
        members = {f"{pmcid}/{stem}.nxml": xml}
        for n, href in enumerate(GRAPHIC_HREF.findall(xml)):
            members[f"{pmcid}/{href.decode()}.jpg"] = images[(i + n) % len(images)]
        write_tar(out / f"{pmcid}.tar.gz", members)
    return out


def _articles(db: Path) -> int:
    try:
        con = sqlite3.connect(db, timeout=5)
        try:
            return con.execute("SELECT count(*) FROM articles").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def _state(db: Path) -> tuple[list, list]:
    con = sqlite3.connect(db)
    try:
        articles = con.execute(
            "SELECT key, title, license_class, content_hash FROM articles ORDER BY key").fetchall()
        figs = con.execute(
            "SELECT a.key, f.fig_id, f.label, f.caption, f.has_image, f.sha256, f.image_path "
            "FROM figures f JOIN articles a ON a.id = f.article_id ORDER BY a.key, f.fig_id"
        ).fetchall()
        return articles, figs
    finally:
        con.close()


@pytest.mark.slow
def test_sigkill_mid_ingest_then_resume(shared_data, tmp_path):
    corpus = _corpus(shared_data, tmp_path / "corpus")
    data = tmp_path / "data"
    db = data / "figsearch.db"
    cmd = [sys.executable, "-m", "figsearch.cli", "ingest", str(corpus), "--data-dir", str(data),
           "--workers", "2"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while _articles(db) < 10 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "ingest finished before it could be killed; enlarge the corpus"
    os.killpg(proc.pid, signal.SIGKILL)  # the whole group: main process and its workers
    proc.wait()

    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        written = con.execute("SELECT count(*) FROM articles").fetchone()[0]
        orphans = con.execute("SELECT count(*) FROM articles a WHERE NOT EXISTS "
                              "(SELECT 1 FROM figures f WHERE f.article_id = a.id)").fetchone()[0]
    finally:
        con.close()
    assert 10 <= written < N_PACKAGES and orphans == 0  # every source article has figures

    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    added = int(re.search(r"(\d+) articles added", rerun.stdout).group(1))
    unchanged = int(re.search(r"(\d+) unchanged", rerun.stdout).group(1))
    assert (added, unchanged) == (N_PACKAGES - written, written)

    clean = Settings(data_dir=tmp_path / "clean")
    ingest_paths([corpus], clean, workers=2)
    assert _state(db) == _state(clean.db_path)
    assert len(_state(db)[1]) == N_PACKAGES // 4 * (4 + 3 + 2 + 4)
