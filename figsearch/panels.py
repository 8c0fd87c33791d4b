"""Compound figures split into panels: layout analysis of the image and sub-captions by letter.

Pure library (numpy and PIL only, no torch) so that the indexer and the search service can both
use it. Three steps:

- :func:`split_caption` cuts a caption into sub-captions at its panel markers ("(A) …", "A, …",
  "a) …", "(A and B) …", ranges such as "(C–E)", "(C)-(E)" or "A–C"); the text before the first
  marker is the intro shared by all panels (``letters == ()``). Markers must follow the alphabet
  (A, B, C, …) so that back-references ("as in (A)") and roman numerals ("(i)") are not cuts.
  Letters that close their phrase ("… with others (a), … relationships (b)") end their
  sub-caption instead of opening it.
- :func:`detect_panels` finds panel boxes by a recursive X-Y cut: rows and columns of a
  thresholded grayscale image that hold no ink (white or near-uniform gutters) or that are thin
  full-length separator lines split a region; pieces that are too small (a panel letter alone,
  a legend strip) are merged back into a neighbour. Given the number of panels the caption
  names (``expected``), this is how the indexer calls it: 9 threshold sets are tried; a layout
  with too many pieces is merged down to that count, never swallowing a piece that starts with
  a drawn panel letter (a sparse diagram's inner white space is not a gutter), and one with
  too few is cut further just before a panel letter as tall as panel A's (panels that touch,
  with no gutter); the layout whose panels start with letters most often, then the one most
  threshold sets agree on, wins. Panel letters are found without OCR: the small isolated
  glyph nearest a box's top-left corner. Single-letter OCR text boxes near a panel's top-left
  corner, when given, become that panel's letter.
- :func:`align` pairs panels with sub-captions by letter, or by reading order (rows top to bottom,
  left to right) when the image gave no letters.

A figure that is not compound stays one panel (the whole image, trimmed of empty margins).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

Box = tuple[int, int, int, int]

# -- captions ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SubCaption:
    """The part of a caption about some panels: ``letters`` (upper case; ``()`` for the intro
    shared by all panels), its ``text`` and its ``span`` (start, end) in the caption."""

    letters: tuple[str, ...]
    text: str
    span: tuple[int, int]


_DASH = "-\u2010\u2011\u2012\u2013\u2014\u2212~"
_L = r"[A-Za-z]"
# A letter list inside one pair of parentheses: "A", "A,B", "A, B and C", "A-C", "A–C, E", "A/B".
_LIST = rf"{_L}(?:\s*(?:[{_DASH}]|,|/|&|and)\s*{_L})*"
_PAREN = re.compile(
    rf"\(\s?(?P<p>{_LIST})\s?\)(?:\s*[{_DASH}]\s*\(\s?(?P<p2>{_L})\s?\))?(?=[\s,.;:)]|$)")
# Bare markers at the start of the caption or of a sentence: "A)", "A.", "A,", "A:", "A–C,".
_BARE = re.compile(
    rf"(?:^|(?<=[.;:!?]\s)|(?<=[.;:!?]\s\s))(?P<b>{_L}(?:\s*[{_DASH}]\s*{_L})?)"
    rf"(?:\)|[.,:](?=\s))")
# Springer/BMC style: a lower-case letter alone opens a sentence ("… pathway. a The network …").
_LONE = re.compile(r"(?:^|(?<=[.;]\s))(?P<b>[a-z](?:\s*[-\u2013]\s*[a-z])?)\s(?=\S)")


def _expand(spec: str) -> tuple[str, ...]:
    """'A–C, E' -> ('A', 'B', 'C', 'E'); letters upper-cased, order kept, no repeats."""
    out: list[str] = []
    tokens = re.findall(rf"{_L}|[{_DASH}]", spec.replace(" and ", ","))
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok in _DASH:
            i += 1
            continue
        if i + 2 < len(tokens) and tokens[i + 1] in _DASH and tokens[i + 2] not in _DASH:
            a, b = ord(tok.upper()), ord(tokens[i + 2].upper())
            out.extend(chr(c) for c in range(a, b + 1) if chr(c) not in out)
            i += 3
            continue
        if tok.upper() not in out:
            out.append(tok.upper())
        i += 1
    return tuple(out)


@dataclass(frozen=True)
class _Marker:
    start: int
    end: int
    letters: tuple[str, ...]
    lower: bool


def _markers(caption: str) -> list[_Marker]:
    """Every candidate panel marker, in caption order (overlaps resolved: first one wins)."""
    found: list[_Marker] = []
    for m in _PAREN.finditer(caption):
        spec = m.group("p") + (f"-{m.group('p2')}" if m.group("p2") else "")
        found.append(_Marker(m.start(), m.end(), _expand(spec), m.group("p")[0].islower()))
    for m in _BARE.finditer(caption):
        found.append(_Marker(m.start("b"), m.end(), _expand(m.group("b")),
                             m.group("b")[0].islower()))
    for m in _LONE.finditer(caption):
        found.append(_Marker(m.start("b"), m.end("b"), _expand(m.group("b")), True))
    found.sort(key=lambda k: k.start)
    kept: list[_Marker] = []
    for mk in found:
        if not kept or mk.start >= kept[-1].end:
            kept.append(mk)
    return kept


def _chain(markers: Sequence[_Marker]) -> list[_Marker]:
    """The markers that walk the alphabet from A: each starts at the letter after the previous
    marker's last one (same case as the first), so references back ("in (A)") are skipped."""
    chain: list[_Marker] = []
    expected, lower = "A", None
    for mk in markers:
        if not mk.letters or any(not ("A" <= c <= "Z") for c in mk.letters):
            continue
        if lower is not None and mk.lower != lower:
            continue
        if mk.letters[0] != expected or list(mk.letters) != sorted(mk.letters):
            continue
        chain.append(mk)
        lower = mk.lower
        expected = chr(ord(mk.letters[-1]) + 1)
    return chain


def split_caption(caption: str) -> list[SubCaption]:
    """The caption's sub-captions in order: the shared intro first (``letters == ()``, only if
    there is text before the first marker), then one per panel marker. A caption with fewer
    than two panel letters is not split: one sub-caption with ``letters == ()``."""
    if not isinstance(caption, str):
        raise TypeError(f"caption must be a str, not {type(caption).__name__}")
    markers = _markers(caption)
    chain = _chain(markers)
    if len(chain) == 1 and len(chain[0].letters) > 1:
        # "(a–d) Blood flow of the popliteal artery (a), … (b, c), and foot arteries (d)": a
        # range naming every panel first, then the panels one by one
        inner = _chain([m for m in markers if m.start >= chain[0].end])
        if sum(len(m.letters) for m in inner) > 1 and {
                c for m in inner for c in m.letters} <= set(chain[0].letters):
            chain = inner
    if sum(len(m.letters) for m in chain) < 2:
        return [_sub((), caption, 0, len(caption))] if caption.strip() else []
    if _trailing(caption, chain):
        return _split_trailing(caption, chain)
    subs: list[SubCaption] = []
    if caption[: chain[0].start].strip():
        subs.append(_sub((), caption, 0, chain[0].start))
    for i, mk in enumerate(chain):
        end = chain[i + 1].start if i + 1 < len(chain) else len(caption)
        subs.append(_sub(mk.letters, caption, mk.start, end))
    return subs


_SENTENCE_END = re.compile(r"[.!?]\s+(?=[A-Z(])")
_AFTER_TRAILING = re.compile(r"\s*(?:[,.;]|and\b|$)")


def _trailing(caption: str, chain: Sequence[_Marker]) -> bool:
    """Whether the letters close their phrases ("… with others (a), … relationships (b)")
    instead of opening them: most markers sit mid-sentence and are followed by punctuation,
    "and" or the end of the caption."""
    closing = 0
    for mk in chain:
        before = caption[: mk.start].rstrip()
        mid_sentence = bool(before) and before[-1] not in ".:;!?"
        if mid_sentence and _AFTER_TRAILING.match(caption, mk.end):
            closing += 1
    return closing * 2 >= len(chain)


def _split_trailing(caption: str, chain: Sequence[_Marker]) -> list[SubCaption]:
    """Sub-captions that end at their marker: the first one starts with its sentence, each
    next one right after the previous marker (and its comma). Text before that first sentence
    is the intro; text after the last marker is shared by all panels and belongs to none."""
    first = chain[0].start
    starts = [m.end() for m in _SENTENCE_END.finditer(caption, 0, first)]
    begin = starts[-1] if starts else 0
    subs: list[SubCaption] = []
    if caption[:begin].strip():
        subs.append(_sub((), caption, 0, begin))
    at = begin
    for mk in chain:
        subs.append(_sub(mk.letters, caption, at, mk.end))
        at = mk.end
        while at < len(caption) and caption[at] in ",;. ":
            at += 1
    return subs


def _sub(letters: tuple[str, ...], caption: str, start: int, end: int) -> SubCaption:
    """A sub-caption whose span is trimmed of surrounding white space."""
    piece = caption[start:end]
    start += len(piece) - len(piece.lstrip())
    end -= len(piece) - len(piece.rstrip())
    return SubCaption(letters, caption[start:end], (start, end))


# -- images ------------------------------------------------------------------------------------


@dataclass
class Panel:
    """One panel: its ``box`` (x0, y0, x1, y1) in image pixels, end-exclusive, and its
    ``letter`` (upper case) when the image or the alignment gave one."""

    box: Box
    letter: str | None = None
    subcaption: SubCaption | None = field(default=None, compare=False)


@dataclass(frozen=True)
class LayoutParams:
    """Thresholds of the X-Y cut, as fractions of the image unless said otherwise.

    ``ink_tol``: grey levels from the background that still count as background (near-uniform
    gutters, JPEG noise); ``gap``: the narrowest gutter that separates panels; ``min_side``/
    ``min_area``: the smallest panel; ``line_fill``: how full a row or column must be to be a
    separator line; ``line_max``: how thick one may be (pixels)."""

    ink_tol: int = 40
    gap: float = 0.012
    min_gap_px: int = 5
    min_side: float = 0.12
    min_area: float = 0.03
    line_fill: float = 0.92
    line_max: int = 6
    rule_fill: float = 0.3
    noise: float = 0.004
    max_depth: int = 8


DEFAULT_PARAMS = LayoutParams()


def _ink(image: Image.Image, tol: int) -> np.ndarray:
    """Boolean ink mask: pixels farther than ``tol`` grey levels from the background (the most
    common grey level of the image border)."""
    gray = np.asarray(image.convert("L"), dtype=np.int16)
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    background = int(np.bincount(border.astype(np.int64), minlength=256).argmax())
    return np.abs(gray - background) > tol


def _trim(ink: np.ndarray, box: Box) -> Box | None:
    """``box`` shrunk to the ink inside it; None when it holds none."""
    x0, y0, x1, y1 = box
    sub = ink[y0:y1, x0:x1]
    rows = np.flatnonzero(sub.any(axis=1))
    cols = np.flatnonzero(sub.any(axis=0))
    if rows.size == 0 or cols.size == 0:
        return None
    return (x0 + int(cols[0]), y0 + int(rows[0]), x0 + int(cols[-1]) + 1, y0 + int(rows[-1]) + 1)


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """Runs of True in a 1-D boolean array as (start, end) pairs, end exclusive."""
    padded = np.concatenate([[False], flags, [False]]).astype(np.int8)
    d = np.diff(padded)
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist(),
                    strict=True))


def _gutters(sub: np.ndarray, axis: int, min_gap: int, p: LayoutParams) -> list[tuple[int, int]]:
    """Cut candidates along one axis of a region (axis 0: rows, 1: columns): runs of empty
    lines at least ``min_gap`` long (a thin solid or dashed rule inside a gutter counts as
    empty), and thin near-full separator lines between touching panels."""
    length = sub.shape[1 - axis]
    fill = sub.sum(axis=1 - axis) / max(1, length)
    empty = fill <= p.noise
    runs = _runs(~empty)
    for i, (a, b) in enumerate(runs):
        # a rule: thin, inked over a good part of the length, white on both sides
        if (b - a <= p.line_max and 0 < a and b < len(fill) and fill[a:b].max() >= p.rule_fill
                and 0 < i < len(runs) - 1):
            empty[a:b] = True
    cuts = [r for r in _runs(empty) if r[1] - r[0] >= min_gap]
    for a, b in _runs(fill >= p.line_fill):
        if b - a <= p.line_max and _solid(sub, axis, a, b) >= p.line_fill:
            cuts.append((a, b))
    n = sub.shape[axis]
    return sorted(c for c in cuts if c[0] > 0 and c[1] < n)


def _solid(sub: np.ndarray, axis: int, a: int, b: int) -> float:
    """The longest unbroken ink run of lines ``a:b`` as a share of their length: a separator
    is one line across, not the top edges of a row of framed panels with gutters between."""
    band = np.asarray(sub[a:b].any(axis=0) if axis == 0 else sub[:, a:b].any(axis=1))
    runs = _runs(band)
    return max((e - s for s, e in runs), default=0) / max(1, band.size)


def _edges(n: int, depth: int) -> list[int]:
    """The indices of the first and last ``depth`` lines of ``n``."""
    return sorted(set(range(min(depth, n))) | set(range(max(0, n - depth), n)))


def _spread(values: np.ndarray, n: int, depth: int) -> np.ndarray:
    """Per-line values known only on the edges (:func:`_edges`) as a full-length array."""
    full = np.zeros(n)
    full[_edges(n, depth)] = values
    return full


def _strip_frame(ink: np.ndarray, box: Box, p: LayoutParams) -> Box:
    """``box`` without a frame drawn around it (full-length lines on its edges), so that the
    frame does not hide the gutters inside it."""
    for _ in range(2):
        x0, y0, x1, y1 = box
        sub = ink[y0:y1, x0:x1]
        if sub.size == 0:
            return box
        rows = np.array([_solid(sub, 0, i, i + 1) for i in _edges(sub.shape[0], p.line_max)])
        cols = np.array([_solid(sub, 1, i, i + 1) for i in _edges(sub.shape[1], p.line_max)])
        rows = _spread(rows, sub.shape[0], p.line_max)
        cols = _spread(cols, sub.shape[1], p.line_max)
        depth = p.line_max
        top = next((i + 1 for i in range(min(depth, len(rows)) - 1, -1, -1)
                    if rows[i] >= p.line_fill), 0)
        bottom = next((i for i in range(max(0, len(rows) - depth), len(rows))
                       if rows[i] >= p.line_fill), len(rows))
        left = next((i + 1 for i in range(min(depth, len(cols)) - 1, -1, -1)
                     if cols[i] >= p.line_fill), 0)
        right = next((i for i in range(max(0, len(cols) - depth), len(cols))
                      if cols[i] >= p.line_fill), len(cols))
        if top == 0 or bottom == len(rows) or left == 0 or right == len(cols):
            return box  # a frame has four sides; one edge line is a panel's own border
        if bottom - top < 2 or right - left < 2:
            return box
        inner = _trim(ink, (x0 + left, y0 + top, x0 + right, y0 + bottom))
        if inner is None:
            return box
        box = inner
    return box


def _pieces(n: int, cuts: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The spans between cuts along a length ``n``."""
    spans, at = [], 0
    for a, b in cuts:
        spans.append((at, a))
        at = b
    spans.append((at, n))
    return spans


def _split(ink: np.ndarray, box: Box, axis: int, size: tuple[int, int], p: LayoutParams
           ) -> list[Box]:
    """Cut ``box`` along ``axis`` at its gutters; pieces too small to be panels are merged into
    the neighbour across the narrower gutter. One box back means no cut."""
    x0, y0, x1, y1 = box
    sub = ink[y0:y1, x0:x1]
    full = size[1] if axis == 0 else size[0]  # image height for row cuts, width for columns
    min_gap = max(p.min_gap_px, int(round(p.gap * full)))
    cuts = _gutters(sub, axis, min_gap, p)
    min_len = p.min_side * full
    min_area = p.min_area * size[0] * size[1]
    while cuts:
        spans = _pieces(sub.shape[axis], cuts)
        lens = [_ink_len(sub, axis, s) for s in spans]
        areas = [_ink_area(sub, axis, s) for s in spans]
        small = [i for i, ln in enumerate(lens) if ln < min_len or areas[i] < min_area]
        if not small:
            break
        i = min(small, key=lambda k: (lens[k] >= min_len, lens[k]))
        left = cuts[i - 1] if i > 0 else None
        right = cuts[i] if i < len(cuts) else None
        drop = min((c for c in (left, right) if c is not None), key=lambda c: c[1] - c[0])
        cuts.remove(drop)
    out = []
    for a, b in _pieces(sub.shape[axis], cuts):
        piece = (x0, y0 + a, x1, y0 + b) if axis == 0 else (x0 + a, y0, x0 + b, y1)
        trimmed = _trim(ink, piece)
        if trimmed is not None:
            out.append(trimmed)
    return out


def _ink_area(sub: np.ndarray, axis: int, span: tuple[int, int]) -> int:
    """The area of the ink's bounding box inside a span: a piece smaller than a panel can be
    is merged back, never dropped (a row of small plots stays one panel)."""
    part = sub[span[0]:span[1]] if axis == 0 else sub[:, span[0]:span[1]]
    rows = np.flatnonzero(part.any(axis=1))
    cols = np.flatnonzero(part.any(axis=0))
    if rows.size == 0 or cols.size == 0:
        return 0
    return int((rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1))


def _ink_len(sub: np.ndarray, axis: int, span: tuple[int, int]) -> int:
    """How long the inked part of a span is along ``axis`` (its empty margins do not count)."""
    part = sub[span[0]:span[1]] if axis == 0 else sub[:, span[0]:span[1]]
    lines = np.flatnonzero(part.any(axis=1 - axis))
    return 0 if lines.size == 0 else int(lines[-1] - lines[0] + 1)


def _xy_cut(ink: np.ndarray, box: Box, size: tuple[int, int], p: LayoutParams, depth: int = 0,
            frames: dict[tuple[Box, float, int], Box] | None = None) -> list[Box]:
    """Recursive X-Y cut: split along the axis whose widest gutter is wider (rows first on a
    tie), then each piece again; a box no axis can split is a panel. ``frames`` remembers
    :func:`_strip_frame` per box across threshold sets that share its line settings."""
    if depth >= p.max_depth:
        return [box]
    if frames is None:
        frames = {}
    key = (box, p.line_fill, p.line_max)
    if key not in frames:
        frames[key] = _strip_frame(ink, box, p)
    inner = frames[key]
    options = []
    for axis in (0, 1):
        parts = _split(ink, inner, axis, size, p)
        if len(parts) > 1:
            options.append((axis, parts))
    if not options:
        return [box]
    axis, parts = options[0] if len(options) == 1 else max(
        options, key=lambda o: (_widest_gap(o[1], o[0]), -o[0]))
    out: list[Box] = []
    for part in parts:
        out.extend(_xy_cut(ink, part, size, p, depth + 1, frames))
    return out


def _widest_gap(parts: list[Box], axis: int) -> int:
    """The widest empty space between consecutive pieces of one cut."""
    lo, hi = (1, 3) if axis == 0 else (0, 2)
    return max(parts[i + 1][lo] - parts[i][hi] for i in range(len(parts) - 1))


#: Layouts tried, most cautious first, when the caption says how many panels to expect: wide
#: gutters and big panels, down to narrow gutters (high-resolution figures with thin white
#: lines between panels) and small panels (grids of 3-4 columns with legends). Nine sets:
#: layouts off the caption's count are merged or cut to it afterwards (:func:`_choose`), so a
#: finer grid of thresholds (18 sets before) found no more panels and cost twice the time.
SEARCH_PARAMS: tuple[LayoutParams, ...] = tuple(
    LayoutParams(gap=gap, min_gap_px=min(5, max(2, int(gap * 400))), min_side=side)
    for gap in (0.03, 0.012, 0.005)
    for side in (0.2, 0.12, 0.08)
)


def _layout(ink: np.ndarray, whole: Box, size: tuple[int, int], params: LayoutParams,
            frames: dict[tuple[Box, float, int], Box] | None = None) -> list[Box]:
    """The panel boxes one set of thresholds finds (the whole figure when none)."""
    boxes = _xy_cut(ink, whole, size, params, frames=frames)
    area = size[0] * size[1]
    return [b for b in boxes if (b[2] - b[0]) * (b[3] - b[1]) >= params.min_area * area] or [whole]


class _Letters:
    """Whether a panel letter is drawn at a box's top-left corner, or just inside the frame
    drawn around it (:func:`_glyph_at`), remembered per box: the layouts of one figure share
    most of their boxes. When the figure itself starts with a letter (panel A's), a letter
    elsewhere must be about as tall as that one: the panel letters of a figure share one font
    size, which tick labels and words of a diagram mostly do not."""

    def __init__(self, ink: np.ndarray, whole: Box) -> None:
        self.ink = ink
        self.seen: dict[Box, int] = {}
        self.glyphs: dict[tuple[int, int, int], tuple[int, int, int, int, int] | None] = {}
        self.cuts: dict[Box, tuple[float, Box, Box] | None] = {}
        self.ref = self.height(whole)

    def component(self, seed: tuple[int, int], limit: int
                  ) -> tuple[int, int, int, int, int] | None:
        """:func:`_component`, remembered per seed."""
        key = (seed[0], seed[1], limit)
        if key not in self.glyphs:
            self.glyphs[key] = _component(self.ink, seed, limit)
        return self.glyphs[key]

    def height(self, box: Box) -> int:
        """The height of the glyph at ``box``'s corner (0: none)."""
        if box not in self.seen:
            found = _glyph_at(self.ink, box)
            if not found:
                inner = _strip_frame(self.ink, box, DEFAULT_PARAMS)
                found = _glyph_at(self.ink, inner) if inner != box else 0
            self.seen[box] = found
        return self.seen[box]

    def __call__(self, box: Box) -> bool:
        h = self.height(box)
        if not h or not self.ref:
            return bool(h)
        return self.like_ref(h)

    def like_ref(self, h: int) -> bool:
        """Whether a glyph ``h`` pixels tall is as tall as the figure's first panel letter
        (lower-case letters that reach above or below an "a", such as "b" or "g", do not
        count: a looser bound let symbols of a legend pass as letters)."""
        return self.ref - max(1.0, 0.1 * self.ref) <= h <= self.ref + max(2.0, 0.2 * self.ref)


def _glyph_at(ink: np.ndarray, box: Box) -> int:
    """Whether a panel letter is drawn at ``box``'s top-left corner: the ink nearest that
    corner belongs to one small connected glyph of letter size and shape, alone inside its
    bounding box (not a ring around a symbol) with white to its right and below. Found without OCR, it tells a panel (which starts with its letter) from
    a piece of one (which does not). Returns the glyph's height, 0 when there is none."""
    height, width = ink.shape
    unit = min(width, height)
    x0, y0, x1, y1 = box
    reach = int(max(12, 0.12 * unit))
    win = ink[y0:min(y1, y0 + reach), x0:min(x1, x0 + reach)]
    ys, xs = np.nonzero(win)
    if ys.size == 0:
        return 0
    seed = int(np.argmin(xs + ys))
    top = max(14, int(0.07 * unit))
    glyph = _component(ink, (x0 + int(xs[seed]), y0 + int(ys[seed])), top)
    if glyph is None:
        return 0
    gx0, gy0, gx1, gy1, count = glyph
    h, w = gy1 - gy0, gx1 - gx0
    if not max(6, 0.012 * unit) <= h <= top or not 0.3 * h <= w <= 1.4 * h:
        return 0
    if gx0 - x0 > 0.5 * reach or gy0 - y0 > 0.5 * reach:
        return 0  # not at the corner
    margin = max(2, int(0.25 * h))
    right = ink[gy0:gy1, gx1:gx1 + margin]
    below = ink[gy1:gy1 + margin, gx0:gx1]
    foreign = int(ink[gy0:gy1, gx0:gx1].sum()) - count  # ink inside it that is not it: a symbol
    alone = foreign <= 0.05 * h * w
    return h if alone and not right.any() and not below.any() and count >= 0.15 * h * w else 0


def _component(ink: np.ndarray, seed: tuple[int, int], limit: int
               ) -> tuple[int, int, int, int, int] | None:
    """The bounding box (x0, y0, x1, y1) and pixel count of the 8-connected ink component at
    ``seed`` (x, y); None as soon as it grows taller or wider than ``limit`` (not a glyph)."""
    height, width = ink.shape
    sx, sy = seed
    seen = {(sx, sy)}
    todo = [(sx, sy)]
    bx0, by0, bx1, by1 = sx, sy, sx, sy
    while todo:
        x, y = todo.pop()
        bx0, by0, bx1, by1 = min(bx0, x), min(by0, y), max(bx1, x), max(by1, y)
        if bx1 - bx0 >= limit or by1 - by0 >= limit:
            return None
        for nx in (x - 1, x, x + 1):
            for ny in (y - 1, y, y + 1):
                if (0 <= nx < width and 0 <= ny < height and (nx, ny) not in seen
                        and ink[ny, nx]):
                    seen.add((nx, ny))
                    todo.append((nx, ny))
    return bx0, by0, bx1 + 1, by1 + 1, len(seen)


def _union(a: Box, b: Box) -> Box:
    return (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))


def _overlap(a: Box, b: Box) -> int:
    ix = min(a[2], b[2]) - max(a[0], b[0])
    iy = min(a[3], b[3]) - max(a[1], b[1])
    return ix * iy if ix > 0 and iy > 0 else 0


#: The most pieces :func:`_merge_to` merges down (each merge looks at every pair, so a layout
#: shattered into hundreds of pieces would cost seconds; such a layout is far off anyway).
_MERGE_MAX = 40


def _merge_to(ink: np.ndarray, letter_at: _Letters, boxes: list[Box], expected: int) -> list[Box]:
    """An over-split layout merged down to ``expected`` panels, one pair at a time: the pair
    whose union covers no other piece and whose merge costs least (the narrowest gap, as a
    share of the image; much more when the piece that does not hold the union's top-left
    corner starts with a panel letter, since a panel letter opens a panel)."""
    height, width = ink.shape
    boxes = list(boxes)
    letters = {b: letter_at(b) for b in boxes}
    while len(boxes) > expected:
        best: tuple[float, int, int] | None = None
        for i, a in enumerate(boxes):
            for j in range(i + 1, len(boxes)):
                b = boxes[j]
                u = _union(a, b)
                if any(_overlap(u, c) > 0 for k, c in enumerate(boxes) if k not in (i, j)):
                    continue
                gap = max(0, max(a[0], b[0]) - min(a[2], b[2])) / width + max(
                    0, max(a[1], b[1]) - min(a[3], b[3])) / height
                # the piece whose corner is not the union's loses its letter's place
                later = max(a, b, key=lambda c: (c[0] - u[0]) / width + (c[1] - u[1]) / height)
                cost = gap + (1.0 if letters[later] else 0.0)
                if best is None or cost < best[0]:
                    best = (cost, i, j)
        if best is None:
            break
        _cost, i, j = best
        merged = _union(boxes[i], boxes[j])
        letters[merged] = letters[boxes[i]] or letters[boxes[j]]
        boxes = [b for k, b in enumerate(boxes) if k not in (i, j)] + [merged]
    return boxes


def _letter_cut(ink: np.ndarray, letter_at: _Letters, box: Box, valley: float = 0.1
                ) -> tuple[float, Box, Box] | None:
    """The best cut of ``box`` where no gutter is, anchored on a panel letter: a glyph as tall
    as the figure's first panel letter, in the band along the box's top edge (a panel to the
    right) or left edge (a panel below), with a line of little ink (at most ``valley`` of it
    inked) just before it. Panels that touch (a heat map against a network) are found this
    way. Returns (ink share of the cut line, first piece, second piece) or None."""
    if not letter_at.ref:
        return None
    height, width = ink.shape
    x0, y0, x1, y1 = box
    reach = 2 * letter_at.ref
    best: tuple[float, Box, Box] | None = None
    for axis in (1, 0):
        full = width if axis == 1 else height
        span = x1 - x0 if axis == 1 else y1 - y0
        band = ink[y0:min(y1, y0 + reach), x0:x1] if axis == 1 else ink[y0:y1, x0:min(x1, x0 + reach)]
        profile = np.asarray(band.any(axis=0 if axis == 1 else 1))
        fill = ink[y0:y1, x0:x1].mean(axis=0 if axis == 1 else 1)
        margin = int(0.08 * full)  # the smallest panel side
        for a, _b in _runs(profile):
            if a < margin or a > span - margin:
                continue
            line = band[:, a] if axis == 1 else band[a]
            first_ink = int(np.flatnonzero(line)[0])
            seed = (x0 + a, y0 + first_ink) if axis == 1 else (x0 + first_ink, y0 + a)
            glyph = letter_at.component(seed, letter_at.ref + max(2, letter_at.ref // 5) + 1)
            if glyph is None or not letter_at.like_ref(glyph[3] - glyph[1]):
                continue
            lo = max(0, a - max(3, letter_at.ref))
            m = lo + int(np.argmin(fill[lo:a])) if a > lo else a
            if fill[m] > valley or (best is not None and fill[m] >= best[0]):
                continue
            first = (x0, y0, x0 + m, y1) if axis == 1 else (x0, y0, x1, y0 + m)
            second = (x0 + m, y0, x1, y1) if axis == 1 else (x0, y0 + m, x1, y1)
            t1, t2 = _trim(ink, first), _trim(ink, second)
            if t1 is None or t2 is None or not (letter_at(t1) and letter_at(t2)):
                continue
            best = (float(fill[m]), t1, t2)
    return best


def _split_to(ink: np.ndarray, letter_at: _Letters, boxes: list[Box], expected: int) -> list[Box]:
    """An under-split layout cut further towards ``expected`` panels at letter-marked valleys
    (:func:`_letter_cut`), the emptiest cut first."""
    boxes = list(boxes)
    cache = letter_at.cuts
    while len(boxes) < expected:
        for b in boxes:
            if b not in cache:
                cache[b] = _letter_cut(ink, letter_at, b)
        options = [(c, b) for b in boxes if (c := cache[b]) is not None]
        if not options:
            break
        (_fill, first, second), old = min(options, key=lambda o: o[0][0])
        boxes = [b for b in boxes if b != old] + [first, second]
    return boxes


def _to_count(ink: np.ndarray, letter_at: _Letters, boxes: list[Box], expected: int
              ) -> list[Box]:
    """A layout merged (:func:`_merge_to`) or cut at panel letters (:func:`_split_to`)
    towards ``expected`` panels, as far as its pieces and letters allow."""
    if expected < len(boxes) <= _MERGE_MAX:
        return _merge_to(ink, letter_at, boxes, expected)
    if len(boxes) < expected:
        return _split_to(ink, letter_at, boxes, expected)
    return boxes


def _choose(ink: np.ndarray, whole: Box, layouts: list[list[Box]], expected: int) -> list[Box]:
    """The layout to keep when the caption names ``expected`` panels. Over-split layouts are
    first merged down to that count (:func:`_merge_to`), under-split ones cut at panel letters
    towards it (:func:`_split_to`). Among those with that many panels
    (else the closest count, fewer on a tie): the one whose panels most often start with a
    drawn panel letter, then the one most thresholds agree on, a stable reading of the gutters
    rather than an accident of one setting; the most cautious one on a tie."""
    letter_at = _Letters(ink, whole)
    layouts = [_to_count(ink, letter_at, b, expected) for b in layouts]
    best = min(abs(len(b) - expected) for b in layouts)
    near = [b for b in layouts if abs(len(b) - expected) == best]
    fewest = min(len(b) for b in near)
    near = [b for b in near if len(b) == fewest]
    votes: dict[tuple[Box, ...], int] = {}
    for b in near:
        key = tuple(sorted(b))
        votes[key] = votes.get(key, 0) + 1
    lettered: dict[tuple[Box, ...], int] = {
        key: sum(letter_at(b) for b in key) for key in votes}
    top = max(votes, key=lambda k: (lettered[k], votes[k]))
    return next(b for b in near if tuple(sorted(b)) == top)


def detect_panels(image: Image.Image, ocr_boxes: Iterable[tuple[Sequence[float], str]] | None = None,
                  params: LayoutParams = DEFAULT_PARAMS, expected: int | None = None) -> list[Panel]:
    """The panels of a figure image in reading order (one panel when it is not compound).

    ``expected``: how many panels the caption names (count of its panel letters), when known.
    Without it the layout alone decides, with ``params``. With it, the layouts of
    :data:`SEARCH_PARAMS` are brought to that many panels where drawn panel letters allow
    (merged or cut further, see :func:`_choose`) and the best one wins (else the one closest
    to that count, fewer on a tie); ``expected <= 1`` keeps the figure whole. The caption is
    known at index time, so this is how the indexer calls it.

    ``ocr_boxes``: optional OCR text boxes ``(box, text)`` with ``box`` as (x0, y0, x1, y1) or
    four corner points; a single-letter token near a panel's top-left corner becomes its letter.
    The store keeps only OCR text (not boxes), so letters come from here only when OCR runs
    alongside; otherwise :func:`align` assigns letters by reading order.
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"image must be a PIL image, not {type(image).__name__}")
    width, height = image.size
    if width < 2 or height < 2:
        raise ValueError(f"image too small to split: {width}x{height}")
    if expected is not None and expected < 0:
        raise ValueError(f"expected panel count must be >= 0, got {expected}")
    ink = _ink(image, params.ink_tol)
    whole = _trim(ink, (0, 0, width, height)) or (0, 0, width, height)
    if expected is None:
        boxes = _layout(ink, whole, (width, height), params)
    elif expected <= 1:
        boxes = [whole]
    else:
        frames: dict[tuple[Box, float, int], Box] = {}
        boxes = _choose(ink, whole, [_layout(ink, whole, (width, height), p, frames)
                                     for p in SEARCH_PARAMS],
                        expected)
    panels = [Panel(b) for b in reading_order(boxes)]
    if ocr_boxes is not None:
        snap_letters(panels, ocr_boxes, (width, height))
    return panels


def reading_order(boxes: Sequence[Box]) -> list[Box]:
    """Boxes sorted in rows top to bottom, left to right within a row; a box joins a row when
    its vertical middle lies inside the row's first box."""
    rows: list[list[Box]] = []
    for b in sorted(boxes, key=lambda b: (b[1], b[0])):
        mid = (b[1] + b[3]) / 2
        for row in rows:
            if row[0][1] <= mid < row[0][3] and b[1] < row[0][3]:
                row.append(b)
                break
        else:
            rows.append([b])
    return [b for row in rows for b in sorted(row, key=lambda b: b[0])]


def _as_box(raw: Sequence[float] | Sequence[Sequence[float]]) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) from a box or from RapidOCR's four corner points."""
    vals = list(raw)
    if vals and isinstance(vals[0], (list, tuple, np.ndarray)):
        xs = [float(pt[0]) for pt in vals]  # type: ignore[index]
        ys = [float(pt[1]) for pt in vals]  # type: ignore[index]
        return min(xs), min(ys), max(xs), max(ys)
    if len(vals) != 4:
        raise ValueError(f"an OCR box needs 4 numbers or 4 points, got {raw!r}")
    x0, y0, x1, y1 = (float(v) for v in vals)  # type: ignore[arg-type]
    return x0, y0, x1, y1


_LETTER = re.compile(r"^\(?([A-Za-z])[).]?(?:\s|$)")


def snap_letters(panels: list[Panel], ocr_boxes: Iterable[tuple[Sequence[float], str]],
                 size: tuple[int, int]) -> None:
    """Give each panel the single-letter OCR token closest to its top-left corner, if one lies
    within 12 % of the image's diagonal of it and inside or just outside the panel."""
    diag = float(np.hypot(*size))
    tokens = []
    for raw, txt in ocr_boxes:
        m = _LETTER.match(str(txt).strip())
        if m:
            tokens.append((_as_box(raw), m.group(1).upper()))
    used: set[int] = set()
    for panel in panels:
        x0, y0, x1, y1 = panel.box
        best, best_d = None, 0.12 * diag
        for i, ((tx0, ty0, tx1, ty1), _letter) in enumerate(tokens):
            if i in used:
                continue
            cx, cy = (tx0 + tx1) / 2, (ty0 + ty1) / 2
            if not (x0 - 0.05 * diag <= cx <= (x0 + x1) / 2 and y0 - 0.05 * diag <= cy <= (y0 + y1) / 2):
                continue
            d = float(np.hypot(cx - x0, cy - y0))
            if d < best_d:
                best, best_d = i, d
        if best is not None:
            used.add(best)
            panel.letter = tokens[best][1]


# -- alignment ---------------------------------------------------------------------------------


def align(panels: Sequence[Panel], subcaptions: Sequence[SubCaption]) -> list[Panel]:
    """Panels with their sub-captions (new objects; the input is not changed).

    By letter when panels carry letters; otherwise by reading order: the n-th panel gets the
    n-th panel letter of the caption. A panel whose letter no sub-caption names gets the
    intro (``letters == ()``) if there is one; a one-panel figure gets the whole caption's first
    sub-caption."""
    order = reading_order([p.box for p in panels])
    ordered = sorted(panels, key=lambda p: order.index(p.box))
    by_letter = {c: s for s in subcaptions for c in s.letters}
    intro = next((s for s in subcaptions if not s.letters), None)
    letters = [c for s in subcaptions for c in s.letters]
    lettered = any(p.letter for p in ordered)
    out = []
    for i, p in enumerate(ordered):
        letter = p.letter if lettered else (letters[i] if i < len(letters) else None)
        if len(ordered) == 1 and not p.letter:
            letter = None
        sub = by_letter.get(letter) if letter else None
        if sub is None:
            sub = intro if len(ordered) > 1 or not subcaptions else subcaptions[0]
        out.append(Panel(p.box, letter, sub))
    return out


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
