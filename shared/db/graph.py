"""HNSW parameters that follow a partition's size, where the settings leave them open.

A graph built with pgvector's ef_construction 64 serves ja_dev's 60,756 sentence vectors at
recall@10 0.983 (ef_search 100), but 0.961 at 100,000 vectors, 0.941 at 300,000 and 0.92–0.93 at
a million. A longer candidate list at the build, and a wider search past 200,000 vectors, bring
recall@10 back to 0.98 (`kensaku bench vectors`, bench/RESULTS.md, "HNSW parameters by partition
size"; shared_buffers holding the index):

| vectors   | ef_construction | ef_search | recall@10     | p50 ms      |
|-----------|-----------------|-----------|---------------|-------------|
| 100,000   | 64 → 128        | 100       | 0.961 → 0.983 | 3.1 → 3.4   |
| 300,000   | 64 → 128        | 100 → 200 | 0.941 → 0.980 | 2.7 → 5.8   |
| 1,000,000 | 128 → 256       | 100 → 200 | 0.950 → 0.985 | 3.7 → 8.2   |

A wider build costs build time (1.8× at 100,000 vectors, 1.7× at a million) and every later
per-row insert into that graph, so small partitions keep pgvector's defaults.
"""

from __future__ import annotations

# (partitions below this many vectors, the value): the last one holds for any larger.
EF_CONSTRUCTION_BY_ROWS = ((100_000, 64), (500_000, 128), (None, 256))
EF_SEARCH_BY_ROWS = ((200_000, 100), (None, 200))
DEFAULT_EF_SEARCH = EF_SEARCH_BY_ROWS[0][1]


def _by_rows(table: tuple[tuple[int | None, int], ...], rows: float) -> int:
    for below, value in table:
        if below is None or rows < below:
            return value
    raise AssertionError("the last tier has no bound")


def ef_construction(rows: int, *, m: int, setting: int | None) -> int:
    """The candidate list of a graph built over ``rows`` vectors: the setting's value when it
    is set, else the size's (never below 2 × m, which pgvector requires)."""
    if setting is not None:
        return setting
    return max(_by_rows(EF_CONSTRUCTION_BY_ROWS, rows), 2 * m)


def ef_search(estimated_rows: float, setting: int | None) -> int:
    """The search breadth for a partition of about ``estimated_rows`` vectors (the planner's
    count; -1 when never analyzed, which counts as small)."""
    if setting is not None:
        return setting
    return _by_rows(EF_SEARCH_BY_ROWS, estimated_rows)
