"""Request and response models of the HTTP API (the "API JSON" contract the UI consumes)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from figsearch.licenses import LICENSE_CLASSES

Mode = Literal["hybrid", "dense", "keyword", "caption"]
#: ``any`` = no license filter, ``commercial`` = classes allowing commercial reuse,
#: ``reusable`` = figures whose own rights allow reuse (figsearch.rights), else one class.
LICENSE_CHOICES = ("any", "commercial", "reusable", *LICENSE_CLASSES)
MAX_BATCH_QUERIES = 32


class ErrorResponse(BaseModel):
    """Every 4xx/5xx answer."""

    detail: str = Field(description="What is wrong, in words.", examples=["query is empty"])


class ValidationErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationErrorResponse(BaseModel):
    """422: the request did not match the schema; ``detail`` summarises ``errors``."""

    detail: str = Field(examples=["query parameter k: Input should be greater than or equal to 1"])
    errors: list[ValidationErrorItem]


class FigureLinks(BaseModel):
    thumbnail_url: str | None = Field(description="Thumbnail JPEG served by this API.")
    image_url: str | None = Field(description="Full-size JPEG served by this API.")
    article_url: str | None = Field(
        description="Article page: the collection's own link, else PMC's page, else doi.org; "
                    "null for synthetic figures and articles without any link."
    )
    figure_url: str | None = Field(
        description="Figure page: the collection's own link, else PMC's figure page; null "
                    "for synthetic figures and collections without figure pages."
    )


class FigureBase(FigureLinks):
    id: int = Field(description="Figure id (stable; also the FAISS id).", examples=[42])
    label: str = Field(examples=["Figure 2"])
    caption: str
    figure_type: str | None = Field(description="Zero-shot figure type, if classified.")
    figure_type_score: float | None
    pmcid: str | None = Field(examples=["PMC5519703"])
    title: str = Field(description="Article title.")
    journal: str
    year: int | None
    license: str = Field(
        description="License class that governs the figure, e.g. cc-by, cc-by-nc, none: the "
                    "figure's own (`figure_license`) when its JATS <fig> has <permissions> with a "
                    "license, else the article's (`article_license`).")
    license_url: str | None = Field(description="URL of that license.")
    article_license: str = Field("none", description="The article's license class.")
    figure_license: str | None = Field(
        None, description="The figure's own license class (<fig><permissions>); null: none.")
    rights_statement: str | None = Field(
        None, description="The figure's own copyright statement (<fig><permissions>).")
    rights_holder: str | None = Field(
        None, description="The figure's own copyright holder (<fig><permissions>).")
    third_party: str | None = Field(
        None, description="The caption's (or <attrib>'s) sentence saying the figure is someone "
                          "else's material (\"Reprinted with permission from …\", \"Adapted "
                          "from …\", \"© …\", \"Courtesy of …\"); null when none does.")
    reuse: str = Field(
        "unknown: no reuse license found",
        description="May the figure be reused, in words: `<license>: <terms>` (e.g. `cc-by: "
                    "reuse with attribution`), `third-party: ask the rights holder`, or "
                    "`unknown: no reuse license found`.",
        examples=["cc-by: reuse with attribution"])
    reusable: bool = Field(
        False, description="Whether the `reusable` license filter lets the figure through: "
                           "an open license and no third-party statement.")
    authors: list[str] = Field(
        default_factory=list,
        description="The article's authors (JATS contrib-group): \"Surname, Given\" or a group.")
    attribution: str = Field(
        "", description="Ready credit line: figure label, title, authors, journal, year, DOI "
                        "(and PMCID) link, license with its URL; third-party figures name "
                        "their rights holder instead.")
    doi: str | None
    source: str = Field(
        description="The figure's collection: pmc, synthetic, publisher, or the name a JSONL "
                    "manifest gave its collection (`--collection` or its `collection` field)."
    )


class SignalExplanation(BaseModel):
    """One signal's part in a result's score and what it matched ("why it matched")."""

    name: str = Field(description="keyword (BM25), caption (caption semantics), dense (image "
                      "similarity) or source (image queries: the query image was verified to be "
                      "a crop, panel, screenshot or copy of this figure; verified figures come "
                      "first, most matching keypoints first).", examples=["keyword"])
    raw: float = Field(description="The signal's own score: BM25 (keyword), cosine (caption, "
                       "dense), matching keypoints that agree on one placement of the query in "
                       "the figure (source).")
    normalised: float | None = Field(
        None, description="The raw score mapped to 0..1 over the head of the signal's list "
        "(hybrid `score` fusion); null in single-signal modes and for `rrf` fusion.")
    weight: float | None = Field(None, description="The signal's fusion weight (1 in a "
                                 "single-signal mode).")
    contribution: float = Field(
        description="The signal's share of the result's `score`: weight x normalised in hybrid "
        "mode (the contributions add up to `score`), the score itself in a single-signal mode; "
        "0 for source, which orders the results without changing their score.")
    rank: int | None = Field(None, description="1-based place in the signal's own top list; "
                             "null when it only scored the result as another signal's candidate.")
    fields: dict[str, list[str]] = Field(
        default_factory=dict,
        description="keyword: the fields that matched (caption, label, title, ocr = text read "
                    "inside the figure) -> the words they matched, as written there.",
        examples=[{"caption": ["EGFR"], "title": ["NSCLC"]}])
    terms: list[str] = Field(default_factory=list, description="keyword: the query's words that "
                             "matched, as typed.")
    passage: str | None = Field(
        None, description="caption: the caption's sentence window (or, for a compound figure, "
        "a panel's sub-caption) that matched best, when one beat the whole caption; null: the "
        "whole caption.")


class FigurePanel(BaseModel):
    """One panel of a compound figure (figsearch.panels: found at index time)."""

    number: int = Field(description="1-based panel number in reading order (rows top to "
                        "bottom, left to right).", examples=[1])
    box: list[int] = Field(min_length=4, max_length=4,
                           description="x0, y0, x1, y1 in pixels of the stored figure image "
                           "(`image_url`), end-exclusive.", examples=[[11, 10, 776, 421]])
    letter: str | None = Field(None, description="The panel's letter (A, B, ...), from the "
                               "caption's order; null when the caption names none.",
                               examples=["A"])
    subcaption: str | None = Field(None, description="The part of the caption about this "
                                   "panel (the intro shared by all panels excluded); null: none.")
    figure_size: list[int] | None = Field(
        None, min_length=2, max_length=2, description="width, height of the stored figure "
        "image: the pixel grid `box` is in (to outline the panel on any rendering of the image); "
        "null when unknown.", examples=[[787, 421]])
    crop_url: str = Field(description="This API's URL of the panel cut from the figure image.")


class PanelMatchResult(FigurePanel):
    """The panel of a result that matched the query best."""

    signal: Literal["image", "caption", "keyword"] = Field(
        description="What chose it: `image` (an image query matched the panel's crop better "
        "than the whole figure), `caption` (the panel's sub-caption matched a text query better "
        "than the whole caption, in meaning and words) or `keyword` (only this panel's "
        "sub-caption holds the query's words).")
    score: float = Field(description="The panel's score: the image cosine (`image`), the "
                         "sub-caption cosine plus the share of query words (`caption`), the "
                         "share of query words (`keyword`).")


class FigurePanelsResponse(BaseModel):
    """A figure's panels; one panel (the whole image, trimmed) when it is not compound."""

    figure_id: int
    compound: bool = Field(description="More than one panel.")
    panels: list[FigurePanel]


class SearchResult(FigureBase):
    rank: int = Field(description="1-based rank over all pages.", examples=[1])
    score: float = Field(description="Cosine similarity (dense, caption), BM25 (keyword) or the "
                         "weighted fused score (hybrid).")
    caption_highlighted: str = Field(
        description=(
            "HTML-escaped caption with the words the keyword index (SQLite FTS5, porter "
            "stemming) matched for the query wrapped in <mark></mark>; also for dense hits."
        )
    )
    ocr_snippet: str = Field(
        "",
        description=(
            "HTML-escaped window of the text read inside the figure image (OCR) around the "
            "query words it matched, in <mark></mark>; empty when it matched none."
        ),
    )
    signals: list[SignalExplanation] = Field(
        default_factory=list,
        description="Why it matched: each signal's part in `score`, with the keyword fields and "
                    "words, caption passage or image cosine behind it.")
    panel: PanelMatchResult | None = Field(
        None, description="For a compound figure, the panel that matched the query best (its "
        "box, letter, sub-caption and a crop URL); null when the figure as a whole matched "
        "best or is not compound.")


class SearchResponse(BaseModel):
    query: str
    mode: str
    k: int
    offset: int
    index_version: str = Field(
        description="The index version that answered; pass it back as `version=` to run the "
                    "same search against the same version (while it is kept).")
    took_ms: float
    results: list[SearchResult]
    match_quality: Literal["strong", "weak", "none"] | None = Field(
        None, description="Text queries: `strong` when some caption is close in meaning or the "
        "best keyword match holds most of the query's words, `weak` when neither (the results "
        "are the nearest there are, not answers), `none` without results; null for image and "
        "vector queries. Thresholds calibrated on the evaluation's dev split (docs/api.md).")
    match_note: str = Field("", description="For people: why the match is weak; empty else.")
    match_evidence: dict[str, float | None] = Field(
        default_factory=dict, description="What `match_quality` was decided on: "
        "`caption_cosine` (best caption similarity) and `keyword_coverage` (share of the "
        "query's words in the best keyword match).")
    filters: dict[str, Any] = Field(
        default_factory=dict,
        description="The filters applied, as the API's filter parameters (only those set).",
        examples=[{"year_from": 2015, "license": "commercial"}])
    permalink: str | None = Field(
        None, description="Relative URL that runs this search again against the same index "
                          "version (`version=` pinned): query, mode, filters, k, offset. Null "
                          "for an image upload or a raw vector query (not expressible in a URL).",
        examples=["/v1/search?q=MAPK&mode=hybrid&k=20&version=20261206T010203000000Z-a1b2c3"])


class FigureDetail(FigureBase):
    fig_id: str = Field(description="The figure's id inside its article (JATS fig/@id).")
    width: int | None
    height: int | None
    has_image: bool
    license_text: str | None
    pmid: str | None
    in_index: bool = Field(description="Whether the current index holds this figure's vector.")
    ocr_text: str | None = Field(
        None,
        description=(
            "Text read inside the figure image by OCR, one text box a line; null when the "
            "image has not been read (see `figsearch ocr`), empty when it holds no text."
        ),
    )
    attributes: dict[str, Any] = Field(default_factory=dict)


class ArticleResponse(BaseModel):
    pmcid: str | None
    key: str
    title: str
    journal: str
    year: int | None
    doi: str | None
    license: str
    license_url: str | None
    source: str
    article_url: str | None
    authors: list[str] = Field(default_factory=list)
    bibtex: str = Field("", description="BibTeX @article entry of the article.")
    ris: str = Field("", description="RIS record of the article.")
    figures: list[FigureDetail]


class YearRange(BaseModel):
    min: int | None
    max: int | None


class FacetsResponse(BaseModel):
    journals: list[str]
    figure_types: list[str]
    license_classes: list[str]
    license_options: list[str] = Field(description="Values accepted by the `license` filter.")
    years: YearRange


class StatsResponse(BaseModel):
    ready: bool
    index_version: str | None
    index_count: int
    index_factory: str | None
    index_built_at: str | None
    model_spec: str | None
    model_key: str | None
    encoder_backend: str | None = Field(
        None, description="What encodes queries: torch, or onnx (the exported model on ONNX "
        "Runtime, FIGSEARCH_ENCODER_BACKEND); null without an image model.")
    dim: int | None
    store: dict[str, int]
    reloads: int
    last_reload_error: str | None
    filters_prepared: int = Field(
        0, description="Filters the served version prepared when it was loaded (their allowed "
        "sets and plans): the UI's license toggles and those the version before it answered "
        "last, so that their first queries cost what any query costs.")
    signals: dict[str, bool] = Field(
        default_factory=dict,
        description="Signals live now: keyword (BM25), caption (caption semantics), dense (image "
        "model; false while none is loaded or when it failed its quality check).",
    )
    fusion: str | None = Field(None, description="How the default (hybrid) mode combines them.")


class BatchQuery(BaseModel):
    """One query of a batch: text (``q``) or a raw embedding (``vector``), not both."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"q": "MAPK signalling"}]})

    q: str | None = Field(None, description="Text query.")
    vector: list[float] | None = Field(
        None, description="Query embedding (the index's dimension; normalised by the server)."
    )
    mode: Mode | None = Field(None, description="Mode for a text query; default: the batch mode.")

    @model_validator(mode="after")
    def _one_of(self) -> BatchQuery:
        if (self.q is None) == (self.vector is None):
            raise ValueError("give exactly one of `q` (text) or `vector` (embedding)")
        return self


class BatchSearchRequest(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"queries": [{"q": "TREM2 signaling"}, {"q": "apoptosis pathway"}],
                          "k": 5, "mode": "hybrid", "license": "commercial"}]
        }
    )

    queries: list[BatchQuery] = Field(min_length=1, max_length=MAX_BATCH_QUERIES)
    k: int = Field(20, ge=1, le=1000)
    offset: int = Field(0, ge=0, le=100_000)
    mode: Mode = "hybrid"
    dedup: bool = Field(True, description="Collapse near-duplicate images.")
    year_from: int | None = Field(None, ge=1000, le=3000)
    year_to: int | None = Field(None, ge=1000, le=3000)
    journal: str | None = Field(None, max_length=300)
    license: Literal[LICENSE_CHOICES] | None = None  # type: ignore[valid-type]
    figure_type: str | None = Field(None, max_length=100)
    pmcid: str | None = Field(None, max_length=40)
    version: str | None = Field(
        None, max_length=100,
        description="Answer from this kept index version (a pinned search); default: current.")


class BatchSearchResponse(BaseModel):
    responses: list[SearchResponse] = Field(description="One response per query, in order.")


class ReloadResponse(BaseModel):
    reloaded: bool
    index_version: str | None
    previous_version: str | None
