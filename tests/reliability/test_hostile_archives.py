"""Hostile packages through the readers: bombs, traversal, links, absurd member counts."""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

import pytest

from indexer.readers import InputError, Limits, read_units

from . import hostile


def _units(path: Path, limits: Limits | None = None):
    return list(read_units(path, limits))


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def test_well_formed_hostile_helpers_are_accepted(tmp_path):
    """Control: the same builders make packages that *are* read when nothing is hostile."""
    jpg = hostile.sample_jpeg()
    for name, data in (("ok.zip", hostile.zip_bytes([("a.nxml", hostile.mini_article()), ("f1.jpg", jpg)])),
                       ("ok.tar.gz", hostile.tar_gz_bytes([("PMC1/a.nxml", hostile.mini_article()),
                                                           ("PMC1/f1.jpg", jpg)]))):
        (unit,) = _units(_write(tmp_path, name, data))
        assert unit.xml == hostile.mini_article()
        assert any(n.endswith("f1.jpg") for n in unit.names)


def test_zip_bomb_high_ratio_is_refused(tmp_path):
    zeros = b"\x00" * 60_000_000
    path = _write(tmp_path, "bomb.zip", hostile.zip_bytes([("a.nxml", hostile.mini_article()),
                                                           ("f1.jpg", zeros)]))
    assert path.stat().st_size < 200_000
    with pytest.raises(InputError, match="bomb"):  # refused from the header, time: bench/hostile.py
        _units(path)


def test_nested_zip_members_are_not_opened(tmp_path):
    inner = hostile.zip_bytes([("x.jpg", b"\x00" * 5_000_000)])
    path = _write(tmp_path, "nested.zip", hostile.zip_bytes(
        [("a.nxml", hostile.mini_article()), ("inner.zip", inner)]))
    (unit,) = _units(path)
    assert "inner.zip" not in unit.names


def test_zip_member_lying_about_its_size_is_refused(tmp_path):
    data = bytearray(hostile.zip_bytes([("a.nxml", hostile.mini_article()),
                                        ("f1.jpg", b"\x00" * 2_000_000)]))
    # Patch the declared uncompressed size (local header and central directory) to 100 bytes.
    with zipfile.ZipFile(__import__("io").BytesIO(bytes(data))) as zf:
        info = zf.getinfo("f1.jpg")
    real = (2_000_000).to_bytes(4, "little")
    assert data.count(real) == 2
    data = bytearray(bytes(data).replace(real, (100).to_bytes(4, "little")))
    path = _write(tmp_path, "liar.zip", bytes(data))
    assert info.file_size == 2_000_000
    # refused when the package is opened, or (images are read lazily) when the image is fetched
    with pytest.raises(InputError):
        for unit in _units(path):
            for name in unit.names:
                unit.fetch(name)


def test_tar_claiming_huge_member_is_refused_without_reading(tmp_path):
    path = _write(tmp_path, "claim.tar.gz", hostile.tar_gz_claiming("PMC1/f1.jpg", 3 * 2**30))
    with pytest.raises(InputError, match="bomb|exceeds|truncated|corrupt"):
        _units(path)


def test_tar_bomb_over_configured_budget_is_refused(tmp_path):
    data = hostile.tar_gz_bytes([("p/a.nxml", hostile.mini_article()),
                                 ("p/f1.jpg", b"\x00" * 20_000_000)])
    path = _write(tmp_path, "bomb.tar.gz", data)
    with pytest.raises(InputError, match="bomb|exceeds"):
        _units(path, Limits(max_total_bytes=10_000_000))


@pytest.mark.parametrize("evil", ["../evil.jpg", "../../etc/cron.d/evil.xml", "/etc/evil.xml",
                                  "p/../../evil.jpg", "C:/Windows/evil.xml", "..\\..\\evil.jpg"])
@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_path_traversal_members_are_refused(tmp_path, evil, kind):
    members = [("a.nxml", hostile.mini_article()), (evil, b"pwned")]
    data = hostile.zip_bytes(members) if kind == "zip" else hostile.tar_gz_bytes(members)
    work = tmp_path / "work"
    work.mkdir()
    path = _write(work, f"evil.{kind}", data)
    before = _tree(tmp_path)
    with pytest.raises(InputError, match="climbs out|absolute"):
        _units(path)
    assert _tree(tmp_path) == before, "reading a package wrote files"


def test_symlink_members_are_refused(tmp_path):
    zip_path = _write(tmp_path, "link.zip", hostile.zip_bytes(
        [("a.nxml", hostile.mini_article())], symlinks={"f1.jpg": "/etc/passwd"}))
    tar_path = _write(tmp_path, "link.tar.gz", hostile.tar_gz_bytes(
        [("p/a.nxml", hostile.mini_article())], links={"p/f1.jpg": "/etc/passwd"}))
    hard_path = _write(tmp_path, "hard.tar.gz", hostile.tar_gz_bytes(
        [("p/a.nxml", hostile.mini_article())], hardlinks={"p/f1.jpg": "/etc/passwd"}))
    for path in (zip_path, tar_path, hard_path):
        with pytest.raises(InputError, match="link"):
            _units(path)


def test_absurd_member_count_is_refused(tmp_path):
    members = [("a.nxml", hostile.mini_article())] + [(f"d/{i}.txt", b"") for i in range(10_050)]
    path = _write(tmp_path, "many.zip", hostile.zip_bytes(members))
    with pytest.raises(InputError, match="members"):
        _units(path)


@pytest.mark.parametrize("keep", [0.05, 0.5, 0.95])
def test_truncated_archives_are_refused(shared_data, tmp_path, keep):
    src = (shared_data / "jats" / "packages" / "elife-05-19405.zip").read_bytes()
    path = _write(tmp_path, "cut.zip", src[: int(len(src) * keep)])
    with pytest.raises(InputError):
        _units(path)
    tgz = hostile.tar_gz_bytes([("p/a.nxml", hostile.mini_article()),
                                ("p/f1.jpg", os.urandom(200_000))])
    path = _write(tmp_path, "cut.tar.gz", tgz[: int(len(tgz) * keep)])
    with pytest.raises(InputError):
        _units(path)


def test_symlink_in_unpacked_directory_is_not_followed(shared_data, tmp_path):
    pkg = tmp_path / "elife-32671"
    shutil.copytree(shared_data / "jats" / "packages" / "elife-32671", pkg)
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(hostile.sample_jpeg())
    os.symlink(secret, pkg / "fig6.jpg")
    os.symlink(tmp_path, pkg / "up")
    (unit,) = _units(pkg)
    assert "fig6.jpg" not in unit.names
    assert not any(n.startswith("up/") for n in unit.names)


def test_package_without_article_xml_is_reported(shared_data):
    with pytest.raises(InputError, match="no JATS article"):
        _units(shared_data / "jats" / "packages" / "elife-39122.zip")
