"""The JATS parser on real PMC/PLOS/eLife XML and on hand-written edge cases."""

from __future__ import annotations

import json
import zipfile

import pytest

from indexer.jats import JatsError, normalise_pmcid, parse_article, resolve_graphic

NXML_FIGURES = {
    "1471-2180-11-174.nxml": 4, "1472-6831-8-11.nxml": 0, "6605965a.nxml": 0,
    "ehp-116-1694.nxml": 3, "mds526.nxml": 2, "pntd.0002065.nxml": 1,
    "pone.0000217.nxml": 3, "pone.0046493.nxml": 4,
}


def _fig(article, fig_id):
    return next(f for f in article.figures if f.fig_id == fig_id)


def test_pmc_nxml_figure_counts_and_metadata(shared_data):
    counts = {}
    for name in NXML_FIGURES:
        counts[name] = len(parse_article((shared_data / "jats/pmc-nxml" / name).read_bytes()).figures)
    assert counts == NXML_FIGURES
    assert sum(counts.values()) == 17
    art = parse_article((shared_data / "jats/pmc-nxml/1471-2180-11-174.nxml").read_bytes())
    assert (art.pmcid, art.pmid, art.doi) == ("PMC3166277", "21810267", "10.1186/1471-2180-11-174")
    assert art.journal == "BMC Microbiology" and art.year == 2011
    assert art.license_url == "http://creativecommons.org/licenses/by/2.0"
    assert art.key("fallback") == "PMC3166277"
    f3 = _fig(art, "F3")
    assert f3.label == "Figure 3"
    # The λ entity survives as a character; inline markup is flattened.
    assert f3.caption.startswith("Factors influencing λ lysis time stochasticity. (A) Effect of")
    assert f3.href == "1471-2180-11-174-3"


def test_public_domain_and_noncommercial_licenses(shared_data):
    ehp = parse_article((shared_data / "jats/pmc-nxml/ehp-116-1694.nxml").read_bytes())
    assert ehp.license_url == "http://creativecommons.org/publicdomain/mark/1.0/"
    assert "public domain" in ehp.license_text
    assert _fig(ehp, "f2-ehp-116-1694").caption.startswith(
        "Dietary exposure to PBDE-47 altered relative transcripts levels for TSHβ (A) and GPHα (B)"
    )
    mds = parse_article((shared_data / "jats/pmc-nxml/mds526.nxml").read_bytes())
    assert mds.license_url == "http://creativecommons.org/licenses/by-nc/3.0"
    assert _fig(mds, "MDS526F1").label == "Figure 1."


def test_elife_caption_title_and_paragraphs(shared_data):
    with zipfile.ZipFile(shared_data / "jats/packages/elife-05-19405.zip") as zf:
        art = parse_article(zf.read("elife-19405.xml"))
    assert art.pmcid is None and art.key("x") == "doi:10.7554/eLife.19405"
    assert (art.journal, art.year, art.title) == ("eLife", 2016, "Cellular fingers take hold")
    [fig] = art.figures  # the boxed-text <inline-graphic> is not a figure
    assert fig.label == "Figure 1."
    assert fig.caption.startswith(
        "Membrane invaginations and cell division. Schematic diagram showing two neighboring "
        "cells in the developing embryo of a sea squirt. (A) Before the cells divide"
    )
    assert fig.href == "elife-19405-fig1"


def test_figure_without_label_keeps_caption_only(shared_data):
    with zipfile.ZipFile(shared_data / "jats/packages/elife-00353-vor-v1-20121213000000.zip") as zf:
        art = parse_article(zf.read("elife-00353-v1.xml"))
    [fig] = art.figures
    assert fig.label == ""
    # <attrib> is not part of the caption.
    assert fig.caption == (
        "This illustration of Eve Marder in her office at Brandeis was drawn by her nephew "
        "Ben Marder."
    )


def test_mathml_text_is_kept(shared_data):
    art = parse_article((shared_data / "jats/plos/journal.pcbi.1004113.xml").read_bytes())
    fig = _fig(art, "pcbi.1004113.g003")
    assert fig.label == "Fig 3"
    assert "the estimators n̂0 are linear functions of α, whereas the estimators μ̂ are" in fig.caption
    assert "  " not in fig.caption and "\n" not in fig.caption


def test_plos_corpus_has_683_figures(shared_data):
    total = sum(len(parse_article(p.read_bytes()).figures)
                for p in (shared_data / "jats/plos").glob("*.xml"))
    assert total == 683


EDGE = b"""<?xml version="1.0"?>
<article xmlns:xlink="http://www.w3.org/1999/xlink" xmlns:mml="http://www.w3.org/1998/Math/MathML"
  xmlns:ali="http://www.niso.org/schemas/ali/1.0">
<front><journal-meta><journal-title-group><journal-title>Test J</journal-title></journal-title-group></journal-meta>
<article-meta>
  <article-id pub-id-type="pmcid">pmc0042</article-id>
  <title-group><article-title>Edge <italic>cases</italic></article-title></title-group>
  <pub-date pub-type="collection"><year>2001</year></pub-date>
  <pub-date pub-type="epub"><day>1</day><month>2</month><year>2000</year></pub-date>
  <permissions><license><ali:license_ref>https://creativecommons.org/licenses/by-sa/4.0/</ali:license_ref>
  <license-p>Some   license
  text.</license-p></license></permissions>
</article-meta></front>
<body>
<fig-group id="g1"><caption><p>Group caption</p></caption>
  <fig id="f1"><label>Figure 1A</label><caption><p>Panel <bold>one</bold>.</p></caption>
    <graphic xlink:href="img/F1A"/></fig>
  <fig id="f1"><label>Figure 1B</label><caption><title>Second</title><p>with
   <inline-formula><alternatives><mml:math><mml:mi>x</mml:mi><mml:mo>=</mml:mo><mml:mn>2</mml:mn></mml:math>
   <tex-math>x=2</tex-math></alternatives></inline-formula> and &#x3b1;.</p></caption></fig>
</fig-group>
<fig><caption><p>No id</p></caption><graphic xlink:href="c.GIF"/></fig>
</body></article>"""


def test_fig_group_ids_mathml_alternatives_and_metadata():
    art = parse_article(EDGE)
    assert [f.fig_id for f in art.figures] == ["f1", "f1-2", "fig3"]
    assert [f.label for f in art.figures] == ["Figure 1A", "Figure 1B", ""]
    assert art.figures[0].caption == "Panel one."
    assert art.figures[1].caption == "Second with x=2 and α."
    assert art.figures[1].href is None
    assert (art.pmcid, art.year, art.title, art.journal) == ("PMC0042", 2000, "Edge cases", "Test J")
    assert art.license_url == "https://creativecommons.org/licenses/by-sa/4.0/"
    assert art.license_text == "Some license text."


def test_synthetic_conventions():
    truth = {"type": "bar chart", "attributes": {"bars": 4, "colour": "red"}}
    xml = f"""<article><front><article-meta>
      <article-id pub-id-type="other">SYNTH-7-12</article-id>
      <custom-meta-group><custom-meta><meta-name>figsearch-source</meta-name>
      <meta-value>synthetic</meta-value></custom-meta></custom-meta-group></article-meta></front>
      <body><fig id="fig1"><object-id pub-id-type="figsearch-truth">{json.dumps(truth)}</object-id>
      <label>Figure 1</label><caption><p>A bar chart.</p></caption></fig></body></article>"""
    art = parse_article(xml.encode())
    assert art.synthetic and art.key("x") == "synthetic:SYNTH-7-12"
    assert art.figures[0].attributes == truth
    assert art.figures[0].caption == "A bar chart."


XXE = b"""<?xml version="1.0"?>
<!DOCTYPE article [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<article><body><fig><caption><p>&xxe;</p></caption></fig></body></article>"""

LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<article><body><p>&lol3;</p></body></article>"""


HIDDEN = b"""<!DOCTYPE x [<!-- <article --> <!ENTITY a "b">]><article><body>&a;</body></article>"""


@pytest.mark.parametrize("payload", [XXE, LAUGHS, HIDDEN], ids=["xxe", "billion-laughs", "hidden"])
def test_hostile_entities_are_refused(payload):
    with pytest.raises(JatsError, match="declares its own entities"):
        parse_article(payload)


@pytest.mark.parametrize("payload, reason", [
    (b"", "empty XML"),
    (b"<article><body><fig>", "malformed XML"),
    (b"<html><body/></html>", "not a JATS <article>"),
])
def test_bad_documents_say_what_is_wrong(payload, reason):
    with pytest.raises(JatsError, match=reason):
        parse_article(payload)


def test_resolve_graphic_variants():
    names = ["PMC1/a-g001.TIF", "PMC1/b.jpeg", "content/c_fig1.tif", "PMC1/a-g001.pdf", "x.png"]
    assert resolve_graphic("a-g001", names) == "PMC1/a-g001.TIF"  # no extension, any case
    assert resolve_graphic("PMC1/b.jpeg", names) == "PMC1/b.jpeg"
    assert resolve_graphic("b", names) == "PMC1/b.jpeg"  # by basename
    assert resolve_graphic("c_fig1.tif", names) == "content/c_fig1.tif"
    assert resolve_graphic("X.PNG", names) == "x.png"
    assert resolve_graphic("missing", names) is None
    assert resolve_graphic(None, names) is None


def test_normalise_pmcid():
    assert normalise_pmcid("3166277") == "PMC3166277"
    assert normalise_pmcid(" pmc3166277 ") == "PMC3166277"
    assert normalise_pmcid("PMC-x") is None


def test_license_url_only_inside_the_license_text():
    xml = b"""<article xmlns:xlink="http://www.w3.org/1999/xlink"><front><article-meta>
      <permissions><license license-type="open-access"><license-p>Distributed under
      <ext-link ext-link-type="uri" xlink:href="http://creativecommons.org/licenses/by-nc-nd/4.0/">
      this license</ext-link>.</license-p></license></permissions></article-meta></front></article>"""
    art = parse_article(xml)
    assert art.license_url == "http://creativecommons.org/licenses/by-nc-nd/4.0/"
    assert art.license_text == "Distributed under this license."


def test_named_entities_of_the_external_dtd_become_characters():
    xml = (b'<!DOCTYPE article PUBLIC "-//NLM//DTD JATS (Z39.96) Journal Archiving and Interchange '
           b'DTD v1.1 20151215//EN" "JATS-archivearticle1.dtd"><article><body><fig id="f">'
           b'<caption><p>TGF&beta;&nbsp;signalling &ndash; 5&thinsp;&micro;m &#945;</p></caption>'
           b'</fig></body></article>')
    assert parse_article(xml).figures[0].caption == "TGFβ signalling – 5 µm α"
