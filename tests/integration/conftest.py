"""Fixtures of the integration tests (the shared stack itself is in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _stack_restored(request: pytest.FixtureRequest) -> Iterator[None]:
    """A fault test that fails halfway may leave the API or the worker dead; they are started
    again after it, so its failure stays its own instead of failing every test after it."""
    yield
    if "stack" not in request.fixturenames:
        return
    stack = request.getfixturevalue("stack")
    if not stack.procs["api"].alive():
        stack.start_api()
        stack.wait_ready(120)
    if not stack.procs["worker"].alive():
        stack.start_worker()
