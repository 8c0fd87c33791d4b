"""``make demo``: from a fresh checkout to searching real PMC figures in the browser.

Steps (each skipped when its output is already there, so a second run is up in seconds):
1. build the demo corpus: the real PMC figures and packages in ``../shared/data`` plus a
   synthetic corpus from ``figsearch synth``;
2. when there is no index yet, build a text-only version (``figsearch index --text-only``:
   the caption-semantics index, no image model needed), so keyword and caption search work
   as soon as the corpus is ingested;
3. start the API and the UI and print their URLs;
4. meanwhile, in a background process (log: ``<data_dir>/demo-image-index.log``): obtain a
   model - ``FIGSEARCH_MODEL`` if set, else BiomedCLIP when the hub is reachable, else train
   ``figclip-mini`` once and cache it in ``<data_dir>/models/figclip-mini`` - and build the
   image index (``figsearch index``) unless the current one was built with that model. The
   API hot-reloads the new version; ``/v1/stats`` and the UI's sidebar show ``dense`` live.
Ctrl-C stops everything cleanly. With ``FIGSEARCH_DEMO_NO_SERVE`` set, step 4 runs in the
foreground and nothing is served (prints the time to text search and to the image index).
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


def ensure_text_index(settings: Settings) -> None:
    """A servable version right after ingest: a text-only one when there is no index yet."""
    from figsearch.index import current_version_dir

    if current_version_dir(settings.indexes_dir) is not None:
        print("    an index version is already current")
        return
    # Whole captions only, so the search box comes up ~2 minutes sooner on 2 cores (the shared
    # corpus: 46 s vs 152 s with its 2,919 passages); the image stage's version adds passages.
    chosen = "FIGSEARCH_CAPTION_PASSAGES" in os.environ  # the user's choice stands
    os.environ.setdefault("FIGSEARCH_CAPTION_PASSAGES", "0")
    try:
        _run(["index", "--text-only", "--data-dir", str(settings.data_dir)])
    finally:
        if not chosen:
            del os.environ["FIGSEARCH_CAPTION_PASSAGES"]


def image_stage(settings: Settings) -> str:
    """Obtain the model (training figclip-mini when needed) and build the image index."""
    model = obtain_model(settings)
    print(f"    model: {model}", flush=True)
    build_index(settings, model)
    return model


def start_image_stage(settings: Settings) -> subprocess.Popen | None:
    """Run :func:`image_stage` in a child process (None when the index is already complete)."""
    manifest = settings.indexes_dir / "current" / "manifest.json"
    built = json.loads(manifest.read_text()).get("model_spec") if manifest.exists() else None
    if built and (not settings.model or built == settings.model):
        print(f"    image index already built with {built}")
        return None
    log = settings.data_dir / "demo-image-index.log"
    print(f"    training / indexing the image model in the background (log: {log})")
    env = dict(os.environ, FIGSEARCH_DATA_DIR=str(settings.data_dir))
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "figsearch.demo", "--image-stage"],
                                env=env, stdout=out, stderr=subprocess.STDOUT)


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


def serve(settings: Settings, start: float) -> None:
    """Start API and UI, then the background image stage; block until Ctrl-C (or SIGTERM),
    then stop all three."""
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)  # also when started with SIGINT ignored
    env = dict(os.environ, FIGSEARCH_DATA_DIR=str(settings.data_dir))
    api_url = f"http://{settings.host}:{settings.port}"
    exe = [sys.executable, "-m", "figsearch.cli"]
    api = subprocess.Popen([*exe, "serve", "--host", settings.host, "--port", str(settings.port)],
                           env=env)
    procs = [api]
    stage: subprocess.Popen | None = None
    try:
        _wait_ready(f"{api_url}/readyz", api)
        ui = subprocess.Popen([*exe, "ui", "--api", api_url, "--port", str(settings.ui_port)],
                              env=env)
        procs.append(ui)
        ui_url = f"http://127.0.0.1:{settings.ui_port}"
        _wait_ready(f"{ui_url}/_stcore/health", ui)
        print(f"\nfigsearch is up after {time.monotonic() - start:.1f} s (signals: "
              f"{_signals(api_url)}).\n  UI:  {ui_url}\n  API: {api_url}/docs\n"
              "Press Ctrl-C to stop.", flush=True)
        stage = start_image_stage(settings)
        while all(p.poll() is None for p in procs):
            if stage is not None and stage.poll() is not None:
                print(f"\nimage index stage finished (exit {stage.returncode}) after "
                      f"{time.monotonic() - start:.1f} s; the API hot-reloads it within "
                      f"{settings.reload_interval_s:g} s", flush=True)
                stage = None
            time.sleep(1)
    except KeyboardInterrupt:
        print("\nstopping…")
    finally:
        if stage is not None and stage.poll() is None:
            procs.append(stage)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()


def _signals(api_url: str) -> str:
    try:
        live = httpx.get(f"{api_url}/v1/stats", timeout=5).json().get("signals") or {}
    except (httpx.HTTPError, ValueError):
        return "unknown"
    return ", ".join(name for name, on in live.items() if on) or "none"


def main(argv: list[str] | None = None) -> int:
    """Run the demo end to end (``--image-stage``: only the background model + index step)."""
    argv = sys.argv[1:] if argv is None else argv
    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if "--image-stage" in argv:
        image_stage(settings)
        return 0
    start = time.monotonic()
    t = _step("demo corpus (real PMC data + synthetic packages)")
    build_corpus(settings)
    _done(t)
    t = _step("text index (keyword + caption semantics)")
    ensure_text_index(settings)
    _done(t)
    print(f"\ntext search ready to serve after {time.monotonic() - start:.1f} s")
    if os.environ.get("FIGSEARCH_DEMO_NO_SERVE"):
        t = _step("model + image index")
        image_stage(settings)
        _done(t)
        print(f"\nimage index ready after {time.monotonic() - start:.1f} s")
        return 0
    serve(settings, start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
