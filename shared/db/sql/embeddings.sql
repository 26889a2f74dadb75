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
    reduced       halfvec,  -- its projection onto the partition's basis (migrations/0006_pca.sql)
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

-- name: count_partition_upto
-- The partition's rows, counted up to $1: the cost stays bounded however big it is.
SELECT count(*) FROM (SELECT 1 FROM {partition} LIMIT $1) r;

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

-- name: partition_basis_stamp
-- When the partition's basis was fitted; NULL: it has none (or one of a partition since dropped).
SELECT b.fitted_at FROM partition_bases b
WHERE b.table_name = $1 AND b.collection_id = $2 AND b.partition_oid = to_regclass($3)::oid;

-- name: partition_basis
SELECT b.components, b.mean, b.axes, b.fitted_at, b.checked_rows FROM partition_bases b
WHERE b.table_name = $1 AND b.collection_id = $2 AND b.partition_oid = to_regclass($3)::oid;

-- name: save_partition_basis
INSERT INTO partition_bases AS b (table_name, collection_id, partition_oid, components, mean, axes,
                                  fitted_rows, checked_rows)
VALUES ($1, $2, to_regclass($3)::oid, $4, $5, $6, $7, $8)
ON CONFLICT (table_name, collection_id) DO UPDATE
SET partition_oid = EXCLUDED.partition_oid, components = EXCLUDED.components,
    mean = EXCLUDED.mean, axes = EXCLUDED.axes, fitted_rows = EXCLUDED.fitted_rows,
    checked_rows = EXCLUDED.checked_rows, fitted_at = now()
RETURNING b.fitted_at;

-- name: record_basis_check
-- The basis fitted at $3 was checked against the partition at $4 rows and kept.
UPDATE partition_bases SET checked_rows = $4
WHERE table_name = $1 AND collection_id = $2 AND fitted_at = $3;

-- name: sample_partition
-- The vectors a basis is fitted on: a uniform sample of the partition's rows.
SELECT embedding FROM {partition} ORDER BY random() LIMIT $1;

-- name: lock_partition_for_fit
-- Vector writes (ROW EXCLUSIVE) and a second fit wait while a basis is fitted and the projections
-- are filled in; searches (ACCESS SHARE) go on. SHARE would not exclude a second fit, and two
-- fits that each go on to update the rows would deadlock.
LOCK TABLE {partition} IN SHARE ROW EXCLUSIVE MODE;

-- name: lock_partition_for_write
-- Taken before a writer reads the partition's basis: a fit cannot commit between that read and
-- the writer's rows.
LOCK TABLE {partition} IN ROW EXCLUSIVE MODE;

-- name: read_partition_vectors
SELECT chunk_id, unit, embedding FROM {partition};

-- name: create_projection_staging
CREATE TEMP TABLE IF NOT EXISTS projection_staging (
    chunk_id bigint, unit smallint, reduced halfvec
) ON COMMIT DROP;

-- name: fill_projections
UPDATE {partition} e SET reduced = s.reduced
FROM projection_staging s
WHERE e.chunk_id = s.chunk_id AND e.unit = s.unit;

-- name: truncate_projection_staging
TRUNCATE projection_staging;

-- name: index_ef_construction
-- The candidate list an HNSW index was built with (NULL: no such index); pgvector's default
-- when the build named none.
SELECT CASE WHEN c.oid IS NULL THEN NULL
       ELSE coalesce((SELECT split_part(o, '=', 2)::int FROM unnest(c.reloptions) o
                      WHERE o LIKE 'ef\_construction=%'), 64) END
FROM (SELECT to_regclass($1) AS oid) r
LEFT JOIN pg_class c ON c.oid = r.oid;

-- name: create_index_concurrently
-- Beside the partition's index: writes and searches go on while it is built.
CREATE INDEX CONCURRENTLY {index} ON {partition} USING {method};

-- name: rename_index
ALTER INDEX {index} RENAME TO {name};

-- name: drop_index_concurrently
-- Waits for the queries reading the index, blocking none (outside a transaction).
DROP INDEX CONCURRENTLY IF EXISTS {index};

-- name: reset_build_settings
-- The session's build settings (rebuild_graph) back to the server's.
RESET maintenance_work_mem; RESET max_parallel_maintenance_workers;
