-- Search that is tuned on real Japanese questions, and job counts that are kept, not derived.
--
-- * Lexical: postings carry only word terms and their BM25 weight (fixed at prep, so the index
--   does not depend on load order), ordered for index-only top-N reads; every chunk carries all
--   its weighted terms (words and character bigrams) as a sparsevec, so a candidate's exact
--   score is one inner product. Chunk keys (a hash of document id and ordinal) break ties.
-- * Vectors: one embedding table per model, now partitioned by collection and holding several
--   vectors (units) per chunk: the default model embeds each sentence. Each partition gets its
--   own HNSW index once it is large enough (see shared/db/embeddings.py).
-- * Derived rows (postings, statistics, embeddings) are removed by one statement trigger on
--   chunks instead of per-row foreign keys, which cost every COPY a lookup per row.
-- * Jobs count their documents per status, kept by a statement trigger on documents.
--
-- Everything derived is rebuilt from the stored documents: chunks and embeddings are dropped and
-- every document that was not failed goes back to 'queued', which the sweeper picks up.

DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT table_name FROM embedding_models LOOP
        EXECUTE format('DROP TABLE IF EXISTS %I CASCADE', r.table_name);
    END LOOP;
END $$;
DELETE FROM embedding_models;
ALTER TABLE embedding_models ADD COLUMN vector_unit text NOT NULL DEFAULT 'chunk'
    CHECK (vector_unit IN ('chunk', 'sentence'));

DROP TABLE postings;
-- Metadata filters test each candidate's metadata (@>) and never read this index; uploads paid
-- for maintaining it.
DROP INDEX IF EXISTS documents_metadata_idx;
TRUNCATE chunks, lexeme_stats, collection_stats;
UPDATE documents SET status = 'queued', attempts = 0, version = version + 1, updated_at = now()
WHERE status <> 'failed';

ALTER TABLE chunks DROP COLUMN lexemes;
-- blake2b of (external id, ordinal): deterministic tie-breaks (shared/text/terms.py chunk_key).
ALTER TABLE chunks ADD COLUMN key bigint NOT NULL;
-- Every weighted term of the chunk, hashed into 10^9 dimensions (shared/text/terms.py).
ALTER TABLE chunks ADD COLUMN terms sparsevec NOT NULL;
COMMENT ON COLUMN chunks.lexeme_count IS 'number of word terms: the words field''s length';

CREATE TABLE postings (
    collection_id integer NOT NULL,
    term          text NOT NULL,
    impact        real NOT NULL,
    key           bigint NOT NULL,
    chunk_id      bigint NOT NULL
);
-- A query reads each word's best postings from this index alone, best first, ties by key.
CREATE INDEX postings_impact_idx ON postings (collection_id, term, impact DESC, key)
    INCLUDE (chunk_id);
-- Deletes find a chunk's postings here (chunk ids only grow, so inserts append).
CREATE INDEX postings_chunk_idx ON postings (chunk_id);

ALTER TABLE ingest_jobs
    ADD COLUMN queued  integer NOT NULL DEFAULT 0,
    ADD COLUMN prepped integer NOT NULL DEFAULT 0,
    ADD COLUMN indexed integer NOT NULL DEFAULT 0,
    ADD COLUMN failed  integer NOT NULL DEFAULT 0;
UPDATE ingest_jobs j SET
    queued = c.queued, prepped = c.prepped, indexed = c.indexed, failed = c.failed,
    finished_at = CASE WHEN c.queued + c.prepped = 0 THEN j.finished_at END
FROM (
    SELECT j2.id,
           count(d.id) FILTER (WHERE d.status = 'queued') AS queued,
           count(d.id) FILTER (WHERE d.status = 'prepped') AS prepped,
           count(d.id) FILTER (WHERE d.status = 'indexed') AS indexed,
           count(d.id) FILTER (WHERE d.status = 'failed') AS failed
    FROM ingest_jobs j2 LEFT JOIN documents d ON d.job_id = j2.id
    GROUP BY j2.id
) c
WHERE c.id = j.id;

-- Job counters follow every change of a document's job or status, in the same transaction.
-- Jobs are updated one at a time in id order, so two transactions never lock them crosswise.
CREATE FUNCTION bump_job_counts(jobs uuid[], statuses document_status[], deltas integer[])
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT job_id,
               coalesce(sum(n) FILTER (WHERE status = 'queued'), 0) AS queued,
               coalesce(sum(n) FILTER (WHERE status = 'prepped'), 0) AS prepped,
               coalesce(sum(n) FILTER (WHERE status = 'indexed'), 0) AS indexed,
               coalesce(sum(n) FILTER (WHERE status = 'failed'), 0) AS failed
        FROM unnest(jobs, statuses, deltas) AS c(job_id, status, n)
        WHERE job_id IS NOT NULL
        GROUP BY job_id ORDER BY job_id
    LOOP
        CONTINUE WHEN r.queued = 0 AND r.prepped = 0 AND r.indexed = 0 AND r.failed = 0;
        UPDATE ingest_jobs SET queued = queued + r.queued, prepped = prepped + r.prepped,
               indexed = indexed + r.indexed, failed = failed + r.failed
        WHERE id = r.job_id;
    END LOOP;
END $$;

-- A trigger with transition tables handles one event, and a function may only name the
-- transition tables its trigger has: one small function per event.
CREATE FUNCTION documents_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM bump_job_counts(array_agg(job_id), array_agg(status), array_agg(1))
    FROM new_documents;
    RETURN NULL;
END $$;

CREATE FUNCTION documents_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM bump_job_counts(array_agg(job_id), array_agg(status), array_agg(n))
    FROM (
        SELECT o.job_id, o.status, -1 AS n
        FROM old_documents o JOIN new_documents d ON d.id = o.id
        WHERE o.job_id IS DISTINCT FROM d.job_id OR o.status <> d.status
        UNION ALL
        SELECT d.job_id, d.status, 1
        FROM old_documents o JOIN new_documents d ON d.id = o.id
        WHERE o.job_id IS DISTINCT FROM d.job_id OR o.status <> d.status
    ) c;
    RETURN NULL;
END $$;

CREATE FUNCTION documents_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM bump_job_counts(array_agg(job_id), array_agg(status), array_agg(-1))
    FROM old_documents;
    RETURN NULL;
END $$;

CREATE TRIGGER documents_inserted AFTER INSERT ON documents
    REFERENCING NEW TABLE AS new_documents
    FOR EACH STATEMENT EXECUTE FUNCTION documents_inserted();
CREATE TRIGGER documents_updated AFTER UPDATE ON documents
    REFERENCING OLD TABLE AS old_documents NEW TABLE AS new_documents
    FOR EACH STATEMENT EXECUTE FUNCTION documents_updated();
CREATE TRIGGER documents_deleted AFTER DELETE ON documents
    REFERENCING OLD TABLE AS old_documents
    FOR EACH STATEMENT EXECUTE FUNCTION documents_deleted();

-- Removing chunks removes what was derived from them: postings (and their share of the BM25
-- statistics) and the chunk's vectors in every model's partition for its collection. Stats rows
-- are locked in key order first, as prep's upsert takes them, so the two cannot deadlock.
CREATE FUNCTION chunks_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    gone_collections integer[];
    gone_terms text[];
    r record;
BEGIN
    WITH gone AS (
        DELETE FROM postings p USING old_chunks o WHERE p.chunk_id = o.id
        RETURNING p.collection_id, p.term
    )
    SELECT array_agg(collection_id), array_agg(term) INTO gone_collections, gone_terms FROM gone;
    IF gone_terms IS NOT NULL THEN
        PERFORM 1 FROM lexeme_stats s
        JOIN (SELECT DISTINCT c, t FROM unnest(gone_collections, gone_terms) AS g(c, t)) g
          ON s.collection_id = g.c AND s.lexeme = g.t
        ORDER BY s.collection_id, s.lexeme
        FOR UPDATE OF s;
        UPDATE lexeme_stats s SET df = s.df - g.n
        FROM (SELECT c, t, count(*) AS n FROM unnest(gone_collections, gone_terms) AS g(c, t)
              GROUP BY 1, 2) g
        WHERE s.collection_id = g.c AND s.lexeme = g.t;
    END IF;
    UPDATE collection_stats cs
    SET chunk_count = cs.chunk_count - g.n, lexeme_total = cs.lexeme_total - g.words
    FROM (SELECT collection_id, count(*) AS n, sum(lexeme_count) AS words
          FROM old_chunks GROUP BY 1) g
    WHERE cs.collection_id = g.collection_id;
    FOR r IN
        SELECT m.table_name || '_c' || o.collection_id AS part, array_agg(o.id) AS ids
        FROM embedding_models m CROSS JOIN old_chunks o
        GROUP BY 1
    LOOP
        IF to_regclass(r.part) IS NOT NULL THEN
            EXECUTE format('DELETE FROM %I WHERE chunk_id = ANY($1)', r.part) USING r.ids;
        END IF;
    END LOOP;
    RETURN NULL;
END $$;
CREATE TRIGGER chunks_deleted AFTER DELETE ON chunks
    REFERENCING OLD TABLE AS old_chunks
    FOR EACH STATEMENT EXECUTE FUNCTION chunks_deleted();
