"""HNSW parameters that follow a partition's size, where the settings leave them open.

A graph built with pgvector's ef_construction 64 serves ja_dev's 60,756 sentence vectors at
recall@10 0.983 (ef_search 100), but 0.961 at 100,000 vectors, 0.941 at 300,000 and 0.92–0.93 at
a million. A longer candidate list at the build, and a wider search from 500,000 vectors, bring
recall@10 back to 0.98 (`kensaku bench vectors`, bench/RESULTS.md, "HNSW parameters by partition
size"; shared_buffers holding the index):

| vectors   | recall@10, defaults | ef_construction / ef_search | recall@10   | p50 ms | build s |
|-----------|---------------------|-----------------------------|-------------|--------|---------|
| 100,000   | 0.961               | 128 / 100                   | 0.979–0.983 | 2.5    | 33      |
| 300,000   | 0.941               | 256 / 100                   | 0.990       | 3.4    | 260     |
| 1,000,000 | 0.92–0.93           | 256 / 200                   | 0.985       | 8.2    | 1217    |

("defaults": pgvector's ef_construction 64 with ef_search 100.)

A wider build costs build time and every later per-row insert into that graph, so small
partitions keep pgvector's defaults. At 300,000 vectors ef_construction 256 with ef_search 100
beat 128 with ef_search 200 (0.977 at 5.6 ms; 159 s to build), so the build widens first.
"""

from __future__ import annotations

# (partitions below this many vectors, the value): the last one holds for any larger.
EF_CONSTRUCTION_BY_ROWS = ((100_000, 64), (200_000, 128), (None, 256))
EF_SEARCH_BY_ROWS = ((500_000, 100), (None, 200))


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
