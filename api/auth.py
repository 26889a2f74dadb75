"""Bearer API keys. With KENSAKU_API_KEYS set, every /v1 route needs one of them; without keys
the server only binds to loopback (checked at start-up in Settings.check_bind_allowed).
"""

from __future__ import annotations

import hmac

from fastapi import Request

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
