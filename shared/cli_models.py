"""The `kensaku` commands that change which model serves: `reembed`, `model list|rollback|cancel`
(shared/db/registry.py, shared/ingest/switch.py), and `model index`, which builds its indexes."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import asyncpg

from shared.config import Settings, get_settings
from shared.errors import ConfigError

T = TypeVar("T")


def _fail(message: str) -> int:
    print(f"kensaku: {message}", file=sys.stderr)
    return 1


@asynccontextmanager
async def _pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2)
    try:
        yield pool
    finally:
        await pool.close()


def _with_pool(settings: Settings, work: Callable[[asyncpg.Pool], Awaitable[T]]) -> T:
    async def run() -> T:
        async with _pool(settings) as pool:
            return await work(pool)

    return asyncio.run(run())


def _active(settings: Settings) -> str | None:
    from shared.db.registry import serving

    async def work(pool: asyncpg.Pool) -> str | None:
        return (await serving(pool)).active

    return _with_pool(settings, work)


def cmd_reembed(args: argparse.Namespace) -> int:
    settings = get_settings()
    try:
        if args.model is None:
            if args.in_place:
                return _fail("--in-place goes with --model")
            return _reembed_active(settings, args.collection)
        if args.collection:
            return _fail(
                "--collection re-embeds one collection for the active model; "
                "a switch to another model covers every collection"
            )
        if args.in_place:
            return _reembed_in_place(settings, args.model, None)
        return switch_to(settings, args.model)
    except ConfigError as exc:
        return _fail(str(exc))


def _reembed_active(settings: Settings, collection: str | None) -> int:
    """`kensaku reembed` alone: the active model, in place. Refused when KENSAKU_MODEL names
    another model: before the registry decided, this command switched to KENSAKU_MODEL."""
    from shared.embed.embedder import model_name

    active = _active(settings)
    try:
        configured = model_name(settings)
    except ConfigError:
        configured = None  # not loadable here: nothing to mistake it for
    if active and configured and configured != active:
        return _fail(
            f"KENSAKU_MODEL is {configured} but the active model is {active}. To switch, run "
            f"`kensaku reembed --model {settings.model}` (add --in-place if it cuts chunks "
            f"differently); to re-embed {active} in place, set KENSAKU_MODEL={active}"
        )
    return _reembed_in_place(settings, None, collection)


def _reembed_in_place(settings: Settings, model: str | None, collection: str | None) -> int:
    """Re-embed indexed documents for the active model (or make ``model`` active first, at
    once): from their chunks where its chunker cut them, cut again first where not. Search
    serves the documents' old vectors until their new ones are written (with ``model``: the new
    table, filling as the workers go)."""
    from shared.broker import enqueue_embed, enqueue_prep, make_celery_app
    from shared.db import registry
    from shared.db.embeddings import register_embedder
    from shared.db.queries import Q
    from shared.embed.embedder import load_embedder, load_token_counter

    name = model or _active(settings) or settings.model
    settings = settings.model_copy(update={"model": name})
    # The chunker is all this needs: a transformer's tokenizer, not the model.
    counter = (None if model else load_token_counter(settings)) or load_embedder(settings)
    chunker = counter.chunker(settings.chunk_tokens, settings.chunk_overlap_tokens)

    async def requeue(pool: asyncpg.Pool) -> list[asyncpg.Record]:
        if model:
            building = (await registry.serving(pool)).building
            if building:
                raise ConfigError(
                    f"a switch to {building} is in progress: let it finish, or cancel it with "
                    "`kensaku model cancel`, before re-embedding in place"
                )
            table = await register_embedder(
                pool,
                counter,
                settings.vector_index,
                settings.vector_dimensions,
                settings.vector_projection,
            )
            await registry.flip(pool, table, complete=False)
            print(
                f"{table.model} is the active model now; its table fills as documents are embedded"
            )
        return list(await pool.fetch(Q.requeue_for_embed, collection, chunker))

    rows = _with_pool(settings, requeue)
    app = make_celery_app(settings)
    embed_ids = [r["id"] for r in rows if r["status"] == "prepped"]
    prep_ids = [r["id"] for r in rows if r["status"] == "queued"]
    enqueue_embed(app, embed_ids, settings.prep_batch_size)
    enqueue_prep(app, prep_ids, settings.prep_batch_size)
    print(
        f"re-embedding {len(rows)} documents with {counter.name}: {len(embed_ids)} from their "
        f"chunks, {len(prep_ids)} cut again first (chunked for another tokenizer or budget)"
    )
    return 0


class _Printer:
    """Progress lines: on every change, at most one every ``every`` seconds, and the last."""

    def __init__(self, every: float = 5.0) -> None:
        self.every = every
        self.last: tuple[int, int] | None = None
        self.at = 0.0

    def __call__(self, p: object) -> None:
        from shared.ingest.switch import Progress

        assert isinstance(p, Progress)
        state = (p.embedded, p.total)
        now = time.monotonic()
        if state == self.last or (now - self.at < self.every and p.documents_left):
            return
        self.last, self.at = state, now
        print(
            f"{p.model}: {p.embedded:,} of {p.total:,} chunks embedded ({p.percent:.1f} %), "
            f"{p.documents_left:,} documents to go",
            flush=True,
        )


def switch_to(settings: Settings, model: str) -> int:
    """Build ``model``'s table while the active model serves, then make it active."""
    from shared.broker import make_celery_app
    from shared.db import registry
    from shared.db.embeddings import register_embedder
    from shared.embed.embedder import load_embedder
    from shared.ingest.switch import check_chunker, switch_model

    settings = settings.model_copy(update={"model": model})
    # Loaded here for its dimension and chunker, and so that a model this host cannot load is
    # a clear error now rather than failed fill tasks later.
    embedder = load_embedder(settings)
    chunker = embedder.chunker(settings.chunk_tokens, settings.chunk_overlap_tokens)

    async def run(pool: asyncpg.Pool) -> int:
        before = (await registry.serving(pool)).active
        if before == embedder.name:
            print(f"{embedder.name} is the active model already")
            return 0
        if before is not None:  # refused before anything is registered
            await check_chunker(pool, embedder.name, chunker)
        table = await register_embedder(
            pool,
            embedder,
            settings.vector_index,
            settings.vector_dimensions,
            settings.vector_projection,
        )
        if before is None:  # a fresh database: the first model registered is the active one
            print(f"{table.model} is the active model")
            return 0
        print(f"building {table.model} while {before} serves", flush=True)
        await switch_model(pool, make_celery_app(settings), table, settings, report=_Printer())
        print(f"{table.model} is the active model (was {before}); back: `kensaku model rollback`")
        return 0

    try:
        return _with_pool(settings, run)
    except KeyboardInterrupt:
        print(
            f"\nstopped; the build of {embedder.name} stays: run the same command to resume it, "
            "or `kensaku model cancel`",
            file=sys.stderr,
        )
        return 130


def cmd_model_list(args: argparse.Namespace) -> int:
    from shared.db import registry
    from shared.db.embeddings import ModelTable

    async def run(pool: asyncpg.Pool) -> int:
        total = await registry.indexed_chunks(pool)
        for m in await registry.model_states(pool):
            table = ModelTable(m.name, m.table, m.dimension)
            embedded = total - sum((await registry.gaps(pool, table)).values())
            state = "active" if m.active else "building" if m.building else "standby"
            if m.retired_at and not m.active:
                state += f" (retired {m.retired_at:%Y-%m-%d %H:%M:%S})"
            print(f"{state:<33} {m.name}  {m.dimension} dims  {embedded:,}/{total:,} chunks")
        return 0

    return _with_pool(get_settings(), run)


def cmd_model_rollback(args: argparse.Namespace) -> int:
    """Back to the model that was active before, without downtime (it is filled first with
    whatever was indexed since)."""
    from shared.db import registry

    settings = get_settings()
    previous = _with_pool(settings, registry.previous_model)
    if previous is None:
        return _fail(
            "no model was active before this one since switches were recorded; "
            "`kensaku reembed --model NAME` switches to a given one (`kensaku model list`)"
        )
    try:
        return switch_to(settings, previous)
    except ConfigError as exc:
        return _fail(str(exc))


def cmd_model_index(args: argparse.Namespace) -> int:
    """Build the active model's missing vector indexes now, as the end of a job does: after
    KENSAKU_VECTOR_INDEX, _DIMENSIONS or _PROJECTION changed, a collection gets its new index
    (and its PCA basis) without waiting for its next upload. ``--refit``: also refit PCA bases
    that no longer fit their collection (a job's end does so by itself only up to
    bases.AUTO_REFIT_MAX_ROWS vectors). ``--rebuild``: also build again, beside the old one,
    each HNSW graph built with a shorter candidate list than its collection's size now calls
    for (finalize.rebuild_graph)."""
    from shared.db import registry
    from shared.db.embeddings import ModelTable
    from shared.db.pool import create_pool
    from shared.db.queries import Q
    from shared.ingest.finalize import build_vector_index, rebuild_graph

    settings = get_settings()

    async def run(pool: asyncpg.Pool) -> int:
        active = next((m for m in await registry.model_states(pool) if m.active), None)
        if active is None:
            return _fail("no model is active yet: nothing has been embedded")
        table = ModelTable(
            active.name,
            active.table,
            active.dimension,
            index_kind=settings.vector_index,
            index_dimensions=settings.vector_dimensions,
            projection=settings.vector_projection,
        )
        ids = [r["id"] for r in await pool.fetch(Q.model_partitions, table.table)]
        if args.collection:
            wanted = await pool.fetchval(Q.collection_id, args.collection)
            if wanted not in ids:
                return _fail(f"collection {args.collection!r} has no vectors of {table.model}")
            ids = [wanted]
        async with pool.acquire() as conn:
            await conn.execute(Q.set_session, "statement_timeout", "0")
            for cid in ids:
                started = time.monotonic()
                built = await build_vector_index(conn, table, cid, settings, refit=args.refit)
                took = time.monotonic() - started
                print(
                    f"built {table.index(cid)} in {took:.1f} s"
                    if built
                    else f"{table.partition(cid)}: index present"
                    + (" and its PCA basis kept" if args.refit and table.pca else "")
                    + f", or fewer vectors than KENSAKU_HNSW_MIN_ROWS ({settings.hnsw_min_rows})"
                )
                if args.rebuild and not built:
                    started = time.monotonic()
                    try:
                        wider = await rebuild_graph(conn, table, cid, settings)
                    except asyncpg.PostgresError as exc:
                        return _fail(
                            f"rebuild of {table.index(cid)} failed ({exc}); the old index "
                            "still serves"
                        )
                    if wider is not None:
                        took = time.monotonic() - started
                        print(
                            f"rebuilt {table.index(cid)} with ef_construction {wider} "
                            f"in {took:.1f} s"
                        )
        return 0

    async def with_vectors() -> int:
        pool = await create_pool(settings, min_size=1)  # reads vectors: with pgvector's codecs
        try:
            return await run(pool)
        finally:
            await pool.close()

    try:
        return asyncio.run(with_vectors())
    except ConfigError as exc:
        return _fail(str(exc))


def cmd_model_cancel(args: argparse.Namespace) -> int:
    from shared.db import registry

    name = _with_pool(get_settings(), registry.cancel_build)
    print(f"the switch to {name} is cancelled" if name else "no switch is in progress")
    return 0


def add_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    msub: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    re_ = sub.add_parser(
        "reembed",
        help="switch to another model without downtime (--model), or re-embed in place",
    )
    re_.add_argument(
        "--model",
        help="the model to switch to: its table is built while the active one serves, then it "
        "becomes active (a model name or directory, as KENSAKU_MODEL takes)",
    )
    re_.add_argument(
        "--in-place",
        action="store_true",
        help="with --model: make it active at once and re-embed (for a model that cuts chunks "
        "differently; search serves a partly filled table until done)",
    )
    re_.add_argument("--collection", help="re-embed only this collection for the active model")
    re_.set_defaults(func=cmd_reembed)

    msub.add_parser(
        "list", help="the registered models, which serves, their coverage"
    ).set_defaults(func=cmd_model_list)
    msub.add_parser(
        "rollback", help="switch back to the previously active model, without downtime"
    ).set_defaults(func=cmd_model_rollback)
    msub.add_parser("cancel", help="stop a switch in progress").set_defaults(func=cmd_model_cancel)
    mix = msub.add_parser(
        "index",
        help="build the active model's missing vector indexes (and PCA bases) now, as a job's "
        "end does, after KENSAKU_VECTOR_INDEX/_DIMENSIONS/_PROJECTION changed",
    )
    mix.add_argument("--collection", help="only this collection")
    mix.add_argument(
        "--refit",
        action="store_true",
        help="check each PCA basis against its collection's vectors now, and refit (and "
        "re-index) those that no longer fit, whatever the collection's size; searches of a "
        "collection being refitted scan it without an index meanwhile",
    )
    mix.add_argument(
        "--rebuild",
        action="store_true",
        help="build each HNSW graph again whose candidate list (ef_construction) is shorter "
        "than its collection's size now calls for; built beside the old one, so writes and "
        "indexed searches go on",
    )
    mix.set_defaults(func=cmd_model_index)
