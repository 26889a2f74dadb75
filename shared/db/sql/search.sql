-- Search: one SQL round trip per query. Parameters shared by the three modes:
--   $1 collection id, $2 metadata filter as jsonb [[{k: v}, {k: v2}], [{k2: w}]] (all groups
--   must match, any alternative inside a group), $3 number of documents wanted,
--   $4 number of chunk candidates per channel.
-- The filter is the same expression in every query: d.metadata @> alternative, per group.
-- Hits are documents: the best chunk of each, best first.
--
-- Lexical ranking is Okapi BM25 over the chunks' Sudachi lexemes, idf from the per-collection
-- statistics and tf and length from the postings. Each query term contributes its best
-- postings by term weight, read in index order from the index alone (filtered ones skipped),
-- at most a budget per term. A term with no more postings than the budget contributes to every
-- chunk that has it, so on such terms the score is exact BM25; a more common term counts only
-- for its best chunks, where it matters, and its low idf makes the rest negligible.

-- name: search_vector
-- $5 query vector. {vector_order} is the HNSW index's order (e.embedding <=> $5) for large
-- collections; with hnsw.iterative_scan = relaxed_order on the connection the index scan
-- continues past filtered-out rows, so filtered queries still fill top_k. A small collection
-- in a table shared with large ones would be found late or not at all by the graph walk: it
-- gets an exact scan instead, ordered by an expression the index cannot serve.
WITH hits AS (
    SELECT e.chunk_id, c.document_id, (e.embedding <=> $5) AS distance
    FROM {table} e
    JOIN chunks c ON c.id = e.chunk_id
    JOIN documents d ON d.id = c.document_id
    WHERE c.collection_id = $1
      AND NOT EXISTS (
          SELECT 1 FROM jsonb_array_elements($2::jsonb) grp
          WHERE NOT EXISTS (
              SELECT 1 FROM jsonb_array_elements(grp) alt WHERE d.metadata @> alt))
    ORDER BY {vector_order}
    LIMIT $4
), best AS (
    SELECT DISTINCT ON (document_id) document_id, chunk_id, 1 - distance AS score
    FROM hits ORDER BY document_id, distance
)
SELECT d.external_id, d.title, c.text, c.ordinal, b.score, d.metadata
FROM best b JOIN chunks c ON c.id = b.chunk_id JOIN documents d ON d.id = b.document_id
ORDER BY b.score DESC, d.external_id
LIMIT $3;

-- name: search_lexical
-- $5 query lexemes (text[]), $6 k1, $7 b, $8 postings read per term.
WITH terms AS (
    SELECT s.lexeme,
           ln(1 + (cs.chunk_count - s.df + 0.5) / (s.df + 0.5)) AS idf,
           greatest(cs.lexeme_total::float8 / greatest(cs.chunk_count, 1), 1) AS avgdl
    FROM lexeme_stats s JOIN collection_stats cs ON cs.collection_id = s.collection_id
    WHERE s.collection_id = $1 AND s.lexeme = ANY($5::text[]) AND s.df > 0
), scored AS (
    SELECT top.chunk_id,
           sum(t.idf * top.tf * ($6 + 1)
               / (top.tf + $6 * (1 - $7 + $7 * top.dl / t.avgdl))) AS score
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
), best AS (
    SELECT DISTINCT ON (c.document_id) c.document_id, k.chunk_id, k.score
    FROM scored k JOIN chunks c ON c.id = k.chunk_id
    ORDER BY c.document_id, k.score DESC
)
SELECT d.external_id, d.title, c.text, c.ordinal, b.score, d.metadata
FROM best b JOIN chunks c ON c.id = b.chunk_id JOIN documents d ON d.id = b.document_id
ORDER BY b.score DESC, d.external_id
LIMIT $3;

-- name: search_hybrid
-- Convex fusion of score-normalized channels: each channel's chunk scores are divided by that
-- channel's best score (so both lie in [0, 1]), then $8 * lexical + (1 - $8) * vector.
-- Equal-weight RRF lost to BM25 alone on real Japanese questions (0.87 vs 0.95 MRR@10);
-- normalized convex fusion did not (0.953).
-- $5 query vector, $6 query lexemes, $7 k1, $8 lexical weight, $9 b,
-- $10 postings read per term.
WITH vec AS (
    SELECT e.chunk_id, c.document_id, 1 - (e.embedding <=> $5) AS score
    FROM {table} e
    JOIN chunks c ON c.id = e.chunk_id
    JOIN documents d ON d.id = c.document_id
    WHERE c.collection_id = $1
      AND NOT EXISTS (
          SELECT 1 FROM jsonb_array_elements($2::jsonb) grp
          WHERE NOT EXISTS (
              SELECT 1 FROM jsonb_array_elements(grp) alt WHERE d.metadata @> alt))
    ORDER BY {vector_order}
    LIMIT $4
), terms AS (
    SELECT s.lexeme,
           ln(1 + (cs.chunk_count - s.df + 0.5) / (s.df + 0.5)) AS idf,
           greatest(cs.lexeme_total::float8 / greatest(cs.chunk_count, 1), 1) AS avgdl
    FROM lexeme_stats s JOIN collection_stats cs ON cs.collection_id = s.collection_id
    WHERE s.collection_id = $1 AND s.lexeme = ANY($6::text[]) AND s.df > 0
), lex AS (
    SELECT top.chunk_id,
           sum(t.idf * top.tf * ($7 + 1)
               / (top.tf + $7 * (1 - $9 + $9 * top.dl / t.avgdl))) AS score
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
        LIMIT $10
    ) top
    GROUP BY top.chunk_id
    ORDER BY score DESC
    LIMIT $4
), fused AS (
    SELECT coalesce(v.chunk_id, l.chunk_id) AS chunk_id,
           $8 * coalesce(l.score / nullif((SELECT max(score) FROM lex), 0), 0)
           + (1 - $8) * coalesce(greatest(v.score, 0)
                                 / nullif((SELECT max(score) FROM vec), 0), 0) AS score
    FROM vec v FULL JOIN lex l ON l.chunk_id = v.chunk_id
), best AS (
    SELECT DISTINCT ON (c.document_id) c.document_id, f.chunk_id, f.score
    FROM fused f JOIN chunks c ON c.id = f.chunk_id
    ORDER BY c.document_id, f.score DESC
)
SELECT d.external_id, d.title, c.text, c.ordinal, b.score, d.metadata
FROM best b JOIN chunks c ON c.id = b.chunk_id JOIN documents d ON d.id = b.document_id
ORDER BY b.score DESC, d.external_id
LIMIT $3;
