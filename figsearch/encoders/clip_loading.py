"""Build open_clip models from a resolved spec (:mod:`figsearch.encoders.spec`): hub
snapshots, hub-format directories, named configs; the text tower's architecture found or
inferred, its weights from the checkpoint; and open_clip's image transform. Needs torch.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from figsearch.encoders.spec import (
    BIOMEDCLIP_HUB_ID,
    CONFIG_FILE,
    HF_HUB_PREFIX,
    LOCAL_DIR_PREFIX,
    TOKENIZER_FILES,
    TRAIN_HINT,
    WEIGHT_FILES,
    LoadedClip,
    ModelLoadError,
    _hf_file,
    _hf_names,
    _hub_offline,
    _key_name,
    _local_hf_copies,
    available_configs,
    model_config_dir,
    normalise_spec,
)


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

