-- Queries on a model's embedding table take its name through {table}, and on one collection's
-- partition through {partition}; both are filled in only from the model registry (validated
-- against TABLE_NAME in shared/db/embeddings.py) and an integer collection id, never from input.

-- name: model_row
SELECT name, table_name, dimension, backend, vector_unit, query_prompt, document_prompt, active
FROM embedding_models WHERE name = $1;

-- name: insert_model
INSERT INTO embedding_models (name, table_name, dimension, backend, vector_unit, query_prompt,
                              document_prompt)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (name) DO NOTHING;

-- name: table_column_type
SELECT format_type(a.atttypid, a.atttypmod) AS type
FROM pg_attribute a
WHERE a.attrelid = to_regclass($1) AND a.attname = 'embedding' AND NOT a.attisdropped;

-- name: create_embedding_table
-- One table per model, one partition per collection (created with the collection's first
-- vectors): each collection's vectors get their own HNSW index, so a small collection is never
-- lost inside a big shared graph, and a bulk load can build its index once at the end.
-- No foreign key: the chunks_deleted trigger removes a chunk's vectors (a per-row key check
-- would cost every COPY a lookup per row).
CREATE TABLE IF NOT EXISTS {table} (
    chunk_id      bigint NOT NULL,
    unit          smallint NOT NULL,
    collection_id integer NOT NULL,
    embedding     {vector_type} NOT NULL,
    PRIMARY KEY (chunk_id, unit, collection_id)
) PARTITION BY LIST (collection_id);

-- name: create_partition
CREATE TABLE IF NOT EXISTS {partition} PARTITION OF {table} FOR VALUES IN ({collection_id});

-- name: partition_state
-- (rows, whether the HNSW index exists) of a collection's partition; NULL rows: no partition.
SELECT (SELECT reltuples FROM pg_class WHERE oid = to_regclass($1)) AS estimated_rows,
       to_regclass($1) IS NOT NULL AS present,
       to_regclass($2) IS NOT NULL AS indexed;

-- name: count_partition
SELECT count(*) FROM {partition};

-- name: create_partition_index
CREATE INDEX IF NOT EXISTS {index} ON {partition} USING {index_method};

-- name: partition_indexes
-- The vector indexes kensaku built on a partition: HNSW or IVFFlat, named after the partition
-- (an operator's own index, or one attached to a parent index, is left alone).
SELECT i.relname AS name
FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_am a ON a.oid = i.relam
WHERE x.indrelid = to_regclass($1) AND a.amname IN ('hnsw', 'ivfflat')
  AND starts_with(i.relname, $1 || '_')
  AND NOT EXISTS (SELECT 1 FROM pg_inherits h WHERE h.inhrelid = i.oid);

-- name: drop_partition_index
-- An index of a kind or dimensions no longer configured (KENSAKU_VECTOR_INDEX,
-- KENSAKU_VECTOR_DIMENSIONS changed): only slows writes.
DROP INDEX IF EXISTS {index};

-- name: delete_embeddings
DELETE FROM {partition} WHERE chunk_id = ANY($1::bigint[]);
