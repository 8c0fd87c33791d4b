"""Panel-level search: the panels of compound figures embedded and searched with the figures.

At index time (:mod:`indexer.panels`) every panel of a figure whose image splits into more than
one panel (:mod:`figsearch.panels`, boxes in the store's ``figure_panels``) is embedded twice:

- its *crop* by the image model, into ``<version>/panels/``;
- its *sub-caption* (``label. sub-caption (from: title)``, as :func:`caption_text`) by the
  caption encoder, into ``<version>/captions/panels/``; panels whose only text is the shared
  intro (no letter of their own) have none.

Both are SearchIndex directories keyed :func:`panel_key` (figure id × ``PANEL_SLOTS`` + the
panel's 1-based reading-order number, as :meth:`figsearch.store.FigureStore.figure_panels`
lists them). A version without them (built before panels, or without compound figures) loads
and searches as before.

At query time:

- an image query scores a figure as the best of its whole-image vector and its panel vectors
  (MaxP, :class:`PanelIndex`); a hit matched best by a panel carries that panel
  (:class:`PanelMatch`, signal ``image``);
- a text query's page hits whose figure is compound get the panel whose sub-caption matches
  the query best (:func:`choose_text_panel`), only when it matches better than the whole
  caption does, so a general query does not highlight an arbitrary panel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from figsearch.caption_index import CAPTIONS_DIR, MaxPIndex, part_keys
from figsearch.index import MANIFEST_FILE, SearchIndex

PANELS_DIR = "panels"  # in a version dir (crops) and in its captions dir (sub-captions)
#: Panel keys are ``figure id * PANEL_SLOTS + n`` (n = 1 .. PANEL_SLOTS - 1).
PANEL_SLOTS = 32
SIGNALS = ("image", "caption", "keyword")

Box = tuple[int, int, int, int]


def panel_key(figure_id: int, n: int) -> int:
    """The row id of a figure's n-th panel (n from 1, reading order)."""
    if not 1 <= n < PANEL_SLOTS:
        raise ValueError(f"panel number must be between 1 and {PANEL_SLOTS - 1}, got {n}")
    return int(figure_id) * PANEL_SLOTS + int(n)


@dataclass
class PanelMatch:
    """The panel of a hit that matched the query best."""

    number: int  # 1-based, reading order (as FigureStore.figure_panels returns them)
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in (stored) image pixels
    letter: str | None
    subcaption: str | None  # the sub-caption text (intro excluded)
    signal: str  # which evidence chose it: "image" | "caption" | "keyword"
    score: float

    def as_dict(self) -> dict[str, Any]:
        """Plain data (the API adds the crop URL)."""
        return {"number": self.number, "box": list(self.box), "letter": self.letter,
                "subcaption": self.subcaption, "signal": self.signal,
                "score": round(float(self.score), 6)}


class PanelIndex(MaxPIndex):
    """Whole-figure vectors plus panel vectors (:func:`panel_key`), MaxP: the image index of a
    version with panels as image queries see it, or the caption index with sub-captions."""

    slots = PANEL_SLOTS
    what = "panels"


def _load_built(sub: Path, nprobe: int, mmap_index: bool) -> SearchIndex | None:
    """The SearchIndex in ``sub``, or None when the version has none there."""
    if not (sub / MANIFEST_FILE).is_file():
        return None
    return SearchIndex.load(sub, nprobe=nprobe, mmap_index=mmap_index)


def load_panel_index(whole: Any, version_dir: Path, nprobe: int = 32,
                     mmap_index: bool = False) -> Any:
    """``whole`` with the panel vectors of ``version_dir/panels`` (a :class:`PanelIndex`), or
    ``whole`` itself when the version has none. ``mmap_index``: see :meth:`SearchIndex.load`."""
    crops = (None if whole is None
             else _load_built(Path(version_dir) / PANELS_DIR, nprobe, mmap_index))
    return whole if crops is None else PanelIndex(whole, crops)


def load_subcaptions(version_dir: Path, nprobe: int = 32,
                     mmap_index: bool = False) -> SearchIndex | None:
    """The version's panel sub-caption vectors (``captions/panels/``), or None."""
    return _load_built(Path(version_dir) / CAPTIONS_DIR / PANELS_DIR, nprobe, mmap_index)


def own_subcaption(panel: Any) -> str | None:
    """A panel's own sub-caption text, or None when it has only the shared intro."""
    sub = getattr(panel, "subcaption", None)
    return sub.text if sub is not None and sub.letters else None


def match_of(panels: Sequence[Any], number: int, signal: str, score: float) -> PanelMatch | None:
    """The :class:`PanelMatch` of panel ``number`` (1-based) of aligned ``panels``, or None
    when the figure has no such panel (its boxes changed since the version was built)."""
    if not 1 <= number <= len(panels):
        return None
    p = panels[number - 1]
    return PanelMatch(number, tuple(int(v) for v in p.box), p.letter,  # type: ignore[arg-type]
                      own_subcaption(p), signal, float(score))


def _words(text: str) -> set[str]:
    from figsearch.keyword_index import analyse

    return set(analyse(text))


def keyword_shares(query: str, texts: Sequence[str]) -> list[float]:
    """Per text, the share of the query's (analysed) words it contains."""
    from figsearch.keyword_index import query_terms

    terms = set(query_terms(query))
    if not terms:
        return [0.0] * len(texts)
    return [len(terms & _words(t)) / len(terms) for t in texts]


def choose_text_panel(query: str, figure: dict[str, Any], panels: Sequence[Any],
                      cosines: dict[int, float] | None, whole_cosine: float | None,
                      margin: float = 0.0) -> PanelMatch | None:
    """The panel of a compound figure whose sub-caption matches a text query better than the
    figure's whole caption does, or None.

    Evidence per panel: its sub-caption's caption-vector cosine (``cosines``: panel number ->
    cosine; with ``whole_cosine``, the whole caption's) plus the share of the query's words
    in the sub-caption. The whole caption holds every word of its sub-captions, so a panel
    wins when its cosine advantage over the whole caption exceeds the words it misses (the
    principle of caption passages), less ``margin`` (a query written about one panel rarely
    beats the whole caption's words, which hold every panel's). Without cosines a panel wins on words alone only when it
    holds every query word the caption holds and no other panel holds as many."""
    subs = [own_subcaption(p) for p in panels]
    numbered = [(n, t) for n, t in enumerate(subs, 1) if t]
    if len(panels) < 2 or not numbered:
        return None
    caption = str(figure.get("caption") or "")
    whole_kw, *shares = keyword_shares(query, [caption] + [t for _, t in numbered])
    if cosines is not None and whole_cosine is not None:
        scored = [(cosines.get(n, float("-inf")) + kw, n, kw) for (n, _), kw
                  in zip(numbered, shares, strict=True)]
        best, n, _kw = max(scored, key=lambda s: (s[0], -s[1]))
        if best > whole_cosine + whole_kw - margin:
            return match_of(panels, n, "caption", best)
        return None
    ranked = sorted(((kw, n) for (n, _), kw in zip(numbered, shares, strict=True)),
                    key=lambda s: (-s[0], s[1]))
    top, n = ranked[0]
    runner_up = ranked[1][0] if len(ranked) > 1 else 0.0
    if top > 0 and top >= whole_kw and top > runner_up:
        return match_of(panels, n, "keyword", top)
    return None


def subcaption_cosines(index: SearchIndex, qvec: np.ndarray, figure_id: int) -> dict[int, float]:
    """{panel number: cosine of its sub-caption vector with the query} of one figure."""
    keys, values = index.exact_scores(qvec, part_keys(np.array([figure_id], np.int64),
                                                      PANEL_SLOTS))
    return {int(k) % PANEL_SLOTS: float(v) for k, v in zip(np.asarray(keys).tolist(),
                                                           np.asarray(values).tolist(),
                                                           strict=True)}
