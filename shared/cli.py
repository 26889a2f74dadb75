"""The `kensaku` command."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from shared.cli_models import add_commands as add_model_commands
from shared.config import get_settings


def _api_url(args: argparse.Namespace) -> str:
    if args.api:
        return str(args.api).rstrip("/")
    s = get_settings()
    host = "127.0.0.1" if s.host in ("0.0.0.0", "::") else s.host
    return f"http://{host}:{s.port}"


def _headers() -> dict[str, str]:
    key = os.environ.get("KENSAKU_API_KEY") or next(iter(get_settings().api_key_list), "")
    return {"Authorization": f"Bearer {key}"} if key else {}


def _fail(message: str) -> int:
    print(f"kensaku: {message}", file=sys.stderr)
    return 1


# --- migrate / model ----------------------------------------------------------------------
def cmd_migrate(args: argparse.Namespace) -> int:
    from shared.db.migrate import migrate

    applied = asyncio.run(migrate(get_settings().database_url))
    print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none pending'}")
    return 0


def cmd_model_build(args: argparse.Namespace) -> int:
    from shared.embed.build_default import main_build

    path = main_build(get_settings())
    print(f"model ready at {path}")
    return 0


def cmd_model_export(args: argparse.Namespace) -> int:
    from shared.embed.embedder import load_embedder
    from shared.embed.export import export_dir, read_manifest

    settings = get_settings()
    if args.backend:
        settings = settings.model_copy(update={"backend": args.backend})
    if args.model:  # e.g. the model a `kensaku reembed --model` is about to switch to
        settings = settings.model_copy(update={"model": args.model})
    embedder = load_embedder(settings)  # exports (once) when the cache is missing or stale
    if embedder.backend == "torch":
        return _fail(f"{embedder.name} runs on torch: nothing to export")
    directory = export_dir(settings.models_dir, embedder.name, embedder.backend)
    quality = (read_manifest(directory) or {}).get("quality", {})
    print(
        f"{embedder.name} on {embedder.backend} at {directory}: mean cosine to torch "
        f"{quality.get('mean_cosine', float('nan')):.4f} on {quality.get('probe_texts', 0)} "
        "Japanese probe texts"
    )
    return 0


def cmd_build_pgvector(args: argparse.Namespace) -> int:
    from shared.stack.pgvector_build import build

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kensaku"
    built = build(cache, force=args.force)
    print("portable pgvector installed" if built else "portable pgvector already installed")
    return 0


# --- serve --------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from shared.errors import ConfigError

    settings = get_settings()
    try:
        settings.check_bind_allowed()
    except ConfigError as exc:
        return _fail(str(exc))
    uvicorn.run(
        "api.main:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=args.workers,
        access_log=False,
        proxy_headers=True,
        # In-flight requests get this long after SIGTERM; then the process exits regardless.
        timeout_graceful_shutdown=int(settings.shutdown_timeout_seconds),
    )
    return 0


# --- up -------------------------------------------------------------------------------------
def cmd_up(args: argparse.Namespace) -> int:
    from shared.embed.build_default import main_build
    from shared.errors import ConfigError
    from shared.stack.stack import Stack, settings_env
    from shared.upload import upload_jsonl, wait_jobs

    settings = get_settings()
    main_build(settings)
    stack = Stack(
        data_dir=Path(args.data_dir).resolve(),
        api_port=args.port,
        flower_port=args.flower_port,
        worker_concurrency=args.concurrency,
        extra_env=settings_env(settings),
    )

    def _interrupt(signum: int, _: Any) -> None:
        raise _Interrupted(signum)

    # Ctrl-C or SIGTERM at any moment (starting, ingesting, serving) stops everything.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    headers = _headers()

    def supervise() -> None:
        # A process that exits is started again, as compose does for the deployed stack.
        for name in stack.restart_exited():
            print(f"{name} exited unexpectedly; started it again", file=sys.stderr)

    try:
        print("starting PostgreSQL, Redis, migrations, API, worker and Flower ...", flush=True)
        stack.start()
        print(f"api:     {stack.api_url}  (docs: {stack.api_url}/docs)")
        print(
            f"flower:  {stack.flower_url}  (user {stack.flower_user}, "
            f"password {stack.flower_password})"
        )
        print(f"metrics: {stack.api_url}/metrics")
        print(f"data:    {stack.data_dir}  (logs in {stack.data_dir / 'logs'})", flush=True)
        if args.ingest:
            job = upload_jsonl(stack.api_url, Path(args.ingest), args.collection, headers)
            print(f"ingesting {args.ingest}: job {job['job_id']}", flush=True)
            wait_jobs(stack.api_url, [job["job_id"]], headers, progress=True, each_round=supervise)
        print("ready; Ctrl-C stops everything", flush=True)
        while True:
            supervise()
            time.sleep(0.5)
    except _Interrupted:
        return 0
    except ConfigError as exc:  # one that keeps exiting
        print(exc, file=sys.stderr)
        return 1
    finally:
        # A second Ctrl-C must not cut the clean-up short and leave processes behind.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        print("stopping ...", flush=True)
        stack.stop()
        print("stopped", flush=True)


class _Interrupted(Exception):
    """SIGINT/SIGTERM in `kensaku up`."""


# --- ingest / status ------------------------------------------------------------------------
def cmd_ingest(args: argparse.Namespace) -> int:
    from shared.upload import (
        JSONL_SUFFIXES,
        UploadFailed,
        collect_files,
        upload_files,
        upload_jsonl,
        wait_jobs,
    )

    api, headers = _api_url(args), _headers()
    paths = [Path(p) for p in args.paths]
    jsonl = [p for p in paths if p.is_file() and p.suffix.lower() in JSONL_SUFFIXES]
    others = [p for p in paths if p not in jsonl]
    jobs: list[str] = []
    try:
        for path in jsonl:
            body = upload_jsonl(api, path, args.collection, headers)
            jobs.append(body["job_id"])
            print(
                f"{path}: job {body['job_id']}: accepted {body['accepted']}, unchanged "
                f"{body['unchanged']}, rejected {len(body['rejected'])}"
            )
        if others:
            files = collect_files(others, args.glob)
            if not files:
                return _fail("no files to upload (see --glob)")
            result = upload_files(
                api,
                files,
                args.collection,
                headers,
                batch_files=args.batch_files,
                progress=True,
            )
            jobs += result.jobs
            for r in result.rejected:
                where = f" in {r['archive']}" if r.get("archive") else ""
                print(f"rejected {r['filename']}{where}: {r['error']}", file=sys.stderr)
            print(
                f"{len(files)} file(s) in {len(result.jobs)} job(s): accepted {result.accepted}, "
                f"unchanged {result.unchanged}, rejected {len(result.rejected)}"
            )
    except (UploadFailed, httpx.HTTPError) as exc:
        return _fail(str(exc))
    if args.wait and jobs:
        statuses = wait_jobs(api, jobs, headers, progress=True)
        for status in statuses:
            for e in status["errors"][:20]:
                print(f"failed {e['id']}: {e['error']}", file=sys.stderr)
        print(
            json.dumps(statuses if len(statuses) > 1 else statuses[0], ensure_ascii=False, indent=2)
        )
        return 0 if all(s["status"] == "done" for s in statuses) else 1
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    resp = httpx.get(f"{_api_url(args)}/v1/jobs/{args.job_id}", headers=_headers(), timeout=30)
    print(json.dumps(resp.json(), ensure_ascii=False, indent=2))
    return 0 if resp.status_code == 200 else 1


def cmd_search(args: argparse.Namespace) -> int:
    payload = {
        "query": args.query,
        "collection": args.collection,
        "top_k": args.top_k,
        "mode": args.mode,
    }
    resp = httpx.post(f"{_api_url(args)}/v1/search", json=payload, headers=_headers(), timeout=60)
    if resp.status_code != 200:
        return _fail(f"search failed ({resp.status_code}): {resp.text}")
    body = resp.json()
    for rank, hit in enumerate(body["hits"], 1):
        snippet = hit["text"].replace("\n", " ")[:80]
        print(f"{rank:>2}. {hit['score']:.4f}  {hit['id']}  {hit['title']}  — {snippet}")
    print(f"({len(body['hits'])} hits, {body['mode']}, {body['took_ms']:.1f} ms)")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from shared.evaluate import run_eval

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    run_eval(
        _api_url(args),
        _headers(),
        Path(args.corpus),
        Path(args.queries),
        modes,
        collection=args.collection,
    )
    return 0


def cmd_bench(args: argparse.Namespace, rest: list[str]) -> int:
    """Hand over to ``kensaku-bench`` by name: the product does not import its benchmarks."""
    import shutil

    exe = shutil.which("kensaku-bench") or str(Path(sys.executable).with_name("kensaku-bench"))
    if not Path(exe).exists():
        return _fail("kensaku-bench is not installed (pip install -e '.[bench]')")
    os.execv(exe, [exe, *rest])
    return 0  # not reached


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kensaku", description="Japanese ingestion and search")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("migrate", help="apply database migrations").set_defaults(func=cmd_migrate)

    model = sub.add_parser("model", help="embedding model tools")
    msub = model.add_subparsers(dest="model_command", required=True)
    msub.add_parser("build", help="build the offline Japanese default model").set_defaults(
        func=cmd_model_build
    )
    mex = msub.add_parser("export", help="export the model for KENSAKU_BACKEND ahead of time")
    mex.add_argument("--backend", choices=["onnx", "onnx-int8", "openvino", "openvino-int8"])
    mex.add_argument("--model", help="the model to export (default: KENSAKU_MODEL)")
    mex.set_defaults(func=cmd_model_export)

    pgv = sub.add_parser(
        "build-pgvector", help="rebuild the embedded PostgreSQL's pgvector for any x86-64 CPU"
    )
    pgv.add_argument("--force", action="store_true")
    pgv.set_defaults(func=cmd_build_pgvector)

    add_model_commands(sub, msub)

    sv = sub.add_parser("serve", help="run the API (host/port from KENSAKU_HOST/KENSAKU_PORT)")
    sv.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    sv.set_defaults(func=cmd_serve)

    up = sub.add_parser("up", help="run the whole stack embedded, in the foreground")
    up.add_argument("--data-dir", default=".data", help="keeps data between runs")
    up.add_argument("--port", type=int, default=8000)
    up.add_argument("--flower-port", type=int, default=get_settings().flower_port)
    up.add_argument("--concurrency", type=int, default=2, help="worker processes")
    up.add_argument("--ingest", help="JSONL file to ingest once the stack is up")
    up.add_argument("--collection", default="default")
    up.set_defaults(func=cmd_up)

    def with_api(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--api", help="API base URL (default from KENSAKU_HOST/KENSAKU_PORT)")
        return sp

    ing = with_api(
        sub.add_parser(
            "ingest",
            help="upload JSONL documents, or files and folders (PDF, DOCX, HTML, Markdown, text)",
        )
    )
    ing.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="a .jsonl/.ndjson file of documents, or files and directories (walked recursively)",
    )
    ing.add_argument("--collection", default="default")
    ing.add_argument(
        "--glob",
        help="which files of a directory to upload, e.g. '*.pdf' or '**/*.md' "
        "(default: every file of a supported kind)",
    )
    ing.add_argument("--batch-files", type=int, default=50, help="files per request (default 50)")
    ing.add_argument("--wait", action="store_true", help="wait for the jobs with a progress bar")
    ing.set_defaults(func=cmd_ingest)

    st = with_api(sub.add_parser("status", help="show a job's progress"))
    st.add_argument("job_id")
    st.set_defaults(func=cmd_status)

    se = with_api(sub.add_parser("search", help="search a collection"))
    se.add_argument("query")
    se.add_argument("--mode", choices=["hybrid", "vector", "lexical"], default="hybrid")
    se.add_argument("--top-k", type=int, default=10)
    se.add_argument("--collection", default="default")
    se.set_defaults(func=cmd_search)

    ev = with_api(sub.add_parser("eval", help="retrieval quality on a BEIR-like set"))
    ev.add_argument("--corpus", required=True)
    ev.add_argument("--queries", required=True)
    ev.add_argument("--modes", default="vector,lexical,hybrid")
    ev.add_argument("--collection", help="collection to ingest into (default: a fresh one)")
    ev.set_defaults(func=cmd_eval)

    be = sub.add_parser(
        "bench",
        help="benchmarks: kensaku bench "
        "search|ingest|embed|vectors|collection|index-sizes|tune|tables",
    )
    be.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        return cmd_bench(argparse.Namespace(), argv[1:])
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
