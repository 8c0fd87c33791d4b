"""Readers: turn one input path into article "units" (article XML + the package's files).

Supported inputs: legacy PMC OA ``.tar.gz`` packages, publisher ``.zip`` packages, MECA zips
(``manifest.xml`` names the article XML), unpacked article directories and bare
``.nxml``/``.xml`` files. Archives are read defensively: member paths that climb out
(``..``, absolute paths), links and devices are refused, and member count and total
uncompressed size are capped so that a zip bomb costs nothing. Every refusal is an
:class:`InputError` whose message says what is wrong.
"""

from __future__ import annotations

import re
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from lxml import etree

from indexer.jats import IMAGE_EXTENSIONS, JatsError, parse_xml

MAX_MEMBERS = 10_000
MAX_TOTAL_BYTES = 2 * 1024**3  # uncompressed bytes of all members we read
MAX_RATIO = 200  # zip members compressing better than this are treated as bombs
XML_EXTENSIONS = (".nxml", ".xml")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
_ARTICLE_ROOT = re.compile(rb"<(?:[A-Za-z_][\w.-]*:)?article[\s>/]")
# Package XML that is never the article itself.
_NOT_ARTICLE = {"manifest.xml", "directives.xml", "transfer.xml", "go.xml", "mimetype"}


class InputError(ValueError):
    """An input that cannot be read; the message says why."""


@dataclass
class ArticleUnit:
    """One article found in an input: its XML and a way to fetch the package's other files."""

    item: str  # human-readable origin, e.g. "pkg.tar.gz:PMC1/a.nxml"
    xml_name: str
    xml: bytes
    names: list[str] = field(default_factory=list)  # other files in the package
    fetch: Callable[[str], bytes] = field(default=lambda name: b"", repr=False)


@dataclass
class Limits:
    """Archive safety caps (members, total uncompressed bytes, compression ratio)."""

    max_members: int = MAX_MEMBERS
    max_total_bytes: int = MAX_TOTAL_BYTES
    max_ratio: int = MAX_RATIO


def is_archive(path: Path) -> bool:
    """True for the archive formats the readers open."""
    name = path.name.lower()
    return name.endswith(ARCHIVE_SUFFIXES)


def safe_member_name(name: str) -> str:
    """A member path normalised to POSIX form; refuse absolute paths and ``..``."""
    clean = name.replace("\\", "/")
    if clean.startswith("/") or re.match(r"^[A-Za-z]:", clean):
        raise InputError(f"archive member has an absolute path: {name!r}")
    parts = PurePosixPath(clean).parts
    if ".." in parts:
        raise InputError(f"archive member climbs out of the package: {name!r}")
    return "/".join(p for p in parts if p not in ("", "."))


def looks_like_article(data: bytes) -> bool:
    """Cheap check that XML bytes have a JATS ``<article>`` root element."""
    return bool(_ARTICLE_ROOT.search(data[:200_000]))


def _is_wanted(name: str) -> bool:
    lower = name.lower()
    return lower.endswith(XML_EXTENSIONS + IMAGE_EXTENSIONS)


# -- picking the article XML --------------------------------------------------------------
def meca_article_path(manifest: bytes) -> str | None:
    """The article XML path named by a MECA (``<item type="article">``) or DAR manifest."""
    try:
        root = parse_xml(manifest)
    except JatsError:
        return None
    for item in root.iter("{*}item"):
        if item.get("type") == "article":
            for inst in item.iter("{*}instance"):
                if "xml" in (inst.get("media-type") or "") and inst.get("href"):
                    return inst.get("href")
    for doc in root.iter("{*}document"):
        if doc.get("type") == "article" and doc.get("path"):
            return doc.get("path")
    return None


def choose_article_xml(
    files: dict[str, bytes], label: str, listing: Iterable[str] | None = None
) -> str:
    """Name of the article XML among a package's files (manifest first, else by root).

    ``listing`` (all member names) only makes the error message more helpful.
    """
    manifests = [n for n in files if PurePosixPath(n).name.lower() == "manifest.xml"]
    for m in manifests:
        href = meca_article_path(files[m])
        if href:
            base = PurePosixPath(m).parent
            wanted = safe_member_name(str(base / href) if str(base) != "." else href)
            if wanted in files:
                return wanted
            raise InputError(f"{label}: manifest names {href!r}, which the package lacks")
    candidates = sorted(
        n for n in files
        if n.lower().endswith(XML_EXTENSIONS)
        and PurePosixPath(n).name.lower() not in _NOT_ARTICLE
        and looks_like_article(files[n])
    )
    if not candidates:
        found = ", ".join(sorted(listing if listing is not None else files)[:8])
        raise InputError(f"{label}: no JATS article XML in package "
                         f"(found: {found or 'no XML or image files'})")
    return candidates[0]


def _unit(files: dict[str, bytes], label: str) -> ArticleUnit:
    xml_name = choose_article_xml(files, label)
    names = [n for n in files if n != xml_name]
    return ArticleUnit(f"{label}:{xml_name}", xml_name, files[xml_name], names, files.__getitem__)


# -- archives -----------------------------------------------------------------------------
class _Budget:
    """Counts members and bytes read from one archive against the limits."""

    def __init__(self, limits: Limits, label: str) -> None:
        self.limits, self.label, self.members, self.total = limits, label, 0, 0

    def member(self) -> None:
        self.members += 1
        if self.members > self.limits.max_members:
            raise InputError(
                f"{self.label}: more than {self.limits.max_members} members; refused"
            )

    def add(self, size: int) -> None:
        self.total += size
        if self.total > self.limits.max_total_bytes:
            raise InputError(
                f"{self.label}: uncompressed size exceeds {self.limits.max_total_bytes} bytes; "
                "refused as a possible decompression bomb"
            )


def read_tar(path: Path, limits: Limits | None = None) -> dict[str, bytes]:
    """XML and image members of a tar(.gz) package, read in one streaming pass."""
    budget, files = _Budget(limits or Limits(), path.name), {}
    try:
        with tarfile.open(path, "r:*") as tf:
            for member in tf:
                budget.member()
                name = safe_member_name(member.name)
                if member.issym() or member.islnk():
                    raise InputError(f"{path.name}: archive member is a link: {member.name!r}")
                if not (member.isfile() or member.isdir()):
                    raise InputError(f"{path.name}: archive member is not a file: {member.name!r}")
                if member.isfile() and _is_wanted(name):
                    budget.add(member.size)
                    fh = tf.extractfile(member)
                    files[name] = fh.read() if fh is not None else b""
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise InputError(f"{path.name}: truncated or corrupt archive: {exc}") from exc
    return files


def _zip_member_is_link(info: zipfile.ZipInfo) -> bool:
    mode = (info.external_attr >> 16) & 0o170000
    return mode == 0o120000


_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, zlib.error)


def _zip_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, label: str) -> bytes:
    with zf.open(info) as fh:
        data = fh.read(info.file_size + 1)
    if len(data) > info.file_size:
        raise InputError(f"{label}: member {info.filename!r} is larger than it declares")
    return data


def index_zip(
    path: Path, limits: Limits | None = None
) -> tuple[dict[str, bytes], dict[str, zipfile.ZipInfo]]:
    """XML members (read) and image members (indexed, read on demand) of a zip package.

    Every member is checked from the central directory first (paths, links, count,
    declared sizes, compression ratio), so a bomb is refused before anything is inflated.
    """
    limits = limits or Limits()
    budget = _Budget(limits, path.name)
    xml_files: dict[str, bytes] = {}
    images: dict[str, zipfile.ZipInfo] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                budget.member()
                name = safe_member_name(info.filename)
                if _zip_member_is_link(info):
                    raise InputError(f"{path.name}: archive member is a link: {info.filename!r}")
                if info.is_dir() or not _is_wanted(name):
                    continue
                _check_ratio(info, limits, path.name)
                budget.add(info.file_size)
                if name.lower().endswith(XML_EXTENSIONS):
                    xml_files[name] = _zip_member(zf, info, path.name)
                else:
                    images[name] = info
    except _ZIP_ERRORS as exc:
        raise InputError(f"{path.name}: truncated or corrupt archive: {exc}") from exc
    return xml_files, images


def read_zip_unit(path: Path, limits: Limits | None = None) -> ArticleUnit:
    """The article of a zip / MECA package; images are read only when fetched."""
    xml_files, images = index_zip(path, limits)
    xml_name = choose_article_xml(xml_files, path.name, [*xml_files, *images])
    names = [n for n in (*xml_files, *images) if n != xml_name]

    def fetch(name: str) -> bytes:
        if name in xml_files:
            return xml_files[name]
        try:
            with zipfile.ZipFile(path) as zf:
                return _zip_member(zf, images[name], path.name)
        except _ZIP_ERRORS as exc:
            raise InputError(f"{path.name}: cannot read member {name!r}: {exc}") from exc

    return ArticleUnit(f"{path.name}:{xml_name}", xml_name, xml_files[xml_name], names, fetch)


def _check_ratio(info: zipfile.ZipInfo, limits: Limits, label: str) -> None:
    if info.file_size > 1_000_000 and info.file_size > limits.max_ratio * max(1, info.compress_size):
        raise InputError(
            f"{label}: member {info.filename!r} expands {info.compress_size} -> "
            f"{info.file_size} bytes; refused as a possible decompression bomb"
        )


# -- the readers --------------------------------------------------------------------------
def read_archive(path: Path, limits: Limits | None = None) -> Iterator[ArticleUnit]:
    """The article of a ``.tar.gz`` / ``.zip`` / MECA package."""
    if path.name.lower().endswith(".zip"):
        yield read_zip_unit(path, limits)
    else:
        yield _unit(read_tar(path, limits), path.name)


def read_directory(path: Path, limits: Limits | None = None) -> Iterator[ArticleUnit]:
    """The article of an unpacked package directory (e.g. ``elife-32671/``)."""
    limits = limits or Limits()
    budget, root = _Budget(limits, path.name), path.resolve()
    names: dict[str, Path] = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            continue  # never follow links out of the package
        if p.is_file() and _is_wanted(p.name):
            budget.member()
            names[p.relative_to(root).as_posix()] = p
    xml_files = {n: names[n].read_bytes() for n in names if n.lower().endswith(XML_EXTENSIONS)}
    xml_name = choose_article_xml(xml_files, path.name)
    others = [n for n in names if n != xml_name]

    def fetch(name: str) -> bytes:
        size = names[name].stat().st_size
        budget.add(size)
        return names[name].read_bytes()

    yield ArticleUnit(f"{path.name}:{xml_name}", xml_name, xml_files[xml_name], others, fetch)


def read_xml_file(path: Path, limits: Limits | None = None) -> Iterator[ArticleUnit]:
    """A bare ``.nxml``/``.xml`` article: figures are recorded without images."""
    data = path.read_bytes()
    if not looks_like_article(data):
        try:
            root = parse_xml(data)
        except JatsError as exc:
            raise InputError(f"{path.name}: {exc}") from exc
        raise InputError(f"{path.name}: not a JATS article (root element <{etree.QName(root).localname}>)")
    yield ArticleUnit(path.name, path.name, data)


def read_units(path: Path, limits: Limits | None = None) -> Iterator[ArticleUnit]:
    """Dispatch on the kind of input; raise :class:`InputError` for anything unreadable."""
    if path.is_dir():
        return read_directory(path, limits)
    if is_archive(path):
        return read_archive(path, limits)
    if path.name.lower().endswith(XML_EXTENSIONS):
        return read_xml_file(path, limits)
    raise InputError(f"{path.name}: not a package, article directory or JATS XML file")


def is_article_dir(path: Path) -> bool:
    """A directory holding one article: a manifest, or one XML file beside image files."""
    if (path / "manifest.xml").is_file() or (path / "manuscript.xml").is_file():
        return True
    entries = [p for p in path.iterdir() if p.is_file()]
    xmls = [p for p in entries if p.name.lower().endswith(XML_EXTENSIONS)]
    images = [p for p in entries if p.name.lower().endswith(IMAGE_EXTENSIONS)]
    return len(xmls) == 1 and bool(images)
