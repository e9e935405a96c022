"""Snapshot and restore of a versioned collection: its points (store) and its rows (catalog).

A restore never touches the live version: the snapshot is unpacked and verified in full, loaded
into a new version, checked again there, given the snapshot's catalog rows, marked ready, and only
then does one alias switch make it live. The replaced version stays until `collections drop`.
"""

from __future__ import annotations

import shlex
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dermground.platform.catalog import Catalog
from dermground.platform.catalog_copy import (
    collection_files,
    install_files,
    read_files,
    versions_in_catalog,
    write_files,
)
from dermground.platform.crash_points import maybe_crash
from dermground.platform.ingest_activity import active_ingests, runs_of
from dermground.platform.next_step import next_command
from dermground.platform.settings import Settings
from dermground.platform.store import StoreError, StoreLockedError, open_collections
from dermground.platform.store.brief_hold import held_briefly
from dermground.platform.store.indexing import build_index_if_large
from dermground.platform.store.snapshots import VerifiedSnapshot, load_snapshot, open_snapshot, write_snapshot
from dermground.platform.store.versions import (
    BUILDING,
    READY,
    VersionError,
    VersionInfo,
    VersionMeta,
    VersionTakenError,
    interrupted_note,
    split_physical,
)

Progress = Callable[[int], None]

# The catalog query that shows whether an ingest is still running.
INGEST_RUNS_QUERY = 'sql "SELECT * FROM ingest_runs"'


def snapshot_dir(settings: Settings, name: str) -> Path:
    """Where snapshots of a collection are written and listed."""
    return settings.home / "snapshots" / name


def create_snapshot(settings: Settings, name: str, version: str | None = None,
                    progress: Progress | None = None) -> Path:
    """Export a version (default: the live one) with its catalog rows; returns the tar."""
    with held_briefly("snapshot create"), open_collections(settings) as collections:
        version = version or collections.live_version(name)
        if version is None:
            raise VersionError(f"collection {name!r} does not exist; see `{next_command('collections list')}`")
        physical = collections.require_version(name, version)
        meta = collections.read_meta(name, version)
        if meta.state != READY:  # a restore marks what it loads ready: never a version `switch` would refuse
            raise VersionError(f"version {version} of {name!r} is still {meta.state!r} (an ingest or restore did not "
                               "finish), and its snapshot would restore as a finished version: "
                               + (interrupted_note(name, version, meta) or "finish it first, or drop it"))
        catalog = Catalog(settings.catalog_dir)
        runs_before = runs_of(catalog, physical)
        _refuse_while_ingesting(settings, catalog, name, version, physical)
        with tempfile.TemporaryDirectory(prefix=".snapshot-rows-") as tmp:
            attachments = write_files(Path(tmp), collection_files(catalog, physical))
            label, info = f"{name}-{version}", {"name": name, "version": version, **meta.to_dict()}
            written: Path | None = None
            try:
                with collections.open_version(name, version) as store:
                    written = write_snapshot(store, snapshot_dir(settings, name), label, progress=progress,
                                             attachments=attachments, meta=info)
            except StoreLockedError:
                pass  # served: export a copy of it instead (below)
            if written is None:
                # The embedded engine has one opener: copy the held version (cheap: sparse files stay
                # sparse), export the copy, drop it.
                scratch = collections.create_version(name, VersionMeta(source=f"snapshot of {version}",
                                                                       state=BUILDING))
                try:
                    collections.copy_points(name, version, scratch)
                    with collections.open_version(name, scratch) as store:
                        written = write_snapshot(store, snapshot_dir(settings, name), label, progress=progress,
                                                 attachments=attachments, meta=info)
                finally:
                    collections.drop(name, scratch)
        assert written is not None
        if runs_of(catalog, physical) != runs_before:
            # An ingest began writing the version while it was exported (a server takes writers
            # beside readers): the points and the catalog rows may be of different moments.
            written.unlink(missing_ok=True)
            _refuse_while_ingesting(settings, catalog, name, version, physical)
            raise VersionError(f"an ingest wrote version {version} of {name!r} while its snapshot was taken, so the "
                               "snapshot was discarded (its points and catalog rows could disagree): run "
                               f"`{next_command(f'snapshot create --collection {name}')}` again")
        return written


def _refuse_while_ingesting(settings: Settings, catalog: Catalog, name: str, version: str, physical: str) -> None:
    """VersionError naming the ingest that is writing the version: a snapshot now would carry the
    points of a partition whose catalog rows and ledger row are not written yet, and a restore of it
    would not pass `dermground check`."""
    writers = active_ingests(catalog, settings.home, physical)
    if writers:
        raise VersionError(
            f"version {version} of {name!r} is being written by {'; '.join(w.describe() for w in writers)}. A "
            "snapshot now could hold points whose catalog rows are not written yet, and its restore would not pass "
            f"`{next_command(f'check --collection {name}')}`. Run "
            f"`{next_command(f'snapshot create --collection {name}')}` again once that ingest has finished (it says "
            f"\"ingested N, ...\"; `{next_command(INGEST_RUNS_QUERY)}` shows its status).")


def switch_collection(settings: Settings, name: str, version: str) -> str | None:
    """`collections switch`: point `name` at `version`; returns the version live before. Refused
    (VersionError naming the run) while an ingest writes that version (`ingest --version vN`): made
    live then, it would serve a version still missing images and catalog rows."""
    with open_collections(settings) as collections:
        physical = collections.require_version(name, version)
        writers = active_ingests(Catalog(settings.catalog_dir), settings.home, physical)
        if writers and collections.live_version(name) != version:
            raise VersionError(
                f"version {version} of {name!r} is being written by {'; '.join(w.describe() for w in writers)}: "
                "made live now, it would serve a version still missing images and catalog rows. Switch once that "
                "ingest has finished (it says \"ingested N, ...\"; "
                f"`{next_command('sql ' + shlex.quote('SELECT * FROM ingest_runs'))}` shows its status).")
        return collections.switch(name, version)


@dataclass
class RestorePlan:
    """A verified snapshot and the live version it would replace (for the confirmation)."""

    name: str
    snapshot: VerifiedSnapshot
    live: VersionInfo | None

    def source_name(self) -> str | None:
        """The collection the snapshot was taken of (None when its manifest does not say)."""
        meta = self.snapshot.manifest.get("meta") or {}
        physical = self.snapshot.manifest.get("collection")
        name = meta.get("name") or (split_physical(str(physical))[0] if physical else None)
        return str(name) if name else None

    def describe(self) -> str:
        snap = self.snapshot
        meta = snap.manifest.get("meta") or {}
        holds = (f"{snap.archive.name} holds {snap.points} points of model {snap.spec.fingerprint} "
                 f"(adapter {meta.get('adapter') or 'none'}; version {meta.get('version', '?')} of "
                 f"{meta.get('name', snap.manifest.get('collection'))!r}, taken {snap.manifest.get('created_at')})")
        if self.live is None:
            return f"{holds}. {self.name!r} does not exist yet: the restore creates it."
        live = self.live
        points = "an unknown number of" if live.points is None else live.points
        return (f"{holds}.\nIt replaces the live version {live.version} of {self.name!r}: {points} points of model "
                f"{live.spec.fingerprint if live.spec else '?'} (adapter {live.meta.adapter or 'none'}). "
                f"{live.version} is kept until `{next_command(f'collections drop {self.name} {live.version}')}`.")


def plan_restore(settings: Settings, name: str, archive: Path) -> RestorePlan:
    """Unpack and verify the snapshot (SnapshotError when it does not verify); nothing is changed."""
    snapshot = open_snapshot(Path(archive), settings.home / "snapshots" / ".staging")
    try:
        with open_collections(settings) as collections:
            live = collections.live_version(name)
            info = collections.info(name, live) if live is not None else None
        return RestorePlan(name, snapshot, info)
    except BaseException:
        snapshot.cleanup()
        raise


@dataclass(frozen=True)
class RestoreResult:
    version: str
    points: int
    catalog_rows: int
    replaced: str | None


def restore_snapshot(settings: Settings, plan: RestorePlan, progress: Progress | None = None) -> RestoreResult:
    """Load a verified snapshot into a new version, give it the snapshot's catalog rows, switch."""
    snap = plan.snapshot
    meta = snap.manifest.get("meta") or {}
    try:
        with open_collections(settings) as collections:
            version = collections.create_version(plan.name, VersionMeta(
                source=f"restore {snap.archive}", adapter=meta.get("adapter"), state=BUILDING),  # type: ignore[arg-type]
                taken=versions_in_catalog(Catalog(settings.catalog_dir), plan.name))
            try:
                with collections.open_version(plan.name, version) as store:
                    store.ensure_collection(snap.spec)
                    physical = store.collection
                    # On a server the version's meta can only be written once the collection exists.
                    collections.write_meta(plan.name, version, collections.read_meta(plan.name, version))
                    points = load_snapshot(snap, store, progress)
                    # The embedded engine indexes only when asked: as an ingest leaves a large version.
                    build_index_if_large(store, settings.store_index_min_points)
                maybe_crash("restore_loaded")
                rows = install_files(Catalog(settings.catalog_dir), physical, read_files(snap.attachments))
                maybe_crash("restore_catalogued")
                built = collections.read_meta(plan.name, version)
                collections.write_meta(plan.name, version, VersionMeta(built.created_at, built.source, built.adapter,
                                                                       READY, points))
            except VersionTakenError:
                raise  # the number was taken by another process's build: that version is not ours to drop
            except (StoreError, OSError, ValueError) as exc:  # a full disk, the engine, catalog rows that do not fit
                raise StoreError(f"{exc}\nThe restore stopped: version {version} of {plan.name!r} is left unfinished and "
                                 "unswitched; drop it with "
                                 f"`{next_command(f'collections drop {plan.name} {version}')}` and run "
                                 "the restore again (the snapshot is untouched).") from exc
            replaced = collections.switch(plan.name, version)
        return RestoreResult(version, points, rows, replaced)
    finally:
        snap.cleanup()


__all__ = ["RestorePlan", "RestoreResult", "create_snapshot", "plan_restore", "restore_snapshot", "snapshot_dir",
           "switch_collection"]
