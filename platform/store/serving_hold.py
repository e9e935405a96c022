"""The address a `dermground serve` answers at, written into the owner record of every embedded store
version it opens (store/edge.py).

A command refused a version because a `serve` holds it (`dermground search`) reads the address there
and points to the running API instead of telling the user to stop it. Set for the whole process, not
a context variable as brief_hold's mark: the API's watcher thread opens the next version after a
switch, and its record should say the same.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

_SERVED_AT: str | None = None


@contextmanager
def serving_at(url: str) -> Iterator[None]:
    """Mark the store opens of this process, until the block ends, as a `serve` answering at `url`."""
    global _SERVED_AT
    previous, _SERVED_AT = _SERVED_AT, url
    try:
        yield
    finally:
        _SERVED_AT = previous


def served_url() -> str | None:
    """Where this process serves the API, or None outside `serving_at`."""
    return _SERVED_AT


def local_url(host: str, port: int) -> str:
    """The URL another process on this machine reaches a server bound to host:port at."""
    if host in ("", "0.0.0.0", "::"):  # every address: loopback is one of them
        host = "127.0.0.1"
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


__all__ = ["local_url", "served_url", "serving_at"]
