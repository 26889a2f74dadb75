"""kensaku's advisory locks must not share a key: two-int locks are (class, id) pairs, so every
class is one purpose's (the switch lock once shared finalize's index-build class, and a build
in collection 119 would have stopped every vector write)."""

from __future__ import annotations

from shared.db import embeddings, migrate, registry
from shared.ingest import finalize


def test_two_int_lock_classes_are_distinct() -> None:
    classes = [
        embeddings._PARTITION_LOCK,
        finalize._BUILD_LOCK,
        finalize._JOB_LOCK,
        registry.SWITCH_LOCK_CLASS,
    ]
    assert len(set(classes)) == len(classes)
    assert registry._SWITCH_LOCK[0] == registry.SWITCH_LOCK_CLASS


def test_one_key_locks_are_distinct() -> None:
    assert embeddings._REGISTRY_LOCK != migrate._LOCK_KEY
