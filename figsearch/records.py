"""Plain records passed from readers/ingest into the figure store."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ArticleRecord:
    """One article's metadata. ``key`` identifies it across runs (pmcid, else doi, else source path)."""

    key: str
    source: str
    pmcid: str | None = None
    pmid: str | None = None
    doi: str | None = None
    title: str = ""
    journal: str = ""
    year: int | None = None
    license_text: str = ""
    license_url: str = ""
    license_class: str = "none"
    last_updated: str | None = None
    content_hash: str = ""
    url: str | None = None  # the article's page in its collection (not PMC)


@dataclass
class FigureRecord:
    """One figure of an article. ``fig_id`` is unique within the article."""

    fig_id: str
    label: str = ""
    caption: str = ""
    image_path: str | None = None  # relative to <data_dir>/images
    thumb_path: str | None = None
    width: int | None = None
    height: int | None = None
    orig_width: int | None = None
    orig_height: int | None = None
    sha256: str | None = None
    source: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)
    url: str | None = None  # the figure's page in its collection (not PMC)

    @property
    def has_image(self) -> bool:
        return self.image_path is not None
