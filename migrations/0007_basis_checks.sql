-- A PCA basis is checked against its partition's vectors again once the partition has doubled
-- (shared/db/bases.py, `refit_due`), and refitted when it no longer keeps the variance a fresh
-- basis would. checked_rows: the partition's rows at the last fit or check. Bases fitted before
-- this migration count from the size of their sample, so they are checked at their next job.
-- The default keeps a writer of the previous release (which does not set it) working while the
-- migration runs: 0 means "check at the next job's end".
ALTER TABLE partition_bases ADD COLUMN checked_rows bigint NOT NULL DEFAULT 0;
UPDATE partition_bases SET checked_rows = fitted_rows;
