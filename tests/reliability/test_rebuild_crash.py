"""SIGKILL of ``figsearch rebuild`` at every stage: the store stays whole, ``current`` keeps
serving the old version, and a rerun completes.

The process kills itself with SIGKILL where ``FIGSEARCH_FAULT_AT`` says
(:mod:`figsearch.faults`): after some articles are committed, mid-embedding, after the index is
trained, and after the version directory is renamed into place but before ``current`` is switched
(then validation and the swap would follow).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from figsearch.index import SearchIndex, current_version_dir

from .servers import REPO, copy_data_dir, server_env

#: during ingest, during embedding, during the index build, and just before the swap
STAGES = ["ingest-article@3", "embed-batch@2", "build-trained", "build-renamed"]
NEW_ROWS = slice(36, 66)  # figures.jsonl rows not yet in the small index's store


def _new_manifest(shared_data: Path, dest: Path) -> tuple[Path, Counter]:
    """A JSONL manifest of 30 real figures the store lacks (images via a symlinked folder)."""
    src = shared_data / "pmc-figures"
    rows = [json.loads(line) for line in (src / "figures.jsonl").read_text().splitlines()][NEW_ROWS]
    if not (dest.parent / "images").exists():
        (dest.parent / "images").symlink_to(src / "images")
    dest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return dest, Counter(r["pmcid"] for r in rows)


def _rebuild(data: Path, model_dir: Path, source: Path, fault: str | None) -> subprocess.CompletedProcess:
    env = server_env(model_dir, ingest_workers=1, num_workers=0, batch_size=8)
    env.pop("FIGSEARCH_FAULT_AT", None)
    if fault:
        env["FIGSEARCH_FAULT_AT"] = fault
    cmd = [sys.executable, "-m", "figsearch.cli", "rebuild", "--data-dir", str(data),
           "--source", str(source), "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        try:  # anything the killed process left behind (its own process group only)
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _check_store(db: Path, expected: Counter) -> int:
    """Integrity ok, and every stored article of the manifest has all its figures."""
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        # manifest articles are keyed by their PMCID (the fixture's own articles by "pmc:...")
        rows = con.execute("SELECT a.key, count(f.id) FROM articles a LEFT JOIN figures f "
                           "ON f.article_id = a.id GROUP BY a.id").fetchall()
    finally:
        con.close()
    stored = 0
    for pmcid, count in rows:
        if pmcid in expected:
            assert count == expected[pmcid], f"{pmcid}: {count} of {expected[pmcid]} figures stored"
            stored += 1
    return stored


def _serves(version_dir: Path, name: str) -> None:
    """``current`` is ``name`` and answers self-queries with the figure itself."""
    current = current_version_dir(version_dir)
    assert current is not None and current.name == name, f"current moved to {current}"
    index = SearchIndex.load(current)
    ids = index.ids[:5]
    _, got = index.search(index.vectors_for(ids).astype(np.float32), 1)
    assert got[:, 0].tolist() == ids.tolist()


@pytest.mark.slow
def test_sigkill_at_every_rebuild_stage_then_rerun(small_index_data_dir, tiny_model_dir,
                                                   shared_data, tmp_path):
    data = copy_data_dir(small_index_data_dir, tmp_path / "data")
    source, expected = _new_manifest(shared_data, tmp_path / "new.jsonl")
    old = current_version_dir(data / "indexes").name
    log = []
    for stage in STAGES:
        res = _rebuild(data, tiny_model_dir, source, stage)
        assert res.returncode == -signal.SIGKILL, (stage, res.returncode, res.stderr[-2000:])
        assert f"SIGKILL at stage {stage.split('@')[0]!r}" in res.stderr
        stored = _check_store(data / "figsearch.db", expected)
        _serves(data / "indexes", old)
        log.append(f"{stage}: killed, {stored}/{len(expected)} new articles stored whole, "
                   f"current = old version")
    res = _rebuild(data, tiny_model_dir, source, None)
    assert res.returncode == 0, res.stderr[-3000:]
    assert _check_store(data / "figsearch.db", expected) == len(expected)
    new = current_version_dir(data / "indexes")
    assert new is not None and new.name != old
    index = SearchIndex.load(new)
    con = sqlite3.connect(data / "figsearch.db")
    with_images = con.execute("SELECT count(*) FROM figures f JOIN articles a ON a.id = "
                              "f.article_id WHERE f.has_image = 1 AND a.retracted = 0").fetchone()[0]
    con.close()
    assert index.ntotal == with_images
    assert not [p for p in (data / "indexes").iterdir() if p.name.startswith(".building-")]
    print("\n" + "\n".join(log) + f"\nrerun: {res.stdout.strip().splitlines()[-1]}")
