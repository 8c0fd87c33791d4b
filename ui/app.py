"""figsearch research UI (Streamlit): search PMC figures by text, by image or by example.

Run with ``figsearch ui --api URL``. The app talks to the API only through
:mod:`figsearch.client`; images load in the browser straight from the API's public
image/thumbnail URLs. The whole view (query, mode, filters, page, open figure) lives in the
URL query string, so a link reproduces the view and back/forward step through it. A
``version=`` in the URL pins the search to that index version (the API answers from it while it
is kept); the results toolbar offers a permalink pinned to the version that answered and, for
text searches, the Atom feed of new figures matching the search.
"""

from __future__ import annotations

import hashlib
from typing import Any

import streamlit as st

from figsearch.client import APIUnavailable, FigSearchClient, FigSearchError
from figsearch.core.config import Settings
from ui import components as c

IMAGE_TYPES = ["png", "jpg", "jpeg", "gif", "webp", "tif", "tiff", "bmp"]
EXAMPLES = ("signalling pathway", "western blot", "survival curve")
GRID_COLUMNS = 4
ALL = ""  # picker value meaning "no filter"

CSS = """<style>
.fs-card .fs-thumb {width:100%; height:170px; object-fit:contain; background:#f5f6f8;
  border-radius:6px; display:block}
.fs-head {margin-top:.45rem; white-space:nowrap; overflow:hidden; text-overflow:ellipsis}
.fs-badges {display:flex; gap:.3rem; flex-wrap:nowrap; overflow:hidden; margin-top:.2rem}
.fs-badge {font-size:.7rem; padding:.05rem .45rem; border-radius:.6rem; white-space:nowrap;
  font-weight:600; overflow:hidden; text-overflow:ellipsis; flex-shrink:1; min-width:0}
.fs-badges .fs-badge[class*="fs-lic"] {flex-shrink:0}
.fs-lic-ok {background:#dcfce7; color:#166534; border:1px solid #86efac}
.fs-lic-nc {background:#fef3c7; color:#92400e; border:1px solid #fcd34d}
.fs-lic-none {background:#f3f4f6; color:#4b5563; border:1px solid #d1d5db}
.fs-type {background:#e0e7ff; color:#3730a3; border:1px solid #a5b4fc}
.fs-title {font-size:.78rem; color:#6b7280; white-space:nowrap; overflow:hidden;
  text-overflow:ellipsis; margin-top:.2rem}
.fs-caption {font-size:.85rem; line-height:1.35; height:6.9em; overflow:hidden; margin-top:.3rem}
.fs-ocr {font-size:.78rem; line-height:1.3; margin-top:.25rem; white-space:nowrap;
  overflow:hidden; text-overflow:ellipsis}
.fs-ocr span {color:#6b7280}
.fs-caption mark, .fs-full-caption mark, .fs-ocr mark {background:#fde68a; padding:0 .1em; border-radius:2px}
.fs-panel {font-size:.78rem; line-height:1.3; margin-top:.25rem; white-space:nowrap;
  overflow:hidden; text-overflow:ellipsis}
.fs-panel span {color:#6b7280}
.fs-panelfig {width:100%; max-height:72vh; display:block}
.fs-why {font-size:.72rem; color:#374151; margin-top:.25rem; white-space:nowrap;
  overflow:hidden; text-overflow:ellipsis}
.fs-why span {color:#6b7280}
.fs-meta {font-size:.75rem; color:#6b7280; margin-top:.35rem; white-space:nowrap;
  overflow:hidden; text-overflow:ellipsis}
[data-testid="stMainBlockContainer"] {padding-top:2.5rem}
[role="dialog"] [data-testid="stImage"] img {max-height:72vh; object-fit:contain}
.fs-full-caption {font-size:.95rem; line-height:1.5}
.fs-noimg {display:flex; align-items:center; justify-content:center; color:#9ca3af;
  font-size:.8rem}
</style>"""


# --- API access (cached: Streamlit reruns the script on every click) ---------------------

def api_url() -> str:
    """The API base URL from ``FIGSEARCH_API_URL`` (set by ``figsearch ui --api``)."""
    return Settings().api_url.rstrip("/")


@st.cache_resource(show_spinner=False)
def get_client(url: str) -> FigSearchClient:
    return FigSearchClient(url, timeout=60)


@st.cache_data(ttl=300, show_spinner=False)
def fetch_facets(url: str) -> c.Facets:
    client = get_client(url)
    return c.parse_facets(client.facets()) if hasattr(client, "facets") else c.Facets()


@st.cache_data(ttl=60, show_spinner=False)
def fetch_stats(url: str) -> dict[str, Any]:
    return get_client(url).stats()


@st.cache_data(ttl=300, show_spinner=False, max_entries=256)
def fetch_figure(url: str, figure_id: int) -> dict[str, Any]:
    return get_client(url).figure(figure_id)


@st.cache_data(ttl=120, show_spinner=False, max_entries=64)
def fetch_results(
    url: str, source: str, params: tuple[tuple[str, str], ...], image_sha256: str,
    _image: bytes | None,
) -> dict[str, Any]:
    """One page of results. The cache key is the view's query string and the image's hash
    (the leading underscore keeps the image bytes themselves out of the cache)."""
    state = c.ViewState.from_params(dict(params))
    client = get_client(url)
    k, offset = state.k, state.offset
    pin = state.pinned  # None: the current version (no version= is sent)
    if source == "similar" and state.similar is not None:
        return client.similar(state.similar, k=k, offset=offset, version=pin, **state.filters())
    if source == "image" and _image is not None:
        return client.search_image(_image, k=k, offset=offset, version=pin, **state.filters())
    return client.search(state.q, k=k, offset=offset, mode=state.mode, version=pin,
                         **state.filters())


def facets_or_empty(url: str) -> c.Facets:
    try:
        return fetch_facets(url)
    except FigSearchError:
        return c.Facets()


# --- state: session <-> URL ---------------------------------------------------------------

def uploader_key() -> str:
    return f"upload_{st.session_state.get('_upload_gen', 0)}"


def load_state(state: c.ViewState, facets: c.Facets) -> None:
    """Put a view into the widgets' session state (before the widgets are drawn)."""
    ss = st.session_state
    for name in ("q", "mode", "journal", "commercial", "reusable", "figure_type", "k", "page",
                 "fig", "similar", "version", "panel"):
        ss[name] = getattr(state, name)
    ss["year_from"], ss["year_to"] = state.year_from, state.year_to
    if facets.year_min is not None and facets.year_max is not None:
        lo = max(state.year_from or facets.year_min, facets.year_min)
        hi = min(state.year_to or facets.year_max, facets.year_max)
        ss["years"] = (min(lo, hi), max(lo, hi))


def sync_from_url(facets: c.Facets) -> None:
    """Load the view from the URL on first load and after back/forward or an edited link."""
    params = st.query_params.to_dict()
    if st.session_state.get("_url") != params:
        load_state(c.ViewState.from_params(params), facets)
        st.session_state["_url"] = params
        # An uploaded image is not in the URL, so the URL's view never includes one.
        st.session_state["_upload_gen"] = st.session_state.get("_upload_gen", 0) + 1


def year_bounds(facets: c.Facets) -> tuple[int | None, int | None]:
    """The year filter from the slider (full range = no filter) or the number inputs."""
    ss = st.session_state
    if "years" in ss and facets.year_min is not None:
        lo, hi = ss["years"]
        return (lo if lo > facets.year_min else None, hi if hi < (facets.year_max or hi) else None)
    return ss.get("year_from"), ss.get("year_to")


def read_state(facets: c.Facets) -> c.ViewState:
    """The view as the widgets and navigation buttons now describe it."""
    ss = st.session_state
    year_from, year_to = year_bounds(facets)
    return c.ViewState(
        q=(ss.get("q") or "").strip(), mode=ss.get("mode") or "hybrid",
        year_from=year_from, year_to=year_to, journal=ss.get("journal") or ALL,
        commercial=bool(ss.get("commercial")), reusable=bool(ss.get("reusable")),
        figure_type=ss.get("figure_type") or ALL,
        k=ss.get("k") or c.DEFAULT_K, page=ss.get("page") or 1,
        fig=ss.get("fig"), similar=ss.get("similar"), version=ss.get("version") or "",
        panel=ss.get("panel") if ss.get("fig") is not None else None,
    )


def write_url(state: c.ViewState) -> None:
    """Mirror the view into the URL (Streamlit pushes a browser history entry)."""
    params = state.to_params()
    if st.query_params.to_dict() != params:
        st.query_params.from_dict(params)
    st.session_state["_url"] = params


# --- callbacks (run before the rerun they trigger) ----------------------------------------

def restart_paging() -> None:
    st.session_state.update(page=1, fig=None)


def on_new_query() -> None:
    """A typed query replaces any image or "similar" search."""
    st.session_state.update(page=1, fig=None, similar=None)
    st.session_state["_upload_gen"] = st.session_state.get("_upload_gen", 0) + 1


def on_new_image() -> None:
    st.session_state.update(page=1, fig=None, similar=None, q="")


def set_query(text: str) -> None:
    st.session_state["q"] = text
    on_new_query()


def show_similar(figure_id: int) -> None:
    st.session_state.update(similar=figure_id, page=1, fig=None)


def clear_similar() -> None:
    st.session_state.update(similar=None, page=1)


def clear_image() -> None:
    st.session_state["_upload_gen"] = st.session_state.get("_upload_gen", 0) + 1
    restart_paging()


def open_detail(figure_id: int, panel: int | None = None) -> None:
    """Show a figure; ``panel``: the panel of it that matched, highlighted there."""
    st.session_state.update(fig=figure_id, panel=panel)


def close_detail() -> None:
    st.session_state.update(fig=None, panel=None)


def unpin_version() -> None:
    """Search the current index version again instead of the pinned one."""
    st.session_state.update(version="", page=1)


def go_to_page(page: int) -> None:
    st.session_state.update(page=max(page, 1), fig=None)


def reset_filters() -> None:
    ss = st.session_state
    ss.update(journal=ALL, figure_type=ALL, commercial=False, reusable=False, year_from=None,
              year_to=None)
    ss.pop("years", None)
    restart_paging()


# --- sidebar ------------------------------------------------------------------------------

def _picker(label: str, key: str, options: list[str], empty: str, help_text: str) -> None:
    """A selectbox over the facet values, or a text box when the API lists none."""
    if not options:
        st.text_input(label, key=key, on_change=restart_paging, help=help_text, placeholder=empty)
        return
    current = st.session_state.get(key) or ALL
    choices = [ALL, *options] + ([current] if current not in options and current else [])
    st.session_state[key] = current
    st.selectbox(label, choices, key=key, on_change=restart_paging, help=help_text,
                 format_func=lambda v: v or empty)


def _year_filter(facets: c.Facets) -> None:
    lo, hi = facets.year_min, facets.year_max
    if lo is not None and hi is not None and lo < hi:
        st.session_state.setdefault("years", (lo, hi))
        st.slider("Publication year", lo, hi, key="years", on_change=restart_paging)
        return
    left, right = st.columns(2)
    for col, label, key in ((left, "Year from", "year_from"), (right, "Year to", "year_to")):
        col.number_input(label, min_value=1800, max_value=2100, value=None, step=1, key=key,
                         on_change=restart_paging, placeholder="any")


def render_sidebar(facets: c.Facets, url: str) -> None:
    """Filters (from the API's facets when it has them), page size and the API's status."""
    with st.sidebar:
        st.markdown("### Filters")
        _year_filter(facets)
        _picker("Journal", "journal", facets.journals, "All journals",
                "Only figures from this journal.")
        _picker("Figure type", "figure_type", facets.figure_types, "All figure types",
                "Only figures the classifier put in this type.")
        st.toggle("Commercial-use licenses only", key="commercial", on_change=restart_paging,
                  help="CC0, public domain, CC BY, CC BY-SA and CC BY-ND.")
        st.toggle("Reusable figures only", key="reusable", on_change=restart_paging,
                  help="The figure's own rights: an open license (its own, else its "
                       "article's) and no 'reprinted with permission', 'adapted from', '©' or "
                       "'courtesy of' statement. Takes the place of the commercial-use filter.")
        st.select_slider("Results per page", c.PAGE_SIZES, key="k", on_change=restart_paging)
        st.button("Reset filters", on_click=reset_filters, width="stretch")
        st.divider()
        render_api_status(url)


def render_api_status(url: str) -> None:
    try:
        stats = fetch_stats(url)
    except APIUnavailable:
        st.caption(f"API {url}: unreachable")
        return
    except FigSearchError as exc:
        st.caption(f"API {url}: {exc.message}")
        return
    figures = stats.get("index_count")
    version = stats.get("index_version") or ""
    bits = [f"API {url}"] + ([f"{figures:,} figures"] if isinstance(figures, int) else [])
    st.caption(" · ".join(bits + ([f"index {version}"] if version else [])))
    signals = stats.get("signals") or {}
    if signals:
        st.caption("signals: " + ", ".join(
            f"{name} {'live' if live else 'not yet' if name == 'dense' else 'off'}"
            for name, live in signals.items()))


# --- search bar ---------------------------------------------------------------------------

def render_search_bar() -> tuple[bytes | None, str]:
    """Query box, mode selector and image drop zone; returns the uploaded image, if any."""
    left, right = st.columns([7, 3], gap="medium")
    with left:
        st.text_input(
            "Describe a figure", key="q", on_change=on_new_query,
            placeholder="e.g. MAPK signalling pathway, western blot of p53, survival curve",
        )
        st.segmented_control(
            "Mode", c.MODES, key="mode", required=True, on_change=restart_paging,
            help="hybrid: all live signals, weighted; caption: meaning of the captions; dense: "
                 "the image model (CLIP); keyword: words only (BM25). Applies to text queries.",
        )
    with right:
        upload = st.file_uploader(
            "…or drop an image", type=IMAGE_TYPES, key=uploader_key(), on_change=on_new_image,
            help="Finds figures that look like your image. The image is sent to the API only.",
        )
    return (upload.getvalue(), upload.name) if upload is not None else (None, "")


# --- results ------------------------------------------------------------------------------

def render_landing(url: str) -> None:
    st.markdown("Search PubMed Central figures by description, by image, or by example.")
    cols = st.columns(len(EXAMPLES) + 1)
    cols[0].caption("Try:")
    for col, example in zip(cols[1:], EXAMPLES, strict=True):
        col.button(example, on_click=set_query, args=(example,), key=f"ex_{example}")
    try:
        healthy = get_client(url).health()
    except FigSearchError:
        healthy = False
    if not healthy:
        st.error(f"The figsearch API at {url} is not answering or not ready. Start it with "
                 "`figsearch serve` or pass the right address to `figsearch ui --api URL`.")


def describe_figure(url: str, figure_id: int | None) -> str:
    """ "Figure 2 of <title>" for the banner, or "figure #id" when the API cannot say."""
    fallback = f"figure #{figure_id}"
    try:
        fig = fetch_figure(url, int(figure_id or 0))
    except FigSearchError:
        return fallback
    label = fig.get("label") or fallback
    title = (fig.get("title") or "").rstrip(".")
    return f"{label} of “{title}”" if title else label


def render_banner(url: str, source: str, state: c.ViewState, image_name: str) -> None:
    """What the results are relative to, with a button to drop it."""
    if state.version:
        left, right = st.columns([8, 2], vertical_alignment="center")
        left.info(f"Pinned to index version {state.version}: the results that version gave "
                  "(while the API keeps it).")
        right.button("Use the latest index", on_click=unpin_version, key="unpin_version")
    if source == "similar":
        left, right = st.columns([8, 2], vertical_alignment="center")
        left.info(f"Figures similar to {describe_figure(url, state.similar)}")
        right.button("✕ Clear similar", on_click=clear_similar, key="clear_similar")
    elif source == "image":
        left, right = st.columns([8, 2], vertical_alignment="center")
        left.info(f"Figures similar to your image {image_name}")
        right.button("✕ Clear image", on_click=clear_image, key="clear_image")


def search(url: str, source: str, state: c.ViewState, image: bytes | None) -> dict | None:
    """Run the search with a spinner; show a clear message and return None on failure."""
    params = tuple(sorted(state.with_(fig=None).to_params().items()))
    image = image if source == "image" else None
    digest = hashlib.sha256(image).hexdigest() if image else ""
    try:
        with st.spinner("Searching…"):
            return fetch_results(url, source, params, digest, image)
    except APIUnavailable as exc:
        st.error(f"Cannot search: {exc.message}. Is `figsearch serve` running?")
    except FigSearchError as exc:
        what = "The image was refused" if source == "image" else "The search was refused"
        st.error(f"{what}: {exc.message}")
    return None


def render_links_row(response: dict, state: c.ViewState, source: str, url: str) -> None:
    """The permalink of this view (pinned to the index version that answered) and, for a
    text search, the Atom feed of new figures matching it."""
    version = response.get("index_version") or ""
    links = [f"[Permalink]({c.state_link(state, version)}) (index version `{version}`)"
             if version else ""]
    if source == "text" and state.q:
        feed = get_client(url).feed_url(state.q, versions=1, mode=state.mode,
                                        **state.filters())
        links.append(f"[Atom feed of new figures]({feed})")
    st.markdown(" · ".join(x for x in links if x))


def render_toolbar(response: dict, state: c.ViewState, source: str) -> None:
    results = response.get("results", [])
    first = state.offset + 1
    info = f"Results {first}–{state.offset + len(results)}"
    if source == "text":
        info += f" · {response.get('mode', state.mode)}"
    if response.get("took_ms") is not None:
        info += f" · {response['took_ms']:.0f} ms"
    left, mid, right = st.columns([6, 1.2, 1.2], vertical_alignment="center")
    left.caption(info)
    name = c.export_basename(state, source)
    mid.download_button("⬇ CSV", c.results_to_csv(results, response), f"{name}.csv", "text/csv",
                        key="export_csv", width="stretch")
    right.download_button("⬇ JSON", c.results_to_json(response, state), f"{name}.json",
                          "application/json", key="export_json", width="stretch")


def render_card(result: dict) -> None:
    fid = result["id"]
    with st.container(border=True):
        st.markdown(c.result_card_html(result), unsafe_allow_html=True)
        left, right = st.columns(2)
        panel = result.get("panel") or {}
        left.button("Details", key=f"detail_{fid}", on_click=open_detail,
                    args=(fid, panel.get("number")), width="stretch")
        right.button("Similar", key=f"similar_{fid}", on_click=show_similar, args=(fid,),
                     width="stretch", help="Find figures that look like this one")


def render_grid(results: list[dict]) -> None:
    for row_start in range(0, len(results), GRID_COLUMNS):
        cols = st.columns(GRID_COLUMNS)
        for col, result in zip(cols, results[row_start:row_start + GRID_COLUMNS], strict=False):
            with col:
                render_card(result)


def render_pager(state: c.ViewState, count: int) -> None:
    left, mid, right = st.columns([1, 2, 1], vertical_alignment="center")
    left.button("← Previous", disabled=state.page <= 1, on_click=go_to_page,
                args=(state.page - 1,), key="prev_page", width="stretch")
    mid.markdown(f"<div style='text-align:center'>Page {state.page}</div>",
                 unsafe_allow_html=True)
    right.button("Next →", disabled=count < state.k, on_click=go_to_page,
                 args=(state.page + 1,), key="next_page", width="stretch")


def render_results(url: str, state: c.ViewState, image: bytes | None, image_name: str) -> None:
    source = c.search_source(state, image is not None)
    if source == "none":
        render_landing(url)
        return
    render_banner(url, source, state, image_name)
    response = search(url, source, state, image)
    if response is None:
        return
    results = response.get("results", [])
    if not results:
        more = " on this page" if state.page > 1 else ""
        st.info(f"No figures found{more}. Try other words, another mode or fewer filters.")
        if state.page > 1:
            render_pager(state, 0)
        return
    render_toolbar(response, state, source)
    render_links_row(response, state, source, url)
    notice = c.weak_notice(response)
    if notice:
        st.warning(notice, icon="⚠️")
    render_grid(results)
    render_pager(state, len(results))


# --- detail view --------------------------------------------------------------------------

def render_links(fig: dict) -> None:
    links = c.link_buttons(fig)
    cols = st.columns(len(links))
    for col, (label, href) in zip(cols, links, strict=True):
        if href:
            col.link_button(label, href, width="stretch")


def render_detail_facts(fig: dict) -> None:
    st.subheader(fig.get("label") or f"Figure #{fig['id']}")
    st.markdown(f"**{fig.get('title') or 'Untitled article'}**")
    venue = " · ".join(str(v) for v in (fig.get("journal"), fig.get("year")) if v)
    ids = " · ".join(f"{k.upper()} {fig[k]}" for k in ("pmcid", "doi") if fig.get(k))
    st.caption(" — ".join(x for x in (venue, ids) if x))
    badges = c.type_badge(fig.get("figure_type"), fig.get("figure_type_score"))
    badges += " " + c.license_badge(fig.get("license"))
    if fig.get("license_url"):
        badges += f' <a href="{c.html.escape(fig["license_url"], quote=True)}">license text</a>'
    st.markdown(badges, unsafe_allow_html=True)
    render_links(fig)
    if fig.get("reuse"):
        st.markdown(f"**Reuse:** {c.html.escape(fig['reuse'])}")
    if fig.get("third_party"):
        st.warning(f"Third-party material: {fig['third_party']}")
    st.markdown("**Attribution**")  # st.code has its own copy button
    st.code(c.attribution(fig), language=None, wrap_lines=True)
    render_citation_downloads(fig)
    left, right = st.columns(2)
    # Buttons in a dialog rerun only the dialog; st.rerun() refreshes the page behind it.
    if left.button("Find similar figures", key="detail_similar", on_click=show_similar,
                   args=(fig["id"],), type="primary", width="stretch"):
        st.rerun()
    if right.button("Close", key="close_detail", on_click=close_detail, width="stretch"):
        st.rerun()


@st.cache_data(ttl=300, show_spinner=False, max_entries=64)
def fetch_citation(url: str, pmcid: str, fmt: str) -> str:
    return get_client(url).citation(pmcid, fmt)


def render_citation_downloads(fig: dict) -> None:
    """BibTeX and RIS of the figure's article, as downloads (nothing for other collections'
    articles without a PMCID, or from an API without the citation route)."""
    pmcid = fig.get("pmcid")
    if not pmcid or not hasattr(get_client(api_url()), "citation"):
        return
    cols = st.columns(2)
    for col, (fmt, ext, mime) in zip(cols, (("bibtex", "bib", "application/x-bibtex"),
                                            ("ris", "ris", "application/x-research-info-systems")),
                                     strict=True):
        try:
            data = fetch_citation(api_url(), pmcid, fmt)
        except FigSearchError:
            continue
        col.download_button(f"{ext.upper()} citation", data, file_name=f"{pmcid}.{ext}",
                            mime=mime, key=f"cite_{fmt}", width="stretch")


def load_figure(url: str, figure_id: int) -> dict | None:
    """The figure's record from the API, or None after showing why it is not available."""
    try:
        return fetch_figure(url, figure_id)
    except APIUnavailable as exc:
        st.error(f"Cannot show the figure: {exc.message}.")
    except FigSearchError as exc:
        st.error(f"Figure {figure_id} could not be shown: {exc.message}")
    return None


@st.cache_data(ttl=300, show_spinner=False, max_entries=64)
def fetch_panels(url: str, figure_id: int) -> list[dict[str, Any]]:
    return list(get_client(url).panels(figure_id).get("panels") or [])


def load_panel(url: str, fig: dict, number: int | None) -> dict | None:
    """The figure's panel ``number`` with the figure's size (for the outline), or None (no
    panel asked for, an API without panels, or a number the figure does not have)."""
    if number is None:
        return None
    try:
        panels = fetch_panels(url, int(fig["id"]))
    except FigSearchError:
        return None
    panel = next((p for p in panels if p.get("number") == number), None)
    if panel is None:
        return None
    return {**panel, "figure_size": panel.get("figure_size") or [fig.get("width"),
                                                                 fig.get("height")]}


def render_panel_facts(fig: dict, panel: dict) -> None:
    """The matched panel's sub-caption and its own credit line ("cite this panel")."""
    st.markdown(f"**Matched: {c.panel_name(panel)}**")
    if panel.get("subcaption"):
        st.markdown(f'<div class="fs-full-caption">{c.html.escape(panel["subcaption"])}</div>',
                    unsafe_allow_html=True)
    st.markdown("**Cite this panel**")
    st.code(c.panel_attribution(fig, panel), language=None, wrap_lines=True)


@st.dialog("Figure details", width="large", on_dismiss=close_detail)
def detail_dialog(url: str, figure_id: int, panel_number: int | None = None) -> None:
    """Large image (the matched panel outlined), facts, links, attribution, "find similar"
    and the full caption."""
    fig = load_figure(url, figure_id)
    if fig is None:
        return
    panel = load_panel(url, fig, panel_number) if fig.get("image_url") else None
    left, right = st.columns([3, 2], gap="medium")
    with left:
        if panel is not None:
            st.markdown(c.panel_figure_svg(fig["image_url"], panel, c.html.escape(
                fig.get("label") or "figure")), unsafe_allow_html=True)
        elif fig.get("image_url"):
            st.image(fig["image_url"], width="stretch")
        else:
            st.info("This figure has no image.")
    with right:
        if panel is not None:
            render_panel_facts(fig, panel)
        render_detail_facts(fig)
    st.markdown("**Caption**")
    caption = c.html.escape(fig.get("caption") or "(no caption)")
    st.markdown(f'<div class="fs-full-caption">{caption}</div>', unsafe_allow_html=True)
    if fig.get("ocr_text"):
        st.markdown("**Text in the figure** (OCR)")
        st.code(fig["ocr_text"], language=None, wrap_lines=True)


# --- page ---------------------------------------------------------------------------------

def main() -> None:
    """Draw the page: read the URL, draw the controls, write the URL, show results or a figure."""
    st.set_page_config(page_title="figsearch", page_icon="🔎", layout="wide")
    st.html(CSS)
    url = api_url()
    facets = facets_or_empty(url)
    sync_from_url(facets)
    st.title("figsearch")
    st.caption("Semantic search over the figures of PubMed Central")
    render_sidebar(facets, url)
    image, image_name = render_search_bar()
    state = read_state(facets)
    write_url(state)
    render_results(url, state, image, image_name)
    if state.fig is not None:
        detail_dialog(url, state.fig, state.panel)


main()
