from __future__ import annotations

from fastapi import Request

from api.state import AppState


def state_of(request: Request) -> AppState:
    st: AppState = request.app.state.kensaku
    return st
