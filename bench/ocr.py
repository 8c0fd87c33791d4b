"""OCR throughput on the real PMC figures, through the same pipeline as ``figsearch ocr``.

    .venv/bin/python -m bench.ocr                     # all 189 figures of shared/data/pmc-figures
    .venv/bin/python -m bench.ocr --n 3 --workers 1   # smoke run

Ingests ``../shared/data/pmc-figures/figures.jsonl`` (or its first ``--n`` figures) into a
temporary figure store, then runs :func:`indexer.ocr.run_ocr` (``--workers`` processes) and a
second time to show that cached images are not read again. Writes
``bench/results/ocr.json`` (images/s, text boxes, unreadable images) and, with ``--texts``,
the text read from each figure as JSONL (pmcid, label, fig_id, sha256, ocr_text), e.g. for
the evaluation's queries about genes drawn in figures. The CPU may be shared with other work:
the result records the load average before and after the run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO_ROOT, markdown_table, write_result

MANIFEST = REPO_ROOT.parent / "shared" / "data" / "pmc-figures" / "figures.jsonl"


def small_manifest(n: int, out_dir: Path) -> Path:
    """The first ``n`` figures of the real manifest, images copied beside it."""
    lines = MANIFEST.read_text().splitlines()[:n]
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    for line in lines:
        rel = json.loads(line)["image"]
        shutil.copy(MANIFEST.parent / rel, out_dir / rel)
    path = out_dir / "figures.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=None, help="only the first N figures")
    parser.add_argument("--workers", type=int, default=2, help="OCR worker processes")
    parser.add_argument("--texts", type=Path, default=None,
                        help="also write the text of each figure to this JSONL file")
    args = parser.parse_args(argv)

    from figsearch.core.config import Settings
    from figsearch.store import FigureStore
    from indexer.ingest import ingest_paths
    from indexer.ocr import engine_name, export_ocr, run_ocr

    with tempfile.TemporaryDirectory(prefix="bench-ocr-") as tmp:
        manifest = small_manifest(args.n, Path(tmp) / "in") if args.n else MANIFEST
        settings = Settings(data_dir=Path(tmp) / "data")
        ingest_paths([manifest], settings, workers=1)
        store = FigureStore(settings.db_path, create=False)
        load_before = os.getloadavg()
        summary = run_ocr(store, settings.images_dir, workers=args.workers,
                          max_pixels=settings.max_image_pixels)
        load_after = os.getloadavg()
        start = time.perf_counter()
        again = run_ocr(store, settings.images_dir, workers=args.workers, progress=False)
        rerun_s = time.perf_counter() - start
        texts = store.ocr_texts(_all_shas(store))
        chars = sum(len(t) for t in texts.values())
        written = export_ocr(store, args.texts) if args.texts else 0
        store.close()
    print(summary.line())
    figures = {
        "images": summary.images, "with_text": summary.with_text, "unreadable": summary.failed,
        "text_boxes": summary.boxes, "chars": chars, "elapsed_s": round(summary.elapsed_s, 2),
        "images_per_s": round(summary.rate, 3),
        "s_per_image": round(summary.elapsed_s / max(1, summary.images), 3),
        "rerun_images_read": again.images, "rerun_s": round(rerun_s, 3),
        "load_avg_1m_before": round(load_before[0], 2), "load_avg_1m_after": round(load_after[0], 2),
    }
    params = {"source": "shared/data/pmc-figures" + (f" (first {args.n})" if args.n else ""),
              "workers": args.workers, "engine": engine_name(), "cpu_count": os.cpu_count(),
              "note": "CPU shared with other jobs during the run (see load averages); noisy"}
    path = write_result("ocr", params, figures)
    print(markdown_table(["figure", "value"], [[k, v] for k, v in figures.items()]))
    print(f"wrote {path}" + (f" and {written} figure texts to {args.texts}" if args.texts else ""))
    return 0


def _all_shas(store) -> list[str]:
    from sqlalchemy import text

    with store.engine.connect() as conn:
        return [str(r[0]) for r in conn.execute(text("SELECT sha256 FROM figure_ocr")).all()]


if __name__ == "__main__":
    sys.exit(main())
