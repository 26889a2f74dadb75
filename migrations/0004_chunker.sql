-- Chunks belong to the tokenizer and budget they were cut for.
--
-- prep records with each document the chunker it used (shared/embed/embedder.py,
-- Embedder.chunker: the model's tokenizer, the token budget and the overlap). An embed task
-- whose model cuts differently sends the document back to prep instead of letting the model
-- truncate chunks sized for another one. NULL: prepped before this column existed.
ALTER TABLE documents ADD COLUMN chunker text;
