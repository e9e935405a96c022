"""One ingest at a time adds images to a collection's live version on the embedded store.

The embedded engine lets one process open a version: an ingest that finds the live version held
writes a copy of it and switches to the copy at its finish (ingest/targets.py). That is right when
`serve` holds it, but when the holder is another ingest, the switch hides every image that ingest
writes after the copy was taken. So an ingest that writes the live version, or a copy of it, holds
HOME/ingest-collections/<name>.lock for its whole run, and a second one is refused at once, naming
the first. A Qdrant server needs no such lock: two ingests write the same collection there.
"""

from __future__ import annotations

from pathlib import Path

from dermground.platform.lock_file import HeldLock, LockBusy, held_by, hold_lock
from dermground.platform.store import StoreLockedError

LOCK_DIR = "ingest-collections"
# The held lock of one collection (the kernel drops it when the process dies, however it dies);
# its file stays when released: removing it would let a later ingest lock a new file while a
# waiter holds the old one.
CollectionLock = HeldLock


def hold_collection_lock(home: Path, name: str) -> CollectionLock:
    """Take the lock of `name`; StoreLockedError naming the ingest that holds it."""
    try:
        return hold_lock(Path(home) / LOCK_DIR / f"{name}.lock")
    except LockBusy as busy:
        holder = busy.holder
        raise StoreLockedError(
            f"another ingest (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
            f"`{holder.get('command', '?')}`, since {holder.get('since', '?')}) is adding images to collection "
            f"{name!r}. Two ingests into one collection of the embedded store would each build their own copy "
            "and the last to finish would hide the other's images: rerun when it has finished, or build a "
            "separate version with --new-version.") from None


def collection_lock_holder(home: Path, name: str) -> dict[str, object] | None:
    """What the ingest holding the lock of `name` wrote (pid, host, command, since); None when no
    ingest holds it (`serve` uses this to tell an ingest writing the live version in place)."""
    return held_by(Path(home) / LOCK_DIR / f"{name}.lock")


__all__ = ["CollectionLock", "collection_lock_holder", "hold_collection_lock"]
