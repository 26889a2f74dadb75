-- Files in: the original bytes of a document uploaded as a file, and the page of each chunk.
--
-- The API stores each uploaded file in the upload's transaction and the prep worker extracts
-- its text (documents.body holds that text once prepped, '' until then). A document's file row
-- goes with the document (ON DELETE CASCADE) and is replaced when a changed file is uploaded
-- under the same id; a document re-uploaded as JSON loses its file row.

CREATE TABLE document_files (
    document_id  bigint PRIMARY KEY REFERENCES documents (id) ON DELETE CASCADE,
    filename     text NOT NULL,
    -- shared.files.formats.Format: pdf, docx, html, markdown, text.
    format       text NOT NULL,
    -- The charset the upload declared for the part, if any (text formats only).
    charset      text,
    bytes        bigint NOT NULL,
    data         bytea NOT NULL
);
-- The bytes are read once, by prep; they are compressed already for PDF and DOCX.
ALTER TABLE document_files ALTER COLUMN data SET STORAGE EXTERNAL;

-- The 1-based page a chunk comes from (PDF); NULL for formats without pages. Chunks never span
-- pages, and char_start/char_end of a paged document's chunk point into its page.
ALTER TABLE chunks ADD COLUMN page integer;
