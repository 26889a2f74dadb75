-- Which model serves, which is being built, and the switch between them (shared/db/registry.py,
-- migrations/0005_model_switch.sql). {table}: a model's embedding table, from the registry.

-- name: activate_if_none
-- A fresh database: the first model registered becomes the active one. Afterwards only a switch
-- changes it, never a process starting with another KENSAKU_MODEL.
UPDATE embedding_models SET active = true
WHERE name = $1 AND NOT EXISTS (SELECT 1 FROM embedding_models WHERE active);

-- name: serving_models
SELECT name, active, building FROM embedding_models WHERE active OR building;

-- name: model_states
SELECT name, table_name, dimension, backend, active, building, retired_at, created_at
FROM embedding_models ORDER BY created_at, name;

-- name: model_is_active
SELECT active FROM embedding_models WHERE name = $1;

-- name: building_model
SELECT name FROM embedding_models WHERE building;

-- name: start_build
UPDATE embedding_models SET building = true WHERE name = $1 AND NOT active RETURNING name;

-- name: cancel_build
UPDATE embedding_models SET building = false WHERE building RETURNING name;

-- name: retire_active
-- Two statements with activate_model, in one transaction: the unique index on the active flag
-- is checked row by row, so the old model must be off before the new one is on.
UPDATE embedding_models SET active = false, retired_at = now() WHERE active AND name <> $1;

-- name: activate_model
UPDATE embedding_models SET active = true, building = false WHERE name = $1;

-- name: previous_model
SELECT name FROM embedding_models WHERE NOT active AND retired_at IS NOT NULL
ORDER BY retired_at DESC LIMIT 1;

-- name: indexed_chunks
SELECT count(*) FROM chunks k JOIN documents d ON d.id = k.document_id WHERE d.status = 'indexed';

-- name: model_gaps
-- Indexed documents with chunks that have no vector in {table}, with how many.
SELECT k.document_id AS id, count(*) AS chunks
FROM chunks k JOIN documents d ON d.id = k.document_id
WHERE d.status = 'indexed'
  AND NOT EXISTS (SELECT 1 FROM {table} e WHERE e.chunk_id = k.id AND e.collection_id = k.collection_id)
GROUP BY k.document_id ORDER BY k.document_id;

-- name: chunkers_in_use
-- What the stored chunks were cut for (NULL: before chunkers were recorded).
SELECT chunker, count(*) AS documents FROM documents
WHERE status IN ('prepped', 'indexed') GROUP BY chunker ORDER BY 2 DESC;

-- name: model_partitions
SELECT c.id FROM collections c WHERE to_regclass($1 || '_c' || c.id) IS NOT NULL ORDER BY c.id;

-- name: advisory_xact_lock_shared
SELECT pg_advisory_xact_lock_shared($1::integer, $2::integer);
