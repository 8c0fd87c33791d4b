"""Hostile images through ``figsearch.imaging``: every input yields RGB or an ImageError."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from figsearch.imaging import ImageError, open_image, safe_image_path, store_image

from . import hostile


def test_claimed_huge_png_is_refused_before_decoding():
    data = hostile.png_claiming(200_000, 200_000)
    assert len(data) < 2_000
    with pytest.raises(ImageError, match="decompression bomb|too large"):
        open_image(data)


def test_valid_png_bomb_refused(tmp_path):
    """A real 144 Mpx PNG of a few KiB is refused before decoding (the peak memory of the
    refusal is measured by bench/hostile.py), and nothing is stored."""
    data = hostile.real_png_bomb(12_000)
    assert len(data) < 300_000
    with pytest.raises(ImageError, match="decompression bomb|too large"):
        open_image(data)
    with pytest.raises(ImageError):
        store_image(data, tmp_path / "images")
    assert not (tmp_path / "images").exists() or not any((tmp_path / "images").rglob("*.jpg"))


def test_bomb_limit_is_configurable():
    data = hostile.encode(Image.new("RGB", (100, 100)), "PNG")
    assert open_image(data, max_pixels=10_000).size == (100, 100)
    with pytest.raises(ImageError, match="too large"):
        open_image(data, max_pixels=9_999)


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9])
def test_truncated_jpeg_and_png_are_refused(keep):
    for data in (hostile.sample_jpeg((300, 200)),
                 hostile.encode(Image.effect_noise((300, 200), 50), "PNG")):
        cut = data[: int(len(data) * keep)]
        with pytest.raises(ImageError, match="corrupt|truncated|not a recognised"):
            open_image(cut)


@pytest.mark.parametrize("payload", [b"", b"\x00", b"GIF89a", b"not an image at all",
                                     b"<svg xmlns='http://www.w3.org/2000/svg'/>",
                                     b"%PDF-1.4\n%%EOF"])
def test_non_images_are_refused(payload):
    with pytest.raises(ImageError):
        open_image(payload)


def test_zero_by_zero_is_refused():
    for data in (hostile.png_claiming(0, 0), hostile.png_claiming(0, 50),
                 hostile.png_claiming(50, 0)):
        with pytest.raises(ImageError):
            open_image(data)


@pytest.mark.parametrize("size", [(100_000, 2), (2, 100_000), (100_000, 20)])
def test_extreme_strips_are_refused(size):
    data = hostile.png_claiming(*size)
    with pytest.raises(ImageError, match="aspect|too large"):
        open_image(data)


def test_animated_gif_uses_first_frame():
    img = open_image(hostile.animated_gif())
    assert img.mode == "RGB" and img.size == (40, 30)
    r, g, b = img.getpixel((5, 5))
    assert r > 200 and g < 50 and b < 50, "expected the first (red) frame"


def test_cmyk_becomes_rgb_with_right_colour():
    img = open_image(hostile.cmyk_jpeg())
    assert img.mode == "RGB"
    r, g, b = img.getpixel((10, 10))
    assert r < 60 and g > 180 and b > 180, f"cyan expected, got {(r, g, b)}"


def test_16bit_greyscale_is_rescaled_not_clipped():
    img = open_image(hostile.png16_gradient())
    assert img.mode == "RGB"
    left, mid, right = img.getpixel((0, 5))[0], img.getpixel((128, 5))[0], img.getpixel((255, 5))[0]
    assert left < 5 and right > 250 and 100 < mid < 160, (left, mid, right)


def test_palette_with_alpha_composited_on_white():
    img = open_image(hostile.palette_alpha_png())
    assert img.mode == "RGB"
    assert img.getpixel((2, 2)) == (255, 255, 255)
    assert img.getpixel((15, 2)) == (255, 0, 0)


@pytest.mark.parametrize("mode", ["LA", "RGBA", "I", "F", "1", "L", "YCbCr", "CMYK"])
def test_every_mode_normalised_to_rgb(mode):
    fmt = "TIFF" if mode in ("I", "F", "CMYK", "YCbCr") else "PNG"
    data = hostile.encode(Image.new(mode, (16, 12)), fmt)
    try:
        img = open_image(data)
    except ImageError:
        return  # a clear refusal is acceptable; anything else is not
    assert img.mode == "RGB" and img.size == (16, 12)


def test_wrong_extension_is_irrelevant(tmp_path):
    """Content decides, not the name: PNG bytes stored as '.jpg' still decode and store."""
    png = hostile.encode(Image.new("RGB", (30, 20), (0, 128, 0)), "PNG")
    stored = store_image(png, tmp_path / "images", max_side=64, thumb_side=16)
    assert (tmp_path / "images" / stored.image_path).is_file()
    assert Image.open(tmp_path / "images" / stored.image_path).format == "JPEG"


def test_store_image_writes_only_inside_images_dir(tmp_path):
    images = tmp_path / "images"
    before = set(tmp_path.parent.iterdir())
    stored = store_image(hostile.sample_jpeg(), images)
    for rel in (stored.image_path, stored.thumb_path):
        assert safe_image_path(images, rel).is_file()
    assert set(tmp_path.parent.iterdir()) == before
    assert not list(images.rglob(".tmp-*")), "temporary files left behind"


@pytest.mark.parametrize("rel", ["../figsearch.db", "../../etc/passwd", "/etc/passwd",
                                 "ab/../../secret", "thumbs/../../x.jpg", "..", ""])
def test_safe_image_path_refuses_escapes(tmp_path, rel):
    images = tmp_path / "images"
    images.mkdir()
    with pytest.raises(ImageError):
        safe_image_path(images, rel)


def test_safe_image_path_refuses_symlink_pointing_outside(tmp_path):
    images = tmp_path / "images"
    (images / "ab").mkdir(parents=True)
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(hostile.sample_jpeg())
    os.symlink(secret, images / "ab" / "evil.jpg")
    os.symlink(tmp_path, images / "up")
    for rel in ("ab/evil.jpg", "up/secret.jpg"):
        with pytest.raises(ImageError):
            safe_image_path(images, rel)


def _mutate(data: bytes, flips: list[tuple[int, int]], cut: int | None) -> bytes:
    buf = bytearray(data)
    for pos, value in flips:
        buf[pos % len(buf)] = value
    return bytes(buf[:cut] if cut else buf)


@pytest.fixture(scope="module")
def real_figure_bytes() -> bytes:
    from tests.conftest import SHARED

    path = sorted((SHARED / "pmc-figures" / "images").glob("*.jpg"))[0]
    return Path(path).read_bytes()


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flips=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=12),
       cut=st.one_of(st.none(), st.integers(1, 30_000)),
       fmt=st.sampled_from(["real", "PNG", "GIF", "TIFF", "BMP", "WEBP"]))
def test_fuzzed_images_never_raise_unexpected(real_figure_bytes, flips, cut, fmt):
    """Byte flips and truncations of a real PMC figure (and re-encodings): RGB or ImageError."""
    base = real_figure_bytes if fmt == "real" else _encoded_variant(real_figure_bytes, fmt)
    data = _mutate(base, flips, cut)
    try:
        img = open_image(data, max_pixels=4_000_000)
    except ImageError as exc:
        assert str(exc)
        return
    assert img.mode == "RGB" and img.width > 0 and img.height > 0


_VARIANTS: dict[str, bytes] = {}


def _encoded_variant(real: bytes, fmt: str) -> bytes:
    if fmt not in _VARIANTS:
        img = open_image(real).resize((120, 90))
        _VARIANTS[fmt] = hostile.encode(img.convert("P") if fmt == "GIF" else img, fmt)
    return _VARIANTS[fmt]
