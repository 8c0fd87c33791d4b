"""The trainer on a real (tiny) figure store: learning, export/load round trip, resume, WDS."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from figsearch.encoders import load_model
from tests.trainer.tiny import make_figure_store, train_log, write_tiny_config
from trainer.train import TrainConfig, TrainError, train


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    return make_figure_store(root / "data", n_articles=12, per_article=4), write_tiny_config(root)


def _cfg(tiny_setup, out, **overrides) -> TrainConfig:
    data_dir, config = tiny_setup
    base = dict(out=out, data_dir=data_dir, config=str(config), epochs=2, batch_size=8,
                warmup=2, lr=2e-3, workers=0, progress=False, log_every=1, val_fraction=0.25)
    base.update(overrides)
    return TrainConfig(**base)


def test_training_lowers_loss_and_export_loads_identically(tiny_setup, tmp_path):
    result = train(_cfg(tiny_setup, tmp_path / "model", epochs=3))
    cfg = _cfg(tiny_setup, tmp_path / "model")
    losses = [r["loss"] for r in train_log(cfg.state_dir)]
    assert len(losses) == result.summary["steps"] >= 10
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    lrs = [r["lr"] for r in train_log(cfg.state_dir)]  # warmup 2 steps, then cosine to ~0
    assert lrs[0] == pytest.approx(1e-3) and max(lrs) == pytest.approx(2e-3)
    assert lrs[-1] < 0.1 * 2e-3 and lrs == sorted(lrs[:2]) + sorted(lrs[2:], reverse=True)
    assert [h["epoch"] for h in result.summary["history"]] == [1, 2, 3]
    assert "t2i_R@1" in result.summary["history"][-1]
    # the exported directory reproduces the trained model's embeddings exactly
    encoder = load_model(str(tmp_path / "model"), device="cpu")
    pixels = torch.rand(3, 3, 32, 32)
    trained = result.model.eval()
    with torch.no_grad():
        expected = trained.encode_image(pixels, normalize=True).numpy()
        tokens = encoder.tokenizer(["red western blot bands"])
        expected_text = trained.encode_text(tokens, normalize=True).numpy()
    np.testing.assert_allclose(encoder.encode_pixels(pixels), expected, atol=1e-5)
    np.testing.assert_allclose(encoder.encode_texts(["red western blot bands"]), expected_text,
                               atol=1e-5)
    meta = json.loads((tmp_path / "model" / "figsearch_model.json").read_text())
    assert meta["training"]["steps"] == result.summary["steps"]


@pytest.mark.slow
def test_resume_after_crash_continues_from_checkpoint(tiny_setup, tmp_path):
    uninterrupted = train(_cfg(tiny_setup, tmp_path / "a", epochs=2)).model.state_dict()

    def crash(epoch: int) -> None:
        if epoch == 1:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        train(_cfg(tiny_setup, tmp_path / "b", epochs=2), on_epoch_end=crash)
    assert not (tmp_path / "b").exists()  # no half-exported model
    with pytest.raises(TrainError, match="--resume"):
        train(_cfg(tiny_setup, tmp_path / "b", epochs=2))
    resumed = train(_cfg(tiny_setup, tmp_path / "b", epochs=2, resume=True))
    assert [h["epoch"] for h in resumed.summary["history"]] == [1, 2]
    starts = train_log(_cfg(tiny_setup, tmp_path / "b").state_dir, "start")
    assert [s["step"] for s in starts] == [0, starts[0]["total_steps"] // 2]
    for name, tensor in resumed.model.state_dict().items():
        torch.testing.assert_close(tensor, uninterrupted[name], msg=name)


def test_resume_mid_epoch_after_a_step_limit(tiny_setup, tmp_path):
    first = train(_cfg(tiny_setup, tmp_path / "m", epochs=2, max_steps=3))
    assert first.summary["stopped_early"] and first.summary["epochs_done"] == 0
    resumed = train(_cfg(tiny_setup, tmp_path / "m", epochs=2, resume=True))
    starts = train_log(_cfg(tiny_setup, tmp_path / "m").state_dir, "start")
    assert [s["step"] for s in starts] == [0, 3]
    assert resumed.summary["steps"] == starts[1]["total_steps"] > 3
    assert not resumed.summary["stopped_early"] and resumed.summary["epochs_done"] == 2


def test_accumulation_locking_and_step_limit(tiny_setup, tmp_path):
    before = load_model(str(_cfg(tiny_setup, tmp_path).config), device="cpu").model
    result = train(_cfg(tiny_setup, tmp_path / "m", batch_size=4, accum_steps=2, lock_image=True,
                        grad_checkpointing=True, max_steps=3))
    assert result.summary["steps"] == 3 and result.summary["stopped_early"]
    after = result.model
    for (name, p0), p1 in zip(before.visual.named_parameters(), after.visual.parameters(),
                              strict=True):
        torch.testing.assert_close(p0, p1, msg=f"locked image tower changed: {name}")
    assert any(not torch.equal(a, b) for a, b in
               zip(before.text.parameters(), after.text.parameters(), strict=True))


def test_fine_tune_from_exported_model_and_wds(tiny_setup, tiny_model_dir, tmp_path):
    from trainer.wds import export_wds

    data_dir, _ = tiny_setup
    manifest = export_wds(data_dir, tmp_path / "shards", shard_size=20, progress=False,
                          val_fraction=0.25)
    assert sum(manifest["counts"].values()) == 48 and len(manifest["shards"]) == 3
    result = train(_cfg(tiny_setup, tmp_path / "ft", config=None, init=str(tiny_model_dir),
                        wds=str(tmp_path / "shards" / "*.tar"), epochs=1, lock_text=True))
    assert result.summary["steps"] == manifest["counts"]["train"] // 8
    start = load_model(str(tiny_model_dir), device="cpu").model.text
    for (name, p0), p1 in zip(start.transformer.named_parameters(),
                              result.model.text.transformer.parameters(), strict=True):
        torch.testing.assert_close(p0, p1, msg=f"locked text tower changed: {name}")
    assert any(not torch.equal(a, b) for a, b in
               zip(start.proj.parameters(), result.model.text.proj.parameters(), strict=True))
    assert load_model(str(tmp_path / "ft"), device="cpu").dim == 32


def test_too_little_data_is_a_clear_error(tiny_setup, tmp_path):
    with pytest.raises(TrainError, match="too few"):
        train(_cfg(tiny_setup, tmp_path / "m", batch_size=64))


def test_train_command_runs_and_reports_errors_clearly(tiny_setup, tmp_path, capsys):
    from figsearch.cli import main

    data_dir, config = tiny_setup
    out = tmp_path / "cli-model"
    assert main(["train", "--config", str(config), "--data-dir", str(data_dir), "--out", str(out),
                 "--batch-size", "8", "--max-steps", "2", "--workers", "0", "--warmup", "1"]) == 0
    assert "trained 2 steps" in capsys.readouterr().out
    assert (out / "open_clip_config.json").is_file()
    assert main(["train", "--config", str(config), "--data-dir", str(tmp_path / "empty"),
                 "--out", str(tmp_path / "x")]) == 2
    assert "no figure store" in capsys.readouterr().err
