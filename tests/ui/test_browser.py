"""End to end in a real browser: headless Chromium (Debian's) -> Streamlit UI -> API -> index.

Both servers run on loopback over the small real index. Screenshots land in the test's tmp dir
and, when ``FIGSEARCH_SCREENSHOT_DIR`` is set, are copied there (for the README).
"""

from __future__ import annotations

import csv
import os
import re
import shutil
from pathlib import Path

import pytest

from figsearch.client import FigSearchClient
from tests.ui.servers import streamlit_server

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update"]
TIMEOUT_MS = 60_000


@pytest.fixture()
def browser_page():
    from playwright.sync_api import expect, sync_playwright

    # expect() waits 5 s by default, apart from the page's timeout: a Streamlit rerun on a
    # loaded 2-core machine took longer (the app still "Running..." when it gave up)
    expect.set_options(timeout=TIMEOUT_MS)
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (`make browser`)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1100})
        page.set_default_timeout(TIMEOUT_MS)
        yield page
        browser.close()


def _shoot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    page.get_by_role("heading", name="figsearch").scroll_into_view_if_needed()
    page.screenshot(path=str(path))
    target = os.environ.get("FIGSEARCH_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)
    return path


def _wait_for_images(page, selector: str) -> None:
    """Wait until the first image matching ``selector`` has really loaded (from the API)."""
    page.wait_for_function(
        "sel => { const i = document.querySelector(sel); return i && i.complete && i.naturalWidth > 0 }",
        arg=selector,
    )


def test_search_filter_detail_and_upload_in_a_browser(api_url, browser_page, tmp_path, shared_data):
    from playwright.sync_api import expect

    page = browser_page
    client = FigSearchClient(api_url)
    real = client.search("pathway", k=1, mode="keyword")["results"][0]  # a real PMC figure
    with streamlit_server(api_url, tmp_path / "streamlit.log") as ui_url:
        page.goto(ui_url)
        expect(page).to_have_title("figsearch")

        # A text query: cards with highlighted captions and thumbnails served by the API.
        box = page.get_by_label("Describe a figure")
        box.fill("pathway")
        box.press("Enter")
        expect(page).to_have_url(re.compile(r"[?&]q=pathway"))
        expect(page.locator(".fs-card").first).to_be_visible()
        expect(page.locator(".fs-caption mark").first).to_have_text(re.compile("pathway", re.I))
        assert page.locator(".fs-card img.fs-thumb").first.get_attribute("src").startswith(api_url)
        _wait_for_images(page, ".fs-card img.fs-thumb")
        with page.expect_download() as download:
            page.get_by_role("button", name="⬇ CSV").click()
        rows = list(csv.DictReader(open(download.value.path(), encoding="utf-8")))
        shown = page.locator(".fs-card").count()
        assert len(rows) == shown and rows[0]["rank"] == "1" and rows[0]["caption"]
        _shoot(page, tmp_path, "ui-results")

        # The detail view of a real figure: large image, attribution, PMC links.
        page.locator(f".st-key-detail_{real['id']} button").click()
        expect(page).to_have_url(re.compile(rf"[?&]fig={real['id']}\b"))
        dialog = page.get_by_role("dialog")
        expect(dialog.get_by_text("Attribution", exact=True).first).to_be_visible()
        link = dialog.get_by_role("link", name="Article in PMC")
        expect(link).to_have_attribute("href", real["article_url"])
        assert "pmc.ncbi.nlm.nih.gov/articles/PMC" in real["article_url"]
        expect(dialog.get_by_text(f"PMCID {real['pmcid']}").first).to_be_visible()
        # the ready-to-copy credit names the figure, its article and where to find it
        credit = dialog.locator("[data-testid=stCode]").first
        expect(credit).to_contain_text(real["pmcid"])
        expect(credit).to_contain_text(real["label"])
        _wait_for_images(page, "[role=dialog] [data-testid=stImage] img")
        _shoot(page, tmp_path, "ui-detail")

        # Browser back returns to the grid (the view lives in the URL).
        page.go_back()
        expect(page).not_to_have_url(re.compile(r"fig="))
        expect(page.get_by_role("dialog")).to_have_count(0)
        expect(page.locator(".fs-card").first).to_be_visible()
        page.go_forward()  # ... and forward opens the figure again
        expect(page.get_by_role("dialog").get_by_text("Attribution", exact=True).first).to_be_visible()
        page.keyboard.press("Escape")
        expect(page.get_by_role("dialog")).to_have_count(0)
        expect(page).not_to_have_url(re.compile(r"fig="))

        # A filter: commercial-use licenses only -> only green license badges.
        assert page.locator(".fs-lic-nc").count() > 0
        page.get_by_text("Commercial-use licenses only").click()
        expect(page).to_have_url(re.compile(r"commercial=1"))
        expect(page.locator(".fs-lic-nc")).to_have_count(0)
        expect(page.locator(".fs-lic-ok").first).to_be_visible()

        # Drop an image: results are figures that look like it.
        image = shared_data / "pmc-figures" / "images"
        first_image = sorted(image.iterdir())[0]
        page.locator("input[type=file]").set_input_files(str(first_image))
        expect(page.get_by_text(f"Figures similar to your image {first_image.name}")).to_be_visible()
        expect(page.locator(".fs-card").first).to_be_visible()
        _wait_for_images(page, ".fs-card img.fs-thumb")
        _shoot(page, tmp_path, "ui-image-search")


def test_why_it_matched_and_the_weak_match_notice_in_a_browser(api_url, browser_page, tmp_path):
    from urllib.parse import quote

    from playwright.sync_api import expect

    page = browser_page
    client = FigSearchClient(api_url)
    weak = client.search("football league pathway standings", k=24)
    strong = client.search("TREM2 lipoprotein ligands", k=24)
    assert weak["match_quality"] == "weak" and strong["match_quality"] == "strong"
    with streamlit_server(api_url, tmp_path / "streamlit.log") as ui_url:
        page.goto(f"{ui_url}/?q={quote('TREM2 lipoprotein ligands')}")
        why = page.locator(".fs-why").first
        expect(why).to_be_visible()
        expect(why).to_contain_text(re.compile(r"why: keyword \d\.\d\d \(.*TREM2"))
        expect(page.get_by_text("No strong match")).to_have_count(0)
        page.goto(f"{ui_url}/?q={quote('football league pathway standings')}")
        notice = page.get_by_text("No strong match for “football league pathway standings”")
        expect(notice).to_be_visible()
        expect(page.locator(".fs-card")).to_have_count(len(weak["results"]))  # still listed
        _shoot(page, tmp_path, "ui-weak-match")
        _panel_result_and_its_citation(page, ui_url, client, tmp_path)


PANEL_QUERY = "blocking the PD-1 checkpoint so effector T cells attack infected glia"


def _panel_result_and_its_citation(page, ui_url: str, client: FigSearchClient,
                                   tmp_path: Path) -> None:
    """A query about one panel of a real compound figure (PMC6479336 Fig. 1, panel B below
    panel A): the card outlines panel B on the figure and names it with its sub-caption; the
    detail view keeps the outline and offers the panel's own credit line."""
    from urllib.parse import quote

    from playwright.sync_api import expect

    top = client.search(PANEL_QUERY, k=5, mode="keyword")["results"][0]
    assert top["panel"]["letter"] == "B", top["panel"]
    page.goto(f"{ui_url}/?q={quote(PANEL_QUERY)}&mode=keyword")
    card = page.locator(".fs-card").first
    expect(card.locator(".fs-panel")).to_contain_text("Panel B: (B) Blocking the PD-1")
    rect = card.locator("svg.fs-panelsvg rect.fs-panelbox")
    x0, y0, x1, y1 = top["panel"]["box"]
    expect(rect).to_have_attribute("y", str(y0))
    expect(rect).to_have_attribute("height", str(y1 - y0))
    # the outline sits on the lower part of the rendered figure, where panel B is
    shown = card.locator("svg.fs-panelsvg").bounding_box()
    outline = rect.bounding_box()
    assert outline["y"] > shown["y"] + 0.2 * shown["height"], (outline, shown)
    _shoot(page, tmp_path, "ui-panel")
    page.locator(f".st-key-detail_{top['id']} button").click()
    expect(page).to_have_url(re.compile(rf"[?&]fig={top['id']}&panel=2|[?&]panel=2.*fig="))
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_text("Matched: Panel B")).to_be_visible()
    expect(dialog.locator("svg.fs-panelsvg rect.fs-panelbox")).to_have_count(1)
    cite = dialog.locator("[data-testid=stCode]").first
    expect(cite).to_contain_text(f"Panel B of {top['label']}")
    expect(cite).to_contain_text(top["pmcid"])
    _shoot(page, tmp_path, "ui-panel-detail")
