"""`kensaku-bench`: the benchmark and fitting commands. They import the product; the product
never imports them (`kensaku bench ...` hands over to this command by name)."""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
JA_EVAL = ROOT / "bench/data/ja_eval"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kensaku-bench", description="kensaku benchmarks")
    sub = p.add_subparsers(dest="what", required=True)
    se = sub.add_parser("search", help="quality and latency on a real corpus, with peers")
    se.add_argument("--corpus", type=Path, default=JA_EVAL / "corpus.jsonl")
    se.add_argument("--queries", type=Path, default=JA_EVAL / "queries.jsonl")
    se.add_argument("--load-queries", type=int, default=400, help="searches per load test")
    se.add_argument("--mixed-seconds", type=float, default=20.0, help="0: no mixed load")
    se.add_argument("--no-peers", action="store_true")
    ing = sub.add_parser("ingest", help="end-to-end ingest against the raw encode speed")
    ing.add_argument("--docs", type=int, default=2000)
    lc = sub.add_parser(
        "langchain", help="kensaku next to a LangChain PGVector script: ingest, vector search"
    )
    lc.add_argument("--corpus", type=Path, required=True, help="a corpus JSONL (ja_dev's)")
    lc.add_argument("--queries", type=Path, required=True)
    lc.add_argument("--docs", type=int, default=1145, help="the corpus's first N passages")
    lc.add_argument("--sample-queries", type=int, default=200)
    lc.add_argument("--rounds", type=int, default=2, help="each round runs both, in turn")
    em = sub.add_parser("embed", help="embedding speed, latency, cold start, quality per backend")
    em.add_argument("--corpus", type=Path, help="a corpus for retrieval quality (with --queries)")
    em.add_argument("--queries", type=Path)
    em.add_argument("--docs", type=int, default=2000, help="paragraphs in the quality sample")
    em.add_argument("--sample-queries", type=int, default=400)
    em.add_argument("--no-workers", action="store_true", help="skip the worker start per backend")
    em.add_argument("--backends", default="", help="comma-separated backends (default: all)")
    ve = sub.add_parser(
        "vectors", help="vector index options at scale: load, build, recall, latency"
    )
    ve.add_argument("--corpus", type=Path, required=True, help="sentences to embed (ja_dev)")
    ve.add_argument("--queries", type=Path, required=True)
    ve.add_argument("--rows", default="100000", help="comma-separated sizes, e.g. 100000,1000000")
    ve.add_argument("--index", default="hnsw,hnsw_halfvec,hnsw_binary,ivfflat")
    ve.add_argument("--dimensions", default="0", help="KENSAKU_VECTOR_DIMENSIONS values (0: all)")
    ve.add_argument(
        "--projection",
        default="",
        help="KENSAKU_VECTOR_PROJECTION values for reduced dimensions, e.g. pca,prefix "
        "(default: the setting)",
    )
    ve.add_argument("--sample-queries", type=int, default=200)
    ve.add_argument(
        "--ef-search",
        default="",
        help="comma-separated hnsw.ef_search values measured on each build (default: the "
        "setting, or when unset the one search uses at each --rows size)",
    )
    ve.add_argument(
        "--shared-buffers",
        default="",
        help="comma-separated PostgreSQL shared_buffers sizes in MB, a server and every build "
        "for each (default: the embedded server's 1 GB)",
    )
    co = sub.add_parser(
        "collection", help="search latency per mode in one large collection, loaded by prep"
    )
    co.add_argument(
        "--corpus",
        type=Path,
        required=True,
        help="a corpus JSONL (ja_dev's corpus.jsonl): its sentences, then pairs of them, "
        "each with its article's title, become the passages",
    )
    co.add_argument("--queries", type=Path, required=True)
    co.add_argument("--rows", default="100000", help="comma-separated sizes, e.g. 100000,1000000")
    co.add_argument("--sample-queries", type=int, default=200)
    co.add_argument(
        "--append", type=int, default=2000, help="passages of a second job, after the searches"
    )
    co.add_argument(
        "--shared-buffers",
        default="",
        help="comma-separated PostgreSQL shared_buffers sizes in MB, the searches measured at "
        "each (default: the embedded server's 1 GB)",
    )
    sz = sub.add_parser(
        "index-sizes", help="bytes per vector of each HNSW kind at several model dimensions"
    )
    sz.add_argument("--dimensions", default="300,768,1024", help="comma-separated dimensions")
    sz.add_argument("--index", default="hnsw,hnsw_halfvec,hnsw_binary")
    sz.add_argument("--rows", type=int, default=20_000, help="random unit vectors per build")
    tu = sub.add_parser("tune", help="fit BM25 and fusion parameters in-process")
    tu.add_argument("--corpus", type=Path, required=True)
    tu.add_argument("--queries", type=Path, required=True)
    ta = sub.add_parser("tables", help="rebuild the reference bigram and word tables")
    ta.add_argument("--corpus", type=Path, required=True)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.what == "search":
        from bench.search import main as search

        return search(
            args.corpus,
            args.queries,
            load_queries_n=args.load_queries,
            mixed_seconds=args.mixed_seconds,
            peers=not args.no_peers,
        )
    if args.what == "ingest":
        from bench.ingest import main as ingest

        return ingest(docs=args.docs)
    if args.what == "langchain":
        from bench.langchain_peer import main as langchain

        return langchain(args.corpus, args.queries, args.docs, args.sample_queries, args.rounds)
    if args.what == "embed":
        from bench.embed import main as embed

        return embed(
            args.corpus,
            args.queries,
            args.docs,
            args.sample_queries,
            workers=not args.no_workers,
            only=[b for b in args.backends.split(",") if b] or None,
        )
    if args.what == "vectors":
        from bench.vectors import main as vectors

        return vectors(
            args.corpus,
            args.queries,
            rows=[int(x) for x in args.rows.split(",")],
            kinds=args.index.split(","),
            dimensions=[int(x) for x in args.dimensions.split(",")],
            n_queries=args.sample_queries,
            ef_search=[int(x) for x in args.ef_search.split(",") if x],
            projections=[x for x in args.projection.split(",") if x],
            shared_buffers=[int(x) for x in args.shared_buffers.split(",") if x],
        )
    if args.what == "collection":
        from bench.collection import main as collection

        return collection(
            args.corpus,
            args.queries,
            rows=[int(x) for x in args.rows.split(",")],
            n_queries=args.sample_queries,
            append=args.append,
            shared_buffers=[int(x) for x in args.shared_buffers.split(",") if x],
        )
    if args.what == "index-sizes":
        from bench.index_sizes import main as index_sizes

        return index_sizes(
            [int(x) for x in args.dimensions.split(",")], args.index.split(","), args.rows
        )
    if args.what == "tune":
        from bench.tune import main as tune

        return tune(args.corpus, args.queries)
    from bench.tables import main as tables

    return tables(args.corpus)


if __name__ == "__main__":
    raise SystemExit(main())
