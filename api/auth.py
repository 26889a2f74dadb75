"""Bearer API keys. With KENSAKU_API_KEYS set, every /v1 route and /metrics needs one of them.
Without keys the API is for this machine only: the server refuses to start on a non-loopback
KENSAKU_HOST, and whatever address it was actually bound to (``uvicorn --host 0.0.0.0``), a
request that arrived on a non-loopback address is refused.
"""

from __future__ import annotations

import hmac

from fastapi import Request

from shared.config import is_loopback
from shared.errors import RejectError


def _matches(given: str, keys: list[str]) -> bool:
    # Compare against every key without stopping early, in constant time per key.
    found = False
    for key in keys:
        found |= hmac.compare_digest(given.encode("utf-8"), key.encode("utf-8"))
    return found


async def require_api_key(request: Request) -> None:
    keys: list[str] = request.app.state.kensaku.settings.api_key_list
    if not keys:
        server = request.scope.get("server")
        if server and not is_loopback(str(server[0])):
            raise RejectError(
                "this API has no keys (KENSAKU_API_KEYS) and serves this machine only; it was "
                f"reached on {server[0]}",
                status=403,
            )
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise RejectError(
            "missing API key: send 'Authorization: Bearer <key>'",
            status=401,
        )
    if not _matches(token.strip(), keys):
        raise RejectError("invalid API key", status=401)
