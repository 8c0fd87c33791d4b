"""figclip-mini's text tower locked (the recipe's ``--lock-text``) is the caption model's
all-MiniLM-L6-v2 trunk plus a bias-free projection: its exported text queries then run the
caption model's exported tower once and project, instead of running the same trunk twice.

Built here from the real all-MiniLM-L6-v2 weights (the local package) with a tiny image tower,
exported by the product's own export functions, and checked against the dense export's own
text tower on real PMC captions.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from figsearch.api.batching import BatchingEncoder
from figsearch.caption_index import CaptionEncoder
from figsearch.encoders import _local_hf_copies, load_model
from figsearch.onnx_encoder import MANIFEST, PROJECTION_FILE, OnnxEncoder
from figsearch.onnx_export import export_caption_model, export_clip
from figsearch.serving import _share_text_trunk
from tests.figsearch.test_encoder_fastpath import QUERIES
from tests.trainer.tiny import MINILM, TINY_PREPROCESS, tiny_model_cfg


def minilm_clip_dir(dest: Path) -> Path:
    """A CLIP model dir: tiny ViT, the real MiniLM trunk locked, mean pooling, linear proj."""
    import open_clip

    from trainer.export import export_model_dir

    text_dir = _local_hf_copies()[MINILM]
    cfg = tiny_model_cfg(hf_name=MINILM, context_length=77)
    cfg["text_cfg"].update(hf_proj_type="linear")
    built = json.loads(json.dumps(cfg))
    built["text_cfg"].update(hf_model_name=str(text_dir), hf_model_pretrained=True)
    model = open_clip.CustomTextCLIP(**built)
    model.lock_text_tower(unlocked_layers=0, freeze_layer_norm=True)
    return export_model_dir(model, cfg, TINY_PREPROCESS, dest, text_config_dir=text_dir,
                            tokenizer_dir=text_dir, meta={"made_by": "test_shared_trunk"})


@pytest.fixture(scope="module")
def exports(tmp_path_factory, tiny_model_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("onnx")
    model_dir = minilm_clip_dir(tmp_path_factory.mktemp("models") / "minilm-clip")
    return {"dense": export_clip(load_model(str(model_dir), device="cpu"), root),
            "caption": export_caption_model(CaptionEncoder("all-MiniLM-L6-v2"), root),
            "tiny": export_clip(load_model(str(tiny_model_dir), device="cpu"),
                                tmp_path_factory.mktemp("onnx-tiny"))}


def real_captions(shared_data: Path, n: int) -> list[str]:
    rows = [json.loads(line) for line in (shared_data / "pmc-figures" /
                                          "figures.jsonl").read_text().splitlines()[:n]]
    return [str(r.get("caption") or "") for r in rows]


def test_the_exports_record_one_trunk_and_the_projection(exports):
    dense = json.loads((exports["dense"] / MANIFEST).read_text())
    caption = json.loads((exports["caption"] / MANIFEST).read_text())
    tiny = json.loads((exports["tiny"] / MANIFEST).read_text())
    assert dense["text"]["trunk"] == caption["text"]["trunk"]
    assert len(dense["text"]["trunk"]) == 64
    assert np.load(exports["dense"] / PROJECTION_FILE).shape == (dense["dim"], caption["dim"])
    # the tiny model's random trunk and MLP projection: nothing to share
    assert "trunk" not in tiny["text"] and not (exports["tiny"] / PROJECTION_FILE).exists()


def test_shared_trunk_gives_the_dense_towers_own_vectors(exports, shared_data):
    alone = OnnxEncoder(exports["dense"], threads=1)
    dense = OnnxEncoder(exports["dense"], threads=1)
    caption = OnnxEncoder(exports["caption"], threads=1)
    assert dense.share_trunk_with(caption)
    texts = QUERIES + real_captions(shared_data, 120) + ["word " * 200]
    got, want = dense.encode_texts(texts), alone.encode_texts(texts)
    assert np.abs(got - want).max() < 1e-5
    ranked = got[1:] @ got[0]
    assert (np.argsort(-ranked)[:10] == np.argsort(-(want[1:] @ want[0]))[:10]).all()


def test_a_query_runs_the_trunk_once_and_a_long_text_runs_its_own_tower(exports):
    dense = OnnxEncoder(exports["dense"], threads=1)
    caption = OnnxEncoder(exports["caption"], threads=1)
    assert dense.share_trunk_with(caption)
    for first, second in ((dense, caption), (caption, dense)):  # either signal may ask first
        query = f"TREM2 signalling in microglia, asked {first is dense}"
        runs = (dense.text_runs, caption.text_runs)
        first.encode_texts([query])
        second.encode_texts([query])
        assert (dense.text_runs - runs[0], caption.text_runs - runs[1]) == (0, 1)
    # past figclip's 77-token context the towers read different ids: the dense tower runs
    runs = dense.text_runs
    dense.encode_texts(["kinase " * 120])
    assert dense.text_runs == runs + 1


def test_only_equal_trunks_share(exports):
    tiny = OnnxEncoder(exports["tiny"], threads=1)
    caption = OnnxEncoder(exports["caption"], threads=1)
    assert not tiny.share_trunk_with(caption)
    dense = OnnxEncoder(exports["dense"], threads=1)
    caption.trunk = "0" * 64  # another caption model's trunk
    assert not dense.share_trunk_with(caption)
    runs = dense.text_runs
    dense.encode_texts(["western blot"])
    assert dense.text_runs == runs + 1


def test_the_served_encoders_share_when_both_exports_say_so(exports):
    dense = BatchingEncoder(OnnxEncoder(exports["dense"], threads=1))
    caption = BatchingEncoder(OnnxEncoder(exports["caption"], threads=1))
    _share_text_trunk(dense, caption)
    assert dense.encoder._partner is caption.encoder
    tiny = BatchingEncoder(OnnxEncoder(exports["tiny"], threads=1))
    _share_text_trunk(tiny, caption)
    assert tiny.encoder._partner is None
    vector = dense.encode_texts(["TREM2 signalling pathway"])
    assert vector.shape == (1, dense.dim) and abs(float(np.linalg.norm(vector)) - 1) < 1e-5


def test_the_bench_times_both_ways_on_these_exports(exports, tmp_path, monkeypatch):
    """``bench.shared_trunk`` (its smoke run, in process, on this module's exports): the
    shared trunk runs half the tower runs and gives the separate towers' vectors."""
    from bench.shared_trunk import main

    monkeypatch.setenv("FIGSEARCH_BENCH_RESULTS", str(tmp_path))
    assert main(["--onnx-root", str(exports["dense"].parent), "--queries", "4",
                 "--rounds", "1", "--name", "smoke"]) == 0
    figures = json.loads((tmp_path / "smoke.json").read_text())["figures"]
    assert figures["queries"] == 4
    assert figures["encode_tower_runs_shared"] * 2 == figures["encode_tower_runs_separate"]
    assert figures["encode_max_abs_diff"] < 1e-5
    assert figures["encode_separate_p50_ms"] > 0 and figures["encode_shared_p50_ms"] > 0
    assert "default_separate_p50_ms" not in figures  # no data dir given: encodings only
