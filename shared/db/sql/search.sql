-- Search: one SQL round trip per query. Parameters shared by the three modes:
--   $1 collection id, $2 metadata filter as jsonb [[{k: v}, {k: v2}], [{k2: w}]] (all groups
--   must match, any alternative inside a group), $3 number of documents wanted,
--   $4 number of chunk candidates per channel.
-- Lexical parameters (lexical and hybrid): $5 query lexemes (text[]), $6 BM25 k1, $7 BM25 b,
--   $8 postings read per query term. The vector is $5 in vector mode and $9 in hybrid mode.
-- Hits are documents: the best chunk of each, best first.
--
-- The three queries are built from the fragment_* blocks (shared/search.py substitutes
-- {vector_candidates}, {bm25_candidates}, {best_chunk_per_document} and {vec}), so the channels
-- rank the same way in every mode. {table} and {exact_scan} are filled per model by
-- ModelTable.sql.

-- name: fragment_vector_candidates
-- Nearest chunks by cosine. With hnsw.iterative_scan = relaxed_order on the connection the HNSW
-- index scan continues past filtered-out rows, so filtered queries still fill top_k. A small
-- collection in a table shared with large ones would be found late or not at all by the graph
-- walk: it gets an exact scan instead, ordered by the distance plus 0 (an order the index cannot
-- serve, so the planner scans the collection's rows).
    SELECT e.chunk_id, 1 - (e.embedding <=> {vec}) AS score
    FROM {table} e
    JOIN chunks c ON c.id = e.chunk_id
    JOIN documents d ON d.id = c.document_id
    WHERE c.collection_id = $1
      AND NOT EXISTS (
          SELECT 1 FROM jsonb_array_elements($2::jsonb) grp
          WHERE NOT EXISTS (
              SELECT 1 FROM jsonb_array_elements(grp) alt WHERE d.metadata @> alt))
    ORDER BY (e.embedding <=> {vec}){exact_scan}
    LIMIT $4

-- name: fragment_bm25_candidates
-- Okapi BM25 over the chunks' Sudachi lexemes, idf from the per-collection statistics and tf
-- and length from the postings. Each query term contributes its best postings by term weight,
-- read in index order from the index alone (filtered ones skipped), at most $8 per term. A term
-- with no more postings than that contributes to every chunk that has it, so on such terms the
-- score is exact BM25; a more common term counts only for its best chunks, where it matters,
-- and its low idf makes the rest negligible. Defines the CTEs terms and lexical.
terms AS (
    SELECT s.lexeme,
           -- float8 throughout: with the 0.5 literals this would be numeric, and every posting
           -- below would be scored in decimal arithmetic.
           ln(1 + (cs.chunk_count - s.df + 0.5::float8) / (s.df + 0.5::float8)) AS idf,
           greatest(cs.lexeme_total::float8 / greatest(cs.chunk_count, 1), 1) AS avgdl
    FROM lexeme_stats s JOIN collection_stats cs ON cs.collection_id = s.collection_id
    WHERE s.collection_id = $1 AND s.lexeme = ANY($5::text[]) AND s.df > 0
), lexical AS (
    SELECT top.chunk_id,
           sum(t.idf * top.tf * ($6::float8 + 1)
               / (top.tf + $6::float8 * (1 - $7::float8 + $7::float8 * top.dl / t.avgdl))) AS score
    FROM terms t
    CROSS JOIN LATERAL (
        SELECT p.chunk_id, p.tf, p.dl FROM postings p
        WHERE p.collection_id = $1 AND p.lexeme = t.lexeme
          AND ($2::jsonb = '[]'::jsonb OR EXISTS (
              SELECT 1 FROM chunks fc JOIN documents d ON d.id = fc.document_id
              WHERE fc.id = p.chunk_id
                AND NOT EXISTS (
                    SELECT 1 FROM jsonb_array_elements($2::jsonb) grp
                    WHERE NOT EXISTS (
                        SELECT 1 FROM jsonb_array_elements(grp) alt WHERE d.metadata @> alt))))
        ORDER BY p.impact DESC
        LIMIT $8
    ) top
    GROUP BY top.chunk_id
    ORDER BY score DESC
    LIMIT $4
)

-- name: fragment_best_chunk_per_document
-- The end of every search: from ranked(chunk_id, score), each document's best chunk, best first.
best AS (
    SELECT DISTINCT ON (c.document_id) c.document_id, r.chunk_id, r.score
    FROM ranked r JOIN chunks c ON c.id = r.chunk_id
    ORDER BY c.document_id, r.score DESC
)
SELECT d.external_id, d.title, c.text, c.ordinal, b.score, d.metadata
FROM best b JOIN chunks c ON c.id = b.chunk_id JOIN documents d ON d.id = b.document_id
ORDER BY b.score DESC, d.external_id
LIMIT $3;

-- name: search_vector
-- Materialized: inlined, the distance and the vectors would be carried into the outer sorts.
WITH ranked AS MATERIALIZED (
{vector_candidates}
), {best_chunk_per_document}

-- name: search_lexical
WITH {bm25_candidates}, ranked AS (
    SELECT chunk_id, score FROM lexical
), {best_chunk_per_document}

-- name: search_hybrid
-- Convex fusion of score-normalized channels: each channel's chunk scores are divided by that
-- channel's best score (so both lie in [0, 1]), then $10 * lexical + (1 - $10) * vector.
-- Equal-weight RRF lost to BM25 alone on real Japanese questions (0.87 vs 0.95 MRR@10);
-- normalized convex fusion did not (0.953).
WITH vec AS (
{vector_candidates}
), {bm25_candidates}, ranked AS (
    SELECT coalesce(v.chunk_id, l.chunk_id) AS chunk_id,
           $10::float8 * coalesce(l.score / nullif((SELECT max(score) FROM lexical), 0), 0)
           + (1 - $10::float8) * coalesce(greatest(v.score, 0)
                                          / nullif((SELECT max(score) FROM vec), 0), 0) AS score
    FROM vec v FULL JOIN lexical l ON l.chunk_id = v.chunk_id
), {best_chunk_per_document}
