-- A PCA basis is checked against its partition's vectors again once the partition has doubled
-- (shared/db/bases.py, `refit_due`), and refitted when it no longer keeps the variance a fresh
-- basis would. checked_rows: the partition's rows at the last fit or check. Bases fitted before
-- this migration count from the size of their sample, so they are checked at their next job.
ALTER TABLE partition_bases ADD COLUMN checked_rows bigint;
UPDATE partition_bases SET checked_rows = fitted_rows;
ALTER TABLE partition_bases ALTER COLUMN checked_rows SET NOT NULL;
