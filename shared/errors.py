"""The error hierarchy, split by what the caller should do about it.

- ``RejectError``: the client sent something we will not accept (the API answers 4xx).
- ``NotFoundError``: the thing asked for does not exist (404).
- ``RetryableError``: a transient failure (a search over its time limit); the API answers 503.
- ``ConfigError``: the deployment is wrong (model/table mismatch, bad settings); stop loudly.
"""

from __future__ import annotations

from typing import Any


class KensakuError(Exception):
    """Base class of every error kensaku raises on purpose."""


class RejectError(KensakuError):
    def __init__(self, message: str, *, status: int = 422, detail: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.detail = detail


class NotFoundError(KensakuError):
    pass


class RetryableError(KensakuError):
    pass


class ConfigError(KensakuError):
    pass
