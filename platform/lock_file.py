"""Lock files that name their holder: what commands running beside each other coordinate with.

A process holds a file's exclusive flock and writes a record into it (pid, host, process start,
command, since, and what its caller adds); the others either wait or are refused with that record.
The kernel drops a flock when its process dies, however it dies, so a record is believed only while
its lock is held: a pid alone can name another process once the holder is gone. The file stays when
the lock is released (removing it would let a later holder lock a new file while a waiter holds the
old one), unless its owner removes it knowing nobody else uses that name (an ingest run's lock).
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

from dermground.platform.processes import process_start


class LockBusy(Exception):
    """The lock file is held by another process; `holder` is its record ({} when unreadable)."""

    def __init__(self, path: Path, holder: dict[str, object]) -> None:
        super().__init__(f"{path} is held by pid {holder.get('pid', '?')}")
        self.path = path
        self.holder = holder


def holder_record(**extra: object) -> dict[str, object]:
    """This process, as a lock file names it."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": process_start(os.getpid()),
            "command": " ".join(sys.argv)[:300], "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}


def _read_record(handle: IO[str]) -> dict[str, object]:
    handle.seek(0)
    text = handle.read().strip()
    try:
        record = json.loads(text or "{}")
    except json.JSONDecodeError:
        return {"pid": int(text)} if text.isdigit() else {}  # a bare pid, as training runs wrote it
    return record if isinstance(record, dict) else {}


class HeldLock:
    """A held lock file and the record in it (released by `release`, or by this process's end)."""

    def __init__(self, path: Path, handle: IO[str], record: dict[str, object]) -> None:
        self.path = path
        self.record = record
        self.handle: IO[str] | None = handle
        self._write()

    def _write(self) -> None:
        handle = self.handle
        if handle is not None:
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps(self.record))
            handle.flush()

    def update(self, **fields: object) -> None:
        """Add `fields` to the record (e.g. the Ray session an ingest started)."""
        self.record.update(fields)
        self._write()

    def release(self, *, remove: bool = False) -> None:
        """Let go (idempotent). remove: delete the file too (only where no other process locks that name)."""
        if self.handle is None:
            return
        handle, self.handle = self.handle, None
        if remove:
            self.path.unlink(missing_ok=True)
        else:  # emptied first: a later holder's reader never takes this record for that holder's
            handle.seek(0)
            handle.truncate()
            handle.flush()
        handle.close()  # closing drops the lock


def hold_lock(path: Path, **extra: object) -> HeldLock:
    """Take the lock of `path` at once, writing this process's record (plus `extra`) into it;
    LockBusy with the holder's record when another process holds it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held open until release
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_record(handle)
        handle.close()
        raise LockBusy(path, holder) from None
    return HeldLock(path, handle, holder_record(**extra))


def held_by(path: Path) -> dict[str, object] | None:
    """The record of the process holding `path`'s lock; None when nobody holds it (or no such file)."""
    try:
        handle = open(path, encoding="utf-8")  # noqa: SIM115
    except FileNotFoundError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_record(handle)
        return None  # free (the shared lock is dropped when the file closes)


def record_if_free(path: Path) -> dict[str, object] | None:
    """The record a holder left in `path` when nobody holds its lock now ({} when there is no file:
    nobody holds it either); None while it is held."""
    try:
        handle = open(path, encoding="utf-8")  # noqa: SIM115
    except FileNotFoundError:
        return {}
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return None
        return _read_record(handle)


__all__ = ["HeldLock", "LockBusy", "held_by", "hold_lock", "holder_record", "record_if_free"]
