"""Visual-word index of a version's stored images: source candidates that do not depend on the
image model (issue 25).

The dense image search only puts a crop, panel or screenshot's source among its top candidates
when the image model embeds the piece near the whole; a weak model often does not. The ORB
keypoints source verification matches (:func:`figsearch.source_match.word_features`: the same
detector at 640 px and 1,000 keypoints, a third of what verification keeps, because postings
grow with keypoints per image) are quantised into
*visual words*, and each figure's set of words goes into an inverted file: a query's words vote
for the figures that share them (tf-idf, :class:`figsearch.source_match.VisualWordIndex`).

Vocabulary: the ORB descriptors (256 bits) of a sample of the stored images, unpacked to 0/1
floats, clustered by faiss k-means in two levels (``K1`` coarse clusters, each split into
``K2``: k-means cost grows as points x centroids, so 128 x 128 costs 1/64 of a flat 16384) and
binarised (a centroid bit is 1 where most of its descriptors have it: the Hamming median), so
words are assigned by a binary Hamming search. The word count follows the descriptor count like
:func:`figsearch.index.ivf_lists` does for IVF lists: a power of two near 32 sqrt(n), at least
:data:`MIN_PER_WORD` descriptors per word (:func:`vocabulary_size`).

Each image's word list is cached by sha256 and vocabulary id in
``<data_dir>/cache/visual-words-<vocabulary id>.sqlite``; a delta build keeps the previous version's
vocabulary, so it computes features only for new images and writes the (small) inverted file
anew from the cache. A full build trains a new vocabulary.

Written per version in ``visual_words/``: ``vocab.npy`` (words x 32 uint8), ``ids.npy`` (sorted
figure ids), ``norms.npy`` (each figure's tf-idf norm), ``offsets.npy`` + ``postings.npy``
(CSR: word -> rows of ``ids.npy``, ascending, so figure ids ascend too), ``idf.npy`` and
``manifest.json`` (counts, build seconds).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from figsearch.core.config import Settings
from figsearch.source_match import (
    VISUAL_WORDS_DIR,
    VisualWordIndex,
    opencv,
    quantise,
    word_features,
    word_index,
)

#: Images whose descriptors train the vocabulary (a seeded sample beyond this).
TRAIN_IMAGES = 2000
#: k-means iterations per level.
TRAIN_ITERATIONS = 12
#: Fewest and most words, and fewest training descriptors per word (fewer than IVF's 39: a
#: small collection needs words that separate its few figures; 39 left a 39-figure test
#: collection with 512 words, too coarse to find a crop's source in its top 5).
MIN_WORDS, MAX_WORDS = 256, 65536
MIN_PER_WORD = 8
#: Words per sqrt(descriptors). Finer words find a piece's source better: on the dev split
#: (197 figures, 196 k descriptors; crops, panels, screenshots) the source is the words' first
#: figure for 0.43 of the queries with 1024 words, 0.68 with 4096, 0.78 with 16384 (= 32 sqrt(n)).
WORDS_PER_SQRT = 32
_SEED = 1234


def vocabulary_size(descriptors: int) -> int:
    """Words for ``descriptors`` descriptors: a power of two near :data:`WORDS_PER_SQRT` sqrt(n)
    with at least :data:`MIN_PER_WORD` descriptors per word, within [MIN_WORDS, MAX_WORDS] (as
    :func:`figsearch.index.ivf_lists` sizes IVF lists, whose 4 sqrt(n) suits a coarse
    quantiser; words must separate far more finely)."""
    k = int(2 ** round(math.log2(max(WORDS_PER_SQRT * math.sqrt(max(descriptors, 1)), 1.0))))
    while k > MIN_WORDS and descriptors < MIN_PER_WORD * k:
        k //= 2
    return int(min(max(k, MIN_WORDS), MAX_WORDS))


def _kmeans(points: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k float centroids of ``points`` (fewer points than k: the points themselves)."""
    import faiss

    if len(points) <= k:
        return points.copy()
    km = faiss.Kmeans(points.shape[1], k, niter=TRAIN_ITERATIONS, seed=seed, verbose=False,
                      max_points_per_centroid=64, min_points_per_centroid=1)
    km.train(np.ascontiguousarray(points, np.float32))
    return np.asarray(km.centroids, np.float32)


def train_vocabulary(descriptors: np.ndarray, words: int) -> np.ndarray:
    """Binary words (words x 32 uint8) from ORB descriptors (n x 32 uint8) by two-level k-means
    (see the module doc)."""
    import faiss

    bits = np.unpackbits(descriptors, axis=1).astype(np.float32)
    k1 = int(2 ** math.ceil(math.log2(math.sqrt(words))))
    k2 = max(1, words // k1)
    coarse = _kmeans(bits, k1, _SEED)
    index = faiss.IndexFlatL2(bits.shape[1])
    index.add(coarse)
    _, assign = index.search(bits, 1)
    leaves = [_kmeans(bits[assign[:, 0] == c], k2, _SEED + c + 1) for c in range(len(coarse))]
    centroids = np.concatenate([leaf for leaf in leaves if len(leaf)])
    vocab = np.packbits(centroids > 0.5, axis=1)
    return np.unique(vocab, axis=0)  # two clusters with one median are one word


def vocabulary_id(vocab: np.ndarray) -> str:
    """A short content hash naming the vocabulary (the word cache's directory)."""
    return hashlib.sha256(np.ascontiguousarray(vocab).tobytes()).hexdigest()[:16]


@dataclass
class _Image:
    fid: int
    rel: str
    sha: str


def _images(store: Any) -> list[_Image]:
    """The live figures with a stored image, in id order."""
    return [_Image(fid, str(rel), str(sha)) for rows in store.iter_figure_rows()
            for fid, rel, sha in rows if rel and sha]


def _descriptors(images_dir: Path, image: _Image) -> np.ndarray | None:
    """One stored image's ORB descriptors (None when it cannot be read)."""
    from figsearch.imaging import ImageError, safe_image_path

    try:
        return word_features(safe_image_path(images_dir, image.rel)).descriptors
    except (ImageError, OSError) as exc:
        print(f"visual words: figure {image.fid}: no features ({exc})", file=sys.stderr)
        return None


class WordCache:
    """Each image's sorted distinct words under one vocabulary, by sha256, in one SQLite file
    per vocabulary (``<data_dir>/cache/visual-words-<vocabulary id>.sqlite``: one file, not
    one per image, so millions of images stay one file)."""

    def __init__(self, data_dir: Path, vocab_id: str) -> None:
        self.path = Path(data_dir) / "cache" / f"visual-words-{vocab_id}.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False)
        self._db.execute("CREATE TABLE IF NOT EXISTS words (sha TEXT PRIMARY KEY, w BLOB)")

    def get(self, sha: str) -> np.ndarray | None:
        row = self._db.execute("SELECT w FROM words WHERE sha = ?", (sha,)).fetchone()
        return None if row is None else np.frombuffer(row[0], np.int32).copy()

    def put(self, sha: str, words: np.ndarray) -> None:
        self._db.execute("INSERT OR REPLACE INTO words VALUES (?, ?)",
                         (sha, np.asarray(words, np.int32).tobytes()))

    def close(self) -> None:
        self._db.commit()
        self._db.close()


@dataclass
class BuiltWords:
    """A version's visual-word index in memory, before it is written."""

    vocab: np.ndarray
    ids: np.ndarray
    words: list[np.ndarray]  # per id: sorted distinct words
    trained_on: int  # descriptors the vocabulary was trained on (0: reused)
    computed: int  # images whose features were computed in this build
    seconds: float

    def write(self, out_dir: Path) -> dict[str, Any]:
        """Write the CSR inverted file, idf and norms; returns the manifest."""
        out_dir.mkdir(parents=True, exist_ok=True)
        n_words = len(self.vocab)
        lengths = np.array([len(w) for w in self.words], np.int64)
        flat = np.concatenate(self.words) if self.words else np.zeros(0, np.int32)
        rows = np.repeat(np.arange(len(self.ids), dtype=np.int32), lengths)
        order = np.argsort(flat, kind="stable")  # by word, rows ascending within a word
        df = np.bincount(flat, minlength=n_words).astype(np.int64)
        offsets = np.concatenate([[0], np.cumsum(df)]).astype(np.int64)
        idf = np.where(df > 0, np.log(max(len(self.ids), 1) / np.maximum(df, 1)), 0.0
                       ).astype(np.float32)
        norms = np.sqrt(np.bincount(rows, weights=idf[flat].astype(np.float64) ** 2,
                                    minlength=len(self.ids))).astype(np.float32)
        arrays = {"vocab": self.vocab, "ids": self.ids.astype(np.int64), "offsets": offsets,
                  "postings": rows[order], "idf": idf, "norms": norms}
        for name, arr in arrays.items():
            np.save(out_dir / f"{name}.npy", arr)
        manifest = {"words": n_words, "figures": int(len(self.ids)), "postings": int(len(flat)),
                    "vocab_id": vocabulary_id(self.vocab), "trained_on": self.trained_on,
                    "computed": self.computed, "build_s": round(self.seconds, 2),
                    "bytes": int(sum(arr.nbytes for arr in arrays.values()))}
        (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))
        return manifest


def _quantise(vocab_index: Any, descriptors: np.ndarray) -> np.ndarray:
    """Sorted distinct words of one image's descriptors, as the word cache keeps them (int32)."""
    return quantise(vocab_index, descriptors).astype(np.int32)


def _computed(images_dir: Path, todo: list[_Image], threads: int, progress: bool = False,
              desc: str = "visual words") -> Iterator[tuple[_Image, np.ndarray | None]]:
    """(image, descriptors) of ``todo``, computed on ``threads`` threads (OpenCV releases the
    GIL while decoding and detecting), with a progress bar when ``progress``."""
    from tqdm import tqdm

    with ThreadPoolExecutor(max(1, threads)) as pool:
        found = pool.map(lambda im: _descriptors(images_dir, im), todo)
        yield from tqdm(zip(todo, found, strict=True), total=len(todo), desc=desc,
                        unit="image", disable=not progress or not todo)


def build_words(settings: Settings, store: Any, prev_dir: Path | None = None,
                progress: bool = False) -> BuiltWords | None:
    """Every live stored image's visual words (module doc): the previous version's vocabulary
    when ``prev_dir`` has one, else a new one; None when there are no images."""
    import faiss

    start = time.perf_counter()
    images = _images(store)
    if not images:
        return None
    threads = max(1, min(4, settings.torch_threads or 2))
    prev = word_index(prev_dir) if prev_dir is not None else None
    fresh: dict[str, np.ndarray] = {}
    unreadable: set[str] = set()  # already tried for training: not read twice
    trained_on = 0
    if isinstance(prev, VisualWordIndex):
        vocab = np.asarray(prev.vocab)
    else:
        sample = random.Random(_SEED).sample(images, min(TRAIN_IMAGES, len(images)))
        for image, desc in _computed(settings.images_dir, sample, threads, progress,
                                     "visual vocabulary"):
            if desc is not None:
                fresh[image.sha] = desc
            else:
                unreadable.add(image.sha)
        pooled = (np.concatenate(list(fresh.values())) if fresh
                  else np.zeros((0, 32), np.uint8))
        trained_on = len(pooled)
        total = int(trained_on * len(images) / max(len(sample), 1))
        vocab = train_vocabulary(pooled, vocabulary_size(total)) if trained_on else np.zeros(
            (1, 32), np.uint8)
    vocab_index = faiss.IndexBinaryFlat(vocab.shape[1] * 8)
    vocab_index.add(np.ascontiguousarray(vocab))
    cache = WordCache(settings.data_dir, vocabulary_id(vocab))
    by_sha: dict[str, np.ndarray] = {}
    todo: dict[str, _Image] = {}
    for image in images:
        if image.sha in by_sha or image.sha in todo or image.sha in unreadable:
            continue
        hit = cache.get(image.sha)
        if hit is not None:
            by_sha[image.sha] = hit
        elif image.sha in fresh:
            by_sha[image.sha] = _quantise(vocab_index, fresh.pop(image.sha))
            cache.put(image.sha, by_sha[image.sha])
        else:
            todo[image.sha] = image
    computed = len(todo) + (len(by_sha) if trained_on else 0)
    try:
        for image, desc in _computed(settings.images_dir, list(todo.values()), threads,
                                     progress):
            if desc is not None:
                by_sha[image.sha] = _quantise(vocab_index, desc)
                cache.put(image.sha, by_sha[image.sha])
    finally:
        cache.close()
    kept = [im for im in images if im.sha in by_sha]
    return BuiltWords(vocab, np.array([im.fid for im in kept], np.int64),
                      [by_sha[im.sha] for im in kept], trained_on, computed,
                      time.perf_counter() - start)


def visual_word_stage(settings: Settings, store: Any, prev_dir: Path | None = None,
                      progress: bool = False) -> Callable[[Path], dict[str, Any]]:
    """A build step writing a version's ``visual_words/`` (module doc); the words are computed
    when the step is made, so a failure leaves no half-built version. Skipped (logged, and
    said in the manifest) with ``FIGSEARCH_VISUAL_WORDS`` off or without OpenCV."""
    why = ("FIGSEARCH_VISUAL_WORDS is off" if not settings.visual_words else
           "OpenCV is not installed (pip install opencv-python-headless)" if opencv() is None
           else "")
    built = None if why else build_words(settings, store, prev_dir, progress)
    if built is None and not why:
        why = "no stored images"
    if why:
        print(f"visual words: skipped ({why})", file=sys.stderr)
    else:
        assert built is not None
        print(f"visual words: {len(built.ids)} figures, {len(built.vocab)} words, "
              f"{built.computed} images' features computed, {built.seconds:.1f} s",
              file=sys.stderr)

    def write(version_dir: Path) -> dict[str, Any]:
        if built is None:
            return {"visual_words": {"skipped": why}}
        return {"visual_words": built.write(Path(version_dir) / VISUAL_WORDS_DIR)}

    return write
