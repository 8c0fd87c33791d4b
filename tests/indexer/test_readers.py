"""Readers: every package layout on real fixtures, and the archive safety rules."""

from __future__ import annotations

import io
import shutil
import tarfile
import zipfile

import pytest

from indexer.jats import parse_article, resolve_graphic
from indexer.readers import InputError, Limits, is_article_dir, read_units
from tests.indexer.packages import build_pmc_package, make_jpeg, write_tar, write_zip


def _one(path, limits=None):
    [unit] = list(read_units(path, limits))
    return unit


def test_legacy_pmc_tar_gz(shared_data, tmp_path):
    pmcid, pkg = build_pmc_package(shared_data / "jats/pmc-nxml/1471-2180-11-174.nxml", tmp_path)
    assert pkg.relative_to(tmp_path).as_posix() == "oa_package/77/62/PMC3166277.tar.gz"
    unit = _one(pkg)
    assert unit.xml_name == "PMC3166277/1471-2180-11-174.nxml"
    art = parse_article(unit.xml)
    assert [f.fig_id for f in art.figures] == ["F1", "F2", "F3", "F4"]
    name = resolve_graphic(art.figures[1].href, unit.names)
    assert name == "PMC3166277/1471-2180-11-174-2.jpg"
    assert unit.fetch(name)[:2] == b"\xff\xd8"  # a JPEG
    assert not any(n.endswith(".pdf") for n in unit.names)  # PDFs are never read


def test_publisher_zip(shared_data):
    unit = _one(shared_data / "jats/packages/elife-05-19405.zip")
    assert unit.xml_name == "elife-19405.xml"
    assert sorted(unit.names) == ["elife-19405-fig1.tif", "elife-19405-inf1.tif"]
    [fig] = parse_article(unit.xml).figures
    assert resolve_graphic(fig.href, unit.names) == "elife-19405-fig1.tif"


def test_meca_zip_uses_the_manifest(shared_data):
    unit = _one(shared_data / "jats/packages/95901-v1-meca.zip")
    # directives.xml, transfer.xml and manifest.xml are XML too; the manifest picks the article.
    assert unit.xml_name == "content/24301711.xml"
    [fig] = parse_article(unit.xml).figures
    assert (fig.label, fig.caption) == ("Figure 1.", "Flow chart of participant selection for this study")
    assert resolve_graphic(fig.href, unit.names) == "content/24301711v1_fig1.tif"


def test_unpacked_article_directory(shared_data):
    path = shared_data / "jats/packages/elife-32671"
    assert is_article_dir(path)
    unit = _one(path)
    assert unit.xml_name == "manuscript.xml"
    art = parse_article(unit.xml)
    assert len(art.figures) == 5
    fig2 = art.figures[1]
    assert fig2.label == "Figure 2"
    assert fig2.caption.startswith(
        "Comparison between spiral scan and scanless holographic approaches for "
        "photostimulation. In the scanning approach, the laser spot is spirally scanned over "
        "the cell body; in the scanless approach, a disk pattern (~12 μm in diameter)"
    )
    assert unit.fetch(resolve_graphic(fig2.href, unit.names))[:2] == b"\xff\xd8"


def test_bare_nxml_has_no_files(shared_data):
    unit = _one(shared_data / "jats/pmc-nxml/pone.0046493.nxml")
    assert unit.names == []
    assert len(parse_article(unit.xml).figures) == 4


def test_package_without_article_xml_is_refused(shared_data):
    with pytest.raises(InputError, match=r"no JATS article XML in package \(found: "
                                         r"elife-39122-sa2-fig1.jpg, elife-39122-sa2-fig2.jpg\)"):
        list(read_units(shared_data / "jats/packages/elife-39122.zip"))


ARTICLE = b"<article><body><fig id='f1'><caption><p>x</p></caption></fig></body></article>"


@pytest.mark.parametrize("member", ["../../x.jpg", "/etc/x.jpg", "a/../../x.nxml"])
@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_escaping_member_paths_are_refused(tmp_path, member, kind):
    members = {"a.nxml": ARTICLE, member: b"evil"}
    if kind == "tar":
        pkg = write_tar(tmp_path / "p.tar.gz", members)
    else:
        pkg = write_zip(tmp_path / "p.zip", members)
    with pytest.raises(InputError, match="absolute path|climbs out"):
        list(read_units(pkg))


def test_symlink_members_are_refused(tmp_path):
    pkg = tmp_path / "link.tar.gz"
    with tarfile.open(pkg, "w:gz") as tf:
        info = tarfile.TarInfo("a.nxml")
        info.size = len(ARTICLE)
        tf.addfile(info, io.BytesIO(ARTICLE))
        link = tarfile.TarInfo("f1.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    with pytest.raises(InputError, match="is a link"):
        list(read_units(pkg))
    zpkg = tmp_path / "link.zip"
    with zipfile.ZipFile(zpkg, "w") as zf:
        zf.writestr("a.nxml", ARTICLE)
        info = zipfile.ZipInfo("f1.jpg")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(InputError, match="is a link"):
        list(read_units(zpkg))


def test_member_count_and_size_caps(tmp_path):
    members = {"a.nxml": ARTICLE, **{f"f{i}.jpg": make_jpeg(i) for i in range(5)}}
    pkg = write_tar(tmp_path / "many.tar.gz", members)
    with pytest.raises(InputError, match="more than 3 members"):
        list(read_units(pkg, Limits(max_members=3)))
    with pytest.raises(InputError, match="decompression bomb"):
        list(read_units(pkg, Limits(max_total_bytes=2000)))
    assert len(_one(pkg).names) == 5


def test_zip_bomb_member_is_refused(tmp_path):
    pkg = tmp_path / "bomb.zip"
    with zipfile.ZipFile(pkg, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.nxml", ARTICLE)
        zf.writestr("f1.tif", b"\0" * 50_000_000)  # 50 MB of zeros -> ~50 KB
    with pytest.raises(InputError, match="decompression bomb"):
        list(read_units(pkg))


@pytest.mark.parametrize("name", ["elife-05-19405.zip"])
def test_truncated_archives_are_refused(shared_data, tmp_path, name):
    data = (shared_data / "jats/packages" / name).read_bytes()
    cut = tmp_path / name
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated or corrupt archive"):
        list(read_units(cut))
    pmcid, pkg = build_pmc_package(shared_data / "jats/pmc-nxml/ehp-116-1694.nxml", tmp_path)
    tar_cut = tmp_path / "cut.tar.gz"
    tar_cut.write_bytes(pkg.read_bytes()[:-400])
    with pytest.raises(InputError, match="truncated or corrupt archive"):
        list(read_units(tar_cut))


def test_directory_reader_ignores_symlinks(shared_data, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(shared_data / "jats/packages/elife-32671", art)
    art.chmod(0o755)  # the shared data is read-only
    (art / "evil.jpg").symlink_to("/etc/passwd")
    unit = _one(art)
    assert "evil.jpg" not in unit.names and "fig1.jpg" in unit.names
