"""The Streamlit app driven by ``AppTest`` against a real API over a small real index.

Every test talks to a real uvicorn server on loopback (``api_url`` fixture); what the app shows
is compared with what the API answers for the same request.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from figsearch.client import FigSearchClient, FigSearchError
from tests.ui.servers import free_port

APP = str(Path(__file__).resolve().parents[2] / "ui" / "app.py")


@pytest.fixture()
def app(api_url, monkeypatch):
    """A fresh AppTest of ui/app.py pointed at the real API, with empty caches."""
    monkeypatch.setenv("FIGSEARCH_API_URL", api_url)
    st.cache_data.clear()
    return AppTest.from_file(APP, default_timeout=60)


@pytest.fixture(scope="module")
def client(api_url):
    return FigSearchClient(api_url)


def run_with(at: AppTest, **params: str) -> AppTest:
    for key, value in params.items():
        at.query_params[key] = value
    at.run()
    assert not at.exception, at.exception
    return at


def cards(at: AppTest) -> list[str]:
    return [m.value for m in at.markdown if 'class="fs-card"' in m.value]


def card_ids(at: AppTest) -> list[int]:
    return [int(b.key.split("_")[1]) for b in at.button if b.key and b.key.startswith("detail_")]


def test_landing_page_offers_examples_and_no_error(app):
    run_with(app)
    assert [b.label for b in app.button][:3] == ["signalling pathway", "western blot", "survival curve"]
    assert not app.error and not cards(app)
    app.button(key="ex_signalling pathway").click().run()
    assert _param(app, "q") == "signalling pathway"
    assert cards(app)


def test_text_search_shows_the_api_results_in_order(app, client, api_url):
    expected = client.search("pathway", k=24)["results"]
    run_with(app, q="pathway")
    assert card_ids(app) == [r["id"] for r in expected]
    assert any("<mark>pathway</mark>" in card.lower() for card in cards(app))
    first = cards(app)[0]
    assert f'src="{api_url}/v1/figures/{expected[0]["id"]}/thumbnail"' in first
    assert expected[0]["label"] in first and str(expected[0]["year"]) in first
    assert {b.label for b in app.download_button} == {"⬇ CSV", "⬇ JSON"}
    assert any("Results 1–" in c.value for c in app.caption)


def test_typing_a_query_updates_the_url(app):
    run_with(app)
    app.text_input(key="q").set_value("apoptosis").run()
    assert list(app.query_params) == ["q"] and _param(app, "q") == "apoptosis"
    assert cards(app)


def test_mode_selector_and_no_results_message(app, client):
    run_with(app, q="apoptosis")
    app.segmented_control(key="mode").set_value("dense").run()
    assert _param(app, "mode") == "dense"
    assert card_ids(app) == [r["id"] for r in client.search("apoptosis", k=24, mode="dense")["results"]]
    app.query_params.clear()
    run_with(app, q="zzzqqxx nonexistentword", mode="keyword")
    assert app.segmented_control(key="mode").value == "keyword"
    assert not cards(app)
    assert any("No figures found" in i.value for i in app.info)


def test_commercial_filter_keeps_only_green_badges(app, client):
    run_with(app, q="pathway", k="48")
    everything = cards(app)
    assert any("fs-lic-nc" in card for card in everything)  # the fixture has cc-by-nc figures
    app.toggle(key="commercial").set_value(True).run()
    filtered = cards(app)
    expected = client.search("pathway", k=48, license="commercial")["results"]
    assert len(filtered) == len(expected) < len(everything)
    assert all("fs-lic-ok" in card and "fs-lic-nc" not in card for card in filtered)
    assert _param(app, "commercial") == "1"


def test_journal_and_type_pickers_come_from_facets(app, client):
    facets = client.facets()
    run_with(app, q="pathway")
    assert app.selectbox(key="journal").options[1:] == facets["journals"]
    kind = facets["figure_types"][0]
    app.selectbox(key="figure_type").set_value(kind).run()
    assert _param(app, "type") == kind
    shown = cards(app)
    assert len(shown) == len(client.search("pathway", k=24, figure_type=kind)["results"]) > 0
    assert all(f">{kind}<" in card for card in shown)
    app.selectbox(key="figure_type").set_value("").run()
    app.selectbox(key="journal").set_value("Viruses").run()
    assert cards(app) and all("Viruses" in card for card in cards(app))


def test_year_slider_filters_and_reaches_the_url(app, client):
    years = client.facets()["years"]
    run_with(app, q="pathway", k="96")
    app.slider(key="years").set_value((years["min"], 2015)).run()
    assert _param(app, "year_to") == "2015" and "year_from" not in app.query_params
    shown_years = [int(y) for card in cards(app) for y in re.findall(r"· (\d{4}) ·", card)]
    assert shown_years and max(shown_years) <= 2015


def test_paging_moves_the_offset(app, client):
    page2 = client.search("pathway", k=12, offset=12)["results"]
    run_with(app, q="pathway", k="12")
    app.button(key="next_page").click().run()
    assert _param(app, "page") == "2"
    assert card_ids(app) == [r["id"] for r in page2]
    assert any("Results 13–" in c.value for c in app.caption)


def test_similar_and_detail_from_a_result(app, client):
    run_with(app, q="pathway")
    fid = card_ids(app)[0]
    app.button(key=f"similar_{fid}").click().run()
    assert _param(app, "similar") == str(fid)
    source = client.figure(fid)
    assert any(f"similar to {source['label']} of “{source['title'].rstrip('.')}”" in i.value
               for i in app.info)
    expected = [r["id"] for r in client.similar(fid, k=24)["results"]]
    assert card_ids(app) == expected and fid not in expected
    other = expected[0]
    app.button(key=f"detail_{other}").click().run()
    assert _param(app, "fig") == str(other)
    figure = client.figure(other)
    assert {b.proto.url for b in app.link_button} >= {figure["article_url"], figure["figure_url"]}
    attribution = app.code[0].value
    label = (figure["label"] or "").strip() or "Figure"  # the figure's own label, e.g. "FIG 6"
    assert attribution.startswith(f"{label} from ") and f"PMCID {figure['pmcid']}" in attribution
    assert figure["title"].rstrip(".") in attribution
    assert app.image[0].value[0] == figure["image_url"]
    app.button(key="close_detail").click().run()
    assert "fig" not in app.query_params and card_ids(app) == expected


def test_a_link_reproduces_the_detail_view(app, client):
    fid = client.search("pathway", k=1)["results"][0]["id"]
    run_with(app, q="pathway", fig=str(fid))
    assert app.subheader[0].value == client.figure(fid)["label"]
    assert app.text_input(key="q").value == "pathway"


def test_back_and_forward_reload_the_view_from_the_url(app):
    run_with(app, q="pathway")
    app.text_input(key="q").set_value("apoptosis").run()
    app.query_params.clear()
    run_with(app, q="pathway", page="2", k="12")  # what the browser sends after "back"
    assert app.text_input(key="q").value == "pathway"
    assert app.select_slider(key="k").value == 12
    assert any("Results 13–" in c.value for c in app.caption)


def test_image_upload_searches_by_image(app, client, small_index_data_dir):
    image = next((small_index_data_dir / "images").rglob("*.jpg")).read_bytes()
    expected = [r["id"] for r in client.search_image(image, k=24)["results"]]
    run_with(app)
    app.file_uploader[0].set_value(("query.jpg", image, "image/jpeg")).run()
    assert not app.exception
    assert any("your image query.jpg" in i.value for i in app.info)
    assert card_ids(app) == expected


def test_back_to_a_text_search_drops_the_uploaded_image(app, small_index_data_dir):
    image = next((small_index_data_dir / "images").rglob("*.jpg")).read_bytes()
    run_with(app, q="pathway")
    app.file_uploader[0].set_value(("query.jpg", image, "image/jpeg")).run()
    assert "q" not in app.query_params and any("your image" in i.value for i in app.info)
    run_with(app, q="pathway")  # the browser's back button
    assert not app.info and app.text_input(key="q").value == "pathway"
    assert app.file_uploader[0].value is None and cards(app)


def test_api_refusals_are_shown_with_the_apis_message(app, client):
    too_long = "x" * 600
    with pytest.raises(FigSearchError) as refused:
        client.search(too_long)
    run_with(app, q=too_long)
    assert any(refused.value.message in e.value for e in app.error)
    app.query_params.clear()
    with pytest.raises(FigSearchError) as missing:
        client.figure(987654)
    run_with(app, q="pathway", fig="987654")
    assert any(missing.value.message in e.value for e in app.error)
    assert cards(app)  # the grid behind the dialog is still there


def test_refused_upload_shows_the_apis_message(app, client):
    with pytest.raises(FigSearchError) as refused:
        client.search_image(b"this is not an image", k=24)
    run_with(app)
    app.file_uploader[0].set_value(("fake.png", b"this is not an image", "image/png")).run()
    errors = [e.value for e in app.error]
    assert errors and refused.value.message in errors[0] and "image was refused" in errors[0]


def test_unreachable_api_is_reported(monkeypatch):
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("FIGSEARCH_API_URL", dead)
    st.cache_data.clear()
    at = AppTest.from_file(APP, default_timeout=60)
    run_with(at, q="pathway")
    assert any(dead in e.value and "unreachable" in e.value for e in at.error)


def _param(at: AppTest, name: str) -> str | None:
    value = at.query_params.get(name)
    return value[0] if isinstance(value, list) else value


def test_reusable_filter_and_the_detail_views_rights(app, client):
    """The "reusable" toggle asks the API for license=reusable; the detail view says how the
    figure may be reused and copies the API's own attribution (issue #26)."""
    run_with(app, q="pathway", k="48")
    app.toggle(key="reusable").set_value(True).run()
    assert _param(app, "reusable") == "1"
    expected = client.search("pathway", k=48, license="reusable")["results"]
    assert card_ids(app) == [r["id"] for r in expected] and expected
    fid = expected[0]["id"]
    app.button(key=f"detail_{fid}").click().run()
    figure = client.figure(fid)
    assert app.code[0].value == figure["attribution"]
    assert any(f"**Reuse:** {figure['reuse']}" == m.value for m in app.markdown)
    assert not app.exception  # the BibTeX / RIS downloads fetched their files


def test_cards_say_why_they_matched_and_a_weak_query_is_flagged(app, client):
    from figsearch.client import signals_line

    strong = client.search("TREM2 lipoprotein ligands", k=24)
    assert strong["match_quality"] == "strong"
    run_with(app, q="TREM2 lipoprotein ligands")
    assert not app.warning
    first = cards(app)[0]
    assert 'class="fs-why"' in first and html.escape(signals_line(strong["results"][0]["signals"])) in first
    assert "keyword" in first and "TREM2" in first
    # one word the figures use among words they do not: results, under a notice
    weak = client.search("football league pathway standings", k=24)
    assert weak["match_quality"] == "weak" and weak["results"]
    app.query_params.clear()
    run_with(app, q="football league pathway standings")
    assert [w.value for w in app.warning] == [weak["match_note"]]
    assert weak["match_note"].startswith("No strong match for “football league pathway standings”")
    assert card_ids(app) == [r["id"] for r in weak["results"]]


def test_a_pinned_link_shows_the_version_a_permalink_and_the_feed(app, client, api_url):
    """``version=`` in the URL pins the search; the toolbar's permalink pins the version that
    answered, and a text search offers the Atom feed of its new figures."""
    answer = client.search("pathway", k=24, mode="keyword")
    version = answer["index_version"]
    run_with(app, q="pathway", mode="keyword")
    links = " ".join(m.value for m in app.markdown if "Permalink" in m.value)
    assert f"version={version}" in links and "q=pathway" in links and "mode=keyword" in links
    assert f"({api_url}/v1/search.atom?q=pathway&mode=keyword" in links
    app.query_params.clear()
    run_with(app, q="pathway", mode="keyword", version=version)
    assert card_ids(app) == [r["id"] for r in answer["results"]]
    assert any(version in i.value for i in app.info)  # the pinned banner
    app.button(key="unpin_version").click().run()
    assert _param(app, "version") is None and card_ids(app)
    # a version the API does not keep: its own message, naming the kept ones
    with pytest.raises(FigSearchError) as refused:
        client.search("pathway", version="20000101T000000000000Z-000000")
    app.query_params.clear()
    run_with(app, q="pathway", version="20000101T000000000000Z-000000")
    assert any(refused.value.message in e.value for e in app.error)
