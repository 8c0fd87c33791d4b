"""Safe image decoding and normalisation, shared by ingest and the API.

Everything that reaches the model or the image store goes through :func:`open_image`:
size caps (decompression bombs), truncated files, and every mode (CMYK, 16-bit, palette,
alpha) converted to 8-bit RGB.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 90_000_000
MAX_ASPECT = 50.0  # a 100k x 20 px strip is not a figure


class ImageError(ValueError):
    """An image that cannot or must not be decoded; the message says why."""


@dataclass
class StoredImage:
    image_path: str  # relative to the images dir
    thumb_path: str
    width: int
    height: int
    orig_width: int
    orig_height: int
    sha256: str


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: rescale to 8 bits by the actual range, not by truncation.
        lo, hi = (int(v) for v in img.getextrema())  # type: ignore[arg-type,union-attr]
        scale = 255.0 / max(1, hi - lo)
        img = img.point(lambda v: (v - lo) * scale).convert("L")
    elif img.mode == "F":
        img = img.convert("L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


def open_image(
    data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, draft_side: int | None = None
) -> Image.Image:
    """Decode bytes into an 8-bit RGB image, refusing bombs, truncation and absurd shapes.

    ``draft_side`` lets JPEG decoding scale down by a power of two while keeping the long
    side at least that large: most of ingest's time is spent decoding big JPEGs.
    """
    if not data:
        raise ImageError("empty image file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data))
            w, h = img.size
            if w <= 0 or h <= 0:
                raise ImageError(f"image has no pixels ({w}x{h})")
            if w * h > max_pixels:
                raise ImageError(
                    f"image too large: {w}x{h} = {w * h} pixels (limit {max_pixels}); "
                    "refused as a possible decompression bomb"
                )
            if max(w, h) / min(w, h) > MAX_ASPECT:
                raise ImageError(f"image aspect ratio {w}x{h} is not a figure")
            img.seek(0)  # animated images: the first frame
            if draft_side and img.format == "JPEG":
                img.draft("RGB", (draft_side, draft_side))
            img.load()
            img = ImageOps.exif_transpose(img) or img
            return _to_rgb(img)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"refused as a possible decompression bomb: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageError("not a recognised image format") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"corrupt or truncated image: {exc}") from exc


def _resized(img: Image.Image, max_side: int) -> Image.Image:
    if max(img.size) <= max_side:
        return img
    out = img.copy()
    out.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return out


def _atomic_write(path: Path, payload: bytes) -> None:
    """Write via a temporary file and rename, so a crash never leaves a partial image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _encode_jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def store_image(
    data: bytes,
    images_dir: str | Path,
    max_side: int = 1024,
    thumb_side: int = 256,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> StoredImage:
    """Normalise an image and store it (and its thumbnail) content-addressed by sha256.

    The same bytes always land at the same paths, so re-ingesting is idempotent.
    """
    sha = hashlib.sha256(data).hexdigest()
    images_dir = Path(images_dir)
    rel = f"{sha[:2]}/{sha}.jpg"
    thumb_rel = f"thumbs/{sha[:2]}/{sha}.jpg"
    orig_w, orig_h = _header_size(data)
    if (images_dir / rel).exists() and (images_dir / thumb_rel).exists():
        # Same bytes were stored before (content address): no decode, no resize.
        with Image.open(images_dir / rel) as stored:
            return StoredImage(rel, thumb_rel, stored.width, stored.height, orig_w, orig_h, sha)
    img = open_image(data, max_pixels=max_pixels, draft_side=max_side)
    big = _resized(img, max_side)
    _atomic_write(images_dir / rel, _encode_jpeg(big, 90))
    _atomic_write(images_dir / thumb_rel, _encode_jpeg(_resized(big, thumb_side), 85))
    return StoredImage(rel, thumb_rel, big.width, big.height, orig_w, orig_h, sha)


def _header_size(data: bytes) -> tuple[int, int]:
    """The image's size from its header alone; 0x0 when unreadable (open_image says why)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except Exception:  # noqa: BLE001 - the decode below reports the real reason
        return (0, 0)


def safe_image_path(images_dir: str | Path, rel: str) -> Path:
    """Resolve a stored relative path inside ``images_dir``; refuse anything outside it."""
    root = Path(images_dir).resolve()
    path = (root / rel).resolve()
    if root not in path.parents:
        raise ImageError(f"path escapes the image directory: {rel!r}")
    return path
