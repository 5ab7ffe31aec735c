"""One error type that carries the HTTP status, so the plain service never imports a web framework."""

from __future__ import annotations


class ServiceError(Exception):
    """A client-visible failure: ``status`` is the HTTP status, ``reason`` a sentence for the caller."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
