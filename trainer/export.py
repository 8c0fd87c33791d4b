"""Write a model directory in open_clip's hub format (what ``load_model`` and BiomedCLIP use).

Layout: ``open_clip_config.json`` (``model_cfg`` + ``preprocess_cfg``),
``open_clip_model.safetensors`` (or ``open_clip_pytorch_model.bin``), the HF text tower's
``config.json`` and tokenizer files, and ``figsearch_model.json`` (how it was made). The
directory is built beside the target and renamed into place, so a crash never leaves a
half-written model where a loader would find it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from figsearch.encoders import CONFIG_FILE, TOKENIZER_FILES, LoadedClip

EXTRA_TOKENIZER_FILES = ("special_tokens_map.json", "added_tokens.json")


def export_model_dir(
    model: Any,
    model_cfg: dict[str, Any],
    preprocess_cfg: dict[str, Any],
    dest: Path,
    text_config_dir: Path | None = None,
    tokenizer_dir: Path | None = None,
    meta: dict[str, Any] | None = None,
    weights_format: str = "safetensors",
) -> Path:
    """Write ``model`` (unwrapped open_clip model) as a hub-format directory at ``dest``."""
    dest = Path(dest)
    staging = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}
    (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2), encoding="utf-8")
    _write_weights(model, staging, weights_format)
    if text_config_dir is not None and (Path(text_config_dir) / "config.json").is_file():
        shutil.copy2(Path(text_config_dir) / "config.json", staging / "config.json")
    if tokenizer_dir is not None:
        for name in TOKENIZER_FILES + EXTRA_TOKENIZER_FILES:
            if (Path(tokenizer_dir) / name).is_file():
                shutil.copy2(Path(tokenizer_dir) / name, staging / name)
    info = {"format": "open_clip hub", "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                     time.gmtime())}
    info.update(meta or {})
    (staging / "figsearch_model.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    _swap_into_place(staging, dest)
    return dest


def export_loaded(loaded: LoadedClip, dest: Path, meta: dict[str, Any] | None = None) -> Path:
    """Export a :class:`LoadedClip` (its model may have been trained since loading)."""
    return export_model_dir(
        loaded.model, loaded.model_cfg, loaded.preprocess_cfg, dest,
        text_config_dir=loaded.text_config_dir, tokenizer_dir=loaded.tokenizer_dir, meta=meta,
    )


def _write_weights(model: Any, directory: Path, weights_format: str) -> None:
    import torch

    state = {k: v.detach().float().contiguous().cpu() for k, v in model.state_dict().items()}
    if weights_format == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(directory / "open_clip_model.safetensors"))
    elif weights_format == "bin":
        torch.save(state, directory / "open_clip_pytorch_model.bin")
    else:
        raise ValueError(f"unknown weights format {weights_format!r} (safetensors or bin)")


def _swap_into_place(staging: Path, dest: Path) -> None:
    """Replace ``dest`` by ``staging`` with renames only (old copy removed afterwards)."""
    old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
    if dest.exists():
        os.replace(dest, old)
    os.replace(staging, dest)
    shutil.rmtree(old, ignore_errors=True)
