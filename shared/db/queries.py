"""Named SQL queries, parsed once at import from the ``.sql`` files next to this module.

A file holds blocks that each start with ``-- name: query_name``; the text up to the next such line
is the query. Keeping SQL in files keeps it readable, greppable and out of the Python code.
"""

from __future__ import annotations

import re
from pathlib import Path

_SQL_DIR = Path(__file__).with_name("sql")
_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


def parse_queries(text: str) -> dict[str, str]:
    parts = _NAME.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"duplicate query name {name!r}")
        queries[name] = body.strip()
    return queries


def _load_all() -> dict[str, str]:
    merged: dict[str, str] = {}
    for path in sorted(_SQL_DIR.glob("*.sql")):
        for name, sql in parse_queries(path.read_text(encoding="utf-8")).items():
            if name in merged:
                raise ValueError(f"query {name!r} defined twice ({path.name})")
            merged[name] = sql
    return merged


class _Queries:
    def __init__(self) -> None:
        self._q = _load_all()

    def __getattr__(self, name: str) -> str:
        try:
            return self._q[name]
        except KeyError:
            raise AttributeError(f"no SQL query named {name!r}") from None

    def names(self) -> list[str]:
        return sorted(self._q)


Q = _Queries()
