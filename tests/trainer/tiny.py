"""Tiny, randomly initialised CLIP models for tests (no network, built in a second or two).

Same family as BiomedCLIP: a ViT image tower plus a BERT text tower (HF), exported in the
open_clip hub format. The tokenizer files are all-MiniLM-L6-v2's (a local package).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from figsearch.encoders import _local_hf_copies

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
TINY_PREPROCESS = {
    "size": 32, "mean": [0.48145466, 0.4578275, 0.40821073],
    "std": [0.26862954, 0.26130258, 0.27577711], "interpolation": "bicubic",
    "resize_mode": "shortest",
}


def tiny_bert_dir(dest: Path, hidden: int = 32, positions: int = 64) -> Path:
    """A directory with a tiny BERT ``config.json`` and the MiniLM tokenizer files."""
    from transformers import BertConfig

    dest.mkdir(parents=True, exist_ok=True)
    BertConfig(
        vocab_size=30522, hidden_size=hidden, num_hidden_layers=2,
        num_attention_heads=max(1, hidden // 16), intermediate_size=hidden * 2,
        max_position_embeddings=positions,
    ).to_json_file(str(dest / "config.json"))
    source = _local_hf_copies()[MINILM]
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy2(source / name, dest / name)
    return dest


def tiny_model_cfg(hf_name: str = "figsearch/tiny-bert", context_length: int = 64) -> dict[str, Any]:
    """open_clip model_cfg of the tiny model (native open_clip ViT, 2 layers, 32 px)."""
    return {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2,
                       "head_width": 16},
        "text_cfg": {"hf_model_name": hf_name, "hf_tokenizer_name": hf_name,
                     "hf_proj_type": "mlp", "hf_pooler_type": "mean_pooler",
                     "context_length": context_length},
    }


def build_model(model_cfg: dict[str, Any], text_dir: Path, seed: int = 0) -> Any:
    """Instantiate an open_clip CustomTextCLIP with the text tower's config from ``text_dir``."""
    import open_clip
    import torch

    cfg = json.loads(json.dumps(model_cfg))
    cfg["text_cfg"].update(hf_model_name=str(text_dir), hf_model_pretrained=False)
    torch.manual_seed(seed)
    return open_clip.CustomTextCLIP(**cfg)


def make_tiny_model_dir(dest: Path, seed: int = 0) -> Path:
    """Export a tiny random model at ``dest`` (hub format, with config.json + tokenizer)."""
    from trainer.export import export_model_dir

    text_dir = tiny_bert_dir(dest.with_name(dest.name + "-text"))
    model_cfg = tiny_model_cfg()
    model = build_model(model_cfg, text_dir, seed)
    return export_model_dir(model, model_cfg, TINY_PREPROCESS, dest, text_config_dir=text_dir,
                            tokenizer_dir=text_dir, meta={"made_by": "tests/trainer/tiny.py"})


def make_biomedclip_style_dir(dest: Path, seed: int = 0) -> Path:
    """A directory in BiomedCLIP's exact hub format (same config schema, tiny sizes).

    Like the real hub repo it has no text ``config.json`` and its config points the text
    tower at the hub name, so loading must work out the text architecture offline.
    """
    from trainer.export import export_model_dir

    hub_text = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"
    model_cfg = {
        "embed_dim": 32,
        "vision_cfg": {"timm_model_name": "test_vit", "timm_model_pretrained": False,
                       "timm_pool": "", "timm_proj": "linear", "image_size": 32},
        "text_cfg": {"hf_model_name": hub_text, "hf_tokenizer_name": hub_text,
                     "hf_proj_type": "mlp", "hf_pooler_type": "cls_last_hidden_state_pooler",
                     "context_length": 256},
    }
    preprocess = {"mean": [0.48145466, 0.4578275, 0.40821073],
                  "std": [0.26862954, 0.26130258, 0.27577711]}
    text_dir = tiny_bert_dir(dest.with_name(dest.name + "-text"), hidden=64, positions=256)
    model = build_model(model_cfg, text_dir, seed)
    export_model_dir(model, model_cfg, preprocess, dest, tokenizer_dir=text_dir,
                     weights_format="bin")
    (dest / "figsearch_model.json").unlink()  # the real hub repo has no such file
    shutil.rmtree(text_dir)
    return dest
