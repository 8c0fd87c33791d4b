"""Export a model's towers to ONNX for the torch-free query path (:mod:`figsearch.onnx_encoder`).

``figsearch index`` exports the models of every version it builds (:func:`export_for_build`),
so ``figsearch serve`` runs them on ONNX Runtime by default; ``figsearch export-onnx`` calls
:func:`export_data_dir`: the image/text model of the current
index version and, when the version has a caption index, its sentence encoder, each into
``<onnx root>/<model key>/`` (default root ``<data dir>/models/onnx``). Each export

* traces the towers with ``torch.onnx.export`` (dynamo), rows and text length dynamic;
* writes the tokenizer as a ``tokenizers`` JSON file (open_clip's own BPE tokenizer rebuilt as a
  ``tokenizers`` BPE model, HF tokenizers as they are) with the rules open_clip applies around
  it (cleaning, padding id, context length);
* checks the exported towers against the torch model on probe texts and an image (cosine
  >= :data:`MIN_COSINE` per row) before it is used;
* is written into a temporary folder and renamed into place with its manifest last, so a crash
  leaves either the old export or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from figsearch.encoders import ModelLoadError
from figsearch.onnx_encoder import (
    FORMAT,
    IMAGE_FILE,
    MANIFEST,
    PROJECTION_FILE,
    TEXT_FILE,
    TOKENIZER_FILE,
    OnnxEncoder,
    check_preprocess_supported,
    checked_export,
    export_dir_name,
)

if TYPE_CHECKING:
    from figsearch.caption_index import CaptionEncoder
    from figsearch.core.config import Settings
    from figsearch.encoders import Encoder

log = logging.getLogger(__name__)

#: an export whose towers differ more than this from the torch model (cosine, any probe row) is
#: refused: float32 ONNX Runtime and torch agree to about 1e-6
MIN_COSINE = 0.9999
#: the same for a tower quantised to int8 (#15's criterion for a quantised tower)
MIN_COSINE_INT8 = 0.99
PROBE_TEXTS = (
    "a",
    "TREM2 signalling pathway in microglia",
    "Kaplan–Meier curve for EGFR-mutant NSCLC, overall survival",
    "western blot of p53 &amp; MDM2 after   nutlin-3 treatment",
    "Fig. 3: (A) H&E staining of liver sections; scale bar = 50 µm. (B) quantification, "
    "n = 6 mice per group, *p < 0.05 " * 8,  # longer than any context: truncation
)


class ExportError(RuntimeError):
    """The model cannot be exported, or its export does not match it."""


# --------------------------------------------------------------------------- tokenizers
def tokenizer_export(tokenizer: Any, context_length: int) -> tuple[Any, dict[str, Any]]:
    """(``tokenizers.Tokenizer``, rules) reproducing an open_clip tokenizer."""
    from open_clip.tokenizer import HFTokenizer, SimpleTokenizer

    if isinstance(tokenizer, SimpleTokenizer):
        if tokenizer.reduction_fn is not None:
            raise ExportError("open_clip tokenizers with a reduction mask cannot be exported")
        rules = {"clean": _clean_kind(tokenizer.clean_fn), "pad_id": 0, "strip_id": None}
        return _bpe_tokenizer(tokenizer), {**rules, "context_length": context_length}
    if isinstance(tokenizer, HFTokenizer):
        if tokenizer.tokenizer_mode:
            raise ExportError(f"HF tokenizer mode {tokenizer.tokenizer_mode!r} cannot be exported")
        hf = tokenizer.tokenizer
        strip = hf.sep_token_id if tokenizer.strip_sep_token else None
        rules = {"clean": _clean_kind(tokenizer.clean_fn), "pad_id": int(hf.pad_token_id or 0),
                 "strip_id": strip, "context_length": context_length}
        return _hf_backend(hf), rules
    raise ExportError(f"tokenizer {type(tokenizer).__name__} cannot be exported")


def _clean_kind(clean_fn: Any) -> str:
    from open_clip import tokenizer as oc

    kinds = {oc._clean_whitespace: "whitespace", oc._clean_lower: "lower",
             oc._clean_canonicalize: "canonicalize"}
    if clean_fn not in kinds:
        raise ExportError(f"unknown open_clip text cleaning {clean_fn!r}")
    return kinds[clean_fn]


def _hf_backend(hf_tokenizer: Any) -> Any:
    """A copy of a transformers fast tokenizer's ``tokenizers`` backend, padding and truncation
    off (the runtime sets its own)."""
    from tokenizers import Tokenizer

    backend = getattr(hf_tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ExportError(f"{type(hf_tokenizer).__name__} is not a fast (tokenizers) tokenizer")
    copy = Tokenizer.from_str(backend.to_str())
    copy.no_padding()
    copy.no_truncation()
    return copy


def _bpe_tokenizer(simple: Any) -> Any:
    """open_clip's ``SimpleTokenizer`` as a ``tokenizers`` BPE model: its vocabulary and merges,
    its word pattern, byte-level symbols without GPT-2's extra split, ``</w>`` word ends, and
    start/end-of-text around each text."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors

    merges = sorted(simple.bpe_ranks, key=simple.bpe_ranks.get)
    tokenizer = Tokenizer(models.BPE(vocab=dict(simple.encoder), merges=merges,
                                     end_of_word_suffix="</w>", continuing_subword_prefix=""))
    pattern = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    specials = [simple.decoder[i] for i in simple.all_special_ids]
    tokenizer.add_special_tokens(specials)
    sot, eot = simple.decoder[simple.sot_token_id], simple.decoder[simple.eot_token_id]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{sot} $A {eot}",
        special_tokens=[(sot, simple.sot_token_id), (eot, simple.eot_token_id)],
    )
    return tokenizer


# --------------------------------------------------------------------------- towers
def _tower(model: Any, forward: Callable[[Any, Any], Any]) -> Any:
    """``forward(model, input)`` as a module the exporter can trace (``model`` registered)."""
    import torch

    class Tower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            return forward(self.model, inputs)

    return Tower().eval()


def trunk_digest(transformer: Any) -> str:
    """sha256 of an HF text trunk's weights (names, shapes, float32 bytes; the unused pooler
    head left out): equal digests mean one trunk (:meth:`OnnxEncoder.share_trunk_with`)."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(transformer.state_dict().items()):
        if name.startswith("pooler."):
            continue
        data = tensor.detach().float().contiguous().cpu().numpy()
        digest.update(f"{name}:{tuple(data.shape)}".encode())
        digest.update(data.tobytes())
    return digest.hexdigest()


def _mean_pooled_trunk(model: Any) -> tuple[Any, np.ndarray] | None:
    """(HF trunk, projection weights) of a CLIP text tower that mean-pools an HF trunk and
    projects it without bias, else None (other towers never share a trunk)."""
    import torch

    text = getattr(model, "text", None)
    proj = getattr(text, "proj", None)
    if (type(getattr(text, "pooler", None)).__name__ != "MeanPooler"
            or not isinstance(proj, torch.nn.Linear) or proj.bias is not None
            or getattr(text, "transformer", None) is None):
        return None
    return text.transformer, proj.weight.detach().float().cpu().numpy()


def _text_forward(model: Any, input_ids: Any) -> Any:
    """ids (rows, length) -> unit vectors; length is the batch's longest text."""
    from figsearch.encoders import _clip_text_prefix, _has_builtin_text_transformer

    if _has_builtin_text_transformer(model):
        return _clip_text_prefix(model, input_ids)
    return model.encode_text(input_ids, normalize=True)


def _image_forward(model: Any, pixels: Any) -> Any:
    return model.encode_image(pixels, normalize=True)


def _sentence_forward(pad_id: int) -> Callable[[Any, Any], Any]:
    """A sentence-transformers model's forward (transformer, mean pooling, normalisation)."""

    def forward(model: Any, input_ids: Any) -> Any:
        mask = (input_ids != pad_id).long()
        return model({"input_ids": input_ids, "attention_mask": mask})["sentence_embedding"]

    return forward


def _export(module: Any, example: Any, path: Path, input_name: str, dynamic: dict[int, Any]) -> None:
    """``module`` on ``example`` to an ONNX file, the named dimensions dynamic."""
    import torch

    started = time.perf_counter()
    try:
        with torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(
                module, (example,), str(path), dynamo=True, verbose=False,
                input_names=[input_name], output_names=["unit_vectors"],
                dynamic_shapes=(dynamic,), external_data=False,
            )
    except Exception as exc:  # noqa: BLE001 - exporter failures come in many types
        raise ExportError(f"torch.onnx.export of {path.name} failed: {type(exc).__name__}: "
                          f"{str(exc)[:400]}") from None
    log.info("exported %s (%.1f MB) in %.1f s", path.name, path.stat().st_size / 1e6,
             time.perf_counter() - started)


def _dims(*names: str) -> dict[int, Any]:
    from torch.export import Dim

    return {axis: Dim(name, min=2 if name == "length" else 1, max=4096)
            for axis, name in enumerate(names) if name}


# --------------------------------------------------------------------------- exports
def quantize_int8(path: Path) -> None:
    """Quantise an exported tower in place: int8 weights (per output channel) and int8
    activations (scaled per batch) for its MatMul/Gemm nodes, with ONNX Runtime's dynamic
    quantisation; other nodes keep float32.

    Weights use 7 bits (``reduce_range``): on CPUs without VNNI (AVX2 only, e.g. this AMD EPYC
    VM) ONNX Runtime's u8 x s8 products saturate with 8-bit weights, and the tiny test model's
    image vectors fell to cosine 0.976 of the float model's (0.99 with 7 bits); the export may
    be served on any CPU, so it is quantised for the weaker one."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantized = path.with_name(path.stem + ".int8.onnx")
    root_logger = logging.getLogger()
    was_disabled, root_logger.disabled = root_logger.disabled, True
    try:  # the quantiser logs a "consider pre-processing" warning on the root logger
        quantize_dynamic(str(path), str(quantized), weight_type=QuantType.QInt8,
                         per_channel=True, reduce_range=True,
                         op_types_to_quantize=["MatMul", "Gemm"])
    finally:
        root_logger.disabled = was_disabled
    quantized.replace(path)


def export_clip(encoder: Encoder, root: Path, images: list[Any] | None = None,
                int8_image: bool = False) -> Path:
    """Export ``encoder``'s text and image towers under ``root``; returns the export folder.

    ``int8_image`` quantises the image tower (:func:`quantize_int8`): a ViT-B/16 image query
    then takes 97 instead of 225 ms here, and the export is refused unless every probe image's
    vector stays within cosine :data:`MIN_COSINE_INT8` of the float model's."""
    import torch

    from figsearch.encoders import image_size

    if encoder.quantized:
        raise ExportError("export the float model, not one quantised in torch")
    model = encoder.model.float().eval()
    check_preprocess_supported(encoder.loaded.preprocess_cfg)
    tokenizer, rules = tokenizer_export(encoder.tokenizer, encoder.context_length)
    if encoder.pad_token is None:
        raise ExportError(f"{encoder.spec}: the text tower attends to padding, so queries "
                          "cannot be encoded at their own length; serve it with torch")

    def write(folder: Path) -> dict[str, Any]:
        tokenizer.save(str(folder / TOKENIZER_FILE))
        ids = torch.as_tensor(encoder.tokenizer(list(PROBE_TEXTS[1:3]))[:, :12])
        _export(_tower(model, _text_forward), ids, folder / TEXT_FILE, "input_ids", _dims("rows", "length"))
        side = image_size(encoder.loaded.preprocess_cfg)
        _export(_tower(model, _image_forward), torch.zeros(2, 3, side, side), folder / IMAGE_FILE,
                "pixels", _dims("rows"))
        if int8_image:
            quantize_int8(folder / IMAGE_FILE)
        text = dict(rules)
        trunk = _mean_pooled_trunk(model)
        if trunk is not None:
            np.save(folder / PROJECTION_FILE, trunk[1])
            text["trunk"] = trunk_digest(trunk[0])
        return {
            "spec": encoder.spec, "model_key": encoder.model_key, "dim": encoder.dim,
            "text": text, "image": {"preprocess": encoder.loaded.preprocess_cfg,
                                    "precision": "int8" if int8_image else "float32"},
        }

    def check(exported: OnnxEncoder) -> dict[str, float]:
        probes = _probe_images(images)
        return {"text_min_cosine": _min_cosine(exported.encode_texts(PROBE_TEXTS),
                                               _float_texts(encoder, PROBE_TEXTS)),
                "image_min_cosine": _min_cosine(exported.encode_images(probes),
                                                encoder.encode_images(probes))}

    return _write_export(root, encoder.model_key, write, check)


def export_caption_model(encoder: CaptionEncoder, root: Path) -> Path:
    """Export a sentence-transformers caption encoder (text only) under ``root``."""
    model = encoder.model
    names = [type(m).__name__ for m in model]
    pooling = model[1] if len(model) > 1 else None
    mode = getattr(pooling, "pooling_mode", None) or (
        "mean" if getattr(pooling, "pooling_mode_mean_tokens", False) else None)
    if names[:1] != ["Transformer"] or mode != "mean" or len(names) > 3 or (
            len(names) == 3 and names[2] != "Normalize"):
        raise ExportError(f"caption model {encoder.spec!r} ({' -> '.join(names)}) is not a "
                          "mean-pooled sentence encoder; only those export")
    if getattr(model[0], "do_lower_case", False):
        raise ExportError(f"caption model {encoder.spec!r} lower-cases in sentence-transformers")
    hf = model.tokenizer
    pad_id = int(hf.pad_token_id or 0)
    rules: dict[str, Any] = {"clean": "none", "pad_id": pad_id, "strip_id": None,
                             "context_length": int(model.max_seq_length or 512)}
    tokenizer = _hf_backend(hf)

    def write(folder: Path) -> dict[str, Any]:
        tokenizer.save(str(folder / TOKENIZER_FILE))
        ids = hf(list(PROBE_TEXTS[1:3]), return_tensors="pt", padding=True)["input_ids"][:, :12]
        _export(_tower(model, _sentence_forward(pad_id)), ids, folder / TEXT_FILE, "input_ids",
                _dims("rows", "length"))
        return {"spec": encoder.spec, "model_key": encoder.model_key, "dim": encoder.dim,
                "text": {**rules, "trunk": trunk_digest(model[0].auto_model)}, "image": None}

    def check(exported: OnnxEncoder) -> dict[str, float]:
        return {"text_min_cosine": _min_cosine(exported.encode_texts(PROBE_TEXTS),
                                               encoder.encode_texts(list(PROBE_TEXTS)))}

    return _write_export(root, encoder.model_key, write, check)


def _write_export(root: Path, model_key: str, write: Any, check: Any) -> Path:
    """Write into a temporary sibling folder, check, then swap it in (manifest last)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / export_dir_name(model_key)
    for stale in root.glob(f".{final.name}.tmp-*"):  # left by an export that crashed
        shutil.rmtree(stale, ignore_errors=True)
    folder = root / f".{final.name}.tmp-{time.time_ns()}"
    folder.mkdir()
    try:
        manifest = {"format": FORMAT, **write(folder), "exported_at": time.time()}
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
        checks = check(OnnxEncoder(folder, threads=0))
        floors = {k: MIN_COSINE_INT8 if _precision(manifest, k.split("_")[0]) == "int8"
                  else MIN_COSINE for k in checks}
        failed = {k: v for k, v in checks.items() if v < floors[k]}
        if failed:
            raise ExportError(f"the export of {model_key} differs from the torch model: {failed} "
                              f"(cosine must be >= {[floors[k] for k in failed]})")
        manifest["checks"] = checks
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if final.exists():
            shutil.rmtree(final)
        folder.rename(final)
    finally:
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
    log.info("ONNX export of %s in %s (%s)", model_key, final, manifest["checks"])
    return final


def _precision(manifest: dict[str, Any], tower: str) -> str:
    return str((manifest.get(tower) or {}).get("precision", "float32"))


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return round(float((a * b).sum(1).min()), 6)


def _float_texts(encoder: Encoder, texts: tuple[str, ...]) -> np.ndarray:
    """The torch model's vectors at full context, no padding trimmed (the reference)."""
    import torch

    with torch.inference_mode():
        tokens = encoder.tokenizer(list(texts))
        return encoder._encode_tokens(tokens, trim=False).float().numpy()


def _probe_images(images: list[Any] | None) -> list[Any]:
    """The caller's images, else two drawn ones (a wide and a tall one, RGB and grey)."""
    if images:
        return list(images)
    from PIL import Image, ImageDraw

    wide = Image.new("RGB", (320, 200), "white")
    ImageDraw.Draw(wide).rectangle((40, 30, 200, 170), fill=(200, 30, 30))
    tall = Image.new("L", (150, 260), 40)
    ImageDraw.Draw(tall).ellipse((20, 50, 130, 200), fill=220)
    return [wide, tall]


def export_data_dir(settings: Settings, root: Path | None = None,
                    int8_image: bool = False) -> list[Path]:
    """Export the current index version's model, and its caption model when the version has a
    caption index, under ``root`` (default: the settings' ONNX folder)."""
    from figsearch.api.state import onnx_root
    from figsearch.caption_index import CaptionEncoder, load_caption_index
    from figsearch.datadir import resolve_path
    from figsearch.encoders import load_model, resolve_model_spec
    from figsearch.index import current_version_dir, read_manifest

    root = Path(root) if root else onnx_root(settings)
    version = current_version_dir(settings.indexes_dir)
    if version is None:
        raise ExportError(f"no index in {settings.indexes_dir}; run `figsearch index` first")
    manifest = read_manifest(version)
    done: list[Path] = []
    if manifest.get("kind") != "text":
        spec = settings.model or str(manifest.get("model_spec") or "")
        spec = resolve_path(spec, settings.data_dir) or resolve_model_spec(settings)
        encoder = load_model(spec, device="cpu", precision="float32")
        if manifest.get("model_key") and manifest["model_key"] != encoder.model_key:
            raise ModelLoadError(f"index {version.name} was built with {manifest['model_key']}, "
                                 f"the model {spec} is {encoder.model_key}")
        done.append(export_clip(encoder, root, int8_image=int8_image))
    captions = load_caption_index(version, nprobe=1)
    caption_spec = settings.caption_model or str((captions.manifest if captions else {}).get(
        "model_spec") or "")
    if captions is not None and caption_spec:
        done.append(export_caption_model(CaptionEncoder(caption_spec, device="cpu"), root))
    return done


# --------------------------------------------------------------------------- at build time
#: exports this process made, by model key: a key names exact weights (a digest of them), so a
#: later build of the same model in another data dir copies the folder instead of tracing
#: the towers again (8 s each for the tests' tiny models)
_MADE: dict[str, Path] = {}


def export_for_build(root: Path, encoder: Any | None, caption_encoder: Any | None
                     ) -> dict[str, Any]:
    """The build's ONNX step: a checked export of the version's image model and caption model
    under ``root`` (one already there for the same model key is kept). Returns the manifest
    entry ``{"onnx": ...}``: per model its key and export folder, or why it was skipped (then
    ``figsearch serve`` encodes that model's queries with torch, and says so). A model that
    cannot be exported does not fail the build."""
    note: dict[str, Any] = {}
    if encoder is not None:
        note["model"] = _ensure_export(root, encoder, _export_clip_on_cpu)
    if caption_encoder is not None:
        note["caption_model"] = _ensure_export(root, caption_encoder, _export_caption_on_cpu)
    if not note:
        note["skipped"] = "no model to export (no image model, no caption model)"
    return {"onnx": note}


def _ensure_export(root: Path, encoder: Any, export: Callable[[Any, Path], Path]
                   ) -> dict[str, Any]:
    key = str(encoder.model_key)
    with contextlib.suppress(ModelLoadError):
        return {"model_key": key, "export": checked_export(root, key).name, "reused": True}
    started = time.perf_counter()
    made = _MADE.get(key)
    try:
        if made is not None and made.is_dir():
            folder = _copy_export(made, root, key)
        else:
            folder = export(encoder, root)
    except (ExportError, ModelLoadError) as exc:
        log.warning("no ONNX export of %s (its queries will be encoded with torch): %s", key, exc)
        return {"model_key": key, "skipped": str(exc)[:500]}
    _MADE[key] = folder
    return {"model_key": key, "export": folder.name,
            "seconds": round(time.perf_counter() - started, 2)}


def _copy_export(source: Path, root: Path, model_key: str) -> Path:
    """A checked export copied under ``root`` (temporary folder renamed in, as when written)."""
    checked_export(source.parent, model_key)
    final = Path(root) / export_dir_name(model_key)
    tmp = final.with_name(f".{final.name}.tmp-{time.time_ns()}")
    shutil.copytree(source, tmp)
    try:
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _export_clip_on_cpu(encoder: Encoder, root: Path) -> Path:
    """:func:`export_clip` of ``encoder``, from a float32 CPU copy when the build's encoder
    runs on a GPU, in bfloat16 or with an int8 text tower (the export traces float32 on CPU,
    and must not convert the build's own encoder)."""
    if str(encoder.device) != "cpu" or encoder.precision != "float32" or encoder.quantized:
        from figsearch.encoders import load_model

        encoder = load_model(encoder.spec, device="cpu", precision="float32")
    return export_clip(encoder, root)


def _export_caption_on_cpu(encoder: CaptionEncoder, root: Path) -> Path:
    """:func:`export_caption_model`, from a CPU copy when the build's encoder is elsewhere."""
    if str(encoder.device) != "cpu":
        from figsearch.caption_index import CaptionEncoder

        encoder = CaptionEncoder(encoder.spec, device="cpu")
    return export_caption_model(encoder, root)


# --------------------------------------------------------------------------- the CLI verb
def add_arguments(parser: Any) -> None:
    """``figsearch export-onnx`` flags."""
    parser.add_argument("--out", default=None,
                        help="export root (default: $FIGSEARCH_ONNX_DIR or DATA/models/onnx)")
    parser.add_argument("--model", default=None,
                        help="model spec to export (default: the current index's model)")
    parser.add_argument("--int8-image", action="store_true",
                        help="quantise the image tower to int8 (about 2x faster image queries; "
                             "refused unless every probe vector keeps cosine >= 0.99)")


def command(args: Any) -> int:
    """Export the current index's models to ONNX; print where, and the agreement checks."""
    import sys

    settings: Settings = args.settings
    if args.model:
        settings = settings.model_copy(update={"model": args.model})
    started = time.perf_counter()
    try:
        folders = export_data_dir(settings, Path(args.out) if args.out else None,
                                  int8_image=args.int8_image)
    except (ExportError, ModelLoadError) as exc:
        print(f"figsearch export-onnx: {exc}", file=sys.stderr)
        return 1
    for folder in folders:
        manifest = json.loads((folder / MANIFEST).read_text())
        size = sum(f.stat().st_size for f in folder.iterdir()) / 1e6
        print(f"{manifest['model_key']}: {folder} ({size:.0f} MB; checks {manifest['checks']})")
    print(f"exported {len(folders)} model(s) in {time.perf_counter() - started:.0f} s; "
          "`figsearch serve` runs them on ONNX Runtime (FIGSEARCH_ENCODER_BACKEND=auto or onnx)")
    return 0
