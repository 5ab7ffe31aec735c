"""One error type that carries the HTTP status, so the plain service never imports a web framework."""

from __future__ import annotations

from s2cnet.imageio import ErrorKind, ImageLoadError

# What an unreadable upload deserves, by the loader's typed kind (never by its wording).
LOAD_STATUS = {
    ErrorKind.EMPTY: 422,
    ErrorKind.CORRUPT: 422,
    ErrorKind.NOT_AN_IMAGE: 415,
    ErrorKind.UNSUPPORTED: 415,
    ErrorKind.TOO_LARGE: 413,
    ErrorKind.UNREADABLE: 422,
    ErrorKind.BAD_ARGUMENT: 422,
}


class ServiceError(Exception):
    """A client-visible failure: ``status`` is the HTTP status, ``reason`` a sentence for the caller."""

    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or {}  # e.g. Retry-After on a 503

    def __reduce__(self):  # travels from the model deployment to the ingress intact
        return (type(self), (self.status, self.reason, self.headers))


def load_error(err: ImageLoadError) -> ServiceError:
    """The client-visible form of a load failure: its kind picks the status, its reason is the body."""
    return ServiceError(LOAD_STATUS[err.kind], err.reason)
