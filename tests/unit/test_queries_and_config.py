"""Pure pieces: the SQL loader, settings validation, filters, table names, migrations discovery."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from shared.config import Settings
from shared.db.embeddings import INDEX_SUFFIXES, TABLE_NAME, ModelTable, table_name_for
from shared.db.migrate import discover
from shared.db.queries import Q, parse_queries
from shared.errors import ConfigError
from shared.search import filter_groups, search_sql

GRAPH = {"m": 16, "ef_construction": 64}  # pgvector's defaults, kensaku's below 100,000 vectors


def test_parse_queries_splits_named_blocks() -> None:
    text = "-- name: one\nSELECT 1;\n\n-- name: two\n-- a comment\nSELECT 2;\n"
    assert parse_queries(text) == {"one": "SELECT 1;", "two": "-- a comment\nSELECT 2;"}
    with pytest.raises(ValueError, match="duplicate"):
        parse_queries("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;")


def test_every_named_query_is_loaded() -> None:
    for name in ("upsert_documents", "search_hybrid", "claim_pending", "delete_chunks"):
        assert name in Q.names()
    with pytest.raises(AttributeError, match="no SQL query"):
        _ = Q.not_a_query


def test_table_names_are_safe_identifiers() -> None:
    for model in ["kensaku/chive-sudachi-300", "intfloat/multilingual-e5-large", "'; DROP --"]:
        name = table_name_for(model)
        assert TABLE_NAME.match(name), name
    assert table_name_for("a/b") != table_name_for("a_b")  # the digest keeps them apart
    with pytest.raises(ConfigError):
        ModelTable("x", "emb_x; DROP TABLE chunks", 3).sql("SELECT * FROM {table}")
    assert ModelTable("m", "emb_m", 3000).vector_type == "halfvec(3000)"
    assert ModelTable("m", "emb_m", 300).vector_type == "halfvec(300)"


def test_each_vector_index_kind_has_its_own_index_and_query() -> None:
    long_table = "emb_" + "x" * 32 + "_" + "0" * 8
    names = {
        ModelTable("m", long_table, 300, index_kind=k).index(2**31 - 1) for k in INDEX_SUFFIXES
    }
    assert len(names) == len(INDEX_SUFFIXES) and max(map(len, names)) <= 63  # Postgres's limit
    assert ModelTable("m", "emb_m", 300).index(7) == "emb_m_c7_hnsw"  # the name it always had
    binary = ModelTable("m", "emb_m", 300, index_kind="hnsw_binary")
    assert "bit_hamming_ops" in binary.index_method(50_000, **GRAPH)
    # The HNSW graph's shape (KENSAKU_HNSW_M, KENSAKU_HNSW_EF_CONSTRUCTION) goes to every kind
    # that builds one.
    for kind in ("hnsw", "hnsw_halfvec", "hnsw_binary"):
        table = ModelTable("m", "emb_m", 300, index_kind=kind)
        method = table.index_method(1, m=24, ef_construction=100)
        assert method.endswith(" WITH (m = 24, ef_construction = 100)"), method
    with pytest.raises(ValueError, match="at least twice hnsw_m"):
        Settings(hnsw_m=40, hnsw_ef_construction=64)
    sql = search_sql("vector", False, binary, 4)
    assert "<~> binary_quantize($5::halfvec)" in sql and "LIMIT $3 * 4" in sql
    # ivfflat: rows / 1000 lists, then sqrt(rows) past a million.
    ivf = ModelTable("m", "emb_m", 300, index_kind="ivfflat")
    assert ivf.index_method(100, **GRAPH).endswith("(lists = 1)")
    assert ivf.index_method(60_000, **GRAPH).endswith("(lists = 60)")
    assert ivf.index_method(4_000_000, **GRAPH).endswith("(lists = 2000)")
    assert "::vector(300)" in search_sql(
        "hybrid", True, ModelTable("m", "emb_m", 300, index_kind="hnsw"), 4
    )
    with pytest.raises(ConfigError, match="unknown vector index"):
        ModelTable("m", "emb_m", 300, index_kind="hnsw_pq")


def test_an_index_over_the_first_dimensions_reranks_with_all_of_them() -> None:
    long_table = "emb_" + "x" * 32 + "_" + "0" * 8
    names = {
        ModelTable("m", long_table, 4000, index_kind=k, index_dimensions=n).index(2**31 - 1)
        for k in INDEX_SUFFIXES
        for n in (0, 64, 3999)
    }
    assert len(names) == 3 * len(INDEX_SUFFIXES) and max(map(len, names)) <= 63
    # No reduced name is ever a full-dimension name of another kind (11 is "b" in base 36).
    plain = {ModelTable("m", "emb_m", 4000, index_kind=k).index(7) for k in INDEX_SUFFIXES}
    for n in (11, 15, 18, 30):
        for k in INDEX_SUFFIXES:
            assert (
                ModelTable("m", "emb_m", 4000, index_kind=k, index_dimensions=n).index(7)
                not in plain
            )
    half = ModelTable("m", "emb_m", 300, index_dimensions=64)
    assert half.reduced and half.reranks and half.dimensions_stored == 64
    assert half.index(7) == "emb_m_c7_dh1s"  # 64 in base 36
    assert half.index_method(50_000, **GRAPH) == (
        "hnsw ((subvector(embedding, 1, 64)::halfvec(64)) halfvec_cosine_ops) "
        "WITH (m = 16, ef_construction = 64)"
    )
    sql = search_sql("vector", False, half, 4)
    # The ORDER BY is the indexed expression; the cosine is the full stored vectors'.
    assert (
        "ORDER BY subvector(e.embedding, 1, 64)::halfvec(64) <=> "
        "subvector($5::halfvec, 1, 64)::halfvec(64)" in sql
    )
    assert "LIMIT $3 * 4" in sql and "b.embedding <=> $5 AS distance" in sql
    binary = ModelTable("m", "emb_m", 300, index_kind="hnsw_binary", index_dimensions=128)
    assert "binary_quantize(subvector(embedding, 1, 128)::halfvec(128))::bit(128)" in (
        binary.index_method(1, **GRAPH)
    )
    # All dimensions is no reduction: the plain index and query.
    same = ModelTable("m", "emb_m", 300, index_dimensions=300)
    assert not same.reduced and same.index(7) == "emb_m_c7_hnsw" and same.dimensions_stored == 300
    assert "LIMIT $3 * 4" not in search_sql("vector", False, same, 4)
    with pytest.raises(ConfigError, match="exceeds the 300 dimensions"):
        ModelTable("m", "emb_m", 300, index_dimensions=301)


def test_a_pca_index_holds_the_projections_and_reranks_with_the_stored_vectors() -> None:
    pca = ModelTable("m", "emb_m", 300, index_dimensions=64, projection="pca")
    prefix = ModelTable("m", "emb_m", 300, index_dimensions=64)
    assert pca.pca and pca.reranks and not prefix.pca
    # Its own name: an index over a prefix is not one over principal components.
    assert pca.index(7) == "emb_m_c7_ph1s" and pca.index(7) != prefix.index(7)
    assert pca.index_method(50_000, **GRAPH) == (
        "hnsw ((reduced::halfvec(64)) halfvec_cosine_ops) WITH (m = 16, ef_construction = 64)"
    )
    vector = search_sql("vector", False, pca, 4)
    assert "ORDER BY e.reduced::halfvec(64) <=> $6::halfvec(64)" in vector
    assert "b.embedding <=> $5 AS distance" in vector
    hybrid = search_sql("hybrid", True, pca, 4)
    assert "ORDER BY e.reduced::halfvec(64) <=> $13::halfvec(64)" in hybrid
    # Without its basis yet the partition is ranked by the full vectors: no projection at all.
    full = search_sql("vector", False, pca.unprojected(), 4)
    assert "reduced" not in full and "$6" not in full
    # All dimensions is no projection, whatever the setting.
    assert not ModelTable("m", "emb_m", 300, index_dimensions=300, projection="pca").pca
    with pytest.raises(ConfigError, match="unknown vector projection"):
        ModelTable("m", "emb_m", 300, index_dimensions=64, projection="svd")


def test_bind_rule() -> None:
    Settings(host="127.0.0.1").check_bind_allowed()
    Settings(host="::1").check_bind_allowed()
    Settings(host="0.0.0.0", api_keys="k1").check_bind_allowed()
    with pytest.raises(ConfigError, match="refusing to bind"):
        Settings(host="0.0.0.0").check_bind_allowed()
    assert Settings(api_keys=" a, ,b ").api_key_list == ["a", "b"]


def test_settings_are_validated() -> None:
    with pytest.raises(ValidationError, match="postgresql"):
        Settings(database_url="mysql://x")
    with pytest.raises(ValidationError, match="chunk_overlap_tokens"):
        Settings(chunk_tokens=64, chunk_overlap_tokens=64)
    with pytest.raises(ValidationError):
        Settings(max_document_bytes=1000)  # a 1 MB document must always fit
    with pytest.raises(ValidationError, match="worker_stall_seconds"):
        Settings(worker_stall_seconds=2)
    assert Settings(worker_stall_seconds=0).worker_stall_seconds == 0  # off


def test_filter_groups() -> None:
    assert filter_groups(None) == "[]"
    assert filter_groups({"a": 1, "b": ["x", "y"]}) == '[[{"a": 1}], [{"b": "x"}, {"b": "y"}]]'


def test_migration_discovery(tmp_path: Path) -> None:
    assert discover()[0].name == "0001_init.sql"
    (tmp_path / "0001_a.sql").write_text("SELECT 1;")
    (tmp_path / "0001_b.sql").write_text("SELECT 1;")
    with pytest.raises(ConfigError, match="share a number"):
        discover(tmp_path)
    (tmp_path / "0001_b.sql").unlink()
    (tmp_path / "notes.sql").write_text("")
    with pytest.raises(ConfigError, match=r"NNNN_name\.sql"):
        discover(tmp_path)


@pytest.mark.parametrize(
    ("server", "keys", "allowed"),
    [
        (("127.0.0.1", 8000), "", True),
        (("::1", 8000), "", True),
        (("10.1.2.3", 8000), "", False),  # bound to 0.0.0.0, reached from the network
        (("10.1.2.3", 8000), "k1", True),  # with keys: allowed here, the key decides below
    ],
)
def test_a_keyless_api_serves_loopback_only_whatever_it_was_bound_to(
    server: tuple[str, int], keys: str, allowed: bool
) -> None:
    import asyncio
    from types import SimpleNamespace

    from starlette.requests import Request

    from api.auth import require_api_key
    from shared.errors import RejectError

    state = SimpleNamespace(kensaku=SimpleNamespace(settings=Settings(api_keys=keys)))
    headers = [(b"authorization", b"Bearer k1")] if keys else []
    scope = {
        "type": "http",
        "server": server,
        "headers": headers,
        "app": SimpleNamespace(state=state),
    }
    if allowed:
        asyncio.run(require_api_key(Request(scope)))
    else:
        with pytest.raises(RejectError, match="serves this machine only") as exc:
            asyncio.run(require_api_key(Request(scope)))
        assert exc.value.status == 403
