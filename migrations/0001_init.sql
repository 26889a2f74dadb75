-- kensaku schema: collections, documents, chunks, jobs, errors and the embedding-model registry.
-- Embedding tables (one per model, fixed dimension) are created by the model registry at start-up,
-- because their dimension is only known once the model is loaded.

CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE collections (
    id          serial PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE ingest_jobs (
    id           uuid PRIMARY KEY,
    collection_id integer NOT NULL REFERENCES collections (id) ON DELETE CASCADE,
    total        integer NOT NULL DEFAULT 0,
    unchanged    integer NOT NULL DEFAULT 0,
    rejected     integer NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
);

CREATE TYPE document_status AS ENUM ('queued', 'prepped', 'indexed', 'failed');

CREATE TABLE documents (
    id            bigserial PRIMARY KEY,
    collection_id integer NOT NULL REFERENCES collections (id) ON DELETE CASCADE,
    external_id   text NOT NULL,
    title         text NOT NULL DEFAULT '',
    body          text NOT NULL,
    metadata      jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- sha256 of the normalized title and text: an unchanged re-upload does no work.
    content_hash  bytea NOT NULL,
    -- Bumped on every change; workers write results only for the version they read, so a
    -- document re-uploaded mid-flight is never marked indexed with stale chunks.
    version       integer NOT NULL DEFAULT 1,
    status        document_status NOT NULL DEFAULT 'queued',
    attempts      integer NOT NULL DEFAULT 0,
    last_error    text,
    job_id        uuid REFERENCES ingest_jobs (id) ON DELETE SET NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (collection_id, external_id)
);
CREATE INDEX documents_job_idx ON documents (job_id);
-- The sweeper looks for work that is pending for too long.
CREATE INDEX documents_pending_idx ON documents (updated_at) WHERE status IN ('queued', 'prepped');
CREATE INDEX documents_metadata_idx ON documents USING gin (metadata jsonb_path_ops);

CREATE TABLE chunks (
    id            bigserial PRIMARY KEY,
    document_id   bigint NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    collection_id integer NOT NULL,
    ordinal       integer NOT NULL,
    text          text NOT NULL,
    char_start    integer NOT NULL,
    char_end      integer NOT NULL,
    token_count   integer NOT NULL,
    -- Number of content-word lexemes: the document length in BM25.
    lexeme_count  integer NOT NULL,
    -- Sudachi normalized forms of content words, 'simple' configuration, with positions: the
    -- chunk's lexical form (embedding input of the default model, BM25 statistics). Ranking
    -- reads the postings below, so it carries no GIN index to maintain.
    lexemes       tsvector NOT NULL,
    UNIQUE (document_id, ordinal)
);
CREATE INDEX chunks_collection_idx ON chunks (collection_id);

-- Impact-ordered postings for BM25: one row per (chunk, lexeme) with the term frequency, the
-- chunk's length and the term's BM25 weight at write time (impact, only for ordering). A query
-- reads the best postings of each term from the index alone and scores them; scoring every
-- chunk a GIN index matched grew with the collection (42 ms p50 at 10k chunks, where common
-- terms matched half of them).
CREATE TABLE postings (
    chunk_id      bigint NOT NULL REFERENCES chunks (id) ON DELETE CASCADE,
    lexeme        text NOT NULL,
    collection_id integer NOT NULL,
    tf            integer NOT NULL,
    dl            integer NOT NULL,
    impact        real NOT NULL,
    PRIMARY KEY (chunk_id, lexeme)
);
CREATE INDEX postings_impact_idx ON postings (collection_id, lexeme, impact DESC)
    INCLUDE (chunk_id, tf, dl);

-- BM25 statistics kept per collection, updated in the same transaction as the chunks.
CREATE TABLE lexeme_stats (
    collection_id integer NOT NULL REFERENCES collections (id) ON DELETE CASCADE,
    lexeme        text NOT NULL,
    df            integer NOT NULL,
    PRIMARY KEY (collection_id, lexeme)
);
CREATE TABLE collection_stats (
    collection_id integer PRIMARY KEY REFERENCES collections (id) ON DELETE CASCADE,
    chunk_count   bigint NOT NULL DEFAULT 0,
    lexeme_total  bigint NOT NULL DEFAULT 0
);

CREATE TABLE ingest_errors (
    id          bigserial PRIMARY KEY,
    document_id bigint REFERENCES documents (id) ON DELETE CASCADE,
    job_id      uuid REFERENCES ingest_jobs (id) ON DELETE CASCADE,
    stage       text NOT NULL,
    message     text NOT NULL,
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ingest_errors_job_idx ON ingest_errors (job_id, at);

CREATE TABLE embedding_models (
    name            text PRIMARY KEY,
    table_name      text NOT NULL UNIQUE CHECK (table_name ~ '^emb_[a-z0-9_]{1,59}$'),
    dimension       integer NOT NULL CHECK (dimension > 0),
    backend         text NOT NULL,
    query_prompt    text,
    document_prompt text,
    active          boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now()
);
-- At most one model is active: the one that search uses and embed writes.
CREATE UNIQUE INDEX embedding_models_one_active ON embedding_models (active) WHERE active;
