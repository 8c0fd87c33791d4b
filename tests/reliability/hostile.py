"""Builders of hostile inputs (images, XML, archives), shared by the reliability tests.

Everything is generated in memory from a few bytes: no attack file is stored in the repo.
"""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk with its CRC."""
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png_claiming(width: int, height: int, idat: bytes | None = None) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` 8-bit greyscale pixels.

    The pixel data is a few hundred compressed bytes at most: the classic decompression bomb
    shape (a small file that would need gigabytes once decoded).
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    if idat is None:
        # Rows of zeros, compressed: tiny on disk whatever the claimed size.
        idat = zlib.compress(b"\x00" * min(width + 1, 1 << 16) * 4, 9)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat)
            + png_chunk(b"IEND", b""))


def real_png_bomb(side: int = 12_000) -> bytes:
    """A *complete, valid* all-black PNG of ``side`` x ``side`` built row by row (few KiB)."""
    comp = zlib.compressobj(9)
    row = b"\x00" * (side + 1)
    body = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", body)
            + png_chunk(b"IEND", b""))


def encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    """Image bytes in ``fmt``."""
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def sample_jpeg(size: tuple[int, int] = (64, 48)) -> bytes:
    """A small valid JPEG with some structure (a gradient), for truncation and fuzzing."""
    img = Image.linear_gradient("L").resize(size).convert("RGB")
    return encode(img, "JPEG", quality=90)


def animated_gif(frames: int = 5, size: tuple[int, int] = (40, 30)) -> bytes:
    """An animated GIF whose frames have different colours (first frame red)."""
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]
    imgs = [Image.new("RGB", size, colours[i % len(colours)]) for i in range(frames)]
    return encode(imgs[0], "GIF", save_all=True, append_images=imgs[1:], duration=50, loop=0)


def cmyk_jpeg(size: tuple[int, int] = (32, 32)) -> bytes:
    """A CMYK JPEG of pure cyan."""
    return encode(Image.new("CMYK", size, (255, 0, 0, 0)), "JPEG", quality=95)


def png16_gradient(size: tuple[int, int] = (256, 16)) -> bytes:
    """A 16-bit greyscale PNG whose values span 0..65535 left to right."""
    img = Image.new("I;16", size)
    w, h = size
    img.putdata([int(x * 65535 / (w - 1)) for _y in range(h) for x in range(w)])
    return encode(img, "PNG")


def palette_alpha_png(size: tuple[int, int] = (20, 20)) -> bytes:
    """A palette PNG whose index 0 is fully transparent (left half) and index 1 opaque red."""
    img = Image.new("P", size, 1)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0, 0, 0] * 254)
    for x in range(size[0] // 2):
        for y in range(size[1]):
            img.putpixel((x, y), 0)
    return encode(img, "PNG", transparency=0)


def billion_laughs(levels: int = 10, fanout: int = 10) -> bytes:
    """The "billion laughs" entity-expansion XML (10^levels copies of 'lol' if expanded)."""
    ents = ['<!ENTITY lol0 "lol">']
    for i in range(1, levels):
        refs = f"&lol{i - 1};" * fanout
        ents.append(f'<!ENTITY lol{i} "{refs}">')
    doctype = "<!DOCTYPE article [" + "".join(ents) + "]>"
    body = (f"<article><front><article-meta><title-group><article-title>&lol{levels - 1};"
            "</article-title></title-group></article-meta></front><body><fig id='f1'><label>F"
            "</label><caption><p>caption</p></caption><graphic xlink:href='f1' "
            "xmlns:xlink='http://www.w3.org/1999/xlink'/></fig></body></article>")
    return ('<?xml version="1.0"?>' + doctype + body).encode()


def xxe_article(target: str = "file:///etc/passwd") -> bytes:
    """A JATS-looking article whose caption and title pull in an external entity."""
    return (
        '<?xml version="1.0"?>'
        f'<!DOCTYPE article [<!ENTITY xxe SYSTEM "{target}">]>'
        '<article xmlns:xlink="http://www.w3.org/1999/xlink"><front><article-meta>'
        '<article-id pub-id-type="pmc">PMC999001</article-id>'
        "<title-group><article-title>Title &xxe;</article-title></title-group>"
        "</article-meta></front><body><fig id='f1'><label>Figure 1</label><caption><p>Caption "
        "&xxe; end</p></caption><graphic xlink:href='f1'/></fig></body></article>"
    ).encode()


# -- archives -------------------------------------------------------------------------------
MINI_ARTICLE = (
    b'<?xml version="1.0"?><article xmlns:xlink="http://www.w3.org/1999/xlink"><front>'
    b'<article-meta><article-id pub-id-type="pmc">PMC%d</article-id><title-group>'
    b"<article-title>Hostile package %d</article-title></title-group></article-meta></front>"
    b"<body><fig id='f1'><label>Figure 1</label><caption><p>A kinase cascade.</p></caption>"
    b"<graphic xlink:href='f1'/></fig></body></article>"
)


def mini_article(n: int = 990_001) -> bytes:
    """A minimal valid JATS article with one figure whose graphic is ``f1``."""
    return MINI_ARTICLE % (n, n)


def zip_bytes(members: list[tuple[str, bytes]], symlinks: dict[str, str] | None = None) -> bytes:
    """A deflated zip of ``members``; ``symlinks`` adds link members (name -> target)."""
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, target)
    return buf.getvalue()


def tar_gz_bytes(members: list[tuple[str, bytes]], links: dict[str, str] | None = None,
                 hardlinks: dict[str, str] | None = None) -> bytes:
    """A .tar.gz of ``members`` plus symlink/hardlink members (name -> target)."""
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for kind, table in ((tarfile.SYMTYPE, links or {}), (tarfile.LNKTYPE, hardlinks or {})):
            for name, target in table.items():
                info = tarfile.TarInfo(name)
                info.type, info.linkname = kind, target
                tf.addfile(info)
    return buf.getvalue()


def tar_gz_claiming(name: str, size: int) -> bytes:
    """A .tar.gz whose single member header claims ``size`` bytes (data absent)."""
    import gzip
    import tarfile

    info = tarfile.TarInfo(name)
    info.size = size
    return gzip.compress(info.tobuf(format=tarfile.GNU_FORMAT) + b"\x00" * 1024)
