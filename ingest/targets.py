"""Which physical version an ingest writes, opened before any image is embedded.

- a new collection: its first version (v0 under the bare name on the embedded store, v1 behind
  an alias on a server), live at once, recording its source and adapter like any other version;
- `--new-version`: a new version beside the live one, left for `collections switch` (the usual path
  after training a new adapter); live at the end only when nothing else is;
- `--version vN`: that version (to resume an interrupted `--new-version`);
- otherwise the live version, in place. When another process holds it (`serve` on the embedded
  store), the ingest writes a new version seeded with a copy of the live one's points and catalog
  rows, adds the new images (the copied partitions are skipped by the ledger), and switches to it
  when complete: the running API follows the alias, nobody has to stop it. On the embedded store
  an ingest that writes the live version or a copy of it holds the collection's ingest lock
  (ingest/collection_lock.py): a second such ingest is refused instead of hiding the first's images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from dermground.ingest.collection_lock import CollectionLock, hold_collection_lock
from dermground.platform.catalog import Catalog
from dermground.platform.catalog_copy import copy_collection_rows, versions_in_catalog
from dermground.platform.next_step import next_command
from dermground.platform.store import CollectionSpec, StoreLockedError, VectorStore, open_collections
from dermground.platform.store.versions import (
    BUILDING,
    LEGACY_VERSION,
    READY,
    Collections,
    VersionMeta,
    physical_name,
    process_alive,
)
from dermground.platform.settings import Settings


@dataclass
class IngestTarget:
    """The open store of the version being written and what to do with the alias afterwards."""

    collections: Collections
    name: str
    version: str
    store: VectorStore
    switch_before: bool = False  # a new collection: live from the start
    switch_after: bool = False  # live once the run completes
    seeded_from: str | None = None
    lock: CollectionLock | None = None  # the collection's ingest lock, when this run writes the live version
    note: str | None = None  # set by finished() when the planned switch was not made, with the next step
    wrote_live: bool = False  # the version written was the live one when the run began
    # A new collection's v0 (embedded store): what to record once its folder holds the collection.
    # Without it v0 said "adapter none", and an API that followed a switch back to v0 (after an
    # ingest --new-version with another adapter) could not find the adapter its vectors need.
    record_on_start: VersionMeta | None = None

    @property
    def physical(self) -> str:
        return physical_name(self.name, self.version)

    def started(self) -> None:
        """Called once the collection exists in the version (ensure_collection)."""
        if self.record_on_start is not None:
            self.collections.write_meta(self.name, self.version, self.record_on_start)
            self.record_on_start = None
        if self.switch_before:
            self.collections.switch(self.name, self.version)

    def finished(self, points: int) -> str | None:
        """The run completed: mark the version ready, switch when planned; returns the version replaced."""
        meta = self.collections.read_meta(self.name, self.version)
        self.collections.write_meta(self.name, self.version, replace(meta, state=READY, points=points))
        live = self.collections.live_version(self.name)
        if self.switch_after and live != self.version:
            if self.seeded_from is not None and live != self.seeded_from:
                # Someone switched the name while we ran (a new adapter's version, a restore): keep theirs.
                self.note = (f"{self.name!r} was switched from {self.seeded_from} to {live} while this ingest ran, "
                             f"so it stays on {live}; the new images are in {self.version} (a copy of "
                             f"{self.seeded_from} plus them). Rerun this ingest to add them to {live}, or make "
                             f"{self.version} live with "
                             f"`{next_command(f'collections switch {self.name} {self.version}')}`.")
                return None
            return self.collections.switch(self.name, self.version)
        if self.wrote_live and live != self.version:
            # A switch or a restore while we wrote in place: the new images are not what is served.
            self.note = (f"{self.name!r} was switched from {self.version} to {live} while this ingest wrote "
                         f"{self.version}, so the new images are not in the live version. Rerun this ingest to "
                         f"add them to {live}, or switch back with "
                         f"`{next_command(f'collections switch {self.name} {self.version}')}`.")
        return None

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()
        self.collections.close()


def open_target(settings: Settings, name: str, catalog: Catalog, *, source: str, adapter: str | None,
                spec: CollectionSpec | None = None, new_version: bool = False, version: str | None = None,
                notify: Callable[[str], None] = lambda _: None) -> IngestTarget:
    """Choose and open the version to write (raises StoreLockedError when it is held elsewhere).

    `spec`: what the run will write; a held live version of another model is refused before
    anything is copied (SchemaMismatchError)."""
    collections = open_collections(settings)
    lock = None
    try:
        live = collections.live_version(name)
        writes_live = not new_version and (version is None or version == live)
        if writes_live and not settings.qdrant_url:  # a server takes two writers; the embedded store does not
            lock = hold_collection_lock(settings.home, name)
        target = _open(collections, name, catalog, source, adapter, spec, new_version, version, notify)
        target.lock = lock
        target.wrote_live = live is not None and target.version == live
        return target
    except BaseException:
        if lock is not None:
            lock.release()
        collections.close()
        raise


def _open(collections: Collections, name: str, catalog: Catalog, source: str, adapter: str | None,
          spec: CollectionSpec | None, new_version: bool, version: str | None,
          notify: Callable[[str], None]) -> IngestTarget:
    live = collections.live_version(name)
    building = VersionMeta(source=f"ingest {source}", adapter=adapter, state=BUILDING)
    if version is not None:
        collections.require_version(name, version)
        store = collections.open_version(name, version)  # held elsewhere: StoreLockedError, nothing changed
        meta = collections.read_meta(name, version)
        if meta.state == BUILDING:  # resuming an interrupted build: it names this process from now on
            collections.write_meta(name, version, replace(meta, builder=None))
        return IngestTarget(collections, name, version, store, switch_after=live is None)
    # A dropped version's catalog rows stay: a new version never takes its number.
    taken = versions_in_catalog(catalog, name)
    if new_version:
        created = collections.create_version(name, building, taken)
        notify(f"building version {created} of {name!r} beside the live version {live or '(none)'}")
        return IngestTarget(collections, name, created, collections.open_version(name, created),
                            switch_after=live is None)
    if live is None:
        first_meta = replace(building, state=READY, created_at=datetime.now(UTC).isoformat(timespec="seconds"))
        if collections.fresh_version_is_bare:
            return IngestTarget(collections, name, LEGACY_VERSION, collections.open_version(name, LEGACY_VERSION),
                                record_on_start=first_meta)
        first = collections.create_version(name, first_meta, taken)
        return IngestTarget(collections, name, first, collections.open_version(name, first), switch_before=True)
    seeded = replace(building, source=f"{live} + ingest {source}")
    resumed = _interrupted_copy(collections, name, seeded, spec)
    if resumed is not None:
        # A rerun after a kill: carry on in the copy the killed run was filling (its committed
        # partitions are skipped by the ledger) instead of copying and embedding everything again,
        # also when `serve` has let go of the live version since (restarted, stopped).
        collections.write_meta(name, resumed, replace(collections.read_meta(name, resumed), builder=None))
        notify(f"Resuming version {resumed}, the copy of {live} an interrupted ingest of the same data was "
               f"filling; {name!r} switches to it when the ingest completes.")
        return IngestTarget(collections, name, resumed, collections.open_version(name, resumed),
                            switch_after=True, seeded_from=live)
    try:
        return IngestTarget(collections, name, live, collections.open_version(name, live))
    except StoreLockedError as exc:
        notify(str(exc).split(". Stop", 1)[0] + ".")
        live_spec = collections.info(name, live, count=False).spec
        if spec is not None and live_spec is not None:
            spec.check_compatible(live_spec, name)  # another model: --new-version, nothing copied
        created = collections.create_version(name, seeded, taken)
        notify(f"Ingesting into a new version {created} seeded with a copy of {live}; {name!r} switches "
               f"to it when the ingest completes (the server follows; {live} stays until "
               f"`{next_command(f'collections drop {name} {live}')}`).")
        try:
            copied = collections.copy_points(name, live, created)
            copy_collection_rows(catalog, physical_name(name, live), physical_name(name, created))
            collections.write_meta(name, created, replace(collections.read_meta(name, created), seed_copied=copied))
            notify(f"copied {copied} points of {live} into {created}")
            return IngestTarget(collections, name, created, collections.open_version(name, created),
                                switch_after=True, seeded_from=live)
        except BaseException:
            notify(f"seeding {created} failed; it is left unswitched (drop it with "
                   f"`{next_command(f'collections drop {name} {created}')}`)")
            raise


def _interrupted_copy(collections: Collections, name: str, seeded: VersionMeta,
                      spec: CollectionSpec | None) -> str | None:
    """The newest version an ingest like this one (same live version copied, same data folder and
    adapter) was filling when its process died, once its copy was complete; None if there is none."""
    for version in reversed(collections.versions(name)):
        meta = collections.read_meta(name, version)
        if (meta.state != BUILDING or meta.seed_copied is None or meta.source != seeded.source
                or meta.adapter != seeded.adapter or process_alive(meta.builder) is not False):
            continue
        found = collections.info(name, version, count=False).spec
        if spec is None or found is None or found.fingerprint == spec.fingerprint:
            return version
    return None


__all__ = ["IngestTarget", "open_target"]
