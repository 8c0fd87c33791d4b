"""Settings, declared once: name, default and help for each.

Every setting reads from a ``FIGSEARCH_<NAME>`` environment variable (or a ``.env`` file);
CLI flags override them. ``tests/figsearch/test_settings_documented.py`` checks that each
one appears in the README.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
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
    download_concurrency: int = Field(8, description="Concurrent package downloads.")
    pmc_base_url: str = Field(
        "https://ftp.ncbi.nlm.nih.gov/pub/pmc/",
        description="Base URL that PMC OA file-list paths are resolved against.",
    )
    index_memory_gb: float = Field(
        16.0, description="Memory budget (GiB) for the index; drives the factory-string rule."
    )
    index_gpu_training: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Where the index's coarse k-means trains: auto = on the GPU (torch) when CUDA "
                    "is available, else faiss on the CPU; on = GPU or fail; off = always the CPU.",
    )
    index_keep_versions: int = Field(3, description="Index versions kept besides `current`.")
    rerank: bool = Field(True, description="Re-rank compressed-index candidates with exact vectors.")
    rerank_factor: int = Field(10, description="Candidates fetched per requested result for re-ranking.")
    nprobe: int = Field(32, description="IVF lists probed per query.")
    dedup_threshold: float = Field(
        0.98, description="Cosine similarity above which two results are near-duplicates."
    )
    host: str = Field("127.0.0.1", description="API bind address.")
    port: int = Field(8000, description="API port.")
    workers: int = Field(1, description="uvicorn worker processes for the API.")
    reload_interval_s: float = Field(
        5.0, description="How often the API checks indexes/current for a new version."
    )
    max_query_chars: int = Field(512, description="Longest accepted text query.")
    max_k: int = Field(200, description="Largest k (results per page) accepted.")
    max_offset: int = Field(1000, description="Largest offset accepted for paging.")
    max_upload_mb: float = Field(20.0, description="Largest accepted image upload (MB).")
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
    api_url: str = Field("http://127.0.0.1:8000", description="API URL the UI and client use.")
    ui_port: int = Field(8501, description="Port of the Streamlit UI.")

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


@lru_cache
def get_settings() -> Settings:
    """Process-wide settings from the environment (tests build their own Settings)."""
    return Settings()


def settings_markdown() -> str:
    """The settings table for the README (``python -m figsearch.core.config``)."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        default = field.default if field.default not in ("", None) else "(empty)"
        rows.append(f"| `FIGSEARCH_{name.upper()}` | `{default}` | {field.description} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(settings_markdown())
