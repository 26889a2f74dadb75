"""Typed dependencies of the routes (FastAPI's ``Annotated`` style)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from api.state import AppState


def get_state(request: Request) -> AppState:
    """What the process holds for its lifetime: settings, pool, model, broker client."""
    st: AppState = request.app.state.kensaku
    return st


State = Annotated[AppState, Depends(get_state)]
