"""Bad inputs are skipped (or their figure kept without image) with a recorded reason,
while the good inputs of the same run are ingested."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from figsearch.core.config import Settings
from figsearch.store import FigureStore
from indexer.ingest import IngestSummary, Task, collect_tasks, ingest_paths, run_tasks
from indexer.sources import ManifestGroup
from tests.indexer.packages import make_jpeg, pmc_members, write_tar

NXML = "jats/pmc-nxml/ehp-116-1694.nxml"  # 3 figures: f1/f2/f3-ehp-116-1694


def _pkg_with(shared: Path, tmp: Path, name: str, change) -> Path:
    _, members = pmc_members(shared / NXML)
    change(members)
    return write_tar(tmp / name, members)


def _drop_image(members: dict[str, bytes]) -> None:
    del members["PMC2599765/ehp-116-1694f2.jpg"]


def _corrupt_image(members: dict[str, bytes]) -> None:
    members["PMC2599765/ehp-116-1694f2.jpg"] = b"\xff\xd8 this is not really a jpeg"


def _truncate_image(members: dict[str, bytes]) -> None:
    jpeg = members["PMC2599765/ehp-116-1694f2.jpg"]
    members["PMC2599765/ehp-116-1694f2.jpg"] = jpeg[: len(jpeg) // 3]


def _bad_input(kind: str, shared: Path, tmp: Path) -> tuple[Path, str]:
    """A bad input of the given kind and the text its recorded reason must contain."""
    if kind == "no-jats-xml":
        return shared / "jats/packages/elife-39122.zip", "no JATS article XML in package"
    if kind == "malformed-xml":
        path = tmp / "broken.nxml"
        path.write_bytes((shared / NXML).read_bytes()[:5000])
        return path, "malformed XML"
    if kind == "xxe":
        path = tmp / "xxe.xml"
        path.write_bytes(b'<!DOCTYPE article [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
                         b"<article><body>&x;</body></article>")
        return path, "declares its own entities"
    if kind == "truncated-archive":
        full = _pkg_with(shared, tmp, "full.tar.gz", lambda m: None)
        path = tmp / "truncated.tar.gz"
        path.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
        return path, "truncated or corrupt archive"
    if kind == "zip-bomb":
        path = tmp / "bomb.zip"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("a.nxml", (shared / NXML).read_bytes())
            zf.writestr("ehp-116-1694f1.tif", b"\0" * 60_000_000)
        return path, "decompression bomb"
    if kind == "escaping-member":
        path = _pkg_with(shared, tmp, "escape.tar.gz",
                         lambda m: m.update({"../../x": b"owned"}))
        return path, "climbs out of the package"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["no-jats-xml", "malformed-xml", "xxe", "truncated-archive",
                                  "zip-bomb", "escaping-member"])
def test_bad_input_is_skipped_with_reason_and_the_rest_goes_on(shared_data, tmp_path, kind):
    bad, reason = _bad_input(kind, shared_data, tmp_path)
    good = shared_data / "jats/packages/elife-05-19405.zip"
    settings = Settings(data_dir=tmp_path / "data")
    summary = ingest_paths([bad, good], settings, workers=1)
    assert (summary.added, summary.skipped, summary.figures) == (1, 1, 1)
    [error] = FigureStore(settings.db_path).errors()
    assert reason in error["reason"] and error["item"].startswith(bad.name)
    assert not (tmp_path / "x").exists() and not (tmp_path.parent / "x").exists()


@pytest.mark.parametrize("change, reason", [
    (_drop_image, "graphic 'ehp-116-1694f2' not found in package"),
    (_corrupt_image, "figure kept without image: not a recognised image format"),
    (_truncate_image, "figure kept without image: corrupt or truncated image"),
], ids=["missing", "corrupt", "truncated"])
def test_bad_image_keeps_the_figure_without_image(shared_data, tmp_path, change, reason):
    pkg = _pkg_with(shared_data, tmp_path, "pkg.tar.gz", change)
    settings = Settings(data_dir=tmp_path / "data")
    summary = ingest_paths([pkg], settings, workers=1)
    assert (summary.added, summary.figures, summary.figures_with_images) == (1, 3, 2)
    assert summary.problems == 1 and summary.skipped == 0
    store = FigureStore(settings.db_path)
    [error] = store.errors()
    assert reason in error["reason"] and error["item"].endswith("#f2-ehp-116-1694")
    assert error["stage"] == "image"
    f2 = [f for f in store.get_figures(range(1, 4)).values() if f["fig_id"] == "f2-ehp-116-1694"]
    assert f2[0]["has_image"] is False and f2[0]["caption"].startswith("Dietary exposure")


def test_image_over_the_pixel_limit_is_refused_as_a_bomb(shared_data, tmp_path):
    def big(members: dict[str, bytes]) -> None:
        buf = io.BytesIO()
        Image.new("L", (300, 200)).save(buf, format="PNG")
        members["PMC2599765/ehp-116-1694f1.jpg"] = buf.getvalue()  # PIL sniffs the format

    pkg = _pkg_with(shared_data, tmp_path, "pkg.tar.gz", big)
    settings = Settings(data_dir=tmp_path / "data", max_image_pixels=50_000)
    summary = ingest_paths([pkg], settings, workers=1)
    assert (summary.figures, summary.figures_with_images, summary.problems) == (3, 2, 1)
    [error] = FigureStore(settings.db_path).errors()
    assert "decompression bomb" in error["reason"] and "300x200" in error["reason"]


def test_all_bad_inputs_in_one_parallel_run(shared_data, tmp_path):
    kinds = ["no-jats-xml", "malformed-xml", "xxe", "truncated-archive", "zip-bomb",
             "escaping-member"]
    bad = [_bad_input(k, shared_data, tmp_path)[0] for k in kinds]
    good_pkg = tmp_path / "good" / "ok.tar.gz"
    good_pkg.parent.mkdir()
    _, members = pmc_members(shared_data / "jats/pmc-nxml/pone.0000217.nxml")
    members["PMC1790863/extra.jpg"] = make_jpeg(99)
    write_tar(good_pkg, members)
    settings = Settings(data_dir=tmp_path / "data")
    summary = ingest_paths([*bad, good_pkg, shared_data / "jats/packages"], settings, workers=2)
    # good: ok.tar.gz + the 4 readable shared packages; bad: 6 given + elife-39122 again
    assert (summary.added, summary.skipped) == (5, 7)
    assert summary.figures == 3 + 8


class _DiesWhenUnpickled(ManifestGroup):
    """A task payload that kills the worker process that receives it (like a decoder crash)."""

    def __reduce__(self):
        return (os._exit, (3,))


@pytest.mark.timeout(180)  # a pool that does not stop its surviving workers hangs here
def test_a_dying_worker_costs_only_the_tasks_in_flight(shared_data, tmp_path):
    tasks, _ = collect_tasks([shared_data / "jats/plos", shared_data / "jats/pmc-nxml"])
    crash = Task(str(tmp_path / "crash.tar.gz"), group=_DiesWhenUnpickled("m", "PMC1"))
    settings = Settings(data_dir=tmp_path / "data")
    store = FigureStore(settings.db_path)
    summary = run_tasks([crash, *tasks], settings, store, IngestSummary(), workers=2)
    died = [e for e in store.errors() if "worker process died" in e["reason"]]
    assert "crash.tar.gz" in [e["item"] for e in died]
    assert len(died) <= 8  # at most the tasks in flight with it (4 per worker)
    assert summary.added == len(tasks) + 1 - len(died)  # a fresh pool did all the rest


def test_corrupt_zip_member_keeps_the_figure(shared_data, tmp_path):
    _, members = pmc_members(shared_data / NXML)
    pkg = tmp_path / "crc.zip"
    with zipfile.ZipFile(pkg, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    raw = bytearray(pkg.read_bytes())
    jpeg = members["PMC2599765/ehp-116-1694f3.jpg"]
    at = bytes(raw).index(jpeg) + len(jpeg) // 2
    raw[at:at + 8] = b"XXXXXXXX"  # damage the stored bytes: the CRC no longer matches
    pkg.write_bytes(bytes(raw))
    settings = Settings(data_dir=tmp_path / "data")
    summary = ingest_paths([pkg], settings, workers=1)
    assert (summary.figures, summary.figures_with_images, summary.problems) == (3, 2, 1)
    [error] = FigureStore(settings.db_path).errors()
    assert "cannot read member 'PMC2599765/ehp-116-1694f3.jpg'" in error["reason"]
    assert "CRC" in error["reason"]
