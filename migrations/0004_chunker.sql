-- Chunks belong to the tokenizer and budget they were cut for.
--
-- prep records with each document the chunker it used (shared/embed/embedder.py,
-- Embedder.chunker: the model's tokenizer, the token budget and the overlap). An embed task
-- whose model cuts differently sends the document back to prep instead of letting the model
-- truncate chunks sized for another one. NULL: prepped before this column existed.
--
-- A document is sent back at most once per indexing (chunker_bounces): should prep and embed
-- ever disagree on the chunker (workers with different settings), it is embedded anyway, and
-- the truncation metric counts what the model cuts, rather than going round for ever.
ALTER TABLE documents ADD COLUMN chunker text,
                      ADD COLUMN chunker_bounces smallint NOT NULL DEFAULT 0;
