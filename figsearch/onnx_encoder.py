"""Query encoding on ONNX Runtime, without torch or open_clip in the process.

A model's towers are exported once (by ``figsearch index`` for each version it builds, or by
``figsearch export-onnx``; :mod:`figsearch.onnx_export`) into a directory holding ``text.onnx`` /
``image.onnx`` (one of them for a caption model), ``tokenizer.json`` (HF ``tokenizers`` format,
for open_clip's BPE tokenizer too) and ``figsearch_onnx.json`` (the model key, dimension,
tokenizer rules and image preprocessing). The API serves it by default
(``FIGSEARCH_ENCODER_BACKEND=auto``, or ``onnx``): ``import torch`` alone is about 600 MiB of a
worker's memory, and open_clip (with torchvision and timm) another 250.

Everything here is numpy, PIL, ``tokenizers`` and ``onnxruntime``; the export checks the
exported towers against the torch model it came from, and the tests check the tokenizer and the
image preprocessing against open_clip's on real captions and figures.
"""

from __future__ import annotations

import html
import json
import logging
import os
import re
import string
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from figsearch import timing
from figsearch.encoders.lengths import CPU_TEXT_BATCH_TOKENS, length_batches
from figsearch.encoders.spec import ModelLoadError

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

MANIFEST = "figsearch_onnx.json"
TEXT_FILE, IMAGE_FILE, TOKENIZER_FILE = "text.onnx", "image.onnx", "tokenizer.json"
#: A CLIP text tower's bias-free linear projection (``dim`` x trunk width), written beside the
#: export when the tower is a mean-pooled HF trunk (see :meth:`OnnxEncoder.share_trunk_with`).
PROJECTION_FILE = "text_projection.npy"
#: Texts a trunk-sharing partner keeps the vectors of (the last few queries).
SHARED_RECENT = 64
#: manifest format; a reader refuses other versions instead of misreading them
FORMAT = 1
#: text cleaning before tokenising, as open_clip's ``get_clean_fn`` names them; ``none`` for
#: sentence-transformers models, which tokenise the raw text
CLEAN_KINDS = ("whitespace", "lower", "canonicalize", "none")
#: image resizing that :func:`preprocess_image` reproduces (open_clip's ``resize_mode``)
RESIZE_MODES = ("shortest", "squash")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


class OnnxExportMissing(ModelLoadError):
    """No (complete) export of the wanted model in the export directory."""


def export_dir_name(model_key: str) -> str:
    """The folder of ``model_key``'s export under the export root: the key with the characters
    a file name cannot hold replaced (hub ids have ``/``, caption keys ``:``)."""
    return re.sub(r"[^A-Za-z0-9._@-]+", "--", model_key).strip("-.") or "model"


def find_export(root: Path, model_key: str) -> Path:
    """The export directory of ``model_key`` under ``root``; a clear error when it is missing
    or was made from other weights."""
    directory = Path(root) / export_dir_name(model_key)
    manifest = directory / MANIFEST
    if not manifest.is_file():
        raise OnnxExportMissing(
            f"no ONNX export of model {model_key!r} in {directory} (the onnx encoder backend "
            "serves exported models only). Run `figsearch export-onnx` with the same data dir, "
            "or set FIGSEARCH_ENCODER_BACKEND=torch."
        )
    found = read_manifest(directory).get("model_key")
    if found != model_key:
        raise OnnxExportMissing(
            f"{manifest} was exported from model {found!r}, not {model_key!r}; export again "
            "with `figsearch export-onnx`"
        )
    return directory


def checked_export(root: Path, model_key: str) -> Path:
    """:func:`find_export`, and the export passed its check against the torch model (its
    manifest holds the cosines); what the ``auto`` encoder backend serves."""
    directory = find_export(root, model_key)
    if not read_manifest(directory).get("checks"):
        raise OnnxExportMissing(f"the ONNX export in {directory} records no check against the "
                                "torch model; export again with `figsearch export-onnx`")
    return directory


def read_manifest(directory: Path) -> dict[str, Any]:
    """An export's manifest, checked for its format version."""
    path = Path(directory) / MANIFEST
    try:
        manifest: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read the ONNX export manifest {path}: {exc}") from None
    if manifest.get("format") != FORMAT:
        raise ModelLoadError(
            f"{path} has format {manifest.get('format')!r}; this figsearch reads format "
            f"{FORMAT}: export again with `figsearch export-onnx`"
        )
    return manifest


# --------------------------------------------------------------------------- tokenising
def clean_text(text: str, kind: str) -> str:
    """open_clip's text cleaning (``whitespace``, ``lower``, ``canonicalize``) before its
    tokenizers see a text: mojibake fixed (ftfy), HTML entities unescaped twice, whitespace
    collapsed; ``lower`` lower-cases, ``canonicalize`` also drops punctuation."""
    if kind == "none":
        return text
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    if kind == "canonicalize":
        text = text.replace("_", " ").translate(_PUNCTUATION).lower()
    text = " ".join(text.split())
    return text.lower() if kind == "lower" else text


@dataclass
class TextTokenizer:
    """Texts -> a (rows, longest) int64 id matrix, as the exported tokenizer and rules say.

    Rows are padded to the batch's longest text only (the towers ignore padding: the export
    checks that), never to the model's full context.
    """

    tokenizer: Any  # tokenizers.Tokenizer, truncating at the context length
    clean: str
    pad_id: int
    context_length: int
    #: open_clip's ``strip_sep_token``: the separator's id becomes the pad id
    strip_id: int | None = None

    @classmethod
    def from_export(cls, directory: Path, rules: dict[str, Any]) -> TextTokenizer:
        from tokenizers import Tokenizer

        if rules.get("clean") not in CLEAN_KINDS:
            raise ModelLoadError(f"{directory}: unknown text cleaning {rules.get('clean')!r}")
        tokenizer = Tokenizer.from_file(str(Path(directory) / TOKENIZER_FILE))
        length = int(rules["context_length"])
        tokenizer.enable_truncation(max_length=length)
        tokenizer.no_padding()
        strip = rules.get("strip_id")
        return cls(tokenizer, rules["clean"], int(rules["pad_id"]), length,
                   None if strip is None else int(strip))

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        return self.pad(self.token_ids(texts))

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text's ids, unpadded (truncated at the context length)."""
        return [e.ids for e in self.tokenizer.encode_batch([clean_text(t, self.clean)
                                                            for t in texts])]

    def pad(self, rows: Sequence[Sequence[int]]) -> np.ndarray:
        """Rows of ids as one matrix, padded to the longest row."""
        longest = max((len(r) for r in rows), default=1)
        ids = np.full((len(rows), max(1, longest)), self.pad_id, np.int64)
        for row, row_ids in enumerate(rows):
            ids[row, :len(row_ids)] = row_ids
        if self.strip_id is not None:
            ids[ids == self.strip_id] = self.pad_id
        return ids

    def model_inputs(self, texts: Sequence[str]) -> list[tuple[int, ...]]:
        """What the tower reads of each text: its ids, the stripped separator as padding."""
        strip = self.strip_id
        return [tuple(self.pad_id if i == strip else i for i in row)
                for row in self.token_ids(texts)]


# --------------------------------------------------------------------------- images
def preprocess_image(image: Image.Image, cfg: dict[str, Any]) -> np.ndarray:
    """open_clip's inference transform for ``cfg`` (its ``preprocess_cfg``), in PIL and numpy:
    resize (shortest side to the input size, or squash), centre crop, RGB, scale to [0, 1],
    normalise; a (3, H, W) float32 array. Same PIL calls in the same order as torchvision's, so
    the pixels agree (the tests check it on real figures)."""
    from PIL import Image as PILImage

    size = _square_size(cfg)
    mode = cfg.get("resize_mode") or "shortest"
    resample = (PILImage.Resampling.BILINEAR if cfg.get("interpolation") == "bilinear"
                else PILImage.Resampling.BICUBIC)
    width, height = image.size
    if mode == "squash":
        target = (size, size)
    else:
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(size * long / short)
        target = (size, new_long) if width <= height else (new_long, size)
    if target != (width, height):
        image = image.resize(target, resample)
    width, height = image.size
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    if (width, height) != (size, size):
        image = image.crop((left, top, left + size, top + size))
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / np.float32(255.0)
    mean = np.asarray(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073)), np.float32)
    std = np.asarray(cfg.get("std", (0.26862954, 0.26130258, 0.27577711)), np.float32)
    return np.ascontiguousarray(((pixels - mean) / std).transpose(2, 0, 1))


def _square_size(cfg: dict[str, Any]) -> int:
    size = cfg.get("size", 224)
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise ModelLoadError(f"non-square image input {list(size)} is not supported by the "
                                 "ONNX query path; serve this model with the torch backend")
        size = size[0]
    return int(size)


def check_preprocess_supported(cfg: dict[str, Any]) -> None:
    """Refuse a preprocessing config that :func:`preprocess_image` does not reproduce."""
    mode = cfg.get("resize_mode") or "shortest"
    if mode not in RESIZE_MODES:
        raise ModelLoadError(f"image resize mode {mode!r} is not supported by the ONNX query "
                             f"path ({', '.join(RESIZE_MODES)} are); use the torch backend")
    _square_size(cfg)


# --------------------------------------------------------------------------- the encoder
#: Whether idle intra-op threads spin (ONNX Runtime's default) or sleep. Spinning keeps them
#: busy for a while after each run, on the cores the request thread then searches with, and
#: the sessions of the two query models spin against each other. On 2 cores, encoding a query
#: with both text models, then one top-100 search: 16.5 + 27.4 ms p50 with spinning, 10.1 +
#: 9.5 ms without (a 15 M-vector index); 11.6 + 61.8 against 10.1 + 9.6 ms on the 1 M image
#: index (bench/results/onnx_spinning.json, onnx_spinning_1m.json).
ALLOW_SPINNING = False


def session_threads(threads: int) -> int:
    """ONNX Runtime intra-op threads: ``threads``, or all cores when 0 or less."""
    return threads if threads > 0 else max(1, os.cpu_count() or 1)


def open_session(path: Path, threads: int) -> Any:
    """An ONNX Runtime CPU session on ``path`` with ``threads`` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = session_threads(threads)
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning",
                                     "1" if ALLOW_SPINNING else "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # warnings about unused initialisers are noise here
    # no arena: it keeps the peak activation memory of the largest batch for the process's
    # life (60 MiB for ViT-B/16 here), and queries ran no slower without it
    options.enable_cpu_mem_arena = False
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file
        raise ModelLoadError(f"ONNX Runtime cannot load {path}: {exc}") from None


class OnnxEncoder:
    """The encoder interface of :class:`figsearch.encoders.Encoder` (``encode_texts``,
    ``encode_images``, ``warm_up``, ``model_key``, ``dim``) over an exported model."""

    device = "cpu"

    def __init__(self, directory: Path, threads: int = 0, batch_size: int = 64) -> None:
        self.directory = Path(directory)
        manifest = read_manifest(self.directory)
        self.manifest = manifest
        self.spec: str = manifest["spec"]
        self.model_key: str = manifest["model_key"]
        self.dim = int(manifest["dim"])
        image = manifest.get("image") or {}
        #: the image tower's weights (``int8`` when exported with ``--int8-image``)
        self.precision: str = image.get("precision", "float32")
        self.batch_size = batch_size
        self.text_session = self.tokenizer = None
        self.image_session = None
        if manifest.get("text"):
            self.tokenizer = TextTokenizer.from_export(self.directory, manifest["text"])
            self.text_session = open_session(self.directory / TEXT_FILE, threads)
        if manifest.get("image"):
            check_preprocess_supported(manifest["image"]["preprocess"])
            self.image_session = open_session(self.directory / IMAGE_FILE, threads)
        #: digest of the text trunk's weights (None: not recorded by the export)
        self.trunk: str | None = (manifest.get("text") or {}).get("trunk")
        projection = self.directory / PROJECTION_FILE
        self.projection = np.load(projection) if projection.is_file() else None
        self._partner: OnnxEncoder | None = None
        self._recent: OrderedDict[str, np.ndarray] | None = None
        self._recent_lock = threading.Lock()
        #: text tower runs so far (what sharing a trunk saves shows here)
        self.text_runs = 0

    def __repr__(self) -> str:
        return (f"OnnxEncoder({self.spec!r}, key={self.model_key}, dim={self.dim}, "
                f"dir={self.directory})")

    def share_trunk_with(self, other: OnnxEncoder) -> bool:
        """Encode texts through ``other``'s text tower when this tower is the same trunk plus
        a linear projection; returns whether it does.

        Why: figclip-mini trained with its text tower locked (the recipe's ``--lock-text``)
        is all-MiniLM-L6-v2 - the caption model - plus a bias-free projection after the same
        mean pooling, so a query's dense vector is the projected caption vector (normalised:
        a bias-free projection commutes with the caption vector's scaling). A default query
        then runs MiniLM once instead of twice (~8 ms of CPU here). Both exports record a
        digest of their trunk's weights; only equal digests share, and a text whose tower
        inputs differ (another cleaning, a shorter context) is encoded by this tower."""
        if (self.projection is None or not self.trunk or self.trunk != other.trunk
                or other.tokenizer is None or self.tokenizer is None
                or self.tokenizer.pad_id != other.tokenizer.pad_id
                or self.projection.shape != (self.dim, other.dim)):
            self._partner = None  # a partner of an earlier version may no longer be the same
            return False
        other._keep_recent()
        self._partner = other
        return True

    def _keep_recent(self) -> None:
        with self._recent_lock:
            if self._recent is None:
                self._recent = OrderedDict()

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised float32 vectors of ``texts``."""
        if self.text_session is None or self.tokenizer is None:
            raise ModelLoadError(f"{self.directory} has no text tower")
        texts = list(texts)
        if self._partner is not None:
            return self._through_partner(texts, self._partner)
        if self._recent is None:
            return self._encode(texts)
        return self._encode_recent(texts)

    def _through_partner(self, texts: list[str], partner: OnnxEncoder) -> np.ndarray:
        """Rows whose tower inputs match the partner's: its vectors, projected; others: ours."""
        assert self.tokenizer is not None and partner.tokenizer is not None
        assert self.projection is not None
        with timing.stage("tokenise"):
            same = [a == b for a, b in zip(self.tokenizer.model_inputs(texts),
                                           partner.tokenizer.model_inputs(texts), strict=True)]
        out = np.zeros((len(texts), self.dim), np.float32)
        shared = [i for i, s in enumerate(same) if s]
        own = [i for i, s in enumerate(same) if not s]
        if shared:
            base = partner.encode_texts([texts[i] for i in shared])
            out[shared] = _unit_rows(base @ self.projection.T)
        if own:
            out[own] = self._encode([texts[i] for i in own])
        return out

    def _encode_recent(self, texts: list[str]) -> np.ndarray:
        """:meth:`_encode` with the last :data:`SHARED_RECENT` texts' vectors kept, so the
        partner's and this encoder's calls for one query run the tower once."""
        assert self._recent is not None
        with self._recent_lock:
            hits = {t: self._recent[t] for t in texts if t in self._recent}
        missing = list(dict.fromkeys(t for t in texts if t not in hits))
        if missing:
            vectors = self._encode(missing)
            with self._recent_lock:
                for text, vector in zip(missing, vectors, strict=True):
                    hits[text] = vector
                    self._recent[text] = vector
                    self._recent.move_to_end(text)
                while len(self._recent) > SHARED_RECENT:
                    self._recent.popitem(last=False)
        return np.stack([hits[t] for t in texts]) if texts else \
            np.zeros((0, self.dim), np.float32)

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        assert self.tokenizer is not None and self.text_session is not None
        with timing.stage("tokenise"):
            rows = self.tokenizer.token_ids(texts)
        out = np.zeros((len(rows), self.dim), np.float32)
        lengths = [len(r) for r in rows]
        for batch in length_batches(lengths, self.batch_size, CPU_TEXT_BATCH_TOKENS):
            with timing.stage("tokenise"):
                ids = self.tokenizer.pad([rows[i] for i in batch])
            with timing.stage("encode"):
                out[batch] = self.text_session.run(None, {"input_ids": ids})[0]
            self.text_runs += 1
        return _unit_rows(out)

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """L2-normalised float32 vectors of PIL images, preprocessed as the model's config says."""
        if self.image_session is None:
            raise ModelLoadError(f"{self.directory} has no image tower")
        cfg = self.manifest["image"]["preprocess"]
        out = [np.zeros((0, self.dim), np.float32)]
        for start in range(0, len(images), self.batch_size):
            with timing.stage("preprocess"):
                pixels = np.stack([preprocess_image(im, cfg)
                                   for im in images[start:start + self.batch_size]])
            with timing.stage("encode"):
                out.append(self.image_session.run(None, {"pixels": pixels})[0])
        return _unit_rows(np.concatenate(out))

    def warm_up(self, max_rows: int = 32) -> int:
        """Run each tower once (ONNX Runtime plans its memory on a first run); returns the runs."""
        runs = 0
        if self.text_session is not None:
            for rows in (1, max(1, max_rows)):
                self.encode_texts(["figure"] * rows)
                runs += 1
        if self.image_session is not None:
            from PIL import Image as PILImage

            self.encode_images([PILImage.new("RGB", (64, 48), "white")])
            runs += 1
        return runs

    def close(self) -> None:
        """Drop the sessions (their memory goes with them)."""
        self.text_session = self.image_session = None


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def load_onnx_encoder(root: Path, model_key: str, threads: int = 0,
                      batch_size: int = 64) -> OnnxEncoder:
    """The exported encoder of ``model_key`` under the export root ``root``."""
    return OnnxEncoder(find_export(root, model_key), threads=threads, batch_size=batch_size)
