"""The ``figsearch`` command line: one verb per job, each a thin wrapper over plain functions.

Each verb lives in its own module, imported only when that verb runs (``figsearch`` imports
``indexer``/``trainer``/``ui`` lazily, here and nowhere else). A verb module defines
``add_arguments(parser)`` and ``command(args) -> int``; ``args.settings`` holds the
:class:`~figsearch.core.config.Settings` built from the environment and ``--data-dir``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from figsearch.core.config import Settings

#: verb -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "ingest": ("indexer.ingest", "Ingest from PMC Cloud (s3://, pmc:), packages, article XML, JSONL manifests or a legacy file list."),
    "synth": ("indexer.synth", "Write a synthetic corpus of PMC-style article packages."),
    "train": ("trainer.train", "Train or fine-tune a CLIP model on the figure store."),
    "export-wds": ("trainer.wds", "Export the figure store as WebDataset shards."),
    "eval": ("trainer.evaluate", "Retrieval recall@K and zero-shot figure-type accuracy."),
    "index": ("indexer.indexing", "Embed all figures and build a new index version."),
    "ocr": ("indexer.ocr", "Read the text inside figure images (OCR) into the keyword index."),
    "rebuild": ("indexer.rebuild", "Nightly: incremental ingest, embed, build, validate, swap."),
    "search": ("figsearch.search_cli", "Search the current index from the terminal."),
    "export-onnx": ("figsearch.onnx_export", "Export the index's models to ONNX for the torch-free API."),
    "serve": ("figsearch.api.server", "Run the HTTP search API (uvicorn)."),
    "ui": ("ui.launch", "Run the Streamlit research UI against an API."),
    "stats": ("figsearch.cli", "Counts in the figure store and the current index."),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``figsearch stats`` takes only the common flags."""


def command(args: argparse.Namespace) -> int:
    """Print store counts and the current index version."""
    from figsearch.store import FigureStore

    settings: Settings = args.settings
    store = FigureStore(settings.db_path, create=False)
    for name, value in store.counts().items():
        print(f"{name:>22}: {value}")
    last = store.get_meta("pmc_last_inventory")  # written by indexer.pmc_cloud
    if last:
        info = json.loads(last)
        print(f"{'pmc inventory':>22}: s3://{info['bucket']} {info['inventory']} "
              f"({info['versions']} versions, {info['articles_processed']} articles processed, "
              f"{info['left_for_next_run']} left for the next run; finished "
              f"{info['finished_at']})")
    current = settings.indexes_dir / "current"
    print(f"{'index':>22}: {current.resolve().name if current.exists() else '(none)'}")
    return 0


def _settings_from(args: argparse.Namespace) -> Settings:
    settings = Settings()
    if getattr(args, "data_dir", None):
        settings = settings.model_copy(update={"data_dir": Path(args.data_dir)})
    return settings


def build_parser(verb: str | None) -> argparse.ArgumentParser:
    """The parser; only the chosen verb's module is imported."""
    parser = argparse.ArgumentParser(prog="figsearch", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument(
            "--data-dir", default=None,
            help="data directory (default: $FIGSEARCH_DATA_DIR or ./figsearch-data)",
        )
        if name == verb:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``figsearch`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verb = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(verb if verb in COMMANDS else None)
    args = parser.parse_args(argv)
    if not args.verb:
        parser.print_help()
        return 2
    args.settings = _settings_from(args)
    module = importlib.import_module(COMMANDS[args.verb][0])
    try:
        return int(module.command(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
