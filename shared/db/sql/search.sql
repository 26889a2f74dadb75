-- Search: one SQL round trip per query, in two stages. Candidates come cheaply from indexes (the
-- best postings of each query word; the nearest vector units), then every candidate is scored
-- exactly (the inner product of its forward-index sparsevec with the query's term weights; its
-- best sentence's cosine), fused, grouped by document and ranked. Ties are broken by chunk key
-- (a hash of external id and ordinal), so the ranking does not depend on the plan or on the
-- order documents arrived in.
--
-- Parameters shared by every query:
--   $1 collection id, $2 number of documents wanted, $3 chunk candidates per channel,
--   $4 metadata filter as jsonb [[{k: v}, {k: v2}], [{k2: w}]] (every group must match, any
--      alternative inside a group), '[]' for none.
-- Lexical ($5–$10): $5 query words (text[]), $6 their forward-index dimensions (int[]),
--   $7 bigram dimensions, $8 bigram weights (idf × field weight, float8[]), $9 postings read per
--   word, $10 words kept (the rarest).
-- Vector: the query vector is $5 in vector mode and $11 in hybrid mode; hybrid's cosine
--   weight is $12. An index over principal components (KENSAKU_VECTOR_PROJECTION=pca) also
--   takes the query's projection on the partition's basis: $6 in vector mode, $13 in hybrid.
--
-- The queries are put together by shared/search.py from the fragment_* blocks: {lexical},
-- {vector}, {best_per_document}, {vec}, {red} (the projection), {posting_filter} and {vector_filter} (the filtered
-- forms below, or a constant test of $4 when there is no filter, so the joins disappear), and
-- per model, index kind and collection {vector_order}, {rerank} and {partition} (ModelTable).

-- name: fragment_posting_filter
AND EXISTS (
    SELECT 1 FROM chunks fc JOIN documents d ON d.id = fc.document_id
    WHERE fc.id = p.chunk_id
      AND NOT EXISTS (
          SELECT 1 FROM jsonb_array_elements($4::jsonb) grp
          WHERE NOT EXISTS (
              SELECT 1 FROM jsonb_array_elements(grp) alt WHERE d.metadata @> alt)))

-- name: fragment_vector_filter
-- Every row of a collection's partition is the collection's: no test of e.collection_id, which
-- would only offer the planner a primary-key scan and a sort instead of the vector index.
JOIN chunks c ON c.id = e.chunk_id JOIN documents d ON d.id = c.document_id
WHERE $1::integer IS NOT NULL
  AND NOT EXISTS (
      SELECT 1 FROM jsonb_array_elements($4::jsonb) grp
      WHERE NOT EXISTS (
          SELECT 1 FROM jsonb_array_elements(grp) alt WHERE d.metadata @> alt))

-- name: fragment_lexical
-- CTEs terms, query_vector, lexical_candidates. Terms: the query words the collection has,
-- with BM25 idf, the rarest $10 of them. Each contributes its best $9 postings (index-only, in
-- index order, filtered ones skipped); the union, ranked by that partial score, gives $3
-- candidates. On ja_dev, reading 200 postings per word and rescoring 100 candidates exactly gave
-- the same MRR@10 as scoring every chunk (bench/RESULTS.md).
terms AS (
    SELECT q.term, q.dim,
           -- float8 throughout: with the 0.5 literals this would be numeric.
           ln(1 + (cs.chunk_count - s.df + 0.5::float8) / (s.df + 0.5::float8)) AS idf
    FROM unnest($5::text[], $6::int[]) AS q(term, dim)
    JOIN lexeme_stats s ON s.collection_id = $1 AND s.lexeme = q.term AND s.df > 0
    JOIN collection_stats cs ON cs.collection_id = $1
    ORDER BY s.df, q.term
    LIMIT $10
), query_vector AS (
    -- sparsevec text is 1-based; a dimension shared by two terms gets both weights.
    SELECT ('{' || string_agg((dim + 1)::text || ':' || w::text, ',' ORDER BY dim)
            || '}/1000000000')::sparsevec AS v
    FROM (SELECT dim, sum(w) AS w
          FROM (SELECT dim, idf AS w FROM terms
                UNION ALL
                SELECT * FROM unnest($7::int[], $8::float8[])) x
          GROUP BY dim) y
), lexical_candidates AS (
    SELECT top.chunk_id, sum(t.idf * top.impact) AS partial, min(top.key) AS key
    FROM terms t
    CROSS JOIN LATERAL (
        SELECT p.chunk_id, p.impact, p.key FROM postings p
        WHERE p.collection_id = $1 AND p.term = t.term {posting_filter}
        ORDER BY p.impact DESC, p.key
        LIMIT $9
    ) top
    GROUP BY top.chunk_id
    ORDER BY partial DESC, key
    LIMIT $3
)

-- name: fragment_vector
-- CTE vector_hits: the chunks of the nearest vector units, each with its best unit's cosine.
-- {partition} is the model's table for this collection: with an index once it is large enough
-- (an iterative scan, so filtered-out rows do not shrink the result), else scanned exactly.
-- {vector_order} is the expression the partition's kind of index serves (ModelTable); the
-- cosine is the stored vectors' whatever the index. Materialized: inlined, the vectors would be
-- carried into the outer sorts.
vector_hits AS MATERIALIZED (
    SELECT u.chunk_id, max(1 - u.distance) AS cosine
    FROM (
        SELECT e.chunk_id, e.embedding <=> {vec} AS distance
        FROM {partition} e
        {vector_filter}
        ORDER BY {vector_order}
        LIMIT $3
    ) u
    GROUP BY u.chunk_id
)

-- name: fragment_vector_rerank
-- vector_hits for an index over quantized vectors (hnsw_binary): {rerank} × $3 candidates in
-- the index's order, re-ranked by the stored vectors' cosine.
vector_hits AS MATERIALIZED (
    SELECT u.chunk_id, max(1 - u.distance) AS cosine
    FROM (
        SELECT b.chunk_id, b.embedding <=> {vec} AS distance
        FROM (
            SELECT e.chunk_id, e.embedding
            FROM {partition} e
            {vector_filter}
            ORDER BY {vector_order}
            LIMIT $3 * {rerank}
        ) b
        ORDER BY distance
        LIMIT $3
    ) u
    GROUP BY u.chunk_id
)

-- name: fragment_best_per_document
-- The end of every search: from ranked(chunk_id, document_id, key, score), each document's best
-- chunk, best first; only the top $2 are joined to their text.
best AS (
    SELECT DISTINCT ON (r.document_id) r.document_id, r.chunk_id, r.key, r.score
    FROM ranked r
    ORDER BY r.document_id, r.score DESC, r.key
), top AS (
    SELECT * FROM best ORDER BY score DESC, key LIMIT $2
)
SELECT d.external_id, d.title, c.text, c.ordinal, c.page, t.score, d.metadata
FROM top t JOIN chunks c ON c.id = t.chunk_id JOIN documents d ON d.id = t.document_id
ORDER BY t.score DESC, t.key

-- name: search_lexical
WITH {lexical}, ranked AS (
    SELECT c.id AS chunk_id, c.document_id, c.key,
           -(c.terms <#> (SELECT v FROM query_vector))::float8 AS score
    FROM lexical_candidates lc JOIN chunks c ON c.id = lc.chunk_id
), {best_per_document}

-- name: search_vector
WITH {vector}, ranked AS (
    SELECT vh.chunk_id, c.document_id, c.key, vh.cosine::float8 AS score
    FROM vector_hits vh JOIN chunks c ON c.id = vh.chunk_id
), {best_per_document}

-- name: search_hybrid
-- score = lexical / the best lexical score among the candidates + $12 × the cosine of the
-- chunk's best unit, both channels computed exactly for every candidate of either channel.
-- Dividing by the best lexical score makes the two comparable whatever the collection's size
-- or the question's length (raw BM25 grows with both, the cosine does not). On ja_dev: lexical
-- 0.917, hybrid 0.921 MRR@10; on 36 random sub-collections of it +0.004 to +0.009 on average,
-- below lexical on 2 (by at most 0.005); equal-weight RRF lost 0.06-0.09 on every one
-- (kensaku-bench tune; bench/RESULTS.md).
WITH {lexical}, {vector}, candidates AS (
    SELECT chunk_id FROM lexical_candidates
    UNION
    SELECT chunk_id FROM vector_hits
), scored AS (
    SELECT c.id AS chunk_id, c.document_id, c.key,
           coalesce(-(c.terms <#> (SELECT v FROM query_vector))::float8, 0) AS lexical,
           coalesce(
               vh.cosine,
               (SELECT max(1 - (e.embedding <=> {vec})) FROM {partition} e
                WHERE e.chunk_id = c.id),
               0)::float8 AS cosine
    FROM candidates k
    JOIN chunks c ON c.id = k.chunk_id
    LEFT JOIN vector_hits vh ON vh.chunk_id = k.chunk_id
), ranked AS (
    SELECT chunk_id, document_id, key,
           coalesce(lexical / nullif(max(lexical) OVER (), 0), 0) + $12::float8 * cosine AS score
    FROM scored
), {best_per_document}
