"""figsearch.encoders: loading hub-format directories, named configs, clear errors."""

from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest
from PIL import Image

from figsearch.core.config import Settings
from figsearch.encoders import ModelLoadError, load_model, normalise_spec, resolve_model_spec

BIOMEDCLIP = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    """No network, and an empty private HF cache (a developer's real cache never leaks in)."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


def _images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (40 + i, 60, 3), dtype=np.uint8)) for i in range(n)]


def test_tiny_model_encodes_normalised_vectors(tiny_model_dir):
    enc = load_model(str(tiny_model_dir), device="cpu", batch_size=3)
    images = enc.encode_images(_images(7))
    texts = enc.encode_texts(["chest x-ray", "kaplan-meier survival curve", "western blot"])
    assert images.shape == (7, enc.dim) and texts.shape == (3, enc.dim)
    assert images.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(images[0], images[1])  # different images, different vectors
    # batching does not change results
    np.testing.assert_allclose(enc.encode_images(_images(7)[:1]), images[:1], atol=1e-5)


def test_preprocess_is_picklable_and_follows_config(tiny_model_dir):
    enc = load_model(str(tiny_model_dir), device="cpu")
    preprocess = pickle.loads(pickle.dumps(enc.preprocess))
    pixels = preprocess(_images(1)[0])
    assert tuple(pixels.shape) == (3, 32, 32)
    np.testing.assert_allclose(enc.encode_pixels(pixels[None]), enc.encode_images(_images(1)),
                               atol=1e-5)


def test_model_key_is_stable_and_depends_on_weights(tiny_model_dir, tmp_path):
    from tests.trainer.tiny import make_tiny_model_dir

    first = load_model(str(tiny_model_dir), device="cpu").model_key
    assert load_model(str(tiny_model_dir), device="cpu").model_key == first
    other = make_tiny_model_dir(tmp_path / "tiny-clip", seed=1)
    assert load_model(str(other), device="cpu").model_key != first


def test_biomedclip_hub_format_loads_offline(tmp_path):
    """Same schema as the real hub repo: text tower named by hub id, no text config.json."""
    from tests.trainer.tiny import make_biomedclip_style_dir

    directory = make_biomedclip_style_dir(tmp_path / "BiomedCLIP-copy")
    enc = load_model(str(directory), device="cpu")
    assert enc.context_length == 256
    assert enc.encode_texts(["pleural effusion"]).shape == (1, 32)
    assert enc.encode_images(_images(2)).shape == (2, 32)


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "nope"))


def test_corrupt_weights_is_a_clear_error(tiny_model_dir, tmp_path):
    copy = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, copy)
    weights = copy / "open_clip_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match="corrupt"):
        load_model(str(copy))


def test_missing_weights_is_a_clear_error(tiny_model_dir, tmp_path):
    copy = tmp_path / "noweights"
    shutil.copytree(tiny_model_dir, copy)
    (copy / "open_clip_model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="no weights"):
        load_model(str(copy))


def test_unknown_config_name_lists_known_ones():
    with pytest.raises(ModelLoadError, match="unknown model 'no-such-model'"):
        load_model("no-such-model")


def test_hub_model_offline_without_cache_is_a_clear_error():
    with pytest.raises(ModelLoadError, match="not available.*Offline"):
        load_model("hf-hub:" + BIOMEDCLIP)


def test_hub_spec_loads_a_cached_snapshot_offline(tmp_path):
    """The real BiomedCLIP spec, served from an HF cache laid out like huggingface_hub's."""
    from tests.trainer.tiny import make_biomedclip_style_dir

    repo = tmp_path / "hf-cache" / f"models--{BIOMEDCLIP.replace('/', '--')}"
    commit = "0" * 40
    make_biomedclip_style_dir(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    enc = load_model("BiomedCLIP", device="cpu")
    assert enc.spec == "hf-hub:" + BIOMEDCLIP and enc.context_length == 256
    assert enc.model_key.startswith(BIOMEDCLIP + "@")
    assert enc.encode_texts(["chest radiograph"]).shape == (1, 32)
    settings = Settings(data_dir=tmp_path / "data", model="")
    assert resolve_model_spec(settings) == "hf-hub:" + BIOMEDCLIP


def test_bare_hub_id_gets_prefix():
    spec = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
    assert normalise_spec(spec) == "hf-hub:" + spec
    assert normalise_spec("BiomedCLIP") == "hf-hub:" + spec


def test_resolve_model_spec(tiny_model_dir, tmp_path):
    settings = Settings(data_dir=tmp_path / "data", model="")
    with pytest.raises(ModelLoadError, match="figsearch train --config figclip-mini"):
        resolve_model_spec(settings)
    shutil.copytree(tiny_model_dir, settings.models_dir / "figclip-mini")
    assert resolve_model_spec(settings) == str(settings.models_dir / "figclip-mini")
    assert resolve_model_spec(Settings(data_dir=tmp_path, model="x/y")) == "x/y"
