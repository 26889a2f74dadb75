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

from shared.errors import ConfigError

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
    # Server-side limit for any one statement of the API (searches have their own, shorter
    # one) and of the workers (their index builds run without a limit).
    api_statement_timeout_ms: int = Field(60_000, ge=100)
    worker_statement_timeout_ms: int = Field(600_000, ge=100)

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
    # An NDJSON upload streams: it is bounded in total bytes and in silence between bytes.
    max_ndjson_bytes: int = Field(4 * 1024**3, ge=1024)
    upload_idle_timeout_seconds: float = Field(30.0, gt=0)
    # File uploads (POST /v1/files): one file, one request, and ZIP archives (a ZIP is refused
    # whole past these: its members, their inflated total, or a large member compressed more
    # than max_zip_ratio times, the signature of a ZIP bomb).
    max_file_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    max_files_request_bytes: int = Field(256 * 1024 * 1024, ge=1024)
    max_files_per_request: int = Field(1_000, ge=1)
    max_zip_members: int = Field(1_000, ge=1)
    max_zip_uncompressed_bytes: int = Field(512 * 1024 * 1024, ge=1024)
    max_zip_ratio: float = Field(100.0, ge=2.0)
    # Every other request body (search, ...) is refused past this before it is parsed.
    max_query_request_bytes: int = Field(1024 * 1024, ge=1024)
    # SIGTERM: the API, a worker's children and `kensaku up` are gone within this, whatever
    # they were doing (in-flight requests get this long to finish, then the process exits).
    shutdown_timeout_seconds: float = Field(10.0, gt=0)

    # --- ingestion ------------------------------------------------------------------------
    prep_batch_size: int = Field(64, ge=1, le=10_000)
    # Chunks per embed task (documents are grouped up to this; a longer one goes alone).
    embed_batch_size: int = Field(256, ge=1, le=100_000)
    # Tries per document (task retries and worker crashes together) before it is failed.
    max_attempts: int = Field(5, ge=1)
    # A prep or embed task running longer is stopped (soft), then its process killed.
    task_time_limit_seconds: int = Field(300, ge=10)
    # Documents still queued/prepped this long after their last change are re-enqueued.
    sweep_grace_seconds: float = Field(120.0, ge=1.0)
    sweep_interval_seconds: float = Field(30.0, ge=1.0)
    # A worker that holds no task while its queues have work, and has received none for this
    # long, is stopped so that its supervisor starts it again (worker/watchdog.py); 0: never.
    # Above the ~35 s a reconnecting consumer can wait between tries.
    worker_stall_seconds: float = Field(120.0, ge=0.0)

    # --- text pipeline --------------------------------------------------------------------
    chunk_tokens: int = Field(256, ge=16, le=8192)
    chunk_overlap_tokens: int = Field(0, ge=0)

    # --- embedding model ------------------------------------------------------------------
    model: str = DEFAULT_MODEL
    models_dir: Path = Path(".models")
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    # torch, or a copy exported once and cached under models_dir/exports (shared/embed/export.py):
    # onnx (ONNX Runtime), onnx-int8 (int8 weights), openvino, openvino-int8 (int8 weights).
    backend: Literal["torch", "onnx", "onnx-int8", "openvino", "openvino-int8"] = "torch"
    # An export whose mean cosine to torch on the Japanese probe texts is below this is refused.
    # MiniLM: onnx and openvino 1.000, openvino-int8 0.998, onnx-int8 0.981 (bench/RESULTS.md).
    export_min_cosine: float = Field(0.97, ge=0.0, le=1.0)
    # Intra-op threads of the API's query encoder. Unset: each query gets the cores other
    # processes left idle lately (at most 4), else one (shared/embed/idle_cores.py): MiniLM's
    # query p50 on 2 idle cores was 31 ms on two threads and 42 on one, but with a worker
    # encoding batches on both, 94 on two and 47 on one (torch, `kensaku bench embed`). An
    # exported backend's session fixes its threads when it opens, so it holds a session on 2
    # (and one on the limit, up to 4) next to the one-thread one, where the limit is above 1.
    query_threads: int | None = Field(None, ge=1, le=256)
    # Largest number of padded model tokens one encode batch may hold (length-sorted batches).
    # Unset: 4,096 on a CPU, where MiniLM on one thread took 7 % longer in batches of 16,384
    # (cache-sized batches win; bench/RESULTS.md), and 16,384 on a GPU.
    embed_token_budget: int | None = Field(None, ge=64)
    trust_remote_code: bool = False
    # How often the API looks at the model registry to follow a switch (shared/db/registry.py).
    model_poll_seconds: float = Field(1.0, gt=0, le=60)

    # --- vectors --------------------------------------------------------------------------
    # What one vector stands for: "sentence" (each sentence of a chunk, with the title) or
    # "chunk". auto: sentences for bag-of-words models (the default; ja_dev vector MRR@10 0.651
    # against 0.458 per paragraph), chunks for transformers.
    vector_unit: Literal["auto", "chunk", "sentence"] = "auto"
    # A collection's vectors get an HNSW index once it holds this many (built when a job
    # finishes); below, the partition is scanned exactly.
    hnsw_min_rows: int = Field(10_000, ge=0)
    # maintenance_work_mem of the build (PostgreSQL's maximum is 2 TB); a parallel build takes it
    # as shared memory, so a container's /dev/shm (shm_size) must hold it.
    hnsw_build_memory_mb: int = Field(512, ge=64, le=2_097_151)
    # Parallel workers for an index build, besides the building process (0: that one alone).
    # 1 or 3 halved the build of 60,000 halfvec(300) vectors on two cores (28.4 → 14.4 s,
    # `kensaku bench vectors`); 2 is PostgreSQL's own max_parallel_maintenance_workers default.
    hnsw_build_workers: int = Field(2, ge=0, le=64)
    # HNSW recall@10 against exact search on ja_dev's 60,756 sentence vectors: 0.964 at 40,
    # 0.983 at 100 (0.9 ms), 0.992 at 200 (1.6 ms), 0.995 at 400 (2.7 ms) (bench/RESULTS.md).
    # Unset: by the partition's size (shared/db/graph.py: 100, 200 from 500,000 vectors).
    hnsw_ef_search: int | None = Field(None, ge=1, le=1000)
    # The HNSW graph: neighbours per node (pgvector's default; for indexes built from now on) and
    # the candidate list of its build; a graph built with a shorter one is built again beside it
    # (finalize.rebuild_graph). Unset: by the partition's size at the build
    # (shared/db/graph.py: 64, 128 from 100,000 vectors, 256 from 200,000), since a graph that
    # serves 60,000 vectors well loses recall at a million.
    hnsw_m: int = Field(16, ge=2, le=100)
    hnsw_ef_construction: int | None = Field(None, ge=4, le=1000)
    # The index a collection's partition gets (vectors are stored as halfvec whichever it is):
    # hnsw_halfvec: HNSW over the stored half-precision vectors; hnsw: over them as float32;
    # hnsw_binary: over their sign bits (Hamming distance), the best binary_rerank_factor × the
    # candidates wanted then re-ranked by the full vectors; ivfflat: k-means lists (rows/1000,
    # sqrt(rows) past a million), ivfflat_probes of them searched per query.
    vector_index: Literal["hnsw", "hnsw_halfvec", "hnsw_binary", "ivfflat"] = "hnsw_halfvec"
    # The index holds only N dimensions of each vector (0: all), made as vector_projection says;
    # the best binary_rerank_factor × the candidates wanted are re-ranked by the full stored
    # vectors. A collection still below hnsw_min_rows is ranked the same way (N dimensions, then
    # re-rank), not by a full exact scan. With pca, a collection without a basis of N components
    # is ranked as with all dimensions until it gets one: it has fewer than 5,000 vectors, or it
    # was loaded before N or the projection was set (its next job's end, or `kensaku model
    # index`, fits it).
    vector_dimensions: int = Field(0, ge=0, le=4000)
    # How those N dimensions are made. pca: the first N principal components of the collection's
    # own vectors, fitted on 5,000 of them (the vectors stay stored as they are;
    # shared/db/bases.py); prefix: the first N stored dimensions, for a Matryoshka model. On
    # 100,000 vectors of the default model an exact first pass over 150 dimensions kept 0.957 of
    # the true top 10 with prefix, 0.986 with pca (bench/RESULTS.md).
    vector_projection: Literal["pca", "prefix"] = "pca"
    binary_rerank_factor: int = Field(4, ge=1, le=100)
    ivfflat_probes: int = Field(10, ge=1, le=10_000)

    # --- search ---------------------------------------------------------------------------
    # Chunks each channel hands to the exact re-scoring and the fusion (at least 4 × top_k).
    # On ja_dev 50 scored within 0.001 MRR@10 of 100 in every mode, for less work per query.
    search_candidates: int = Field(50, ge=10, le=10_000)
    # Lexical candidates come from the best postings of each query word (by BM25 weight); the
    # candidates are then scored exactly. 200 gave the exact ranking on ja_dev (100: -0.002).
    lexical_postings_per_term: int = Field(200, ge=10, le=100_000)
    # At most this many distinct words and bigrams of a query are used (the rarest kept).
    max_query_terms: int = Field(64, ge=1, le=1024)
    # BM25 per field, fitted on ja_dev with `kensaku-bench tune` (bench/RESULTS.md). Applied when
    # a chunk is prepped: changing them takes effect for documents prepped afterwards
    # (`kensaku reindex` re-preps a collection). avgdl is a fixed stand-in for the collection's
    # average length (shared/text/terms.py says why); ja_dev's chunks average 186 words and
    # 163 bigrams.
    bm25_word_k1: float = Field(0.5, gt=0.0)
    bm25_word_b: float = Field(0.65, ge=0.0, le=1.0)
    bm25_word_avgdl: float = Field(150.0, gt=0.0)
    bm25_bigram_k1: float = Field(0.4, gt=0.0)
    bm25_bigram_b: float = Field(0.75, ge=0.0, le=1.0)
    bm25_bigram_avgdl: float = Field(150.0, gt=0.0)
    # Query-time weights: the bigram field's share of the lexical score, and the cosine's weight
    # in hybrid (score = lexical / best lexical + weight × cosine of the best sentence).
    bigram_weight: float = Field(0.5, ge=0.0)
    hybrid_vector_weight: float = Field(0.2, ge=0.0)
    # A search statement running longer than this is cancelled (a 503 the client may retry).
    search_timeout_ms: int = Field(5000, ge=10)

    # --- operations -----------------------------------------------------------------------
    log_level: str = "INFO"
    log_json: bool = False
    # Workers serve their own /metrics on this port (0 = off); see docs/deploy.md.
    metrics_port: int = Field(0, ge=0, le=65535)
    # `kensaku up`'s Flower (docker-compose passes FLOWER_BASIC_AUTH to Flower itself); an
    # empty password gets a random one, printed at start-up.
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
        if not v.startswith(("redis://", "rediss://", "unix://", "redis+socket://")):
            raise ValueError("must be a redis://, rediss://, redis+socket:// or unix:// URL")
        return v

    @field_validator("worker_stall_seconds")
    @classmethod
    def _stall_off_or_long(cls, v: float) -> float:
        if 0 < v < 5:  # shorter would stop a healthy worker between two fetches
            raise ValueError("must be 0 (off) or at least 5 seconds")
        return v

    @model_validator(mode="after")
    def _overlap_below_budget(self) -> Settings:
        if self.chunk_overlap_tokens >= self.chunk_tokens:
            raise ValueError("chunk_overlap_tokens must be smaller than chunk_tokens")
        return self

    @model_validator(mode="after")
    def _hnsw_graph(self) -> Settings:
        # pgvector refuses the build otherwise, at the end of a job.
        if self.hnsw_ef_construction is not None and self.hnsw_ef_construction < 2 * self.hnsw_m:
            raise ValueError("hnsw_ef_construction must be at least twice hnsw_m")
        return self

    @property
    def api_key_list(self) -> list[str]:
        return [k.strip() for k in self.api_keys.get_secret_value().split(",") if k.strip()]

    def check_bind_allowed(self) -> None:
        """Refuse to serve an open API on a non-loopback address (a ConfigError). The API also
        refuses, per request, keyless clients reaching it on any other address (api/auth.py):
        this check knows only the setting, not what the server was told to bind."""
        if self.api_key_list or is_loopback(self.host):
            return
        raise ConfigError(
            f"refusing to bind the API to {self.host}: KENSAKU_API_KEYS is empty. "
            "Set API keys or bind to 127.0.0.1."
        )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
