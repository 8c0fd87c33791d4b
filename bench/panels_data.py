"""Images and captions of the panel ground truth (``bench/eval/panels.jsonl``), read from the
shared data: PMC figures (``figures.jsonl``), unpacked JATS articles and article zips.

An image path is relative to the shared data root; ``archive.zip!member`` names a file inside a
zip (the eLife packages deposit TIFF figures that way). Captions are read the way figsearch's
ingest reads them (``indexer.jats.caption_text`` for JATS), so sub-caption spans index the text
the store holds.
"""

from __future__ import annotations

import io
import json
import zipfile
from functools import lru_cache
from pathlib import Path

from lxml import etree
from PIL import Image

from indexer.jats import caption_text


def read_bytes(root: Path, rel: str) -> bytes:
    """The file at ``rel`` under ``root`` (``archive.zip!member`` for a file in a zip)."""
    if "!" in rel:
        archive, member = rel.split("!", 1)
        with zipfile.ZipFile(root / archive) as zf:
            return zf.read(member)
    return (root / rel).read_bytes()


def open_image(root: Path, rel: str) -> Image.Image:
    """The RGB image at ``rel`` under ``root`` (``zip!member`` for a file in a zip)."""
    return Image.open(io.BytesIO(read_bytes(root, rel))).convert("RGB")


@lru_cache(maxsize=4)
def _pmc_captions(root: Path) -> dict[str, str]:
    rows = (json.loads(line) for line in (root / "pmc-figures" / "figures.jsonl").open())
    return {f"pmc-figures/{r['image']}": r["caption"] for r in rows}


def _jats_caption(xml: bytes, fig_id: str) -> str:
    tree = etree.fromstring(xml)
    for fig in tree.iter("{*}fig"):
        if fig.get("id") == fig_id:
            return caption_text(next(fig.iter("{*}caption"), None))
    raise KeyError(f"no <fig id={fig_id!r}> in the article")


def load_caption(root: Path, record: dict) -> str:
    """The caption of a ground-truth figure: from ``figures.jsonl`` for PMC figures, else from
    the JATS file ``record['xml']`` (``zip!member`` inside a package) by figure id."""
    rel = record["image"]
    if rel.startswith("pmc-figures/"):
        return _pmc_captions(root)[rel]
    xml_rel = record["xml"]
    if "!" in xml_rel:
        archive, member = xml_rel.split("!", 1)
        with zipfile.ZipFile(root / archive) as zf:
            xml = zf.read(member)
    else:
        xml = (root / xml_rel).read_bytes()
    return _jats_caption(xml, record["figure"])
