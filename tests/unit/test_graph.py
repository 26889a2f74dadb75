"""HNSW parameters by partition size (shared/db/graph.py), where the settings leave them open."""

from __future__ import annotations

import pytest

from shared.config import Settings
from shared.db import graph


@pytest.mark.parametrize(
    ("rows", "want"),
    [(10_000, 64), (99_999, 64), (100_000, 128), (199_999, 128), (200_000, 256), (10**6, 256)],
)
def test_a_larger_partition_gets_a_longer_build_list(rows: int, want: int) -> None:
    assert graph.ef_construction(rows, m=16, setting=None) == want


def test_the_build_list_follows_the_setting_and_pgvectors_floor() -> None:
    assert graph.ef_construction(10**6, m=16, setting=40) == 40
    # pgvector refuses ef_construction below 2 × m.
    assert graph.ef_construction(10_000, m=48, setting=None) == 96


@pytest.mark.parametrize(
    ("rows", "want"), [(-1, 100), (0, 100), (499_999, 100), (500_000, 200), (5e6, 200)]
)
def test_a_larger_partition_is_searched_wider(rows: float, want: int) -> None:
    assert graph.ef_search(rows, None) == want


def test_a_set_search_breadth_holds_at_any_size() -> None:
    assert graph.ef_search(5e6, 40) == 40


def test_both_are_open_by_default_and_a_set_graph_is_still_checked() -> None:
    settings = Settings()
    assert settings.hnsw_ef_search is None and settings.hnsw_ef_construction is None
    with pytest.raises(ValueError, match="at least twice hnsw_m"):
        Settings(hnsw_m=40, hnsw_ef_construction=64)
    Settings(hnsw_m=40)  # open: the size's value is raised to 2 × m
