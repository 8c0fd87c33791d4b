"""Why a result matched, and whether a query matched anything well (issue 26).

Per hit, :class:`HitSignal` lists each signal's share of the hit's score - for the default
``hybrid`` mode the parts :func:`figsearch.fusion.fuse` summed (``contribution`` = ``weight`` x
``normalised``, so the contributions add up to the hit's ``score``), for a single-signal mode
the one signal whose score the hit's score is - with the evidence behind it:

* ``keyword`` - which fields matched (``caption``, ``label``, ``title``, ``ocr`` = the words
  read inside the figure) with the words they matched, as written there, and the query's words
  that matched anywhere;
* ``caption`` - the cosine of the query to the caption, and the caption's sentence window that
  matched best when the caption index has passages and a passage beat the whole caption;
* ``dense`` - the cosine of the query to the figure's image embedding.

Explanations are computed for the page's hits only (their own text and a few exact vector
products), never for the candidate lists.

Per query, :func:`assess` says whether its best matches are ``strong``, ``weak`` or ``none`` (no
results), so a query the collection cannot answer ("chocolate cake recipe") says so instead of
presenting its nearest noise as results. It looks at two page-independent pieces of evidence:
the best caption cosine over the (filtered) collection, and the share of the query's words the
best keyword (BM25) match holds. A query is strong when either reaches its threshold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from figsearch.fusion import SignalPart
from figsearch.keyword_index import matched_words, query_terms

#: The keyword fields an explanation names, with the figure row's key of each.
KEYWORD_FIELDS = (("caption", "caption"), ("label", "label"), ("title", "title"),
                  ("ocr", "ocr_text"))

# Calibrated on the dev split of the real-figure queries (bench/eval/queries.jsonl) against the
# off-topic queries (bench/eval/offtopic.jsonl) by
#   python -m bench.weak_match --data-dir /work/eval-data --out bench/results/weak_match_eval.json
# (the centre of the dev plateau of balanced accuracy). Dev: 149/149 real queries strong,
# 20/20 off-topic weak; test: 144/145 real strong (the one weak: q176, "brominated flame
# retardant diet lowers plasma thyroxine in fish"), 20/20 off-topic weak.
#: A query is strong when some caption is at least this close to it in meaning (cosine of the
#: caption encoder, all-MiniLM-L6-v2: the real queries' best captions are mostly 0.5-0.9, the
#: off-topic queries' 0.2-0.4).
STRONG_CAPTION_COSINE = 0.43
#: ... or when the best keyword match holds at least this share of the query's words.
STRONG_KEYWORD_COVERAGE = 0.67
QUALITIES = ("strong", "weak", "none")


@dataclass
class HitSignal:
    """One signal's part in one hit's score, with what it matched (see the module doc)."""

    name: str
    raw: float
    contribution: float
    weight: float | None = None
    normalised: float | None = None
    rank: int | None = None
    fields: dict[str, list[str]] = field(default_factory=dict)
    terms: list[str] = field(default_factory=list)
    passage: str | None = None

    @classmethod
    def from_part(cls, part: SignalPart) -> HitSignal:
        """The explanation of one fused part (evidence added later)."""
        return cls(part.name, part.raw, part.contribution, part.weight, part.normalised,
                   part.rank)

    def as_dict(self) -> dict[str, Any]:
        """The API's JSON of this signal (scores rounded to 6 places, as the hit's score)."""
        return {"name": self.name, "raw": _rounded(self.raw, 6),
                "normalised": _rounded(self.normalised, 6), "weight": _rounded(self.weight, 6),
                "contribution": _rounded(self.contribution, 6),
                "rank": self.rank, "fields": self.fields, "terms": self.terms,
                "passage": self.passage}


def _rounded(value: float | None, places: int) -> float | None:
    """A score for the API's JSON (None stays None)."""
    return None if value is None else round(float(value), places)


def keyword_evidence(query: str, figure: dict[str, Any]) -> tuple[dict[str, list[str]], list[str]]:
    """(field -> the words it matched, as written there; the query's words that matched
    anywhere, as typed), by the keyword index's own analysis (stems, folded diacritics, no
    stopwords)."""
    terms = set(query_terms(query))
    typed = matched_words(query, terms)
    fields: dict[str, list[str]] = {}
    found: set[str] = set()
    for name, key in KEYWORD_FIELDS:
        words = matched_words(str(figure.get(key) or ""), terms)
        if words:
            fields[name] = list(words.values())
            found |= words.keys()
    return fields, [word for stem, word in typed.items() if stem in found]


def keyword_coverage(query: str, figure: dict[str, Any] | None) -> float:
    """The share of the query's search terms that occur in the figure's keyword text."""
    terms = set(query_terms(query))
    if not terms or figure is None:
        return 0.0
    text = "\n".join(str(figure.get(key) or "") for _, key in KEYWORD_FIELDS)
    return len(matched_words(text, terms)) / len(terms)


@dataclass
class MatchQuality:
    """How well a query's best matches answer it, the evidence, and a note for people."""

    quality: str  # strong | weak | none
    caption_cosine: float | None = None
    keyword_coverage: float | None = None
    note: str = ""

    def evidence(self) -> dict[str, float | None]:
        """The API's ``match_evidence`` object."""
        return {"caption_cosine": _rounded(self.caption_cosine, 4),
                "keyword_coverage": _rounded(self.keyword_coverage, 4)}


def assess(query: str, found: bool, caption_cosine: float | None,
           coverage: float | None) -> MatchQuality:
    """``strong`` when the best caption is close in meaning (:data:`STRONG_CAPTION_COSINE`) or
    the best keyword match holds most query words (:data:`STRONG_KEYWORD_COVERAGE`); ``none``
    when nothing was ``found`` (no results on any page); else ``weak``, with a note."""
    if not found:
        return MatchQuality("none", caption_cosine, coverage, f"No figures match “{query}”.")
    strong = (caption_cosine is not None and caption_cosine >= STRONG_CAPTION_COSINE) or \
        (coverage is not None and coverage >= STRONG_KEYWORD_COVERAGE)
    if strong:
        return MatchQuality("strong", caption_cosine, coverage)
    why = []
    if caption_cosine is not None:
        why.append(f"no caption is close in meaning (best similarity {caption_cosine:.2f})")
    why.append("no figure holds any of its words" if coverage is None else
               f"the best keyword match holds {coverage:.0%} of its words")
    note = (f"No strong match for “{query}”: " + " and ".join(why)
            + ". The figures below are the nearest there are.")
    return MatchQuality("weak", caption_cosine, coverage, note)
