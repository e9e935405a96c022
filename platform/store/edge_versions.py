"""EdgeCollections: versions and aliases of the embedded store (one folder per physical version).

    <store_dir>/<name>/            v0: a collection under its bare name
    <store_dir>/<name>__v3/        version 3 (an EdgeStore folder, plus version.json)
    <store_dir>/.aliases/<name>.json   {"version": "v3", ...}: which version <name> means

The alias record is the only thing a switch writes: a temporary file, fsync, os.replace, fsync of
the folder. A reader sees the old record or the new one, never a torn one, and a process killed
mid-switch leaves one of the two live.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from dermground.platform.crash_points import maybe_crash
from dermground.platform.durable_json import durable_write_json
from dermground.platform.names import check_collection_name
from dermground.platform.next_step import next_command
from dermground.platform.store.base import CollectionSpec, StoreError, StoreLockedError, VectorStore
from dermground.platform.store.versions import (
    LEGACY_VERSION,
    READY,
    UNOPENABLE,
    Collections,
    VersionError,
    check_name,
    VersionInfo,
    VersionMeta,
    building_elsewhere,
    interrupted_note,
    physical_name,
    process_alive,
    split_physical,
    stamped_for_write,
    version_number,
)

ALIAS_DIR = ".aliases"
VERSION_FILE = "version.json"
_META_FILE = "collection.json"  # written by EdgeStore.ensure_collection
_SHARD_DIR = "shard"
_OWNER_FILE = "owner.json"  # written by EdgeStore while a process holds the folder
# How long `drop` waits for a process to let go of the version (a `serve` right after a switch).
DROP_WAIT_S = 10.0
_DROPPED = ".dropped-"  # a dropped version's folder, renamed out of the listings until it is deleted
# Copied when a version is seeded from another; owner.json names a process that does not hold the copy.
_SKIP_ON_COPY = {"owner.json", VERSION_FILE, "temp_segments"}


def disk_usage(path: Path) -> int:
    """Bytes a folder really takes on disk (allocated blocks: sparse files count what they hold)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                pass  # a file removed while we walk
    return total


def copy_sparse(src: Path, dst: Path) -> None:
    """Copy a file or folder keeping sparse files sparse (the engine's WAL and chunks are mostly holes)."""
    if shutil.which("cp"):
        subprocess.run(["cp", "-a", "--sparse=always", str(src), str(dst)], check=True, capture_output=True)
    elif src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copy2(src, dst)


class EdgeCollections(Collections):
    """Versions and aliases of the embedded stores under one folder."""

    stamp_is_cheap = True

    def __init__(self, store_dir: Path, *, hnsw_ef: int | None = None, index_min_points: int = 0) -> None:
        """hnsw_ef, index_min_points: what every version opened here searches and indexes with
        (EdgeStore's parameters; settings.store_hnsw_ef and store_index_min_points)."""
        self.store_dir = Path(store_dir)
        self.hnsw_ef = hnsw_ef
        self.index_min_points = index_min_points

    # --- naming --------------------------------------------------------------------------
    def _alias_path(self, name: str) -> Path:
        return self.store_dir / ALIAS_DIR / f"{check_collection_name(name)}.json"

    def _folder(self, name: str, version: str) -> Path:
        return self.store_dir / physical_name(name, version)

    def _read_alias(self, name: str) -> str | None:
        try:
            record = json.loads(self._alias_path(name).read_text())
            version = str(record["version"])
            version_number(version)
            return version
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"the alias record {self._alias_path(name)} is unreadable ({exc}); "
                             f"point it at a version again with `{next_command(f'collections switch {name} VERSION')}`") from None

    def alias_stamp(self, name: str) -> tuple[int, int] | None:
        """A cheap token that changes whenever the alias record is replaced (inode, mtime)."""
        try:
            stat = self._alias_path(name).stat()
        except FileNotFoundError:
            return None
        return stat.st_ino, stat.st_mtime_ns

    def _is_collection_folder(self, folder: Path) -> bool:
        return folder.is_dir() and ((folder / _META_FILE).exists() or (folder / _SHARD_DIR).is_dir()
                                    or (folder / VERSION_FILE).exists())

    def names(self) -> list[str]:
        found: set[str] = set()
        alias_dir = self.store_dir / ALIAS_DIR
        if alias_dir.is_dir():
            found.update(p.stem for p in alias_dir.glob("*.json") if not p.name.startswith("."))
        if self.store_dir.is_dir():
            for folder in self.store_dir.iterdir():
                if not folder.name.startswith(".") and self._is_collection_folder(folder):
                    found.add(split_physical(folder.name)[0])
        return sorted(found)

    def versions(self, name: str) -> list[str]:
        found = []
        if self._is_collection_folder(self.store_dir / name) and split_physical(name) == (name, LEGACY_VERSION):
            found.append(LEGACY_VERSION)
        if self.store_dir.is_dir():
            for folder in self.store_dir.glob(f"{name}__v*"):
                head, version = split_physical(folder.name)
                if head == name and version != LEGACY_VERSION and self._is_collection_folder(folder):
                    found.append(version)
        return sorted(found, key=version_number)

    def live_version(self, name: str) -> str | None:
        aliased = self._read_alias(name)
        if aliased is not None:
            return aliased
        return LEGACY_VERSION if LEGACY_VERSION in self.versions(name) else None

    # --- versions ------------------------------------------------------------------------
    def create_version(self, name: str, meta: VersionMeta, taken: Iterable[str] = ()) -> str:
        check_name(name)
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self._clear_dropped()  # a new version needs the space
        numbers = [version_number(v) for v in (*self.versions(name), *taken)]
        aliased = self._read_alias(name)
        if aliased is not None:
            numbers.append(version_number(aliased))
        number = max(numbers, default=0) + 1
        while True:  # mkdir is the reservation: two creators never get the same version
            version = f"v{number}"
            try:
                self._folder(name, version).mkdir()
                break
            except FileExistsError:
                number += 1
        stamped = stamped_for_write(meta if meta.created_at else replace(meta, created_at=_now()))
        durable_write_json(self._folder(name, version) / VERSION_FILE, stamped.to_dict())
        return version

    def open_version(self, name: str, version: str) -> VectorStore:
        from dermground.platform.store.edge import EdgeStore

        return EdgeStore(self._folder(name, version), physical_name(name, version), hnsw_ef=self.hnsw_ef,
                         index_min_points=self.index_min_points)

    def read_meta(self, name: str, version: str) -> VersionMeta:
        folder = self._folder(name, version)
        try:
            return VersionMeta.from_dict(json.loads((folder / VERSION_FILE).read_text()))
        except (OSError, ValueError):
            created = None
            if (folder / _META_FILE).exists():
                created = datetime.fromtimestamp((folder / _META_FILE).stat().st_mtime, UTC).isoformat(
                    timespec="seconds")
            return VersionMeta(created_at=created)

    def write_meta(self, name: str, version: str, meta: VersionMeta) -> None:
        self.require_version(name, version)
        if meta.created_at is None:  # the creation time stays what create_version recorded
            meta = replace(meta, created_at=self.read_meta(name, version).created_at or _now())
        durable_write_json(self._folder(name, version) / VERSION_FILE, stamped_for_write(meta).to_dict())

    def _held(self, name: str, version: str) -> bool:
        """Whether a live process holds the version's store (its owner file names one), without opening it."""
        try:
            owner = json.loads((self._folder(name, version) / _OWNER_FILE).read_text())
        except (OSError, ValueError):
            return False
        return isinstance(owner, dict) and process_alive(owner) is not False

    def holder(self, name: str, version: str) -> Mapping[str, object] | None:
        try:
            owner = json.loads((self._folder(name, version) / _OWNER_FILE).read_text())
        except (OSError, ValueError):
            return None
        return owner if isinstance(owner, dict) and process_alive(owner) is not False else None

    def _spec(self, name: str, version: str) -> CollectionSpec | None:
        path = self._folder(name, version) / _META_FILE
        try:
            return CollectionSpec.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"{path} is unreadable ({exc})") from None

    @contextmanager
    def _name_lock(self, name: str) -> Iterator[None]:
        """Switches and drops of one collection name, one at a time (across processes): a drop
        that checked a version was not live must not remove it while another admin's switch makes
        it live. Held for the check and the alias write or the move, never for the delete."""
        folder = self.store_dir / ALIAS_DIR
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f".{check_collection_name(name)}.lock", "a", encoding="utf-8") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # the other's step takes a moment: wait for it
            yield

    def switch(self, name: str, version: str) -> str | None:
        with self._name_lock(name):
            self.check_switchable(name, version)
            try:
                before = self.live_version(name)
            except StoreError:  # an unreadable record, whose error names this switch as the repair
                before = None
            durable_write_json(self._alias_path(name), {"name": name, "version": version,
                                                        "physical": physical_name(name, version),
                                                        "switched_at": _now(), "previous": before},
                               crash_point="alias_written")
        return before

    def drop(self, name: str, version: str, *, builder_gone: bool = False) -> None:
        # builder_gone is not needed here: a builder on this machine can be checked (its stamp), and
        # one elsewhere holds the version's folder lock while it has it open.
        with self._name_lock(name):
            self.require_version(name, version)
            if self.live_version(name) == version:
                raise VersionError(f"version {version} is the live version of {name!r}: switch {name!r} to another "
                                   f"version first (`{next_command(f'collections switch {name} VERSION')}`; "
                                   f"`{next_command(f'collections list {name}')}` shows its versions)")
            # A builder does not hold the folder all along (an ingest copying the served version into
            # it, a restore writing the catalog rows after loading the points): its stamp decides.
            refusal = building_elsewhere(name, version, self.read_meta(name, version), builder_gone=True)
            if refusal:
                raise VersionError(refusal)
            folder = self._folder(name, version)
            self._wait_until_let_go(name, version)
            trash = self.store_dir / f"{_DROPPED}{folder.name}-{uuid.uuid4().hex[:8]}"
            os.replace(folder, trash)  # gone from listings at once; the delete below may take a while
        maybe_crash("drop_moved")
        shutil.rmtree(trash, ignore_errors=True)
        self._clear_dropped()

    def _wait_until_let_go(self, name: str, version: str) -> None:
        """Return once no process holds the version; StoreLockedError naming the holder after
        DROP_WAIT_S. A `serve` lets go of the version it served before a switch within a second
        of its last request on it (store/live.py): a drop right after the switch waits for that."""
        meta = self.read_meta(name, version)
        building = meta.state != READY and process_alive(meta.builder) is not False  # it will not let go soon
        deadline = time.monotonic() + (0.0 if building else DROP_WAIT_S)
        while True:
            try:
                with self.open_version(name, version):
                    return
            except StoreLockedError as exc:
                holder = str(exc).split(" is in use by ", 1)[-1].split(". Stop", 1)[0]
            except StoreError:
                owner = self.holder(name, version)
                if owner is None:
                    return  # the engine cannot load it (damaged files) and no process has it open
                holder = f"pid {owner.get('pid', '?')} ({owner.get('command', '?')})"
            if time.monotonic() >= deadline:
                owner = self.holder(name, version)
                if owner is not None and owner.get("brief"):  # `snapshot create`, `check`: never to be stopped
                    raise StoreLockedError(
                        f"version {version} of {name!r} is still open in {holder}: `dermground {owner['brief']}` "
                        "reads it for a moment and finishes on its own: run the drop again in a moment.") from None
                raise StoreLockedError(
                    f"version {version} of {name!r} is still open in {holder}. A `dermground serve` lets go of "
                    "the version it served before a switch once its requests on it have finished: run the drop "
                    "again in a moment. Any other process (an ingest or a restore building it): stop it "
                    "first.") from None
            time.sleep(0.2)

    def _read_alias_quietly(self, name: str) -> str | None:
        try:
            return self.live_version(name)
        except StoreError:
            return None

    def _clear_dropped(self) -> None:
        """Delete what drops killed mid-delete left: hidden from every listing, it would hold its
        disk space for good. (Another drop deleting its own at the same time does no harm.)"""
        if self.store_dir.is_dir():
            for trash in self.store_dir.glob(f"{_DROPPED}*"):
                shutil.rmtree(trash, ignore_errors=True)

    def info(self, name: str, version: str, held: Mapping[str, VectorStore] | None = None,
             count: bool = True) -> VersionInfo:
        physical = self.require_version(name, version)
        folder = self._folder(name, version)
        spec = self._spec(name, version)
        meta = self.read_meta(name, version)
        points, note = meta.points, None
        if held and physical in held:
            points = held[physical].count() if held[physical].describe() is not None else 0
        elif spec is None:
            points = 0
        elif count:
            try:
                with self.open_version(name, version) as store:
                    points = store.count() if store.describe() is not None else 0
            except StoreLockedError as exc:
                note = "in use by " + str(exc).split(" is in use by ", 1)[-1].split(". Stop", 1)[0]
            except StoreError as exc:  # files the engine cannot load (a damaged copy): listed, not fatal to the list
                note = (f"{UNOPENABLE}: {str(exc).splitlines()[0]}; "
                        + (f"drop it with `{next_command(f'collections drop {name} {version}')}`"
                           if self._read_alias_quietly(name) != version else "switch to another version first"))
        if note is None and not (held and physical in held) and not self._held(name, version):
            note = interrupted_note(name, version, meta)  # a building version whose process is gone
        try:
            live = self.live_version(name) == version
        except StoreError:  # an unreadable alias record: `list` says so; a switch (which needs this) repairs it
            live = False
        return VersionInfo(name=name, version=version, physical=physical, live=live,
                           meta=meta, spec=spec, points=points, size_bytes=disk_usage(folder), note=note)

    def copy_points(self, name: str, source: str, target: str, page_size: int = 512) -> int:
        """Seed version `target` (created, still empty) with a copy of `source`'s folder.

        Works while another process (`serve`) holds `source`: the engine's files are read through
        the page cache, its write-ahead log replays on open. Returns the points copied.
        """
        src, dst = self._folder(name, source), self._folder(name, target)
        if (dst / _SHARD_DIR).exists():
            raise VersionError(f"version {target} of {name!r} already holds data; seed only a new version")
        try:
            for item in sorted(src.iterdir()):
                if item.name not in _SKIP_ON_COPY:
                    copy_sparse(item, dst / item.name)
        except (OSError, subprocess.CalledProcessError) as exc:  # a full disk, mostly
            detail = getattr(exc, "stderr", None) or b""
            detail = detail.decode(errors="replace").strip() if isinstance(detail, bytes) else str(detail)
            raise StoreError(f"copying version {source} of {name!r} into {target} failed ({detail or exc}); "
                             f"free space under {self.store_dir} and run it again") from None
        shutil.rmtree(dst / _SHARD_DIR / "temp_segments", ignore_errors=True)
        try:
            with self.open_version(name, target) as store:
                return store.count() if store.describe() is not None else 0
        except StoreLockedError:
            raise
        except StoreError as exc:  # the engine writes files as it opens the copy: a full disk, mostly
            raise StoreError(f"opening the copy {target} of version {source} of {name!r} failed ({exc}); free space "
                             f"under {self.store_dir} and run it again") from None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


__all__ = ["ALIAS_DIR", "EdgeCollections", "copy_sparse", "disk_usage", "durable_write_json"]
