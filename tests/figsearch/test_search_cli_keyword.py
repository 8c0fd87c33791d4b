"""`figsearch search --mode keyword` runs without a model (nothing to encode)."""

from __future__ import annotations

from figsearch.cli import main
from figsearch.search_cli import open_service


def test_keyword_search_loads_no_model(small_index_data_dir, monkeypatch, capsys, tmp_path):
    # A model that cannot load: any attempt to load it fails the command.
    monkeypatch.setenv("FIGSEARCH_MODEL", str(tmp_path / "no-such-model"))
    code = main(["search", "TREM2 signaling", "--mode", "keyword", "--k", "3",
                 "--data-dir", str(small_index_data_dir)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.splitlines()[0].startswith("keyword search for 'TREM2 signaling'")
    assert "TREM2" in out.splitlines()[1]
    # ... while a dense search with the same settings does try to load it, and says why not.
    code = main(["search", "TREM2 signaling", "--mode", "dense",
                 "--data-dir", str(small_index_data_dir)])
    assert code == 1 and "no-such-model" in capsys.readouterr().err


def test_open_service_without_model(small_index_settings):
    service = open_service(small_index_settings.model_copy(update={"model": "/nonexistent"}),
                           need_model=False)
    assert service.encoder is None
    page = service.search_text("pathway", k=5, mode="keyword")
    assert len(page.hits) == 5
