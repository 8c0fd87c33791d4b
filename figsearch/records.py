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
    authors: list[str] = field(default_factory=list)  # "Surname, Given" or a group's name


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
    # The figure's own rights (figsearch.rights): its <permissions> license (class None: it
    # has none, the article's governs), copyright statement and holder, and the caption /
    # <attrib> sentence that marks it as third-party material ("" when none does).
    rights_license_class: str | None = None
    rights_license_text: str = ""
    rights_license_url: str = ""
    rights_statement: str = ""
    rights_holder: str = ""
    third_party: str = ""

    @property
    def has_image(self) -> bool:
        return self.image_path is not None
