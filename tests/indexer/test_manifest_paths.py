"""A JSONL manifest reaches only images in its own folder tree."""

from __future__ import annotations

import json
import shutil

from figsearch.core.config import Settings
from figsearch.store import FigureStore
from indexer.ingest import ingest_paths


def test_manifest_images_outside_its_folder_are_refused(tmp_path, shared_data):
    src = shared_data / "pmc-figures"
    row = json.loads((src / "figures.jsonl").read_text().splitlines()[0])
    coll = tmp_path / "collection"
    (coll / "images").mkdir(parents=True)
    shutil.copy(src / row["image"], coll / row["image"])
    secret = tmp_path / "secret.jpg"
    shutil.copy(src / row["image"], secret)
    rows = [
        dict(row, pmcid="PMC1", image=row["image"]),
        dict(row, pmcid="PMC2", image="../secret.jpg"),
        dict(row, pmcid="PMC3", image=str(secret)),
    ]
    (coll / "figures.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = Settings(data_dir=tmp_path / "data")
    summary = ingest_paths([coll / "figures.jsonl"], settings, workers=1)
    assert summary.added == 3
    store = FigureStore(settings.db_path)
    with_image = {p: bool(store.get_figure(store.figure_ids_for_article(p)[0])["has_image"])
                  for p in ("PMC1", "PMC2", "PMC3")}
    assert with_image == {"PMC1": True, "PMC2": False, "PMC3": False}
    reasons = " ".join(e["reason"] for e in store.errors())
    assert reasons.count("outside the manifest's folder") == 2
