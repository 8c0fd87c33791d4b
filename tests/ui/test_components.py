"""Unit tests of the UI's pure helpers: URL state, safe highlighting, badges, export."""

from __future__ import annotations

import csv
import io
import json

from hypothesis import given
from hypothesis import strategies as st

from ui import components as c

RESULT = {
    "id": 7, "rank": 1, "score": 0.8123, "label": "Fig. 3B", "figure_type": "pathway",
    "figure_type_score": 0.91, "caption": "MAPK <signalling> & crosstalk",
    "caption_highlighted": "<mark>MAPK</mark> &lt;signalling&gt; &amp; crosstalk",
    "thumbnail_url": "http://api/v1/figures/7/thumbnail", "image_url": "http://api/v1/figures/7/image",
    "pmcid": "PMC123", "article_url": "https://pmc.ncbi.nlm.nih.gov/articles/PMC123/",
    "figure_url": "https://pmc.ncbi.nlm.nih.gov/articles/PMC123/figure/F3/",
    "title": "A pathway atlas.", "journal": "Viruses", "year": 2020, "license": "cc-by",
    "license_url": "https://creativecommons.org/licenses/by/4.0/", "doi": "10.1/x", "source": "pmc",
}


def test_view_state_round_trips_through_url_params():
    state = c.ViewState(q="p53 blot", mode="keyword", year_from=2015, year_to=2020,
                        journal="PLoS One", commercial=True, figure_type="photo", k=48, page=3,
                        fig=12, similar=5)
    params = state.to_params()
    assert params["q"] == "p53 blot" and params["commercial"] == "1" and params["page"] == "3"
    assert c.ViewState.from_params(params) == state


def test_default_view_has_empty_url_and_defaults_are_left_out():
    assert c.ViewState().to_params() == {}
    assert c.ViewState(q="x", mode="hybrid", k=c.DEFAULT_K, page=1).to_params() == {"q": "x"}


def test_nonsense_url_values_fall_back_to_defaults():
    state = c.ViewState.from_params({"mode": "evil", "k": "100000", "page": "-2", "fig": "abc",
                                     "year_from": "20x", "commercial": "maybe"})
    assert state == c.ViewState()


def test_filters_and_offset_for_the_client():
    state = c.ViewState(commercial=True, journal="Viruses", k=12, page=3)
    assert state.filters() == {"year_from": None, "year_to": None, "journal": "Viruses",
                               "license": "commercial", "figure_type": None}
    assert state.offset == 24


def test_search_source_precedence():
    assert c.search_source(c.ViewState(q="x", similar=3), True) == "similar"
    assert c.search_source(c.ViewState(q="x"), True) == "image"
    assert c.search_source(c.ViewState(q="x"), False) == "text"
    assert c.search_source(c.ViewState(), False) == "none"


def test_safe_highlight_keeps_marks_and_escapes_everything_else():
    hostile = '<mark>p53</mark><script>alert(1)</script> <img src=x onerror=alert(1)> &amp;'
    out = c.safe_highlight(hostile)
    assert "<script" not in out and "<img" not in out
    assert out.startswith("<mark>p53</mark>&lt;script&gt;")
    assert out.endswith("&amp;")  # already-escaped text is not double-escaped


@given(st.text(max_size=300))
def test_safe_highlight_never_lets_a_tag_through(text):
    out = c.safe_highlight(text).replace("<mark>", "").replace("</mark>", "")
    assert "<" not in out and ">" not in out


def test_snippet_centres_on_the_first_highlight_and_stays_short():
    caption = "word " * 200 + "<mark>TREM2</mark> signalling " + "tail " * 100
    out = c.snippet(caption, max_chars=120)
    assert "<mark>TREM2</mark>" in out
    assert out.startswith("… ") and out.endswith(" …")
    plain = out.replace("<mark>", "").replace("</mark>", "")
    assert len(plain) <= 120 + 4


def test_snippet_of_short_caption_is_the_whole_caption():
    assert c.snippet("a <mark>b</mark> c") == "a <mark>b</mark> c"


def test_license_badge_is_green_only_for_commercial_classes():
    assert "fs-lic-ok" in c.license_badge("cc-by") and ">CC BY<" in c.license_badge("cc-by")
    assert "fs-lic-nc" in c.license_badge("cc-by-nc")
    assert "fs-lic-none" in c.license_badge("none")
    assert "fs-lic-none" in c.license_badge(None)


def test_type_badge_escapes_and_is_empty_without_type():
    assert c.type_badge(None) == ""
    assert "&lt;b&gt;" in c.type_badge("<b>")


def test_attribution_line():
    line = c.attribution(RESULT)
    assert line == ("Figure 3B from A pathway atlas, Viruses 2020, PMCID PMC123, licensed CC BY "
                    "(https://creativecommons.org/licenses/by/4.0/)")
    synthetic = {"label": "", "title": "", "license": "none", "doi": None, "pmcid": None}
    assert c.attribution(synthetic) == "Figure from an untitled article, licensed No license stated"


def test_result_card_is_safe_and_complete():
    hostile = {**RESULT, "title": '"><script>x</script>', "thumbnail_url": 'x" onerror="alert(1)'}
    card = c.result_card_html(hostile)
    assert "<script>" not in card and 'onerror="' not in card
    card = c.result_card_html(RESULT)
    for piece in ("Fig. 3B", "<mark>MAPK</mark>", "Viruses · 2020 · score 0.812", "fs-lic-ok",
                  'src="http://api/v1/figures/7/thumbnail"', ">pathway<"):
        assert piece in card


def test_csv_export_has_all_columns_and_defuses_formulas():
    text = c.results_to_csv([RESULT, {**RESULT, "id": 8, "caption": "=HYPERLINK(1)"}])
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == list(c.EXPORT_COLUMNS)
    assert rows[0]["caption"] == RESULT["caption"] and rows[0]["pmcid"] == "PMC123"
    assert rows[1]["caption"] == "'=HYPERLINK(1)"


def test_json_export_keeps_the_response_and_the_view():
    state = c.ViewState(q="mapk", commercial=True)
    data = json.loads(c.results_to_json({"query": "mapk", "results": [RESULT]}, state))
    assert data["view"] == {"q": "mapk", "commercial": "1"}
    assert data["results"][0]["id"] == 7


def test_export_basename():
    assert c.export_basename(c.ViewState(q="MAPK signalling!", page=2), "text") == \
        "figsearch-mapk-signalling-p2"
    assert c.export_basename(c.ViewState(similar=9), "similar") == "figsearch-similar-9"


def test_parse_facets_reads_the_api_shape_and_tolerates_gaps():
    facets = c.parse_facets({"journals": ["Viruses", "PLoS One"], "figure_types": ["pathway"],
                             "license_classes": ["cc-by"], "years": {"min": 2003, "max": 2021}})
    assert facets.journals == ["Viruses", "PLoS One"] and facets.figure_types == ["pathway"]
    assert (facets.year_min, facets.year_max) == (2003, 2021)
    assert c.parse_facets(None) == c.Facets()
    assert c.parse_facets({"years": {"min": None, "max": None}}).year_min is None


def test_card_without_image_keeps_its_place():
    card = c.result_card_html({**RESULT, "thumbnail_url": None})
    assert "<img" not in card and "fs-noimg" in card


def test_card_shows_the_matched_in_figure_text_safely():
    result = {**RESULT, "ocr_snippet": "EGFR\n<mark>MAPK1</mark>\n&lt;img onerror=x&gt;"}
    card = c.result_card_html(result)
    assert '<div class="fs-ocr"' in card
    assert "EGFR · <mark>MAPK1</mark> · &lt;img onerror=x&gt;" in card and "<img onerror" not in card
    assert "fs-ocr" not in c.result_card_html({**RESULT, "ocr_snippet": ""})
    assert c.ocr_line("EGFR\nMAPK1") == ""  # nothing matched: nothing shown


def test_reusable_filter_round_trips_and_reaches_the_client():
    state = c.ViewState(q="x", reusable=True, commercial=True)
    assert state.to_params()["reusable"] == "1"
    assert c.ViewState.from_params(state.to_params()) == state
    assert state.filters()["license"] == "reusable"  # the figure's own rights win


def test_api_attribution_is_used_and_exported_with_authors_and_reuse():
    credit = ('Fig. 3B from "A pathway atlas" by Ada Lovelace, Alan Turing. Viruses (2020). '
              "https://doi.org/10.1/x. PMCID PMC123. License: CC BY "
              "(https://creativecommons.org/licenses/by/4.0/).")
    result = {**RESULT, "attribution": credit, "authors": ["Lovelace, Ada", "Turing, Alan"],
              "reuse": "cc-by: reuse with attribution", "third_party": None}
    assert c.attribution(result) == credit
    row = next(csv.DictReader(io.StringIO(c.results_to_csv([result]))))
    assert row["attribution"] == credit and row["authors"] == "Lovelace, Ada; Turing, Alan"
    assert row["reuse"] == "cc-by: reuse with attribution" and row["third_party"] == ""


SIGNALS = [
    {"name": "caption", "raw": 0.63, "normalised": 0.88, "weight": 0.25, "contribution": 0.22,
     "rank": 2, "fields": {}, "terms": [], "passage": "EGFR <b>mutant</b> tumours respond."},
    {"name": "keyword", "raw": 31.2, "normalised": 0.63, "weight": 0.65, "contribution": 0.41,
     "rank": 1, "fields": {"caption": ["EGFR"], "ocr": ["NSCLC"]}, "terms": ["egfr", "nsclc"],
     "passage": None},
]


def test_card_says_compactly_why_the_result_matched_and_stays_safe():
    card = c.result_card_html({**RESULT, "signals": SIGNALS})
    assert '<div class="fs-why"' in card
    # the largest share first, the keyword fields and words, the caption cosine
    assert ("keyword 0.41 (caption, in-figure text: egfr, nsclc) · caption 0.22 (cos 0.63)"
            in card)
    assert "best caption passage: EGFR &lt;b&gt;mutant&lt;/b&gt; tumours respond." in card
    assert "<b>mutant" not in card
    assert "fs-why" not in c.result_card_html({**RESULT, "signals": []})


def test_weak_notice_only_for_weak_matches():
    note = "No strong match for “cake”: no caption is close in meaning (best similarity 0.21)."
    assert c.weak_notice({"query": "cake", "match_quality": "weak", "match_note": note}) == note
    assert c.weak_notice({"query": "cake", "match_quality": "weak"}).startswith(
        "No strong match for “cake”")
    for quality in ("strong", "none", None):
        assert c.weak_notice({"query": "x", "match_quality": quality, "match_note": "n"}) == ""


def test_exports_record_the_search_that_can_be_run_again():
    response = {"query": "mapk", "mode": "keyword", "index_version": "V1",
                "filters": {"license": "commercial", "year_from": 2015},
                "permalink": "/v1/search?q=mapk&mode=keyword&version=V1", "results": [RESULT]}
    row = next(csv.DictReader(io.StringIO(c.results_to_csv([RESULT], response))))
    assert row["index_version"] == "V1" and row["query"] == "mapk" and row["mode"] == "keyword"
    assert row["filters"] == "license=commercial&year_from=2015"
    assert row["permalink"] == response["permalink"]
    state = c.ViewState(q="mapk", mode="keyword", commercial=True)
    data = json.loads(c.results_to_json(response, state))
    assert data["view"]["version"] == "V1" and data["permalink"] == response["permalink"]
    assert c.state_link(state, "V1") == "?q=mapk&mode=keyword&commercial=1&version=V1"
    assert c.ViewState.from_params({"version": "V1"}).pinned == "V1"
    assert c.ViewState.from_params({"version": "../etc"}).pinned is None  # not a version name


PANEL = {"number": 2, "box": [340, 10, 660, 300], "letter": "B", "subcaption":
         "(B) Kaplan–Meier <survival> of EGFR-mutant patients " + "x " * 200,
         "signal": "caption", "score": 0.61, "crop_url": "/v1/figures/7/panels/2/image",
         "figure_size": [680, 320]}


def test_card_outlines_the_matched_panel_on_its_figure_and_names_it():
    result = {"id": 7, "label": "Figure 3", "caption": "(A) … (B) …", "title": "T",
              "thumbnail_url": "http://api/v1/figures/7/thumbnail", "panel": PANEL}
    card = c.result_card_html(result)
    # the outline is drawn in the image's own pixel grid: the box needs no scaling
    assert 'viewBox="0 0 680 320"' in card
    assert '<rect class="fs-panelbox" x="340" y="10" width="320" height="290"' in card
    assert 'href="http://api/v1/figures/7/thumbnail"' in card
    # the panel's name and its sub-caption, escaped and cut short
    assert "<b>Panel B</b>: (B) Kaplan–Meier &lt;survival&gt;" in card
    assert "<survival>" not in card and len(c.panel_div(PANEL)) < 400


def test_card_without_a_panel_or_its_size_shows_the_plain_thumbnail():
    result = {"id": 7, "label": "Figure 3", "thumbnail_url": "http://api/t.png"}
    assert "<svg" not in c.result_card_html(result) and "fs-panel" not in c.result_card_html(result)
    sizeless = {**PANEL, "figure_size": None}
    html_ = c.panel_figure_svg("http://api/t.png", sizeless, "Figure 3")
    assert html_.startswith("<img") and "rect" not in html_
    assert "rect" not in c.panel_figure_svg("u", {**PANEL, "box": [5, 5, 1, 1]}, "f")


def test_panel_names_and_citation_say_which_panel_of_which_figure():
    fig = {"label": "Figure 3", "title": "EGFR in lung cancer", "journal": "J", "year": 2020,
           "pmcid": "PMC1", "license": "cc-by"}
    assert c.panel_name(PANEL) == "Panel B"
    assert c.panel_name({**PANEL, "letter": None}) == "Panel 2"
    cite = c.panel_attribution(fig, PANEL)
    assert cite.startswith("Panel B of Figure 3 from EGFR in lung cancer") and "PMC1" in cite


def test_the_matched_panel_travels_with_the_detail_view_in_the_url():
    state = c.ViewState(q="survival", fig=7, panel=2)
    params = state.to_params()
    assert params["panel"] == "2"
    assert c.ViewState.from_params(params) == state
    # a panel without its figure means nothing and is left out of links
    assert "panel" not in c.ViewState(q="survival", panel=2).to_params()
