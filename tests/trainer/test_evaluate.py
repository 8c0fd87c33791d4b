"""figsearch eval and zero-shot figure types on a real tiny store with a tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from figsearch.cli import main
from figsearch.encoders import load_model
from figsearch.figure_types import LABELS, TRUTH_TO_LABEL, classify, scores
from tests.trainer.tiny import make_figure_store
from trainer.data import split_of
from trainer.evaluate import evaluate, recall_at, retrieval_metrics


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_recall_counts_ties_against_the_right_answer():
    sim = np.array([[0.9, 0.1, 0.0], [0.5, 0.5, 0.0], [0.0, 0.8, 0.7]])
    assert recall_at(sim, (1, 2)) == {1: pytest.approx(1 / 3), 2: 1.0}
    eye = np.eye(4, dtype=np.float32)
    metrics = retrieval_metrics(eye, eye)
    assert metrics["t2i_R@1"] == metrics["i2t_R@1"] == metrics["mean_recall"] == 1.0


def test_split_is_stable_and_near_the_fraction():
    keys = [f"pmc:PMC{i}" for i in range(4000)]
    val = [k for k in keys if split_of(k) == "val"]
    assert 0.08 < len(val) / len(keys) < 0.12
    assert val == [k for k in keys if split_of(k) == "val"]


def test_classify_returns_a_label_and_probability_per_image(tiny_model_dir):
    encoder = load_model(str(tiny_model_dir), device="cpu")
    probs = scores(encoder, encoder.encode_texts(["x", "y", "z"]))
    assert probs.shape == (3, len(LABELS))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    # a label's own prototype is classified as that label
    from figsearch.figure_types import prototypes

    labels = classify(encoder, prototypes(encoder))
    assert [label for label, _ in labels] == list(LABELS)
    assert set(TRUTH_TO_LABEL.values()) <= set(LABELS)


def test_eval_command_writes_table_and_json(tiny_model_dir, tmp_path, capsys):
    data_dir = make_figure_store(tmp_path / "data", n_articles=30, per_article=2)
    out = tmp_path / "metrics.json"
    code = main(["eval", "--data-dir", str(data_dir), "--model", str(tiny_model_dir),
                 "--split", "all", "--out", str(out), "--workers", "0"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "text->image (dense)" in printed and "image->text (dense)" in printed
    result = json.loads(out.read_text())
    assert result["n"] == 60 and result["articles"] == 30
    assert result["chance"]["R@1"] == pytest.approx(1 / 60, abs=1e-3)
    # captions are the indexed text, so keyword search finds nearly every figure
    assert result["text_to_image_modes"]["keyword"]["R@10"] > 0.9
    ft = result["figure_type"]
    assert ft["n"] == 60 and ft["chance"] == round(1 / len(LABELS), 4)
    # accuracy counts whole figures (k of 60) and is the figure-weighted mean of the per-type
    # accuracies, so it lies between the worst and the best type
    assert ft["accuracy"] == pytest.approx(round(ft["accuracy"] * 60) / 60, abs=1e-4)
    assert set(ft["per_type"]) <= set(LABELS) and len(ft["per_type"]) >= 2
    assert min(ft["per_type"].values()) <= ft["accuracy"] <= max(ft["per_type"].values())
    val = evaluate(str(tiny_model_dir), data_dir, "val", device="cpu", workers=0)
    assert 0 < val["n"] < 60


def test_eval_unknown_model_is_a_clear_error(tmp_path, capsys):
    data_dir = make_figure_store(tmp_path / "data", n_articles=2, per_article=1)
    assert main(["eval", "--data-dir", str(data_dir), "--model", "no-such-model"]) == 2
    assert "unknown model 'no-such-model'" in capsys.readouterr().err
