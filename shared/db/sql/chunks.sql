-- name: load_for_prep
-- A document uploaded as a file has its format here; its bytes are read one file at a time.
SELECT d.id, d.collection_id, d.external_id, d.version, d.title, d.body, d.job_id, d.attempts,
       f.format AS file_format, f.charset AS file_charset
FROM documents d LEFT JOIN document_files f ON f.document_id = d.id
WHERE d.id = ANY($1::bigint[]) AND d.status = 'queued'
ORDER BY d.id;

-- name: load_file
SELECT data FROM document_files WHERE document_id = $1;

-- name: set_extracted_text
-- The text prep extracted from a document's file becomes the document's title and body.
UPDATE documents SET title = $2, body = $3 WHERE id = $1;

-- name: lock_versions
-- Rows locked in id order so concurrent workers cannot deadlock on documents.
SELECT id, version, status::text AS status, job_id FROM documents
WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE;

-- name: delete_chunks
-- Their postings, statistics and vectors go with them (the chunks_deleted trigger).
DELETE FROM chunks WHERE document_id = ANY($1::bigint[]);

-- name: allocate_chunk_ids
-- Ids for a batch's chunks before they are written, so postings and vectors can be COPYed
-- alongside the chunks instead of joined back to them.
SELECT nextval('chunks_id_seq') AS id FROM generate_series(1, $1);

-- name: add_lexeme_stats
-- Document frequencies of a batch's words, in key order (as chunks_deleted locks them).
INSERT INTO lexeme_stats AS s (collection_id, lexeme, df)
SELECT * FROM unnest($1::integer[], $2::text[], $3::integer[]) ORDER BY 1, 2
ON CONFLICT (collection_id, lexeme) DO UPDATE SET df = s.df + excluded.df;

-- name: add_collection_stats
INSERT INTO collection_stats AS cs (collection_id, chunk_count, lexeme_total)
SELECT * FROM unnest($1::integer[], $2::bigint[], $3::bigint[]) ORDER BY 1
ON CONFLICT (collection_id) DO UPDATE
SET chunk_count = cs.chunk_count + excluded.chunk_count,
    lexeme_total = cs.lexeme_total + excluded.lexeme_total;

-- name: mark_prepped
-- Attempts count per stage: embedding starts at zero. $2: the chunker that cut the chunks.
UPDATE documents SET status = 'prepped', attempts = 0, updated_at = now(), last_error = NULL,
       chunker = $2
WHERE id = ANY($1::bigint[]);

-- name: mark_indexed
UPDATE documents SET status = 'indexed', updated_at = now(), last_error = NULL,
       chunker_bounces = 0
WHERE id = ANY($1::bigint[]);

-- name: set_chunker
UPDATE documents SET chunker = $2 WHERE id = ANY($1::bigint[]);

-- name: send_back_to_prep
-- Prepped documents whose chunks were cut for another tokenizer or budget: prep again, once.
UPDATE documents SET status = 'queued', attempts = 0, updated_at = now(),
       chunker_bounces = chunker_bounces + 1
WHERE id = ANY($1::bigint[]) AND status = 'prepped' AND chunker_bounces = 0
RETURNING id;

-- name: mark_failed
UPDATE documents SET status = 'failed', attempts = attempts + 1, last_error = $2,
       updated_at = now()
WHERE id = $1 AND version = $3;

-- name: insert_error
INSERT INTO ingest_errors (document_id, job_id, stage, message) VALUES ($1, $2, $3, $4);

-- name: load_for_embed
-- $2: 'prepped' (to embed for the active model) or 'indexed' (to fill a model switched to).
SELECT c.id AS chunk_id, c.document_id, c.collection_id, c.text, d.title, d.version, d.chunker,
       d.chunker_bounces
FROM chunks c JOIN documents d ON d.id = c.document_id
WHERE d.id = ANY($1::bigint[]) AND d.status = $2::document_status
ORDER BY c.id;

-- name: lock_claims
-- A task claims its documents still in status $2 (shared/ingest/attempts.py): a session-level
-- lock per (document, version, stage) on the task's held connection. One already taken is
-- another live task's: it ends with that task or with its process.
WITH c AS MATERIALIZED (
    SELECT id, version, attempts FROM documents
    WHERE id = ANY($1::bigint[]) AND status = $2::document_status
)
SELECT id, version, attempts,
       pg_try_advisory_lock(hashtextextended(id::text || '/' || version::text || '/' || $2::text, 0))
           AS locked
FROM c ORDER BY id;

-- name: count_attempts
-- The attempt is counted first, in its own transaction, so a document whose processing kills
-- the worker process is seen coming back and ends failed after max_attempts instead of forever.
-- Rows locked in id order, like every other writer of documents.
UPDATE documents d SET attempts = d.attempts + 1
FROM (
    SELECT x.id FROM documents x
    JOIN unnest($1::bigint[], $2::bigint[]) AS t(id, version) ON x.id = t.id AND x.version = t.version
    WHERE x.status = $3::document_status
    ORDER BY x.id FOR UPDATE OF x
) p
WHERE d.id = p.id
RETURNING d.id, d.attempts, d.version, d.job_id;

-- name: release_claims
SELECT pg_advisory_unlock_all();

-- name: chunk_counts
SELECT document_id, count(*) AS n FROM chunks WHERE document_id = ANY($1::bigint[])
GROUP BY document_id;
