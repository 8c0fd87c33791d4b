"""``make demo``: from a fresh checkout to searching real PMC figures in the browser.

Steps (each skipped when its output is already there, so a second run is up in seconds):
1. build the demo corpus: the real PMC figures and packages in ``../shared/data`` plus a
   synthetic corpus from ``figsearch synth``;
2. obtain a model: ``FIGSEARCH_MODEL`` if set, else BiomedCLIP when the hub is reachable,
   else train ``figclip-mini`` once and cache it in ``<data_dir>/models/figclip-mini``;
3. build the index (``figsearch index``) unless the current one was built with that model;
4. start the API and the UI, print their URLs, and stop both cleanly on Ctrl-C.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from figsearch.cli import main as figsearch
from figsearch.core.config import BIOMEDCLIP_SPEC, Settings
from figsearch.netutil import wait_for_http

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FIGSEARCH_SHARED", REPO.parent / "shared")) / "data"
SYNTH_ARTICLES = int(os.environ.get("FIGSEARCH_DEMO_SYNTH", "800"))
TRAIN_MINUTES = os.environ.get("FIGSEARCH_DEMO_TRAIN_MINUTES", "10")
CORPUS_MARK = "demo_corpus"


def _step(title: str) -> float:
    print(f"\n==> {title}", flush=True)
    return time.monotonic()


def _done(t0: float) -> None:
    print(f"    done in {time.monotonic() - t0:.1f} s", flush=True)


def _run(argv: list[str]) -> None:
    code = figsearch(argv)
    if code:
        raise SystemExit(f"figsearch {' '.join(argv)} failed with exit code {code}")


def build_corpus(settings: Settings) -> None:
    """Ingest the shared real data and a synthetic corpus (once; marked in the store)."""
    from figsearch.store import FigureStore

    store = FigureStore(settings.db_path)
    wanted = json.dumps({"synthetic_articles": SYNTH_ARTICLES, "shared": str(SHARED)})
    if store.get_meta(CORPUS_MARK) == wanted:
        print(f"    corpus already built: {store.counts()}")
        return
    if not SHARED.is_dir():
        raise SystemExit(f"shared data not found at {SHARED}; set FIGSEARCH_SHARED")
    synth_dir = settings.data_dir / "synthetic"
    if not any(synth_dir.glob("*.tar.gz")):
        _run(["synth", "--n", str(SYNTH_ARTICLES), str(synth_dir), "--seed", "7"])
    jats = SHARED / "jats"
    _run([
        "ingest", str(jats / "packages"), str(jats / "pmc-nxml"),
        str(SHARED / "pmc-figures" / "figures.jsonl"), str(synth_dir),
        "--data-dir", str(settings.data_dir),
    ])
    store.set_meta(CORPUS_MARK, wanted)
    print(f"    store: {store.counts()}")


def _hub_reachable() -> bool:
    try:
        return httpx.head("https://huggingface.co", timeout=3.0).status_code < 500
    except httpx.HTTPError:
        return False


def obtain_model(settings: Settings) -> str:
    """The model spec to serve: FIGSEARCH_MODEL, BiomedCLIP, or a once-trained figclip-mini."""
    if settings.model:
        return settings.model
    mini = settings.models_dir / "figclip-mini"
    if (mini / "open_clip_config.json").exists():
        return str(mini)
    if _hub_reachable():
        return BIOMEDCLIP_SPEC
    print("    the Hugging Face hub is not reachable: training figclip-mini on this machine")
    # The recipe measured in bench/results/train_figclip_mini.json: LiT-style (pretrained
    # MiniLM text tower locked), a higher lr for the small from-scratch image tower.
    _run([
        "train", "--config", "figclip-mini", "--data-dir", str(settings.data_dir),
        "--out", str(mini), "--max-minutes", TRAIN_MINUTES, "--batch-size", "64",
        "--lock-text", "--lr", "1e-3", "--warmup", "10", "--epochs", "20",
    ])
    return str(mini)


def build_index(settings: Settings, model: str) -> None:
    """Build an index unless ``current`` was built with this model."""
    from figsearch.datadir import portable_path

    manifest = settings.indexes_dir / "current" / "manifest.json"
    recorded = json.loads(manifest.read_text()).get("model_spec") if manifest.exists() else None
    if recorded in (model, portable_path(model, settings.data_dir)):
        print(f"    current index already uses {model}")
        return
    _run(["index", "--model", model, "--data-dir", str(settings.data_dir)])


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    try:
        wait_for_http(url, process=proc, timeout=timeout, interval=0.5)
    except (RuntimeError, TimeoutError) as exc:
        raise SystemExit(str(exc)) from None


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def serve(settings: Settings, model: str) -> None:
    """Start API and UI; block until Ctrl-C (or SIGTERM), then stop both."""
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)  # also when started with SIGINT ignored
    env = dict(os.environ, FIGSEARCH_MODEL=model, FIGSEARCH_DATA_DIR=str(settings.data_dir))
    api_url = f"http://{settings.host}:{settings.port}"
    exe = [sys.executable, "-m", "figsearch.cli"]
    api = subprocess.Popen([*exe, "serve", "--host", settings.host, "--port", str(settings.port)],
                           env=env)
    procs = [api]
    try:
        _wait_ready(f"{api_url}/readyz", api)
        ui = subprocess.Popen([*exe, "ui", "--api", api_url, "--port", str(settings.ui_port)],
                              env=env)
        procs.append(ui)
        ui_url = f"http://127.0.0.1:{settings.ui_port}"
        _wait_ready(f"{ui_url}/_stcore/health", ui)
        print(f"\nfigsearch is up.\n  UI:  {ui_url}\n  API: {api_url}/docs\n"
              "Press Ctrl-C to stop.", flush=True)
        while all(p.poll() is None for p in procs):
            time.sleep(1)
    except KeyboardInterrupt:
        print("\nstopping…")
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()


def main() -> int:
    """Run the demo end to end."""
    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    t = _step("demo corpus (real PMC data + synthetic packages)")
    build_corpus(settings)
    _done(t)
    t = _step("model")
    model = obtain_model(settings)
    print(f"    model: {model}")
    _done(t)
    t = _step("index")
    build_index(settings, model)
    _done(t)
    print(f"\nready to serve after {time.monotonic() - start:.1f} s")
    if os.environ.get("FIGSEARCH_DEMO_NO_SERVE"):
        return 0
    serve(settings, model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
