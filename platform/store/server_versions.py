"""ServerCollections: versions and aliases on a Qdrant server (or qdrant-client's local modes).

A version is a collection `<name>__vN`; the name is a Qdrant alias, switched with one
`update_collection_aliases` call (delete + create in one request: atomic on the server). The
version's meta lives in the collection's metadata next to the CollectionSpec.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import UTC, datetime

from qdrant_client import QdrantClient, models

from dermground.platform.names import InvalidNameError, check_collection_name
from dermground.platform.next_step import next_command
from dermground.platform.store.base import StoreError, VectorStore
from dermground.platform.store.server import CREATOR_KEY, ServerStore
from dermground.platform.store.versions import (
    BUILDING,
    LEGACY_VERSION,
    Collections,
    VersionError,
    check_name,
    VersionInfo,
    VersionMeta,
    building_elsewhere,
    interrupted_note,
    physical_name,
    split_physical,
    stamped_for_write,
    version_number,
)

VERSION_METADATA_KEY = "dermground_version"


class ServerCollections(Collections):
    """Versions and aliases of every collection on one Qdrant (all stores share this client)."""

    fresh_version_is_bare = False

    def __init__(self, client: QdrantClient, *, owns_client: bool = True, **create_options: object) -> None:
        self._client = client
        self._owns_client = owns_client
        self._create_options = create_options  # shards, replication, on_disk, quantization, max_request_mb
        self._pending: dict[tuple[str, str], VersionMeta] = {}  # created, not yet on the server
        # Marks the collections of the versions this instance creates: another process that reserved
        # the same number at the same moment finds the collection is not its own (ServerStore).
        self._token = uuid.uuid4().hex

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    # --- naming --------------------------------------------------------------------------
    # A shared server holds other applications' collections and aliases too, named as Qdrant allows
    # ("rag.docs", "chat history"): only names dermground could have made are its collections.
    def _aliases(self) -> dict[str, str]:
        return {a.alias_name: a.collection_name for a in self._client.get_aliases().aliases
                if _could_be_ours(a.alias_name)}

    def _collections(self) -> list[str]:
        return [c.name for c in self._client.get_collections().collections if _could_be_ours(c.name)]

    def names(self) -> list[str]:
        return sorted(set(self._aliases()) | {split_physical(c)[0] for c in self._collections()})

    def versions(self, name: str) -> list[str]:
        found = [split_physical(c)[1] for c in self._collections() if split_physical(c)[0] == name]
        return sorted(found, key=version_number)

    def live_version(self, name: str) -> str | None:
        target = self._aliases().get(name)
        if target is not None:
            return split_physical(target)[1]
        return LEGACY_VERSION if self._client.collection_exists(name) else None

    # --- versions ------------------------------------------------------------------------
    def create_version(self, name: str, meta: VersionMeta, taken: Iterable[str] = ()) -> str:
        check_name(name)
        numbers = [version_number(v) for v in (*self.versions(name), *taken)]
        numbers += [version_number(v) for (n, v) in self._pending if n == name]
        version = f"v{max(numbers, default=0) + 1}"
        # The collection appears with its spec (ensure_collection); the meta goes on it then.
        self._pending[(name, version)] = stamped_for_write(meta if meta.created_at else replace(meta, created_at=_now()))
        return version

    def open_version(self, name: str, version: str) -> VectorStore:
        # A version created here and not yet on the server gets its record in the request that
        # creates its collection: a process killed right after can never leave one that reads as ready.
        pending = self._pending.get((name, version))
        record = {VERSION_METADATA_KEY: pending.to_dict(), CREATOR_KEY: self._token} if pending is not None else None
        return ServerStore(physical_name(name, version), client=self._client, creation_metadata=record,  # type: ignore[arg-type]
                           **self._create_options)

    def read_meta(self, name: str, version: str) -> VersionMeta:
        physical = physical_name(name, version)
        pending = self._pending.get((name, version))
        if self._client.collection_exists(physical):
            metadata = self._client.get_collection(physical).config.metadata or {}
            if VERSION_METADATA_KEY in metadata:
                return VersionMeta.from_dict(metadata[VERSION_METADATA_KEY])
            if pending is None and version != LEGACY_VERSION:
                # A version collection without its record was created outside create_version, or
                # by a build killed before the record existed (older releases): never "ready".
                return VersionMeta(state=BUILDING)
        return pending or VersionMeta()

    def write_meta(self, name: str, version: str, meta: VersionMeta) -> None:
        physical = self.require_version(name, version)
        if meta.created_at is None:  # the creation time stays what create_version recorded
            meta = replace(meta, created_at=self.read_meta(name, version).created_at or _now())
        self._client.update_collection(physical, metadata={VERSION_METADATA_KEY: stamped_for_write(meta).to_dict()})
        self._pending.pop((name, version), None)

    def switch(self, name: str, version: str) -> str | None:
        self.check_switchable(name, version)
        before = self.live_version(name)
        if before == LEGACY_VERSION and version != LEGACY_VERSION:
            raise VersionError(
                f"{name!r} is a plain collection on this Qdrant (v0), and a Qdrant alias cannot share a collection's "
                f"name. Snapshot it (`{next_command(f'snapshot create --collection {name}')}`), "
                "drop it with Qdrant's own "
                f"tools, then switch: `{next_command(f'collections switch {name} {version}')}`.")
        operations: list[models.AliasOperations] = []
        if name in self._aliases():
            operations.append(models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=name)))
        operations.append(models.CreateAliasOperation(create_alias=models.CreateAlias(
            collection_name=physical_name(name, version), alias_name=name)))
        self._client.update_collection_aliases(operations)  # one request: the server applies it atomically
        return before

    def drop(self, name: str, version: str, *, builder_gone: bool = False) -> None:
        physical = self.require_version(name, version)
        if self.live_version(name) == version:
            raise VersionError(f"version {version} is the live version of {name!r}: switch {name!r} to another "
                               f"version first (`{next_command(f'collections switch {name} VERSION')}`; "
                               f"`{next_command(f'collections list {name}')}` shows its versions)")
        # A server has no lock a builder holds (the embedded store's folder lock): its stamp decides.
        refusal = building_elsewhere(name, version, self.read_meta(name, version), builder_gone)
        if refusal:
            raise VersionError(refusal)
        self._client.delete_collection(physical)

    def info(self, name: str, version: str, held: Mapping[str, VectorStore] | None = None,
             count: bool = True) -> VersionInfo:
        physical = self.require_version(name, version)
        spec, points, note = None, None, None
        store = held.get(physical) if held else None
        try:
            if store is not None:
                spec = store.describe()
                points = store.count() if spec is not None else 0
            else:
                with self.open_version(name, version) as opened:
                    spec = opened.describe()
                    points = opened.count() if spec is not None else 0  # a server counts without locking
        except StoreError as exc:
            note = str(exc)
        meta = self.read_meta(name, version)
        # A server shows no holder: a version resumed by another process after its builder died
        # reads as interrupted here until that process marks it ready.
        note = note or interrupted_note(name, version, meta)
        return VersionInfo(name=name, version=version, physical=physical, live=self.live_version(name) == version,
                           meta=meta, spec=spec, points=points, size_bytes=None, note=note)


def _could_be_ours(physical: str) -> bool:
    """Whether a collection or alias name is one dermground could have made (a valid collection name,
    bare or with its version suffix)."""
    try:
        check_collection_name(split_physical(physical)[0])
    except InvalidNameError:
        return False
    return True


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


__all__ = ["ServerCollections", "VERSION_METADATA_KEY"]
