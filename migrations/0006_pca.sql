-- KENSAKU_VECTOR_PROJECTION=pca: an index over the first N principal components of each
-- collection's own vectors (shared/db/bases.py).
--
-- A partition's basis (the mean and the N leading principal axes of its vectors) is fitted by the
-- write that finds 5,000 vectors there, or by its index build if that comes first; the rows
-- already there get their projection in the `reduced` column, which the index holds, and so does
-- every vector written after. The stored vectors stay as the model made them:
-- the index's candidates are re-ranked by their exact cosine, and a search that does not know the
-- basis yet simply ranks by the full vectors.
--
-- partition_oid: the partition the basis was fitted for. A partition dropped and created again
-- under the same name has no projections, so a basis recorded for another oid counts as none.
CREATE TABLE partition_bases (
    table_name    text NOT NULL,
    collection_id integer NOT NULL,
    partition_oid oid NOT NULL,
    components    integer NOT NULL CHECK (components > 0),
    mean          bytea NOT NULL,   -- float32 × the model's dimension
    axes          bytea NOT NULL,   -- float32, dimension × components, row-major
    fitted_rows   integer NOT NULL,
    fitted_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (table_name, collection_id)
);

-- One column of unconstrained dimension: the index casts it to halfvec(N).
DO $$
DECLARE t text;
BEGIN
    FOR t IN SELECT table_name FROM embedding_models WHERE to_regclass(table_name) IS NOT NULL LOOP
        EXECUTE format('ALTER TABLE %I ADD COLUMN IF NOT EXISTS reduced halfvec', t);
    END LOOP;
END $$;
