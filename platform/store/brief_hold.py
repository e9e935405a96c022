"""Opens of an embedded store that last a moment, marked so in the store's owner record.

The embedded engine lets one process open a version. `snapshot create` and `check` open the live
version only to read it and let go; a `serve` started meanwhile should wait for that, not refuse
as it must when another `serve` holds the version for good. Code that opens a store inside
`held_briefly(purpose)` has `purpose` written into the owner record (store/edge.py), where
`serve` reads it (commands/serve.py). A context variable, not a flag of the process: a thread the
code starts (the API's watcher) does not inherit it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_PURPOSE: ContextVar[str | None] = ContextVar("dermground_brief_hold", default=None)


@contextmanager
def held_briefly(purpose: str) -> Iterator[None]:
    """Mark the store opens in this block as brief holds for `purpose` (e.g. "snapshot create")."""
    token = _PURPOSE.set(purpose)
    try:
        yield
    finally:
        _PURPOSE.reset(token)


def brief_purpose() -> str | None:
    """What the current brief hold is for, or None outside `held_briefly`."""
    return _PURPOSE.get()


__all__ = ["brief_purpose", "held_briefly"]
