"""Builders for test packages in the real PMC layouts (used by the ingest tests)."""

from __future__ import annotations

import io
import re
import tarfile
import zipfile
from pathlib import Path

from PIL import Image

GRAPHIC_HREF = re.compile(rb'<graphic[^>]*?xlink:href="([^"]+)"')
PMC_ID = re.compile(rb'<article-id pub-id-type="pmc">(\d+)</article-id>')


def make_jpeg(seed: int, size: tuple[int, int] = (96, 72)) -> bytes:
    """A small JPEG whose pixels (and so bytes) depend on ``seed``."""
    img = Image.new("RGB", size, ((seed * 37) % 256, (seed * 91) % 256, (seed * 53) % 256))
    for x in range(0, size[0], 8):
        img.putpixel((x, (x * seed) % size[1]), (255, 255, 255))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_tar(path: Path, members: dict[str, bytes]) -> Path:
    """A gzip tarball with the given members (regular files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def pmc_members(nxml: Path, seed: int = 0) -> tuple[str, dict[str, bytes]]:
    """Members of a legacy PMC OA package for a real .nxml: ``PMCn/x.nxml`` + one JPEG per
    ``<graphic>`` (named by the href plus ``.jpg``, as PMC does) + a PDF."""
    data = nxml.read_bytes()
    m = PMC_ID.search(data)
    pmcid = f"PMC{m.group(1).decode()}" if m else nxml.stem
    members = {f"{pmcid}/{nxml.name}": data, f"{pmcid}/{nxml.stem}.pdf": b"%PDF-1.4 test"}
    for n, href in enumerate(GRAPHIC_HREF.findall(data)):
        members[f"{pmcid}/{href.decode()}.jpg"] = make_jpeg(seed * 100 + n + 1)
    return pmcid, members


def build_pmc_package(nxml: Path, out_dir: Path, seed: int = 0) -> tuple[str, Path]:
    """``out_dir/oa_package/xx/yy/PMCn.tar.gz`` for a real .nxml; returns (pmcid, path)."""
    pmcid, members = pmc_members(nxml, seed)
    digits = pmcid[3:].rjust(4, "0")
    path = out_dir / "oa_package" / digits[-2:] / digits[-4:-2] / f"{pmcid}.tar.gz"
    return pmcid, write_tar(path, members)
