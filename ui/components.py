"""Pure helpers of the research UI: URL state, safe highlighting, badges, attribution, export.

Nothing here imports Streamlit, so every function is unit-tested directly
(``tests/ui/test_components.py``); ``ui/app.py`` only lays these pieces out.
"""

from __future__ import annotations

import csv
import html
import io
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any
from urllib.parse import urlencode

from figsearch.client import signals_line
from figsearch.licenses import allows_commercial_use
from figsearch.links import PMC, collection_name

MODES = ("hybrid", "caption", "keyword", "dense")
PAGE_SIZES = (12, 24, 48, 96)
DEFAULT_K = 24

#: How each license class is written for people.
LICENSE_NAMES = {
    "cc0": "CC0",
    "public-domain": "Public domain",
    "cc-by": "CC BY",
    "cc-by-sa": "CC BY-SA",
    "cc-by-nd": "CC BY-ND",
    "cc-by-nc": "CC BY-NC",
    "cc-by-nc-sa": "CC BY-NC-SA",
    "cc-by-nc-nd": "CC BY-NC-ND",
    "other": "Other license",
    "none": "No license stated",
}

#: Columns of the CSV export, in order (all are keys of an API search result).
EXPORT_COLUMNS = (
    "rank", "id", "score", "label", "figure_type", "caption", "title", "journal", "year",
    "pmcid", "doi", "license", "license_url", "article_url", "figure_url", "image_url",
    "thumbnail_url", "source", "authors", "reuse", "third_party", "attribution",
    # the search that produced the row, so that it can be run again (the same on every row)
    "index_version", "query", "mode", "filters", "permalink",
)
#: what a pinned index version's name may look like (anything else in the URL is ignored)
VERSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(str(text).strip()) if text not in (None, "") else None
    except ValueError:
        return None


@dataclass(frozen=True)
class ViewState:
    """Everything that defines a view; round-trips through the URL query string."""

    q: str = ""
    mode: str = "hybrid"
    year_from: int | None = None
    year_to: int | None = None
    journal: str = ""
    commercial: bool = False
    reusable: bool = False  # the figure's own rights allow reuse (API license=reusable)
    figure_type: str = ""
    k: int = DEFAULT_K
    page: int = 1
    fig: int | None = None  # figure shown in the detail view
    similar: int | None = None  # figure whose neighbours are listed
    version: str = ""  # pinned index version (API ``version=``); "" = the current one
    panel: int | None = None  # the panel of ``fig`` that matched (1-based), highlighted there

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> ViewState:
        """Parse URL query parameters, ignoring values that make no sense."""
        k = _int_or_none(params.get("k"))
        page = _int_or_none(params.get("page"))
        mode = params.get("mode", "hybrid")
        return cls(
            q=params.get("q", "").strip(),
            mode=mode if mode in MODES else "hybrid",
            year_from=_int_or_none(params.get("year_from")),
            year_to=_int_or_none(params.get("year_to")),
            journal=params.get("journal", "").strip(),
            commercial=params.get("commercial", "") in {"1", "true", "yes"},
            reusable=params.get("reusable", "") in {"1", "true", "yes"},
            figure_type=params.get("type", "").strip(),
            k=k if k in PAGE_SIZES else DEFAULT_K,
            page=page if page and page > 0 else 1,
            fig=_int_or_none(params.get("fig")),
            similar=_int_or_none(params.get("similar")),
            panel=_int_or_none(params.get("panel")),
            version=version if VERSION_NAME.fullmatch(version := params.get("version", "")
                                                      .strip()) else "",
        )

    def to_params(self) -> dict[str, str]:
        """URL query parameters; defaults are left out so links stay short."""
        values: dict[str, Any] = {
            "q": self.q, "mode": self.mode if self.mode != "hybrid" else "",
            "year_from": self.year_from, "year_to": self.year_to, "journal": self.journal,
            "commercial": "1" if self.commercial else "",
            "reusable": "1" if self.reusable else "", "type": self.figure_type,
            "k": self.k if self.k != DEFAULT_K else None,
            "page": self.page if self.page > 1 else None,
            "similar": self.similar, "fig": self.fig,
            "panel": self.panel if self.fig is not None else None, "version": self.version,
        }
        return {key: str(v) for key, v in values.items() if v not in (None, "")}

    def filters(self) -> dict[str, Any]:
        """Filter keyword arguments for :class:`figsearch.client.FigSearchClient` calls."""
        return {
            "year_from": self.year_from,
            "year_to": self.year_to,
            "journal": self.journal or None,
            # one license filter at a time: "reusable" (the figure's own rights) wins
            "license": "reusable" if self.reusable else "commercial" if self.commercial else None,
            "figure_type": self.figure_type or None,
        }

    @property
    def pinned(self) -> str | None:
        """The index version the API is asked to answer from (None: the current one)."""
        return self.version or None

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.k

    def with_(self, **changes: Any) -> ViewState:
        """A copy with some fields changed."""
        return replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def state_link(state: ViewState, index_version: str | None) -> str:
    """The view's URL query (``?…``) pinned to the index version that answered it: the same
    search, filters and page against the same version (while the API keeps it)."""
    pinned = state.with_(fig=None, version=index_version or state.version)
    return "?" + urlencode(pinned.to_params())


# --- highlighting -------------------------------------------------------------------------

_MARK_SPLIT = re.compile(r"(</?mark>)", re.I)


@dataclass
class _Segment:
    text: str
    marked: bool


def _segments(highlighted: str) -> list[_Segment]:
    """Split API highlight markup into plain-text pieces, each marked or not.

    The API escapes everything but ``<mark>``; we still unescape and re-escape each piece so
    that nothing but ``<mark>`` can ever reach the page, whatever the server sends.
    """
    segments: list[_Segment] = []
    marked = False
    for token in _MARK_SPLIT.split(highlighted or ""):
        low = token.lower()
        if low == "<mark>":
            marked = True
        elif low == "</mark>":
            marked = False
        elif token:
            segments.append(_Segment(html.unescape(token), marked))
    return segments


def _render(segments: Iterable[_Segment]) -> str:
    out = []
    for seg in segments:
        text = html.escape(seg.text)
        out.append(f"<mark>{text}</mark>" if seg.marked else text)
    return "".join(out)


def safe_highlight(highlighted: str) -> str:
    """Return HTML with only ``<mark>`` tags kept and all other text escaped."""
    return _render(_segments(highlighted))


def _clip(segments: list[_Segment], start: int, length: int) -> list[_Segment]:
    """The segments covering plain-text characters ``[start, start + length)``."""
    out, pos = [], 0
    for seg in segments:
        lo, hi = max(start - pos, 0), min(start + length - pos, len(seg.text))
        if lo < hi:
            out.append(_Segment(seg.text[lo:hi], seg.marked))
        pos += len(seg.text)
    return out


def snippet(highlighted: str, max_chars: int = 240, lead: int = 60) -> str:
    """A safe HTML snippet of a highlighted caption, centred near the first highlight."""
    segments = _segments(highlighted)
    plain = "".join(s.text for s in segments)
    if len(plain) <= max_chars:
        return _render(segments)
    first = 0
    for seg in segments:
        if seg.marked:
            break
        first += len(seg.text)
    start = 0 if first >= len(plain) or first < max_chars - lead else first - lead
    if start:
        space = plain.find(" ", start)
        start = space + 1 if 0 <= space < first else start
    end = min(start + max_chars, len(plain))
    if end < len(plain):
        space = plain.rfind(" ", start + max_chars // 2, end)
        end = space if space > 0 else end
    body = _render(_clip(segments, start, end - start)).strip()
    return ("… " if start else "") + body + (" …" if end < len(plain) else "")


def ocr_line(ocr_snippet: str, max_chars: int = 160) -> str:
    """Safe HTML of the in-figure text that matched (its lines joined by " · "), or ""."""
    if "<mark>" not in (ocr_snippet or "").lower():
        return ""
    segments = [_Segment(seg.text.replace("\n", " · "), seg.marked)
                for seg in _segments(ocr_snippet)]
    return snippet(_render(segments), max_chars=max_chars, lead=40)


# --- badges and labels -------------------------------------------------------------------

def license_name(license_class: str | None) -> str:
    """Human name of a license class ("cc-by" -> "CC BY")."""
    return LICENSE_NAMES.get(license_class or "none", license_class or "No license stated")


def is_commercial(license_class: str | None) -> bool:
    """True when the license class allows commercial reuse."""
    return allows_commercial_use(license_class or "")


def license_badge(license_class: str | None) -> str:
    """HTML badge: green for classes that allow commercial reuse, amber otherwise."""
    kind = "ok" if is_commercial(license_class) else ("none" if license_class in (None, "none") else "nc")
    tip = "commercial reuse allowed" if kind == "ok" else "check the license before reuse"
    name = html.escape(license_name(license_class))
    return f'<span class="fs-badge fs-lic-{kind}" title="{tip}">{name}</span>'


def type_badge(figure_type: str | None, score: float | None = None) -> str:
    """HTML badge with the figure type (and the classifier's confidence when known)."""
    if not figure_type:
        return ""
    name = html.escape(figure_type, quote=True)
    tip = f"{name} (confidence {score:.2f})" if isinstance(score, (int, float)) else name
    return f'<span class="fs-badge fs-type" title="{tip}">{name}</span>'


def figure_number(label: str | None) -> str:
    """The figure's number from its label ("Fig. 3B" -> "3B"), or "" when it has none."""
    match = re.search(r"\d+[A-Za-z]?", label or "")
    return match.group(0) if match else ""


def attribution(fig: Mapping[str, Any]) -> str:
    """One-line credit: the API's own ``attribution`` (label, title, authors, journal, year,
    DOI / PMCID link, the figure's license with its URL, or its third-party rights holder).

    Results of an older API without one: "Figure k from <title>, <journal> <year>, PMCID …,
    licensed <license>"; figures of other collections name the collection and link the
    figure's own page instead of a PMCID: "…, doi:…, <collection> collection (<figure
    url>), licensed …".
    """
    if fig.get("attribution"):
        return str(fig["attribution"])
    number = figure_number(fig.get("label"))
    parts = [f"Figure {number}" if number else (fig.get("label") or "Figure")]
    title = (fig.get("title") or "").strip().rstrip(".") or "an untitled article"
    parts[0] += f" from {title}"
    venue = " ".join(str(v) for v in (fig.get("journal"), fig.get("year")) if v)
    if venue:
        parts.append(venue)
    own = fig.get("source") not in (None, "", PMC, "synthetic", "publisher")
    if fig.get("pmcid") and not own:
        parts.append(f"PMCID {fig['pmcid']}")
    elif fig.get("doi"):
        parts.append(f"doi:{fig['doi']}")
    if own:
        link = fig.get("figure_url") or fig.get("article_url")
        parts.append(f"{collection_name(fig['source'])} collection" + (f" ({link})" if link else ""))
    licensed = f"licensed {license_name(fig.get('license'))}"
    if fig.get("license_url"):
        licensed += f" ({fig['license_url']})"
    parts.append(licensed)
    return ", ".join(parts)


def link_buttons(fig: Mapping[str, Any]) -> list[tuple[str, str | None]]:
    """(label, href) of the detail view's link buttons, named after the figure's collection."""
    if (fig.get("source") or PMC) == PMC:
        article, figure = "Article in PMC", "Figure in PMC"
    elif fig.get("source") in ("publisher", "synthetic"):
        article, figure = "Article page", "Figure page"
    else:
        where = collection_name(fig.get("source"))
        article, figure = f"Article ({where})", f"Figure in {where}"
    return [(article, fig.get("article_url")), (figure, fig.get("figure_url")),
            ("Full-size image", fig.get("image_url"))]


def meta_line(result: Mapping[str, Any]) -> str:
    """Escaped "journal · year · score" line of a result card."""
    bits = [str(result.get(key)) for key in ("journal", "year") if result.get(key)]
    if isinstance(result.get("score"), (int, float)):
        bits.append(f"score {result['score']:.3f}")
    return html.escape(" · ".join(bits))


def result_card_html(result: Mapping[str, Any]) -> str:
    """The HTML body of one result card (the buttons are Streamlit widgets below it)."""
    label = html.escape(result.get("label") or f"Figure #{result.get('id')}")
    title = html.escape(result.get("title") or "")
    caption = result.get("caption_highlighted") or html.escape(result.get("caption") or "")
    thumb = html.escape(result.get("thumbnail_url") or "", quote=True)
    panel = result.get("panel") if isinstance(result.get("panel"), Mapping) else None
    img = (panel_figure_svg(result.get("thumbnail_url") or "", panel, label, "fs-thumb")
           if thumb and panel else
           f'<img class="fs-thumb" src="{thumb}" alt="{label}" loading="lazy">' if thumb
           else '<div class="fs-thumb fs-noimg">no image</div>')
    return (
        f'<div class="fs-card">{img}'
        f'<div class="fs-head"><b>{label}</b></div>'
        f'<div class="fs-badges">{type_badge(result.get("figure_type"), result.get("figure_type_score"))}'
        f' {license_badge(result.get("license"))}</div>'
        f'<div class="fs-title" title="{title}">{title}</div>'
        f'<div class="fs-caption">{snippet(caption)}</div>'
        f"{panel_div(panel)}"
        f"{_ocr_div(result)}"
        f"{signals_div(result)}"
        f'<div class="fs-meta">{meta_line(result)}</div></div>'
    )


def panel_name(panel: Mapping[str, Any]) -> str:
    """"Panel B" (or "Panel 2" when the panel has no letter)."""
    return f"Panel {panel.get('letter') or panel.get('number') or '?'}"


def panel_figure_svg(image_url: str, panel: Mapping[str, Any] | None, alt: str,
                     css_class: str = "fs-panelfig") -> str:
    """The figure's image with one panel outlined: an inline SVG whose view box is the image's
    own pixel grid, so the panel's box (stored image pixels) needs no scaling and stays on its
    panel at any display size. Falls back to a plain image when the size is unknown."""
    src = html.escape(image_url, quote=True)
    size = panel.get("figure_size") if panel else None
    box = panel.get("box") if panel else None
    if not (_four_numbers(box) and isinstance(size, (list, tuple)) and len(size) == 2
            and all(isinstance(v, (int, float)) and v > 0 for v in size)):
        return f'<img class="{css_class}" src="{src}" alt="{alt}" loading="lazy">'
    assert panel is not None and box is not None and size is not None
    w, h = (float(v) for v in size)
    x0, y0, x1, y1 = (float(v) for v in box)
    name = html.escape(panel_name(panel))
    stroke = max(2.0, min(w, h) / 120)
    return (
        f'<svg class="{css_class} fs-panelsvg" viewBox="0 0 {w:g} {h:g}" role="img" '
        f'aria-label="{alt}, {name} outlined" preserveAspectRatio="xMidYMid meet">'
        f'<title>{alt}: {name}</title>'
        f'<image href="{src}" x="0" y="0" width="{w:g}" height="{h:g}"/>'
        f'<rect class="fs-panelbox" x="{x0:g}" y="{y0:g}" width="{x1 - x0:g}" '
        f'height="{y1 - y0:g}" fill="rgba(250,204,21,0.12)" stroke="#f59e0b" '
        f'stroke-width="{stroke:.1f}"/></svg>')


def _four_numbers(box: Any) -> bool:
    return (isinstance(box, (list, tuple)) and len(box) == 4
            and all(isinstance(v, (int, float)) for v in box) and box[2] > box[0]
            and box[3] > box[1])


def panel_div(panel: Mapping[str, Any] | None, max_chars: int = 140) -> str:
    """The line under a card's caption naming the panel that matched and its sub-caption
    (escaped); "" when the whole figure matched."""
    if not panel:
        return ""
    sub = " ".join(str(panel.get("subcaption") or "").split())
    if len(sub) > max_chars:
        sub = sub[: max_chars - 1].rsplit(" ", 1)[0] + "…"
    text = f"<b>{html.escape(panel_name(panel))}</b>" + (f": {html.escape(sub)}" if sub else "")
    return (f'<div class="fs-panel" title="the panel of this figure that matched best">'
            f"<span>matched</span> {text}</div>")


def panel_attribution(fig: Mapping[str, Any], panel: Mapping[str, Any]) -> str:
    """The credit line for one panel: "Panel B of " + the figure's :func:`attribution`."""
    return f"{panel_name(panel)} of {attribution(fig)}"


def signals_div(result: Mapping[str, Any]) -> str:
    """One small escaped line saying why the result matched (its signals' shares of the score,
    the keyword fields and words); the tooltip adds the caption passage that matched best."""
    signals = [s for s in result.get("signals") or [] if isinstance(s, Mapping)]
    if not signals:
        return ""
    line = signals_line([dict(s) for s in signals])
    passage = next((s.get("passage") for s in signals if s.get("passage")), None)
    tip = f"why it matched: {line}" + (f" | best caption passage: {passage}" if passage else "")
    return (f'<div class="fs-why" title="{html.escape(tip, quote=True)}">'
            f"<span>why:</span> {html.escape(line)}</div>")


def weak_notice(response: Mapping[str, Any]) -> str:
    """The notice shown above the results of a query whose best matches are weak (plain text;
    "" for strong or not assessed ones): the API's note, else a short default."""
    if response.get("match_quality") != "weak":
        return ""
    return str(response.get("match_note") or
               f"No strong match for “{response.get('query', '')}”: the figures below are the "
               "nearest there are.")


def _ocr_div(result: Mapping[str, Any]) -> str:
    line = ocr_line(result.get("ocr_snippet") or "")
    return (f'<div class="fs-ocr" title="words read inside the figure image">'
            f"<span>in figure:</span> {line}</div>") if line else ""


# --- export -------------------------------------------------------------------------------

def _csv_cell(value: Any) -> Any:
    """Neutralise spreadsheet formulas in text cells (captions are untrusted text)."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return "" if value is None else value


def search_record(response: Mapping[str, Any] | None) -> dict[str, Any]:
    """What re-runs the search of an API response: its index version, query, mode, filters
    (as a query string) and permalink (an API URL pinned to that version)."""
    response = response or {}
    filters = response.get("filters") or {}
    return {"index_version": response.get("index_version"), "query": response.get("query"),
            "mode": response.get("mode"), "filters": urlencode(filters) if filters else "",
            "permalink": response.get("permalink")}


def results_to_csv(results: Iterable[Mapping[str, Any]],
                   response: Mapping[str, Any] | None = None) -> str:
    """CSV text with one row per result and the columns of :data:`EXPORT_COLUMNS`; every row
    also records the search (``response``: the API answer) that produced it."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=EXPORT_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    search = search_record(response)
    for result in results:
        row = {**result, **search, "attribution": attribution(result),
               "authors": "; ".join(result.get("authors") or [])}
        writer.writerow({col: _csv_cell(row.get(col)) for col in EXPORT_COLUMNS})
    return buffer.getvalue()


def results_to_json(response: Mapping[str, Any], state: ViewState) -> str:
    """JSON export: the API's response (with its index version, filters and permalink) plus
    the view (query, filters, page) that produced it, pinned to that index version."""
    pinned = state.with_(version=response.get("index_version") or state.version)
    payload = {"view": pinned.to_params(), **dict(response)}
    if isinstance(payload.get("results"), list):
        payload["results"] = [{**r, "attribution": attribution(r)} for r in payload["results"]]
    return json.dumps(payload, ensure_ascii=False, indent=2)


def export_basename(state: ViewState, source: str) -> str:
    """File name stem for exports, e.g. ``figsearch-mapk-signalling-p2``."""
    words = re.findall(r"[a-z0-9]+", state.q.lower())[:6] if source == "text" else [source]
    if state.similar is not None and source == "similar":
        words.append(str(state.similar))
    stem = "-".join(["figsearch", *words])
    return stem + (f"-p{state.page}" if state.page > 1 else "")


# --- facets -------------------------------------------------------------------------------

@dataclass
class Facets:
    """Values offered by the sidebar pickers (empty lists when the API has no facets)."""

    journals: list[str] = field(default_factory=list)
    figure_types: list[str] = field(default_factory=list)
    year_min: int | None = None
    year_max: int | None = None


def _names(raw: Any) -> list[str]:
    """Facet values from a list of strings, of {"value"|"name": …} dicts, or a {value: count} map."""
    if isinstance(raw, Mapping):
        return sorted(str(k) for k in raw if k)
    names = []
    for item in raw or []:
        value = item.get("value", item.get("name")) if isinstance(item, Mapping) else item
        if value not in (None, ""):
            names.append(str(value))
    return names


def parse_facets(raw: Mapping[str, Any] | None) -> Facets:
    """Read the API's ``/v1/facets`` answer into :class:`Facets`, tolerating missing parts."""
    if not raw:
        return Facets()
    years = raw.get("years") or raw.get("year") or {}
    if isinstance(years, Mapping):
        lo, hi = _int_or_none(years.get("min")), _int_or_none(years.get("max"))
    else:
        values = [y for y in (_int_or_none(v) for v in _names(years)) if y is not None]
        lo, hi = (min(values), max(values)) if values else (None, None)
    return Facets(
        journals=_names(raw.get("journals") or raw.get("journal")),
        figure_types=_names(raw.get("figure_types") or raw.get("figure_type")),
        year_min=lo,
        year_max=hi,
    )


def search_source(state: ViewState, has_image: bool) -> str:
    """Which search the view asks for: "similar" beats an uploaded "image" beats "text"."""
    if state.similar is not None:
        return "similar"
    if has_image:
        return "image"
    return "text" if state.q else "none"
