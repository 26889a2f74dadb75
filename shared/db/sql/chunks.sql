-- name: load_for_prep
SELECT id, collection_id, version, title, body, job_id, attempts
FROM documents WHERE id = ANY($1::bigint[]) AND status = 'queued'
ORDER BY id;

-- name: lock_versions
-- Rows locked in id order so concurrent workers cannot deadlock on documents.
SELECT id, version, status::text AS status, job_id FROM documents
WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE;

-- name: delete_chunks_with_stats
-- Drop a document's old chunks and take their lexemes out of the BM25 statistics.
WITH old AS (
    DELETE FROM chunks WHERE document_id = ANY($1::bigint[])
    RETURNING collection_id, lexemes, lexeme_count
), per_lexeme AS (
    SELECT o.collection_id, u.lexeme, count(*) AS n
    FROM old o, unnest(o.lexemes) AS u(lexeme, positions, weights)
    GROUP BY 1, 2
), dec_lex AS (
    UPDATE lexeme_stats s SET df = s.df - p.n
    FROM per_lexeme p
    WHERE s.collection_id = p.collection_id AND s.lexeme = p.lexeme
), per_collection AS (
    SELECT collection_id, count(*) AS chunks, sum(lexeme_count) AS lexemes FROM old GROUP BY 1
)
UPDATE collection_stats cs
SET chunk_count = cs.chunk_count - pc.chunks, lexeme_total = cs.lexeme_total - pc.lexemes
FROM per_collection pc WHERE cs.collection_id = pc.collection_id;

-- name: create_chunk_staging
CREATE TEMP TABLE chunk_staging (
    document_id   bigint NOT NULL,
    collection_id integer NOT NULL,
    ordinal       integer NOT NULL,
    text          text NOT NULL,
    char_start    integer NOT NULL,
    char_end      integer NOT NULL,
    token_count   integer NOT NULL,
    lexeme_count  integer NOT NULL,
    lexemes       text NOT NULL,
    lexeme_tf     jsonb NOT NULL
) ON COMMIT DROP;

-- name: insert_staged_chunks
-- asyncpg's binary COPY has no tsvector codec, so lexemes arrive as text and are cast here.
-- $1 BM25 k1, $2 BM25 b: the postings' impact, which only orders a term's postings, uses this
-- batch's average length (queries score with the collection's current average).
WITH ins AS (
    INSERT INTO chunks (document_id, collection_id, ordinal, text, char_start, char_end,
                        token_count, lexeme_count, lexemes)
    SELECT document_id, collection_id, ordinal, text, char_start, char_end,
           token_count, lexeme_count, lexemes::tsvector
    FROM chunk_staging
    RETURNING id, document_id, ordinal, collection_id, lexemes, lexeme_count
), add_postings AS (
    INSERT INTO postings (chunk_id, lexeme, collection_id, tf, dl, impact)
    SELECT i.id, kv.key, i.collection_id, kv.value::integer, i.lexeme_count,
           kv.value::float8 * ($1 + 1)
           / (kv.value::float8 + $1 * (1 - $2 + $2 * i.lexeme_count
                                       / greatest((SELECT avg(lexeme_count) FROM ins), 1)))
    FROM ins i
    JOIN chunk_staging s ON s.document_id = i.document_id AND s.ordinal = i.ordinal
    CROSS JOIN LATERAL jsonb_each_text(s.lexeme_tf) AS kv
), per_lexeme AS (
    SELECT i.collection_id, u.lexeme, count(*) AS n
    FROM ins i, unnest(i.lexemes) AS u(lexeme, positions, weights)
    GROUP BY 1, 2
), add_lex AS (
    INSERT INTO lexeme_stats (collection_id, lexeme, df)
    SELECT collection_id, lexeme, n FROM per_lexeme ORDER BY collection_id, lexeme
    ON CONFLICT (collection_id, lexeme) DO UPDATE SET df = lexeme_stats.df + excluded.df
)
INSERT INTO collection_stats AS cs (collection_id, chunk_count, lexeme_total)
SELECT collection_id, count(*), sum(lexeme_count) FROM ins GROUP BY 1
ON CONFLICT (collection_id) DO UPDATE
SET chunk_count = cs.chunk_count + excluded.chunk_count,
    lexeme_total = cs.lexeme_total + excluded.lexeme_total;

-- name: mark_prepped
UPDATE documents SET status = 'prepped', updated_at = now(), last_error = NULL
WHERE id = ANY($1::bigint[]);

-- name: mark_indexed
UPDATE documents SET status = 'indexed', updated_at = now(), last_error = NULL
WHERE id = ANY($1::bigint[]);

-- name: mark_failed
UPDATE documents SET status = 'failed', attempts = attempts + 1, last_error = $2,
       updated_at = now()
WHERE id = $1 AND version = $3;

-- name: insert_error
INSERT INTO ingest_errors (document_id, job_id, stage, message) VALUES ($1, $2, $3, $4);

-- name: load_for_embed
SELECT c.id AS chunk_id, c.document_id, c.text, d.title, d.version
FROM chunks c JOIN documents d ON d.id = c.document_id
WHERE d.id = ANY($1::bigint[]) AND d.status = 'prepped'
ORDER BY c.id;

-- name: job_ids_of
SELECT DISTINCT job_id FROM documents WHERE id = ANY($1::bigint[]) AND job_id IS NOT NULL;

-- name: count_chunks
SELECT count(*) FROM chunks;

-- name: load_lexemes_for_embed
-- For models whose input is the lexemes (see Embedder.takes_lexemes): each chunk's lexemes,
-- repeated as often as they occur (one per position), as prep stored them.
SELECT c.id AS chunk_id, c.document_id, d.version,
       ARRAY(SELECT u.lexeme
             FROM unnest(c.lexemes) AS u(lexeme, positions, weights),
                  generate_series(1, cardinality(u.positions))) AS lexemes
FROM chunks c JOIN documents d ON d.id = c.document_id
WHERE d.id = ANY($1::bigint[]) AND d.status = 'prepped'
ORDER BY c.id;
