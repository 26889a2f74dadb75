"""The script a user would write instead of kensaku: LangChain's PGVector store with
HuggingFaceEmbeddings (sentence-transformers) over the same model, passages cut by the model's
own tokenizer to the budget kensaku cuts them to.

It runs in its own virtual environment (`make bench-langchain-env`: LangChain pins a pgvector
package older than kensaku's), so it imports nothing of kensaku. `kensaku bench langchain` feeds
it one JSON object on stdin and reads one back from stdout:

    in:  {"database_url", "model_path", "chunk_tokens", "docs": [{"id", "title", "text"}],
          "queries": [text, ...], "k"}
    out: {"load_s", "ingest_s", "chunks", "latencies_ms": [...], "rankings": [[doc id, ...]]}
"""

from __future__ import annotations

import json
import sys
import time


def main() -> int:
    job = json.load(sys.stdin)
    started = time.perf_counter()
    from langchain_core.documents import Document
    from langchain_huggingface import HuggingFaceEmbeddings
    from langchain_postgres import PGVector
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    embeddings = HuggingFaceEmbeddings(model_name=job["model_path"])
    # pgserver's URI is libpq's (socket directory in ?host=); SQLAlchemy takes it with psycopg.
    url = job["database_url"].replace("postgresql://", "postgresql+psycopg://", 1)
    store = PGVector(
        embeddings=embeddings,
        collection_name="bench",
        connection=url,
        use_jsonb=True,
        pre_delete_collection=True,
    )
    splitter = RecursiveCharacterTextSplitter.from_huggingface_tokenizer(
        embeddings._client.tokenizer,
        chunk_size=job["chunk_tokens"],
        chunk_overlap=0,
        # Japanese has no spaces: paragraphs, lines, then sentences before single characters.
        separators=["\n\n", "\n", "。", ""],
    )
    embeddings.embed_query("warm-up")
    load_s = time.perf_counter() - started

    started = time.perf_counter()
    docs = [
        Document(page_content=f"{d['title']}\n{d['text']}", metadata={"doc_id": d["id"]})
        for d in job["docs"]
    ]
    pieces = splitter.split_documents(docs)
    store.add_documents(pieces)
    ingest_s = time.perf_counter() - started

    latencies, rankings = [], []
    for text in job["queries"]:
        started = time.perf_counter()
        hits = store.similarity_search(text, k=job["k"])
        latencies.append((time.perf_counter() - started) * 1000)
        rankings.append(list(dict.fromkeys(h.metadata["doc_id"] for h in hits)))
    json.dump(
        {
            "load_s": load_s,
            "ingest_s": ingest_s,
            "chunks": len(pieces),
            "latencies_ms": latencies,
            "rankings": rankings,
        },
        sys.stdout,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
