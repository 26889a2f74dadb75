-- name: upsert_collection
INSERT INTO collections (name) VALUES ($1)
ON CONFLICT (name) DO UPDATE SET name = excluded.name
RETURNING id;

-- name: collection_id
SELECT id FROM collections WHERE name = $1;

-- name: collection_for_search
SELECT c.id, coalesce(cs.chunk_count, 0) AS chunk_count
FROM collections c LEFT JOIN collection_stats cs ON cs.collection_id = c.id
WHERE c.name = $1;

-- name: create_upload_staging
CREATE TEMP TABLE upload_staging (
    external_id  text NOT NULL,
    title        text NOT NULL,
    body         text NOT NULL,
    metadata     jsonb NOT NULL,
    content_hash bytea NOT NULL,
    -- Set for a document uploaded as a file (POST /v1/files); NULL for JSON documents.
    file_name    text,
    file_format  text,
    file_charset text,
    file_data    bytea
) ON COMMIT DROP;

-- name: insert_job
INSERT INTO ingest_jobs (id, collection_id, rejected) VALUES ($1, $2, $3);

-- name: upsert_documents
-- New documents and changed ones (or ones that failed before) are (re)queued; unchanged ones are
-- left alone, so re-uploading them costs no work. Rows come back in id order for batching.
WITH up AS (
    INSERT INTO documents AS d (collection_id, external_id, title, body, metadata, content_hash, job_id)
    SELECT $1, external_id, title, body, metadata, content_hash, $2
    FROM upload_staging
    ORDER BY external_id
    ON CONFLICT (collection_id, external_id) DO UPDATE
        SET title = excluded.title, body = excluded.body, metadata = excluded.metadata,
            content_hash = excluded.content_hash, job_id = excluded.job_id,
            version = d.version + 1, status = 'queued', attempts = 0, last_error = NULL,
            updated_at = now()
        WHERE d.content_hash <> excluded.content_hash OR d.status = 'failed'
    RETURNING d.id
)
SELECT id FROM up ORDER BY id;

-- name: update_unchanged_metadata
-- Metadata is not part of the indexed text: a metadata-only change is applied in place.
UPDATE documents d SET metadata = s.metadata, updated_at = now()
FROM upload_staging s
WHERE d.collection_id = $1 AND d.external_id = s.external_id
  AND d.content_hash = s.content_hash AND d.metadata <> s.metadata;

-- name: delete_files
-- The stored files of the documents an upload (re)queued go first: a changed file replaces the
-- old one (insert_files), a document now uploaded as JSON keeps none.
DELETE FROM document_files WHERE document_id = ANY($1::bigint[]);

-- name: insert_files
INSERT INTO document_files (document_id, filename, format, charset, bytes, data)
SELECT d.id, s.file_name, s.file_format, s.file_charset, length(s.file_data), s.file_data
FROM upload_staging s JOIN documents d ON d.collection_id = $1 AND d.external_id = s.external_id
WHERE d.id = ANY($2::bigint[]) AND s.file_data IS NOT NULL
ORDER BY d.id;

-- name: set_job_counts
UPDATE ingest_jobs SET total = $2, unchanged = $3,
    finished_at = CASE WHEN $2 = 0 THEN now() END
WHERE id = $1;

-- name: get_document
SELECT d.external_id, d.title, d.body, d.metadata, d.status::text AS status, d.version,
       d.attempts, d.last_error, d.job_id, d.created_at, d.updated_at,
       (SELECT count(*) FROM chunks c WHERE c.document_id = d.id) AS chunk_count
FROM documents d JOIN collections c ON c.id = d.collection_id
WHERE c.name = $1 AND d.external_id = $2;

-- name: lock_document
WITH doc AS (
    SELECT d.id FROM documents d JOIN collections c ON c.id = d.collection_id
    WHERE c.name = $1 AND d.external_id = $2
    FOR UPDATE OF d
)
SELECT id FROM doc;

-- name: delete_document_row
-- Chunks go with the row (ON DELETE CASCADE), and with them their postings, statistics and
-- vectors (the chunks_deleted trigger).
DELETE FROM documents WHERE id = $1;

-- name: job_status
-- Counters kept by the documents triggers (migrations/0002): a document re-uploaded under a
-- later job, or deleted, leaves this job's counts; total stays what the upload accepted.
SELECT j.id, j.total, j.unchanged, j.rejected, j.queued, j.prepped, j.indexed, j.failed,
       j.created_at, j.finished_at, c.name AS collection
FROM ingest_jobs j JOIN collections c ON c.id = j.collection_id
WHERE j.id = $1;

-- name: job_errors
SELECT d.external_id, e.stage, e.message, e.at
FROM ingest_errors e LEFT JOIN documents d ON d.id = e.document_id
WHERE e.job_id = $1
ORDER BY e.at, e.id
LIMIT $2;

-- name: claim_pending
-- The sweeper: documents in status $1 pending for longer than $2 seconds, whose queue message
-- may have been lost. Claiming bumps updated_at, so the next sweep waits a full grace period
-- again, and SKIP LOCKED lets several sweepers (one per API process) split the work instead of
-- doubling it.
UPDATE documents d SET updated_at = now()
FROM (
    SELECT id FROM documents
    WHERE status = $1::document_status AND updated_at < now() - make_interval(secs => $2)
    ORDER BY id
    LIMIT $3
    FOR UPDATE SKIP LOCKED
) p
WHERE d.id = p.id
RETURNING d.id;

-- name: status_counts
SELECT status::text AS status, count(*) AS n FROM documents GROUP BY 1;

-- name: ping
SELECT 1;

-- name: requeue_for_embed
-- After a model change: indexed documents go back to 'prepped' so the new model's table is
-- filled from the chunks already there, when they were cut by the new model's chunker ($2);
-- the others go back to 'queued', to be cut again first, including those prepped before the
-- chunker was recorded (NULL: unknown, so cut again to be safe). $1 a collection or NULL.
UPDATE documents d
SET status = CASE WHEN d.chunker = $2 THEN 'prepped' ELSE 'queued' END::document_status,
    attempts = 0, updated_at = now()
FROM collections c
WHERE c.id = d.collection_id AND d.status = 'indexed' AND ($1::text IS NULL OR c.name = $1)
RETURNING d.id, d.status;

-- name: jobs_to_finalize
-- Jobs among $1 with nothing pending that are not finished yet.
SELECT id FROM ingest_jobs
WHERE id = ANY($1::uuid[]) AND queued + prepped = 0 AND finished_at IS NULL;

-- name: stale_unfinished_jobs
-- The sweeper: jobs with nothing pending for which no finalize task got through.
SELECT id FROM ingest_jobs
WHERE queued + prepped = 0 AND finished_at IS NULL AND created_at < now() - make_interval(secs => $1)
ORDER BY created_at LIMIT $2;

-- name: job_for_finalize
SELECT j.id, j.collection_id, j.total, j.queued + j.prepped AS pending, j.finished_at,
       (SELECT count(*) FROM documents d WHERE d.collection_id = j.collection_id) AS documents
FROM ingest_jobs j WHERE j.id = $1;

-- name: finish_job
UPDATE ingest_jobs SET finished_at = now()
WHERE id = $1 AND finished_at IS NULL AND queued + prepped = 0
RETURNING finished_at;

-- name: advisory_xact_lock
SELECT pg_advisory_xact_lock($1::integer, $2::integer);

-- name: set_local
-- A setting for the rest of the transaction (SET LOCAL with a parameter).
SELECT set_config($1, $2, true);

-- name: vacuum_tables
-- {tables}: fixed table names and a registry-made partition name, never input.
VACUUM (ANALYZE) {tables};

-- name: try_advisory_lock
SELECT pg_try_advisory_lock($1::integer, $2::integer);

-- name: advisory_lock
SELECT pg_advisory_lock($1::integer, $2::integer);

-- name: advisory_unlock
SELECT pg_advisory_unlock($1::integer, $2::integer);

-- name: set_session
-- A setting for the rest of the session (the caller resets it before the connection goes back).
SELECT set_config($1, $2, false);

-- name: reset_statement_timeout
RESET statement_timeout;
