"""One Settings object for the API, the workers, the CLI and the embedded stack.

Every value can be set through the environment with the ``KENSAKU_`` prefix
(``KENSAKU_DATABASE_URL``, ``KENSAKU_API_KEYS``, ...). Settings are validated once at start-up so a
bad value stops the process with a clear message instead of failing on the first request.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The model that `kensaku model build` makes from the chiVe vectors shipped in the ja-ginza wheel.
DEFAULT_MODEL = "kensaku/chive-sudachi-300"


class Settings(BaseSettings):
    # The environment only: a .env file next to docker-compose.yml holds the deployment's
    # secrets and must not silently configure local commands run from the same directory.
    model_config = SettingsConfigDict(env_prefix="KENSAKU_", extra="ignore")

    # --- services -------------------------------------------------------------------------
    database_url: str = "postgresql://kensaku@127.0.0.1:5432/kensaku"
    redis_url: str = "redis://127.0.0.1:6379/0"
    db_pool_min: int = Field(1, ge=0)
    db_pool_max: int = Field(8, ge=1)

    # --- HTTP API -------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    # Comma-separated. When empty the API refuses to bind to anything but loopback.
    api_keys: SecretStr = SecretStr("")
    max_request_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    max_documents_per_request: int = Field(10_000, ge=1)
    # NDJSON uploads stream, so they may carry more documents than a JSON body.
    max_documents_per_ndjson: int = Field(1_000_000, ge=1)
    max_document_bytes: int = Field(4 * 1024 * 1024, ge=1024 * 1024)
    max_id_chars: int = Field(512, ge=1)

    # --- ingestion ------------------------------------------------------------------------
    prep_batch_size: int = Field(64, ge=1, le=10_000)
    embed_batch_size: int = Field(256, ge=1, le=100_000)
    max_attempts: int = Field(5, ge=1)
    # Documents still queued/prepped this long after their last change are re-enqueued.
    sweep_grace_seconds: float = Field(120.0, ge=1.0)
    sweep_interval_seconds: float = Field(30.0, ge=1.0)

    # --- text pipeline --------------------------------------------------------------------
    chunk_tokens: int = Field(256, ge=16, le=8192)
    chunk_overlap_tokens: int = Field(0, ge=0)

    # --- embedding model ------------------------------------------------------------------
    model: str = DEFAULT_MODEL
    models_dir: Path = Path(".models")
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    backend: Literal["torch", "onnx", "openvino"] = "torch"
    # Largest number of model tokens one encode batch may hold (length-sorted batches).
    embed_token_budget: int = Field(16_384, ge=64)
    trust_remote_code: bool = False

    # --- search ---------------------------------------------------------------------------
    # HNSW recall@10 against exact search at 100k chunks: 0.962 at 100, 0.978 at 200, 0.992 at
    # 400 (vector p50 8.4 -> 11.3 ms from 200 to 400; bench/RESULTS.md).
    hnsw_ef_search: int = Field(400, ge=1, le=1000)
    # Collections with fewer chunks are searched exactly (a full scan of a few thousand vectors
    # takes milliseconds and has perfect recall); larger ones through the HNSW index.
    exact_search_below: int = Field(5000, ge=0)
    # Chunks each channel hands to the best-chunk grouping and the fusion (at least 4 × top_k).
    search_candidates: int = Field(50, ge=10, le=10_000)
    # Convex fusion weights for hybrid mode (score-normalized lexical and vector channels).
    hybrid_lexical_weight: float = Field(0.7, ge=0.0, le=1.0)
    bm25_k1: float = Field(1.2, ge=0.0)
    bm25_b: float = Field(0.75, ge=0.0, le=1.0)
    # Lexical candidates: the best postings of each query term (by BM25 term weight); the union
    # is scored exactly. Bounds BM25's work however common the terms are.
    lexical_postings_per_term: int = Field(500, ge=10, le=100_000)

    # --- operations -----------------------------------------------------------------------
    log_level: str = "INFO"
    log_json: bool = False
    # Workers serve their own /metrics on this port (0 = off); see docs/deploy.md.
    metrics_port: int = Field(0, ge=0, le=65535)
    flower_port: int = Field(5555, ge=0, le=65535)
    flower_user: str = "kensaku"
    flower_password: SecretStr = SecretStr("")

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, v: str) -> str:
        if not v.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL")
        return v

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, v: str) -> str:
        if not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return v

    @model_validator(mode="after")
    def _overlap_below_budget(self) -> Settings:
        if self.chunk_overlap_tokens >= self.chunk_tokens:
            raise ValueError("chunk_overlap_tokens must be smaller than chunk_tokens")
        return self

    @property
    def api_key_list(self) -> list[str]:
        return [k.strip() for k in self.api_keys.get_secret_value().split(",") if k.strip()]

    def check_bind_allowed(self) -> None:
        """Refuse to serve an open API on a non-loopback address."""
        if self.api_key_list:
            return
        if self.host == "localhost":
            return
        try:
            loopback = ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise SystemExit(
                f"refusing to bind the API to {self.host}: KENSAKU_API_KEYS is empty. "
                "Set API keys or bind to 127.0.0.1."
            )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
