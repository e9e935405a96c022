"""Settings from the environment (`DERMGROUND_*`) and an optional `.env` file.

Every CLI flag defaults from here, so one place says how a deployment is configured.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal, get_args

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from dermground.platform.names import COLLECTION_PATTERN

ENV_PREFIX = "DERMGROUND_"
MAX_PREDICT_SAMPLES = 256  # sampled answers per question (platform/predict.py): bounds a request's cost
MAX_VIEWS = 8  # turns and mirror images of a square crop (the dihedral group has 8; platform/model/views.py)
PredictPool = Literal["mean", "median"]  # how pooled answers become one value (platform/predict.py)
PREDICT_POOLS: tuple[str, ...] = get_args(PredictPool)
VisionAttentionMode = Literal["batched", "per_image"]  # platform/model/vision_attention.py


class SettingsError(ValueError):
    """Invalid configuration; the message names each offending variable."""


class Settings(BaseSettings):
    """All configuration of a dermground deployment."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    # --- where things live -------------------------------------------------------------
    home: Path = Field(Path(".dermground"), description="Folder for models, store, catalog")
    model_dir: Path | None = Field(None, description="Base model checkpoint (default HOME/models/base)")
    adapter_dir: Path | None = Field(None, description="LoRA adapter directory (optional)")

    # --- model runtime -----------------------------------------------------------------
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    vision_attention: VisionAttentionMode = Field(
        "batched", description="batched: the images of a batch attended in one call per size; per_image: "
        "transformers' loop over images (same results; kept to compare)")
    seed: int = 0

    # --- vector store --------------------------------------------------------------------
    collection: str = Field("lesions", pattern=COLLECTION_PATTERN)
    qdrant_url: str | None = Field(None, description="Qdrant server URL; unset = embedded engine")
    qdrant_api_key: SecretStr | None = None
    qdrant_shards: int = Field(1, ge=1, le=1024)
    qdrant_replication: int = Field(1, ge=1, le=16)
    qdrant_on_disk: bool = False
    qdrant_quantization: Literal["none", "scalar", "binary"] = "none"
    qdrant_timeout_s: int = Field(60, ge=1)
    qdrant_max_request_mb: int = Field(32, ge=1, description="the Qdrant server's service.max_request_size_mb: "
                                       "writes are split into requests below it")

    # --- Ray -----------------------------------------------------------------------------
    ray_address: str | None = Field(None, description="Existing Ray cluster; unset = local Ray")
    ray_num_cpus: int | None = Field(None, ge=1)
    ray_object_store_mb: int = Field(512, ge=64)

    # --- API -----------------------------------------------------------------------------
    api_host: str = "127.0.0.1"
    api_port: int = Field(8000, ge=1, le=65535)
    api_read_key: SecretStr | None = None
    api_admin_key: SecretStr | None = None
    # Opens POST /sql (read-only SQL) and nothing else: for analysts without admin rights.
    api_analyst_key: SecretStr | None = None
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(40_000_000, ge=1024)
    max_k: int = Field(100, ge=1)
    max_b: int = Field(2000, ge=1)
    sql_max_rows: int = Field(10_000, ge=1)
    sql_timeout_s: float = Field(10.0, gt=0)
    # The largest answer POST /sql sends, in bytes of its rows' JSON (else 400, rule sql_answer_limit).
    sql_max_answer_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    # A numeric prediction (API and `eval predict`) is the mean of the answers to the image in
    # `predict_views` of its 8 turns and mirror images, `predict_samples` sampled answers per view
    # (platform/predict.py). Samples 0: each view's greedy answer; views 1: the image as given.
    predict_samples: int = Field(4, ge=0, le=MAX_PREDICT_SAMPLES)
    predict_views: int = Field(8, ge=1, le=MAX_VIEWS)
    # How those answers become one value: their mean or their median (platform/predict.py).
    predict_pool: PredictPool = "mean"
    # Hostile clients (platform/api/limits.py, platform/api/throttle.py): a request body must arrive
    # within api_body_timeout_s (else 408); at most api_max_unfinished_bodies bodies may be arriving
    # at once (else 503); one client (API key, or address without keys) may have at most
    # api_model_work_per_client uploads decoding or in the model at once (else 429 + Retry-After).
    api_body_timeout_s: float = Field(30.0, gt=0)
    api_max_unfinished_bodies: int = Field(64, ge=1)
    api_model_work_per_client: int = Field(2, ge=1)
    # The embedded store's HNSW index (platform/store/indexing.py): ingest builds it at its finish
    # once a collection holds store_index_min_points points (0 = never: search stays exact), and a
    # search through it keeps store_hnsw_ef candidates (more = better recall, slower).
    store_index_min_points: int = Field(20_000, ge=0)
    store_hnsw_ef: int = Field(128, ge=1, le=10_000)
    # Ingest compacts a catalog table at its finish once this many files were written to it since
    # its last compaction (platform/catalog_compact.py; 0 = never: `dermground catalog compact`).
    catalog_auto_compact_files: int = Field(64, ge=0)
    # Images per model pass when search re-embeds candidates (hierarchical mode) and embeds queries
    # (platform/search_embedder.py): "auto" measures on a GPU the model's memory per image patch
    # and fills passes within 80% of the card's free memory (at most 64 images); on a CPU it is 4.
    search_embed_batch: int | Literal["auto"] = "auto"

    @field_validator("home", mode="after")
    @classmethod
    def _home_is_not_a_file(cls, value: Path) -> Path:
        if value.exists() and not value.is_dir():
            raise ValueError(f"{value} exists and is not a folder")
        return value

    @field_validator("search_embed_batch", mode="before")
    @classmethod
    def _auto_or_positive(cls, value: object) -> object:
        text = value.strip().lower() if isinstance(value, str) else value
        if text == "auto":
            return "auto"
        if isinstance(text, str) and text.isdigit():
            text = int(text)
        if not isinstance(text, int) or isinstance(text, bool) or text < 1:
            raise ValueError("must be 'auto' or an integer >= 1 (images per model pass)")
        return text

    # Derived locations: under the home folder unless configured otherwise.
    @cached_property
    def models_dir(self) -> Path:
        return self.home / "models"

    @cached_property
    def base_model_dir(self) -> Path:
        return self.model_dir if self.model_dir is not None else self.models_dir / "base"

    @cached_property
    def store_dir(self) -> Path:
        return self.home / "qdrant"

    @cached_property
    def catalog_dir(self) -> Path:
        return self.home / "catalog"

    @cached_property
    def ray_dir(self) -> Path:
        return self.home / "ray"


def load_settings(**overrides: object) -> Settings:
    """Read settings; raise SettingsError naming each bad `DERMGROUND_*` variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"]) or "?"
            problems.append(f"{ENV_PREFIX}{field.upper()}: {error['msg']} (got {error.get('input')!r})")
        raise SettingsError("invalid settings:\n  " + "\n  ".join(problems)) from None
