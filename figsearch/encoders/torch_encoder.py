"""The torch encoder: one open_clip model turning images and texts into L2-normalised float32
vectors, in batches whose shapes come from a few buckets (padding trimmed from text batches
where that is exact), plus int8 quantisation of its text tower."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from figsearch import timing
from figsearch.encoders.clip_loading import create_clip, make_transform
from figsearch.encoders.cpu import _torch_dtype, cpu_precision
from figsearch.encoders.lengths import length_batches, text_batch_tokens
from figsearch.encoders.spec import TRAIN_HINT, LoadedClip, ModelLoadError, image_size

if TYPE_CHECKING:
    import torch
    from PIL import Image

log = logging.getLogger("figsearch.encoders")


class Encoder:
    """Batched image/text encoding with one model; vectors are float32 and L2-normalised."""

    def __init__(self, loaded: LoadedClip, device: str, batch_size: int = 64,
                 precision: str = "float32") -> None:
        self.loaded = loaded
        self.device = device
        self.precision = cpu_precision(precision) if device.startswith("cpu") else "float32"
        self.model = loaded.model.to(device, dtype=_torch_dtype(self.precision)).eval()
        self.spec = loaded.spec
        self.model_key = loaded.model_key
        self.batch_size = batch_size
        self.tokenizer = loaded.tokenizer
        self.context_length = int(getattr(loaded.tokenizer, "context_length", 77))
        self.dim = int(loaded.model_cfg["embed_dim"])
        self.preprocess = make_transform(loaded.preprocess_cfg)
        self.quantized = False  # set by quantize_text_tower
        self.pad_token: int | None = None  # set by check_padding_trim when trimming is exact
        self.check_padding_trim()

    def __repr__(self) -> str:
        return (f"Encoder({self.spec!r}, key={self.model_key}, dim={self.dim}, "
                f"device={self.device}, precision={self.precision})")

    def _autocast(self) -> Any:
        import torch

        if self.device.startswith("cuda"):
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return torch.autocast("cpu", enabled=False)

    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """Embed a batch of preprocessed images (n, 3, H, W)."""
        import torch

        chunks = []
        with torch.inference_mode(), self._autocast():
            for start in range(0, len(pixels), self.batch_size):
                batch = pixels[start:start + self.batch_size].to(
                    self.device, dtype=_torch_dtype(self.precision), non_blocking=True)
                chunks.append(self.model.encode_image(batch, normalize=True).float().cpu())
        return _normalised(chunks, self.dim)

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed PIL images (converted and preprocessed exactly as the model config says)."""
        import torch

        out = [np.zeros((0, self.dim), np.float32)]
        for start in range(0, len(images), self.batch_size):
            with timing.stage("preprocess"):
                batch = torch.stack(
                    [self.preprocess(im) for im in images[start:start + self.batch_size]]
                )
            with timing.stage("encode"):
                out.append(self.encode_pixels(batch))
        return np.concatenate(out)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts (tokenised with the model's tokenizer and context length), in batches of
        similar length (:func:`length_batches`) when padding is trimmed; rows in ``texts``'s
        order."""
        import torch

        if not texts:
            return np.zeros((0, self.dim), np.float32)
        with timing.stage("tokenise"):
            tokens = self.tokenizer(list(texts))
        # untrimmed, every row runs at the full context: equal lengths keep the given order
        lengths = ((tokens != self.pad_token).sum(1).tolist() if self.pad_token is not None
                   else [0] * len(tokens))
        cap = text_batch_tokens(str(self.device))
        order, chunks = [], []
        with torch.inference_mode(), self._autocast():
            for batch in length_batches(lengths, self.batch_size, cap):
                rows = torch.as_tensor(batch)
                with timing.stage("encode"):
                    chunks.append(self._encode_tokens(tokens[rows].to(self.device)).float().cpu())
                order.append(batch)
        vectors = np.empty((len(texts), self.dim), np.float32)
        vectors[np.concatenate(order)] = _normalised(chunks, self.dim)
        return vectors

    def _encode_tokens(self, tokens: torch.Tensor, trim: bool = True) -> torch.Tensor:
        """The text tower on ``tokens``, cut after the batch's last real token when
        :meth:`check_padding_trim` found that exact (queries are short and the tokenizer pads
        them to the full context, 77 or 256 tokens, which would cost 5-20x the work)."""
        if not trim or self.pad_token is None:
            return self.model.encode_text(tokens, normalize=True)
        rows = len(tokens)
        length = max(1, int((tokens != self.pad_token).cumsum(1).argmax(1).max()) + 1)
        tokens = _pad_rows(tokens[:, :bucket(length, tokens.shape[1], LENGTH_STEP)])
        if _has_builtin_text_transformer(self.model):
            return _clip_text_prefix(self.model, tokens)[:rows]
        return self.model.encode_text(tokens, normalize=True)[:rows]

    def warm_up(self, max_rows: int = 32) -> int:
        """Run the text tower once for every (rows, length) bucket queries will use (batches
        of up to ``max_rows`` queries of up to 32 tokens; longer ones one at a time), and the
        image tower once, so no request pays for the kernels built on a shape's first use
        (bfloat16 matmuls on CPU take up to a second then). Returns the shapes run."""
        import torch

        shapes = 0
        with torch.inference_mode(), self._autocast():
            if self.pad_token is not None:
                longest = self.context_length
                for length in range(LENGTH_STEP, longest + LENGTH_STEP, LENGTH_STEP):
                    length = min(length, longest)
                    for rows in _row_buckets(max_rows if length <= 32 else 1):
                        tokens = self.tokenizer(["figure " * (length - 2)] * rows)
                        self._encode_tokens(tokens.to(self.device))
                        shapes += 1
            size = image_size(self.loaded.preprocess_cfg)
            self.encode_pixels(torch.zeros(1, 3, size, size))
        return shapes + 1

    def check_padding_trim(self) -> bool:
        """Enable trimming of padding for text encoding if it gives the same vectors.

        True for towers whose output ignores padding: open_clip's causal text transformer
        (pooled at the end-of-text token, which attends only to earlier tokens) and HF towers
        (padding is masked out). Checked on probe texts against the untrimmed forward, so a tower
        that does attend to padding keeps the full context.
        """
        import torch

        self.pad_token = None
        probe = self.tokenizer(["a", "signalling pathway of TREM2 in microglia, western blot"])
        if probe.ndim != 2 or probe.shape[1] < 2:
            return False
        pad = int(probe[0, -1])
        if bool((probe[1] != pad).all()):
            return False  # the longer probe fills the context: no padding to learn from
        probe = probe.to(self.device)
        with torch.inference_mode(), self._autocast():
            full = self._encode_tokens(probe, trim=False).float()
            self.pad_token = pad
            try:
                trimmed = self._encode_tokens(probe).float()
            except (RuntimeError, ValueError, IndexError) as exc:  # a tower that needs full length
                log.debug("%s: no padding trim (%s)", self.spec, exc)
                self.pad_token = None
                return False
        agree = float(torch.nn.functional.cosine_similarity(full, trimmed).min())
        exact = self.precision == "float32" and not self.quantized
        if agree < (0.9999 if exact else 0.999):
            log.debug("%s: no padding trim (cosine %.6f)", self.spec, agree)
            self.pad_token = None
        return self.pad_token is not None


#: trimmed text lengths are rounded up to a multiple of this, and batch rows to a few counts
#: (:func:`row_bucket`), so that a few shapes serve every query (each new shape costs a kernel
#: build on CPU)
LENGTH_STEP = 8
#: batches over this many rows are padded to a multiple of it (fewer are a power of two)
ROW_STEP = 8


def bucket(length: int, limit: int, step: int) -> int:
    """``length`` rounded up to a multiple of ``step``, at most ``limit``."""
    return min(limit, -(-length // step) * step)


def row_bucket(rows: int) -> int:
    """The row count a batch of ``rows`` queries runs as: a power of two up to 8, then a multiple
    of 8. Under load batches of 17-24 queries are common, and padding them to 32 rows was a
    third more work than 24."""
    if rows <= ROW_STEP:
        return 1 << max(0, rows - 1).bit_length()
    return -(-rows // ROW_STEP) * ROW_STEP


def _row_buckets(largest: int) -> list[int]:
    """Every row count :func:`_pad_rows` gives batches of up to ``largest`` queries."""
    return sorted({row_bucket(rows) for rows in range(1, max(1, largest) + 1)})


def _pad_rows(tokens: torch.Tensor) -> torch.Tensor:
    """``tokens`` with copies of its first row appended up to :func:`row_bucket` rows (the
    extra rows' outputs are dropped; each row is encoded independently)."""
    import torch

    rows = len(tokens)
    target = row_bucket(rows)
    if target == rows:
        return tokens
    return torch.cat([tokens, tokens[:1].expand(target - rows, -1)])



def _has_builtin_text_transformer(model: Any) -> bool:
    """open_clip's CLIP class with its own text transformer (not an HF or custom tower)."""
    from open_clip.model import CLIP

    return isinstance(model, CLIP)


def _clip_text_prefix(model: Any, text: torch.Tensor) -> torch.Tensor:
    """``CLIP.encode_text(text, normalize=True)`` for ``text`` cut to its first L tokens.

    open_clip's ``encode_text`` adds all 77 positional embeddings and the 77x77 causal mask,
    so it only takes full-length input; this slices both to L. Every other step is the model's
    own module, and :meth:`Encoder.check_padding_trim` checks the result against the full
    forward before it is used.
    """
    import torch
    import torch.nn.functional as F
    from open_clip.transformer import text_global_pool

    length = text.shape[1]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(text).to(cast_dtype)
    x = x + model.positional_embedding[:length].to(cast_dtype)
    mask = model.attn_mask[:length, :length] if model.attn_mask is not None else None
    x = model.transformer(x, attn_mask=mask)
    x = model.ln_final(x)
    x = text_global_pool(x, text, model.text_pool_type,
                         eos_token_id=getattr(model, "text_eos_id", None))
    if model.text_projection is not None:
        if isinstance(model.text_projection, torch.nn.Linear):
            x = model.text_projection(x)
        else:
            x = x @ model.text_projection
    return F.normalize(x, dim=-1)



def text_tower(model: Any) -> Any:
    """The text-side module of an open_clip model: ``model.text`` (HF text towers, CustomTextCLIP)
    or ``model.transformer`` (the built-in text transformer of CLIP; the image side is
    ``model.visual`` and stays untouched)."""
    tower = getattr(model, "text", None) or getattr(model, "transformer", None)
    if tower is None:
        raise ModelLoadError(f"{type(model).__name__} has no text tower to quantise")
    return tower


def quantize_text_tower(encoder: Encoder) -> int:
    """Int8 dynamic quantisation of the text tower's Linear layers, in place (CPU only).

    Weights become int8, activations are quantised per batch at run time
    (``torch.ao.quantization.quantize_dynamic``); the image tower keeps float weights. Query
    vectors stay close to the float model's (``bench/quantise.py`` checks cosine >= 0.99 and the
    top-10). Returns how many Linear layers were quantised (0 on a non-CPU device: no-op).
    """
    import torch
    from torch.ao.quantization import quantize_dynamic

    if not str(encoder.device).startswith("cpu"):
        return 0
    if encoder.precision != "float32":
        raise ValueError("int8 quantisation of the text tower needs float32 weights "
                         f"(FIGSEARCH_CPU_PRECISION=float32), not {encoder.precision}")
    tower = text_tower(encoder.model)
    before = sum(type(m) is torch.nn.Linear for m in tower.modules())
    dtype = next(p.dtype for p in tower.parameters() if p.is_floating_point())
    quantize_dynamic(tower, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
    if hasattr(tower, "get_cast_dtype"):
        # open_clip's text transformer reads its dtype off an MLP weight, which is a packed
        # int8 method now; the rest of the tower (embeddings, norms, attention) keeps ``dtype``.
        tower.get_cast_dtype = lambda: dtype
    after = sum(type(m) is torch.nn.Linear for m in tower.modules())
    encoder.quantized = True
    encoder.check_padding_trim()  # per-batch activation scales see the padding: check again
    return before - after


def _normalised(chunks: list[Any], dim: int) -> np.ndarray:
    if not chunks:
        return np.zeros((0, dim), np.float32)
    vectors = np.concatenate([c.numpy() for c in chunks]).astype(np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)



def default_device() -> str:
    """CUDA when available, else CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(spec: str, device: str | None = None, batch_size: int = 64,
               precision: str = "float32") -> Encoder:
    """Load ``spec`` (hf-hub id, model directory or config name) as an :class:`Encoder`.

    ``precision`` applies on CPU (``float32``, ``bfloat16`` or ``auto``); CUDA runs bfloat16
    autocast on float weights either way.
    """
    if not spec or not spec.strip():
        raise ModelLoadError("no model given. " + TRAIN_HINT)
    device = device or default_device()
    loaded = create_clip(spec, device=device)
    return Encoder(loaded, device=device, batch_size=batch_size, precision=precision)

