-- Queries on a model's embedding table take its name through {table}, filled in only from the
-- model registry after validation against TABLE_NAME (shared/db/embeddings.py), never from input.

-- name: model_row
SELECT name, table_name, dimension, backend, query_prompt, document_prompt, active
FROM embedding_models WHERE name = $1;

-- name: insert_model
INSERT INTO embedding_models (name, table_name, dimension, backend, query_prompt, document_prompt)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (name) DO NOTHING;

-- name: activate_model
UPDATE embedding_models SET active = (name = $1) WHERE active OR name = $1;

-- name: active_model
SELECT name, table_name, dimension FROM embedding_models WHERE active;

-- name: table_column_type
SELECT format_type(a.atttypid, a.atttypmod) AS type
FROM pg_attribute a
WHERE a.attrelid = to_regclass($1) AND a.attname = 'embedding' AND NOT a.attisdropped;

-- name: create_embedding_table
CREATE TABLE IF NOT EXISTS {table} (
    chunk_id  bigint PRIMARY KEY REFERENCES chunks (id) ON DELETE CASCADE,
    embedding {vector_type} NOT NULL
);

-- name: create_embedding_index
CREATE INDEX IF NOT EXISTS {table}_hnsw ON {table} USING hnsw (embedding {opclass});

-- name: delete_embeddings
DELETE FROM {table} WHERE chunk_id = ANY($1::bigint[]);

-- name: nearest_chunks
-- Chunk-level nearest neighbours (the benchmark compares this with and without the index).
SELECT chunk_id, embedding <=> $1 AS distance FROM {table} ORDER BY embedding <=> $1 LIMIT $2;
