"""The checkpoint folders of a training run: one live run per folder, and what a killed run left behind.

Ray Train writes each checkpoint into a new `checkpoint_<time>` folder of the run folder and only
then names it in the run's checkpoint_manager_snapshot.json; it resumes from, and deletes old
checkpoints among, the folders that file names. A run killed while a checkpoint was being written
(or between naming a newer one and deleting an older one) leaves a folder that no snapshot names:
Ray never lists, resumes from or deletes it, so at real sizes (a full model per checkpoint) such
folders fill the disk over time.

A driver holds an exclusive lock on the storage folder's lock file while it trains (the kernel
drops it when the process dies, however it dies), so a second run into the same folder is refused
instead of interleaving with the first. With the lock held, a `checkpoint_*` folder that the
snapshot does not name, and in which nothing changed for QUIET_S (a worker of a killed driver on a
remote cluster may still be finishing a write), is unfinished or orphaned: it is removed at the
next run's start, and the run says so.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dermground.platform.lock_file import HeldLock, LockBusy, hold_lock

LOCK_FILE = ".dermground-run.lock"  # in the storage folder (the run folders' parent)
SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"  # Ray Train's list of a run's checkpoints
CHECKPOINT_PREFIX = "checkpoint_"
QUIET_S = 60.0  # an unlisted folder changed more recently than this may still be being written


class RunBusyError(ValueError):
    """Another live training run holds the storage folder."""


# The lock a training driver holds on its storage folder while it runs (released by `release`;
# the file stays: removing it would race a new holder).
StorageLock = HeldLock


def hold_run_lock(lock_file: Path, writes: Path) -> StorageLock:
    """Take a run's lock file (its pid is written in), or RunBusyError naming the live run that holds it
    and `writes`, the folder it writes."""
    try:
        return hold_lock(lock_file)
    except LockBusy as busy:
        holder = busy.holder
        raise RunBusyError(f"another training run (pid {holder.get('pid', '?')}, `{holder.get('command', '?')}`, "
                           f"since {holder.get('since', '?')}) is writing {writes}; wait for it to finish "
                           f"(a re-run of the same command then resumes it) or pass another --out") from None


def hold_storage_lock(storage: Path) -> StorageLock:
    """Take the lock of a storage folder (the run folders' parent) whose run holds no other lock."""
    return hold_run_lock(storage / LOCK_FILE, storage)


def listed_checkpoints(run_folder: Path) -> set[str] | None:
    """Names of the checkpoint folders the run's snapshot lists; an empty set without a snapshot
    (Ray then starts the run afresh); None when the snapshot cannot be read (nothing can be told)."""
    snapshot = run_folder / SNAPSHOT_FILE
    if not snapshot.is_file():
        return set()
    try:
        state = json.loads(snapshot.read_text())
    except (OSError, ValueError):
        return None
    return set(_dir_names(state))


def latest_step(run_folder: Path) -> int | None:
    """The step of the run's latest listed checkpoint (the one a re-run resumes from), or None."""
    try:
        latest = json.loads((run_folder / SNAPSHOT_FILE).read_text()).get("latest_checkpoint_result") or {}
        step = (latest.get("metrics") or {}).get("step")
    except (OSError, ValueError, AttributeError):
        return None
    return step if isinstance(step, int) else None


def _dir_names(node: Any) -> Iterator[str]:
    """Every checkpoint folder name in Ray's snapshot (results, latest, pending and validation lists)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "checkpoint_dir_name" and isinstance(value, str):
                yield value
            elif key.endswith("checkpoint_dir_names") and isinstance(value, list):
                yield from (v for v in value if isinstance(v, str))
            else:
                yield from _dir_names(value)
    elif isinstance(node, list):
        for value in node:
            yield from _dir_names(value)


def _last_change(folder: Path) -> float:
    """The newest modification time of the folder or anything in it."""
    newest = folder.stat().st_mtime
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            try:
                newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
            except FileNotFoundError:
                continue
    return newest


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink())


@dataclass(frozen=True)
class Removed:
    """Unlisted checkpoint folders removed from a run folder."""

    names: tuple[str, ...]
    bytes: int

    def describe(self, run_folder: Path) -> str:
        return (f"removed {len(self.names)} unfinished checkpoint folder(s) of an interrupted run from {run_folder} "
                f"({self.bytes / 2**20:.1f} MiB; Ray's list of this run's checkpoints does not name them): "
                + ", ".join(self.names))


def remove_unfinished_checkpoints(run_folder: Path, lock: StorageLock, quiet_s: float = QUIET_S) -> Removed:
    """Remove the run folder's `checkpoint_*` folders its snapshot does not name and that nothing changed
    for `quiet_s`. `lock` (the storage folder's, held by this process) is what proves no live run writes them."""
    if lock.handle.closed:
        raise RuntimeError(f"the lock {lock.path} was released: unlisted checkpoints may belong to a live run")
    listed = listed_checkpoints(run_folder)
    if listed is None or not run_folder.is_dir():
        return Removed((), 0)
    now = time.time()
    names, total = [], 0
    for folder in sorted(run_folder.iterdir()):
        if not folder.name.startswith(CHECKPOINT_PREFIX) or folder.name in listed or not folder.is_dir():
            continue
        if now - _last_change(folder) < quiet_s:
            continue
        total += _size(folder)
        shutil.rmtree(folder)
        names.append(folder.name)
    return Removed(tuple(names), total)
