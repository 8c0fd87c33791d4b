"""Fusion of ranking signals for the default (``hybrid``) search mode.

Signals (each a ranked candidate list with scores for one query):

* ``dense``   - cosine of the query's CLIP text embedding to the figure image embeddings;
* ``caption`` - cosine of the query's sentence embedding to the caption embeddings
  (:mod:`figsearch.caption_index`);
* ``keyword`` - BM25 over caption, label and title (and in-figure text when the store has it);
* any further signal a service registers (e.g. ``ocr``) plugs in by name with its own weight.

Method ``score`` (the default): each signal's scores are min-max normalised per query over the
head of its own list - the best score -> 1, the ``NORM_TOP``-th (one result page) -> 0, lower
ones clipped to 0; BM25 uses 0 as its floor instead, so a weak keyword match stays weak - then
summed with per-signal weights. Normalising over the head rather than the whole candidate list
keeps the scale independent of how many candidates are fetched (``FIGSEARCH_FUSION_DEPTH``) and
lets a vector signal reorder only what it ranks near its top. A vector signal also scores the other
signals' candidates exactly (``extra``), so a figure found by one signal is not penalised for
falling just outside another's top list. Method ``rrf``: weighted reciprocal rank fusion,
``sum_s w_s / (k + rank_s)``.

The weights are chosen on the dev split of the real-figure query set
(``figsearch eval --queries ... --tune``) and reported on the test split; see docs/api.md. A
signal whose weight is 0 - or whose quality check failed, e.g. an untrained image model
(``dense_check`` in the index manifest) - is not computed at all, so it cannot bury the others.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

METHODS = ("score", "rrf")
#: Min-max normalisation maps a vector signal's NORM_TOP-th score to 0 (its best to 1).
NORM_TOP = 20


@dataclass
class SignalResult:
    """One signal's answer to one query: top ids best first, their scores, exact extra scores."""

    ids: list[int]
    scores: list[float]
    floor: float | None = None  # the score that maps to 0 (None: the lowest top-list score)
    extra: dict[int, float] = field(default_factory=dict)
    exhausted: bool = True


@dataclass(frozen=True)
class FusionConfig:
    """Weights per signal and the combination method."""

    weights: Mapping[str, float]
    method: str = "score"
    rrf_k: int = 60
    norm_top: int = NORM_TOP

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"fusion method {self.method!r}: use one of {', '.join(METHODS)}")
        bad = {k: v for k, v in self.weights.items() if not v >= 0}
        if bad:
            raise ValueError(f"fusion weights must be >= 0, got {bad}")

    def weight(self, signal: str) -> float:
        """The weight of ``signal`` (0 for signals not listed)."""
        return float(self.weights.get(signal, 0.0))

    def describe(self) -> str:
        """``score: caption=0.5 keyword=0.5`` - for logs, reports and the API's stats."""
        ws = " ".join(f"{k}={v:g}" for k, v in sorted(self.weights.items()))
        return f"{self.method}: {ws}"


def _bounds(result: SignalResult, top: int) -> tuple[float, float]:
    """(the score that maps to 0, the span that maps to 1) of a non-empty result."""
    hi = max(result.scores)
    head = sorted(result.scores, reverse=True)[:max(top, 1)]
    lo = min(head) if result.floor is None else result.floor
    return lo, hi - lo


def _scale(score: float, lo: float, span: float) -> float:
    """One raw score mapped to 0..1 (clipped) by :func:`_bounds`."""
    value = 1.0 if span <= 0 else (score - lo) / span
    return min(max(value, 0.0), 1.0)


def normalised(result: SignalResult, top: int = NORM_TOP) -> dict[int, float]:
    """Scores of the top ids and the extra ids mapped to 0..1 (clipped): the best -> 1, the
    ``top``-th best (or ``result.floor`` when set) -> 0."""
    if not result.ids:
        return {}
    lo, span = _bounds(result, top)
    out: dict[int, float] = {}
    for doc, s in itertools.chain(zip(result.ids, result.scores, strict=True), result.extra.items()):
        out[int(doc)] = max(out.get(int(doc), 0.0), _scale(s, lo, span))
    return out


def fuse(results: Mapping[str, SignalResult], config: FusionConfig) -> list[tuple[int, float]]:
    """Fused (id, score), best first; ties keep the order of first appearance."""
    scores: dict[int, float] = {}
    for name, result in results.items():
        w = config.weight(name)
        if w <= 0:
            continue
        if config.method == "rrf":
            contrib = {int(d): 1.0 / (config.rrf_k + r) for r, d in enumerate(result.ids, 1)}
        else:
            contrib = normalised(result, config.norm_top)
        for doc, value in contrib.items():
            scores[doc] = scores.get(doc, 0.0) + w * value
    order = {doc: i for i, doc in enumerate(_first_seen(results, config))}
    return sorted(scores.items(), key=lambda kv: (-kv[1], order.get(kv[0], len(order))))


@dataclass(frozen=True)
class SignalPart:
    """One signal's share of one figure's fused score: ``contribution`` = ``weight`` x
    ``normalised`` (``score`` method) or ``weight x 1 / (rrf_k + rank)`` (``rrf``;
    ``normalised`` None); ``raw`` is the signal's own score (BM25, cosine), ``rank`` its 1-based place in that
    signal's top list (None: scored exactly as another signal's candidate)."""

    name: str
    raw: float
    normalised: float | None
    weight: float
    contribution: float
    rank: int | None


def explain(results: Mapping[str, SignalResult], config: FusionConfig,
            ids: Iterable[int]) -> dict[int, list[SignalPart]]:
    """Per given id, the parts :func:`fuse` summed into its score, in the order it summed
    them (so ``sum(p.contribution for p in parts)`` is the fused score exactly). Only the
    given ids are explained: the cost follows a result page, not the candidate lists."""
    wanted = {int(i) for i in ids}
    out: dict[int, list[SignalPart]] = {i: [] for i in wanted}
    for name, result in results.items():
        w = config.weight(name)
        if w <= 0 or not result.ids:
            continue
        raw: dict[int, float] = {}
        for doc, s in itertools.chain(zip(result.ids, result.scores, strict=True),
                                      result.extra.items()):
            if int(doc) in wanted:
                raw[int(doc)] = max(raw.get(int(doc), float("-inf")), float(s))
        ranks = {int(d): r for r, d in enumerate(result.ids, 1) if int(d) in wanted}
        lo, span = _bounds(result, config.norm_top)
        for doc, s in raw.items():
            rank = ranks.get(doc)
            if config.method == "rrf":
                if rank is None:
                    continue
                out[doc].append(SignalPart(name, s, None, w, w * (1.0 / (config.rrf_k + rank)),
                                           rank))
            else:
                value = _scale(s, lo, span)
                out[doc].append(SignalPart(name, s, value, w, w * value, rank))
    return out


def _first_seen(results: Mapping[str, SignalResult], config: FusionConfig) -> list[int]:
    """Ids in order of first appearance, heaviest signal first (the tie-break order)."""
    seen: dict[int, None] = {}
    for name in sorted(results, key=lambda n: -config.weight(n)):
        for doc in results[name].ids:
            seen.setdefault(int(doc), None)
    return list(seen)


def weight_grid(signals: Iterable[str], step: float = 0.1) -> list[dict[str, float]]:
    """All weightings of ``signals`` on a grid of ``step`` that sum to 1 (for tuning)."""
    names = list(signals)
    units = round(1 / step)
    out = []
    for combo in itertools.product(range(units + 1), repeat=len(names)):
        if sum(combo) == units:
            out.append({n: round(c * step, 6) for n, c in zip(names, combo, strict=True)})
    return out


def parse_weights(text: str) -> dict[str, float]:
    """``"caption=0.5,keyword=0.5"`` -> {"caption": 0.5, "keyword": 0.5} (ValueError if bad)."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"fusion weight {part!r}: write signal=weight, e.g. caption=0.5")
        out[name.strip()] = float(value)
    return out


def fusion_from_settings(settings: Any) -> FusionConfig:
    """The :class:`FusionConfig` of ``settings.fusion_weights`` / ``fusion_method``."""
    return FusionConfig(parse_weights(settings.fusion_weights), settings.fusion_method)


#: The image model must place captions' own figures this many standard deviations above chance
#: (the build-time check in :func:`indexer.indexing.dense_check`) to be fused.
DENSE_MIN_Z = 4.0


def dense_reliable(manifest: Mapping[str, Any] | None) -> bool:
    """Whether an index's image model passed its quality check (indexes without one: True)."""
    check = (manifest or {}).get("dense_check")
    if not isinstance(check, Mapping):
        return True
    return bool(check.get("reliable", True))


def vector_dedup_ok(manifest: Mapping[str, Any] | None, threshold: float) -> bool:
    """Whether near-duplicate collapse may use the index's image embeddings at ``threshold``:
    the model must be reliable and fewer than 0.1 % of unrelated image pairs may score above the
    threshold (a weak model that maps every figure to nearly one direction would otherwise
    collapse distinct figures and bury relevant results). Exact copies (sha256) always collapse.
    """
    if not dense_reliable(manifest):
        return False
    check = (manifest or {}).get("dense_check")
    q999 = check.get("pair_cos_q999") if isinstance(check, Mapping) else None
    return q999 is None or threshold > float(q999)
