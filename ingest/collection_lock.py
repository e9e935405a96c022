"""One ingest at a time adds images to a collection's live version on the embedded store.

The embedded engine lets one process open a version: an ingest that finds the live version held
writes a copy of it and switches to the copy at its finish (ingest/targets.py). That is right when
`serve` holds it, but when the holder is another ingest, the switch hides every image that ingest
writes after the copy was taken. So an ingest that writes the live version, or a copy of it, holds
HOME/ingest-collections/<name>.lock for its whole run, and a second one is refused at once, naming
the first. A Qdrant server needs no such lock: two ingests write the same collection there.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import IO

from dermground.platform.store import StoreLockedError

LOCK_DIR = "ingest-collections"


class CollectionLock:
    """The held lock of one collection (the kernel drops it when the process dies, however it dies)."""

    def __init__(self, handle: IO[str]) -> None:
        self._handle: IO[str] | None = handle

    def release(self) -> None:
        # The file stays: removing it would let a later ingest lock a new file while a waiter holds the old one.
        if self._handle is not None:
            handle, self._handle = self._handle, None
            handle.close()


def hold_collection_lock(home: Path, name: str) -> CollectionLock:
    """Take the lock of `name`; StoreLockedError naming the ingest that holds it."""
    folder = Path(home) / LOCK_DIR
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / f"{name}.lock", "a+", encoding="utf-8")  # noqa: SIM115 - held for the run
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        try:
            holder = json.loads(handle.read() or "{}")
        except json.JSONDecodeError:
            holder = {}
        handle.close()
        raise StoreLockedError(
            f"another ingest (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
            f"`{holder.get('command', '?')}`, since {holder.get('since', '?')}) is adding images to collection "
            f"{name!r}. Two ingests into one collection of the embedded store would each build their own copy "
            "and the last to finish would hide the other's images: rerun when it has finished, or build a "
            "separate version with --new-version.") from None
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv)[:300],
                             "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
    handle.flush()
    return CollectionLock(handle)


def collection_lock_holder(home: Path, name: str) -> dict[str, object] | None:
    """What the ingest holding the lock of `name` wrote (pid, host, command, since); None when no
    ingest holds it (`serve` uses this to tell an ingest writing the live version in place)."""
    try:
        handle = open(Path(home) / LOCK_DIR / f"{name}.lock", encoding="utf-8")  # noqa: SIM115
    except FileNotFoundError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = json.loads(handle.read() or "{}")
            except json.JSONDecodeError:
                holder = {}
            return holder if isinstance(holder, dict) else {}
        return None  # free: nobody holds it (the shared lock is dropped when the file closes)


__all__ = ["CollectionLock", "collection_lock_holder", "hold_collection_lock"]
