"""Compound figures split into panels (figsearch.panels) on real PMC / eLife figures from
../shared/data and on a drawn grid: boxes, letters, sub-captions and their alignment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from figsearch.panels import (
    LayoutParams,
    Panel,
    SubCaption,
    align,
    detect_panels,
    iou,
    reading_order,
    split_caption,
)


def _pmc(shared_data: Path, image_name: str) -> tuple[Image.Image, str]:
    """A real PMC figure and its caption from pmc-figures/figures.jsonl."""
    for line in (shared_data / "pmc-figures" / "figures.jsonl").open():
        row = json.loads(line)
        if row["image"] == f"images/{image_name}":
            return Image.open(shared_data / "pmc-figures" / row["image"]).convert("RGB"), row["caption"]
    raise AssertionError(f"{image_name} not in figures.jsonl")


def _elife_caption(shared_data: Path, fig_id: str) -> str:
    """A caption of the unpacked eLife article, read as the ingest reads JATS captions."""
    from lxml import etree

    from indexer.jats import caption_text

    tree = etree.parse(str(shared_data / "jats" / "packages" / "elife-32671" / "manuscript.xml"))
    fig = next(f for f in tree.iter("{*}fig") if f.get("id") == fig_id)
    return caption_text(next(fig.iter("{*}caption")))


def _expected(subs: list[SubCaption]) -> int:
    return max(1, len({c for s in subs for c in s.letters}))


def _matches(found: list[Panel], truth: list[tuple[int, int, int, int]]) -> bool:
    """Every true box has a found box at IoU >= 0.5 and nothing else was found."""
    return len(found) == len(truth) and all(
        max(iou(p.box, t) for p in found) >= 0.5 for t in truth)


# -- real compound figures ---------------------------------------------------------------------
def test_two_panel_figure_splits_with_letters_and_subcaptions(shared_data):
    """PMC6479336 Fig. 1: (A) above (B), two framed diagrams; each panel gets its own part."""
    image, caption = _pmc(shared_data, "PMC6479336__ijms-20-01677-g001.jpg")
    subs = split_caption(caption)
    assert [s.letters for s in subs] == [(), ("A",), ("B",)]
    assert subs[0].text.startswith("Glial cell modulation of T lymphocytes")
    panels = align(detect_panels(image, expected=_expected(subs)), subs)
    # boxes measured by eye on the image (bench/eval/panels.jsonl)
    assert _matches(panels, [(11, 10, 776, 421), (11, 450, 776, 863)])
    assert [p.letter for p in panels] == ["A", "B"]
    assert panels[0].subcaption is not None and panels[1].subcaption is not None
    assert panels[0].subcaption.text.startswith("(A) Engagement of the PD-1 receptor")
    assert panels[1].subcaption.text.startswith("(B) Blocking the PD-1: PD-L1")
    assert caption[slice(*panels[1].subcaption.span)] == panels[1].subcaption.text


def test_three_columns_split_by_layout_alone(shared_data):
    """PMC5835104 Fig. 2: three IPA networks side by side split without the caption's help."""
    image, caption = _pmc(shared_data, "PMC5835104__fgene-09-00061-g002.jpg")
    panels = detect_panels(image)
    assert _matches(panels, [(1, 1, 232, 296), (234, 1, 476, 296), (478, 1, 753, 296)])
    aligned = align(panels, split_caption(caption))
    assert [p.letter for p in aligned] == ["A", "B", "C"]
    assert aligned[2].subcaption is not None
    assert aligned[2].subcaption.text.startswith("(C) Filtering of the data")


def test_five_panel_grid_aligns_every_letter(shared_data):
    """PMC5781259 Fig. 2: a Venn diagram, a schema, two networks and a pathway (2 + 2 + 1)."""
    image, caption = _pmc(shared_data, "PMC5781259__sys0011821630002.jpg")
    subs = split_caption(caption)
    assert [s.letters for s in subs if s.letters] == [("A",), ("B",), ("C",), ("D",), ("E",)]
    panels = align(detect_panels(image, expected=_expected(subs)), subs)
    truth = [(0, 0, 419, 216), (470, 2, 711, 222), (0, 243, 377, 656), (404, 240, 760, 641),
             (0, 677, 701, 1033)]
    assert _matches(panels, truth)
    assert [p.letter for p in panels] == ["A", "B", "C", "D", "E"]
    starts = [p.subcaption.text[:12] for p in panels if p.subcaption is not None]
    assert starts == ["(A) Venn dia", "(B) Schemati", "(C) Virus-(H", "(D) Analysis", "(E) The tran"]


def test_non_compound_figure_stays_one_panel(shared_data):
    """PMC6213986 Fig. 2: one pathway diagram (its "(i)", "(ii)" are not panels)."""
    image, caption = _pmc(shared_data, "PMC6213986__ijms-19-03266-g002.jpg")
    subs = split_caption(caption)
    assert [s.letters for s in subs] == [()]
    for panels in (detect_panels(image), detect_panels(image, expected=_expected(subs))):
        assert len(panels) == 1
        assert iou(panels[0].box, (0, 0, *image.size)) > 0.95
    whole = align(detect_panels(image), subs)
    assert whole[0].letter is None and whole[0].subcaption == subs[0]


def test_caption_without_letters_keeps_a_membrane_diagram_whole(shared_data):
    """PMC6556055 Fig. 10: the drawn cell membrane is a full-width line that layout alone cuts
    at; the caption names no panels, so the indexer's call keeps the figure whole."""
    image, caption = _pmc(shared_data, "PMC6556055__13046_2019_1255_Fig10_HTML.jpg")
    assert len(detect_panels(image)) > 1
    panels = detect_panels(image, expected=_expected(split_caption(caption)))
    assert len(panels) == 1 and iou(panels[0].box, (0, 0, *image.size)) > 0.95



# -- failure kinds of the X-Y cut, fixed with the caption's panel count and drawn letters ------
def test_touching_panels_are_cut_before_their_letter(shared_data):
    """PMC3594938 Fig. 5 (bench dev p011): panels B and C touch (a frame and a vertical
    "Merozoites" label, no white gutter); the cut goes just before C's drawn letter."""
    image, caption = _pmc(shared_data, "PMC3594938__fmicb-04-00035-g005.jpg")
    subs = split_caption(caption)
    panels = align(detect_panels(image, expected=_expected(subs)), subs)
    assert _matches(panels, [(14, 9, 304, 449), (317, 8, 565, 442), (574, 8, 758, 442)])
    assert [p.letter for p in panels] == ["A", "B", "C"]


def test_touching_panels_in_a_large_elife_figure(shared_data):
    """eLife 32671 Fig. 5 (bench dev p042): A (a drawing) touches B (traces) with no gutter,
    and C is three plots whose gutters are as wide as the ones between panels: A|B is cut at
    B's letter and C is kept whole because only its first plot carries a letter."""
    image = Image.open(shared_data / "jats" / "packages" / "elife-32671" / "fig5.jpg").convert("RGB")
    subs = split_caption(_elife_caption(shared_data, "fig5"))
    panels = detect_panels(image, expected=_expected(subs))
    assert _matches(panels, [(0, 0, 250, 358), (250, 0, 1500, 367), (0, 375, 1500, 733),
                             (0, 758, 650, 1233), (683, 758, 1500, 1260)])


def test_sparse_panel_is_not_split_at_its_inner_white_space(shared_data):
    """PMC3497051 Fig. 4 (bench dev p034): panel B is two rows of scattered shapes with a white
    band between them wider than the A|B gutter; the lower row has no panel letter, so it
    stays with B instead of becoming a third panel."""
    image, caption = _pmc(shared_data, "PMC3497051__viruses-04-02251-g004.jpg")
    subs = split_caption(caption)
    assert _expected(subs) == 2
    panels = detect_panels(image, expected=2)
    assert _matches(panels, [(16, 19, 772, 440), (16, 479, 772, 979)])


def test_heat_map_beside_a_network_keeps_its_gene_names(shared_data):
    """PMC4911353 Fig. 5 (bench dev p003): a narrow heat map (B) with its gene names beside a
    network (A); the gutters A|heat map and heat map|names are equally narrow, and the names
    must join the heat map, not the network."""
    image, caption = _pmc(shared_data, "PMC4911353__fimmu-07-00238-g005.jpg")
    panels = detect_panels(image, expected=_expected(split_caption(caption)))
    assert _matches(panels, [(1, 1, 534, 364), (538, 1, 660, 364)])

# -- captions ----------------------------------------------------------------------------------
def test_split_caption_real_ranges_and_styles(shared_data):
    """Ranges "(B–F)", "(C)-(E)", "(A~C)", bare "A)", "A.", Springer "a The", trailing "(a),"."""
    _img, c = _pmc(shared_data, "PMC6627039__cells-08-00559-g001.jpg")
    assert [s.letters for s in split_caption(c)] == [(), ("A",), ("B", "C", "D", "E", "F")]
    fig3 = split_caption(_elife_caption(shared_data, "fig3"))
    assert [s.letters for s in fig3 if s.letters] == [
        ("A",), ("B",), ("C", "D", "E"), ("F",), ("G",), ("H",)]
    b = next(s for s in fig3 if s.letters == ("B",))
    assert b.text.endswith("in (A).")  # a reference back to (A) is not a new sub-caption
    fig4 = split_caption(_elife_caption(shared_data, "fig4"))
    assert fig4[1].letters == ("A", "B", "C") and fig4[1].text.startswith("(A~C) Simultaneous")
    _img, c = _pmc(shared_data, "PMC2936296__1752-0509-4-117-2.jpg")
    assert [(s.letters, s.text[:10]) for s in split_caption(c)] == [
        ((), "The RIG-I "), (("A",), "A) KEGG pa"), (("B",), "B) A netwo"), (("C",), "C) A netwo")]
    _img, c = _pmc(shared_data, "PMC4484807__pone.0131459.g006.jpg")
    subs = split_caption(c)
    assert [s.letters for s in subs] == [("A",), ("B",)]  # "M. haemolytica" is not panel M
    assert subs[1].text.startswith("B. M. haemolytica")
    _img, c = _pmc(shared_data, "PMC6186045__12864_2018_5128_Fig5_HTML.jpg")
    assert [s.text[:5] for s in split_caption(c) if s.letters] == ["a The", "b cir"]
    _img, c = _pmc(shared_data, "PMC5359264__13637_2017_59_Fig3_HTML.jpg")
    trailing = {s.letters: s.text for s in split_caption(c)}
    assert trailing[("A",)].startswith("Using ReactomeFIViz") and trailing[("A",)].endswith("(a)")
    assert trailing[("B",)] == "can be detailed as a diagram showing all intermolecular relationships (b)"


def test_split_caption_spans_and_edge_cases():
    """Spans index the caption; fewer than two letters is no split; bad input is an error."""
    text = "Overview. (A and B) Maps of X. (C–E) Time courses; see (A). (F) Summary."
    subs = split_caption(text)
    assert [s.letters for s in subs] == [(), ("A", "B"), ("C", "D", "E"), ("F",)]
    assert all(text[s.span[0]:s.span[1]] == s.text for s in subs)
    assert split_caption("A single diagram of the (A) pathway.") == [
        SubCaption((), "A single diagram of the (A) pathway.", (0, 36))]
    assert split_caption("") == []
    # a range naming all panels, then each panel closing its own phrase (ROCO caption style)
    ranged = split_caption("(a–d) Blood flow of the popliteal artery (a), tibial arteries (b, c), "
                           "and foot arteries (d) was restored")
    assert [s.letters for s in ranged] == [("A",), ("B", "C"), ("D",)]
    assert ranged[1].text == "tibial arteries (b, c)"
    assert [s.letters for s in split_caption("(A–C) Three views of one cell.")] == [("A", "B", "C")]
    with pytest.raises(TypeError):
        split_caption(None)  # type: ignore[arg-type]


# -- a drawn grid ------------------------------------------------------------------------------
def _grid(rule: bool = False, frame: bool = False) -> tuple[Image.Image, list[tuple[int, int, int, int]]]:
    """A 2 x 3 grid of panels (line plots, boxes and text) 20 px apart on white; with ``rule``
    a grey rule runs down the middle of each column gutter; with ``frame`` a black frame
    surrounds the figure."""
    image = Image.new("RGB", (640, 420), "white")
    draw = ImageDraw.Draw(image)
    boxes = []
    for row in range(2):
        for col in range(3):
            x0, y0 = 20 + col * 205, 20 + row * 195
            x1, y1 = x0 + 185, y0 + 175
            boxes.append((x0, y0, x1, y1))
            draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline="black", width=2)
            draw.text((x0 + 6, y0 + 4), "ABCDEF"[row * 3 + col], fill="black")
            pts = [(x0 + 10 + i * 16, y1 - 20 - ((i * 37 + col * 11) % 120)) for i in range(11)]
            draw.line(pts, fill=(200, 30, 30), width=2)
            draw.rectangle([x0 + 120, y0 + 20, x0 + 170, y0 + 60], fill=(30, 90, 200))
    if rule:
        for gx in (215, 420):
            draw.line([(gx, 10), (gx, 410)], fill=(120, 120, 120), width=2)
    if frame:
        draw.rectangle([2, 2, 637, 417], outline="black", width=3)
    return image, boxes


@pytest.mark.parametrize("rule,frame", [(False, False), (True, False), (False, True)])
def test_drawn_grid_splits_exactly(rule, frame):
    image, boxes = _grid(rule, frame)
    panels = detect_panels(image)
    assert [p.box for p in panels] == boxes
    assert [p.box for p in detect_panels(image, expected=6)] == boxes


def test_letters_from_ocr_boxes_drive_alignment():
    """Single-letter OCR tokens at the panels' corners name them, even against reading order."""
    image, boxes = _grid()
    letters = "FEDCBA"  # the drawn grid labelled backwards
    ocr = [((b[0] + 4, b[1] + 2, b[0] + 14, b[1] + 14), letters[i]) for i, b in enumerate(boxes)]
    ocr.append(([[300, 200], [340, 200], [340, 212], [300, 212]], "STAT1"))  # not a letter
    panels = detect_panels(image, ocr_boxes=ocr)
    assert [p.letter for p in panels] == list(letters)
    subs = split_caption("(A) one. (B) two. (C) three. (D) four. (E) five. (F) six.")
    aligned = align(panels, subs)
    assert aligned[0].letter == "F" and aligned[0].subcaption is not None
    assert aligned[0].subcaption.text == "(F) six."


def test_reading_order_and_fallback_alignment():
    """Without letters panels take the caption's letters in rows top to bottom, left to right."""
    boxes = [(300, 10, 500, 200), (10, 220, 290, 400), (10, 10, 290, 200)]
    assert reading_order(boxes) == [(10, 10, 290, 200), (300, 10, 500, 200), (10, 220, 290, 400)]
    subs = split_caption("Intro. (A) a. (B–C) b and c.")
    aligned = align([Panel(b) for b in boxes], subs)
    assert [(p.box, p.letter) for p in aligned] == [
        ((10, 10, 290, 200), "A"), ((300, 10, 500, 200), "B"), ((10, 220, 290, 400), "C")]
    assert aligned[2].subcaption is not None and aligned[2].subcaption.letters == ("B", "C")


def test_bad_inputs_are_clear_errors():
    with pytest.raises(TypeError, match="PIL image"):
        detect_panels("figure.png")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="too small"):
        detect_panels(Image.new("RGB", (1, 1)))
    with pytest.raises(ValueError, match=">= 0"):
        detect_panels(Image.new("RGB", (50, 50), "white"), expected=-1)
    with pytest.raises(ValueError, match="4 numbers"):
        detect_panels(_grid()[0], ocr_boxes=[((1, 2, 3), "A")])
    blank = detect_panels(Image.new("RGB", (80, 60), "white"), params=LayoutParams())
    assert [p.box for p in blank] == [(0, 0, 80, 60)]


def test_a_panel_may_fall_short_of_the_whole_caption_by_the_margin_and_still_be_named():
    """The whole caption holds every panel's words, so a query written about one panel rarely
    beats it outright; ``panel_margin`` lets the best sub-caption win when it is close."""
    from figsearch.panel_index import choose_text_panel

    caption = ("Kinase signalling. (A) Western blot of phosphorylated ERK in treated cells. "
               "(B) Kaplan-Meier survival of EGFR-mutant patients after gefitinib.")
    panels = align([Panel((0, 0, 100, 100)), Panel((110, 0, 210, 100))], split_caption(caption))
    query = "survival curve EGFR mutant lung cancer gefitinib"
    figure = {"caption": caption}
    # the sub-caption of B is 0.05 short of the whole caption (cosine + word share)
    cosines, whole = {1: 0.20, 2: 0.55}, 0.60
    assert choose_text_panel(query, figure, panels, cosines, whole) is None
    named = choose_text_panel(query, figure, panels, cosines, whole, margin=0.2)
    assert named is not None and named.letter == "B" and named.signal == "caption"
    # a margin never names a panel far behind the whole caption
    assert choose_text_panel(query, figure, panels, {1: 0.2, 2: 0.3}, 0.6, margin=0.2) is None
