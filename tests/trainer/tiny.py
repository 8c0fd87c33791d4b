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
                     "hf_model_pretrained": False, "context_length": context_length},
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


#: (caption words, RGB colour) — a learnable image/caption relation for tiny training runs
KINDS = (
    ("red western blot bands", (200, 30, 30), "western_blot"),
    ("green fluorescence micrograph", (30, 200, 30), "fluorescence_micrograph"),
    ("blue survival curve", (30, 30, 200), "kaplan_meier"),
    ("yellow heatmap of expression", (220, 220, 40), "heatmap"),
)


def make_figure_store(data_dir: Path, n_articles: int = 12, per_article: int = 4) -> Path:
    """A real figure store (SQLite + stored JPEGs) whose captions describe the image colour."""
    import io

    import numpy as np
    from PIL import Image

    from figsearch.core.config import Settings
    from figsearch.imaging import store_image
    from figsearch.records import ArticleRecord, FigureRecord
    from figsearch.store import FigureStore

    settings = Settings(data_dir=data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    store = FigureStore(settings.db_path)
    rng = np.random.default_rng(0)
    for a in range(n_articles):
        figures = []
        for f in range(per_article):
            words, colour, truth = KINDS[(a + f) % len(KINDS)]
            pixels = np.clip(rng.normal(colour, 25, (48, 64, 3)), 0, 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, "PNG")
            stored = store_image(buf.getvalue(), settings.images_dir)
            figures.append(FigureRecord(
                fig_id=f"F{f}", label=f"Figure {f + 1}", caption=f"{words} in sample {a}-{f}",
                image_path=stored.image_path, thumb_path=stored.thumb_path, width=stored.width,
                height=stored.height, sha256=stored.sha256, source="synthetic",
                attributes={"type": truth, "attributes": {}}))
        store.upsert_article(ArticleRecord(key=f"synthetic:TEST-{a}", source="synthetic",
                                           title=f"Article {a}"), figures)
    store.close()
    return data_dir


def write_tiny_config(directory: Path, name: str = "tiny-test") -> Path:
    """A model-config JSON (trainer ``--config PATH``) for the tiny model, text tower random."""
    text_dir = tiny_bert_dir(directory / f"{name}-text")
    path = directory / f"{name}.json"
    path.write_text(json.dumps(tiny_model_cfg(hf_name=str(text_dir))), encoding="utf-8")
    return path


def train_log(state_dir: Path, event: str = "train") -> list[dict[str, Any]]:
    """Records of one kind from a run's ``log.jsonl``."""
    lines = (state_dir / "log.jsonl").read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]
