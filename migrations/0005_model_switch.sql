-- Models switched without downtime (`kensaku reembed --model M`, shared/db/registry.py).
--
-- The active model is the one search ranks with and ingestion embeds for; every process follows
-- it from here (a restart never changes it). A model being built has its table filled from the
-- chunks in the background while the active one keeps serving; it becomes active in one
-- transaction once every indexed chunk has its vector. At most one build at a time.
-- retired_at: when a model stopped being active; the latest is what `kensaku model rollback`
-- goes back to.
ALTER TABLE embedding_models ADD COLUMN building boolean NOT NULL DEFAULT false,
                             ADD COLUMN retired_at timestamptz;
CREATE UNIQUE INDEX embedding_models_one_building ON embedding_models (building) WHERE building;
ALTER TABLE embedding_models ADD CONSTRAINT embedding_models_build_not_active
    CHECK (NOT (building AND active));
