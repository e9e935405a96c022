"""Versioned collections: a collection name is an alias of one physical version.

Clients (search, the API, `check`) address the name; a re-index or a restore writes a new physical
version beside the live one, and one atomic alias operation switches every reader over. An old
version stays until `dermground collections drop` removes it. Physical names are
`<name>__v<N>`; `v0` is a collection stored under the bare name: a new collection's first version on
the embedded store (a server starts at v1: an alias cannot share a collection's name), a collection
made before versions existed, or one made by code that opens a store directly. A switch can leave
it like any other version.

Backends: store/edge_versions.py (an alias record file the embedded backend resolves) and
store/server_versions.py (Qdrant's own aliases). Both follow this interface and one contract suite
(tests/test_collection_versions.py).
"""

from __future__ import annotations

import abc
import os
import re
import shlex
import socket
import sys
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from types import TracebackType

from dermground.platform.names import check_collection_name
from dermground.platform.next_step import next_command
from dermground.platform.processes import pid_alive, process_start
from dermground.platform.store.base import CollectionSpec, StoreError, VectorStore

VERSION_SEPARATOR = "__"
LEGACY_VERSION = "v0"
_VERSION = re.compile(r"^v(\d{1,9})$")
# The source of a version an ingest seeds with a copy of the served one: "v2 + ingest FOLDER".
_SEEDED_SOURCE = re.compile(r"^(v\d{1,9}) \+ ingest ")

# Version states: an ingest or restore "building" it, or "ready" (complete and verified).
BUILDING, READY = "building", "ready"


class VersionError(StoreError):
    """A version operation cannot be done (unknown version, the live one, not ready, ...)."""


class VersionTakenError(VersionError):
    """The version number this process reserved was taken by another process's build at the same
    time (a server has no atomic reservation step): that version is the other process's."""


def version_number(version: str) -> int:
    """The N of "vN" (ValueError for anything else)."""
    match = _VERSION.match(version)
    if not match:
        raise ValueError(f"a version is v<number> (v1, v2, ...), got {version!r}")
    return int(match.group(1))


def physical_name(name: str, version: str) -> str:
    """The physical collection of a version: `<name>__vN`, or the bare name for v0."""
    check_collection_name(name)  # the result becomes a folder or a URL segment
    return name if version_number(version) == 0 else f"{name}{VERSION_SEPARATOR}{version}"


def split_physical(physical: str) -> tuple[str, str]:
    """(name, version) of a physical collection name; a bare name is (name, "v0")."""
    head, sep, tail = physical.rpartition(VERSION_SEPARATOR)
    if sep and head and _VERSION.match(tail) and version_number(tail) > 0:
        return head, tail
    return physical, LEGACY_VERSION


def check_name(name: str) -> str:
    """A collection name that versions can be made of (`x__v3` would read as version 3 of `x`)."""
    if split_physical(name)[1] != LEGACY_VERSION:
        raise VersionError(f"collection name {name!r} ends like a version (__v<N>), which is reserved for the "
                           "versions of a collection; choose another name")
    return name


@dataclass(frozen=True)
class VersionMeta:
    """What a version was built from; kept with the version (a file or the collection metadata)."""

    created_at: str | None = None  # ISO-8601 UTC
    source: str | None = None  # "ingest <data folder>", "restore <snapshot>", "copy of v2 + ingest ..."
    adapter: str | None = None  # the LoRA adapter folder of the model, None for the base model
    state: str = READY
    points: int | None = None  # counted when the version was marked ready
    # The process that began building it (pid, host, start, command), while it is "building":
    # lets a listing tell a build in progress from one whose process was killed.
    builder: Mapping[str, object] | None = None
    # Points copied into it from the live version it was seeded from (an ingest while `serve` holds
    # the live one), recorded once the copy and its catalog rows are complete: only such a version
    # may be resumed by a rerun of the ingest that was killed while writing it.
    seed_copied: int | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> VersionMeta:
        fields = ("created_at", "source", "adapter", "state", "points", "builder", "seed_copied")
        known = {k: data[k] for k in fields if k in data}
        if not isinstance(known.get("builder"), Mapping):
            known.pop("builder", None)
        return cls(**known)  # type: ignore[arg-type]


def process_stamp() -> dict[str, object]:
    """This process, as a version's `builder` records it."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": process_start(os.getpid()),
            "command": " ".join(sys.argv)[:300]}


def process_alive(stamp: Mapping[str, object] | None) -> bool | None:
    """Whether the process a stamp names still runs: None when that cannot be told (no stamp,
    another host), False when its pid is gone or now belongs to a process started later."""
    if not stamp or stamp.get("host") != socket.gethostname() or not isinstance(stamp.get("pid"), int):
        return None
    pid = int(stamp["pid"])  # type: ignore[arg-type]
    if not pid_alive(pid):
        return False
    started = stamp.get("started")
    return started is None or process_start(pid) in (None, started)


def stamped_for_write(meta: VersionMeta) -> VersionMeta:
    """The meta a backend stores: a building version names the process building it (this one,
    unless recorded already); a ready one names none."""
    if meta.state == BUILDING and not meta.builder:
        return replace(meta, builder=process_stamp())
    if meta.state != BUILDING and meta.builder is not None:
        return replace(meta, builder=None)
    return meta


def building_elsewhere(name: str, version: str, meta: VersionMeta, builder_gone: bool) -> str | None:
    """Why `version` may not be dropped while another process may still build it (None: it may).

    A version this process builds (a scratch copy of `check` or `snapshot create`) or whose builder
    is known to be gone may go; one whose builder runs may not; one built on another host (a
    container beside this one, a Qdrant server shared by several machines) only on the admin's word.
    """
    builder = meta.builder or {}
    if meta.state == READY or not builder:
        return None
    if builder.get("host") == socket.gethostname() and builder.get("pid") == os.getpid():
        return None
    alive = process_alive(builder)
    if alive is False:
        return None
    who = f"pid {builder.get('pid')} on {builder.get('host')} (`{builder.get('command') or '?'}`)"
    if alive:
        return (f"version {version} of {name!r} is being built by {who}, which still runs: let it finish, or stop "
                "it, before dropping the version")
    if builder_gone:
        return None
    return (f"version {version} of {name!r} is still being built by {who}, a process this machine cannot check: "
            f"once it has stopped, drop the version with "
            f"`{next_command(f'collections drop {name} {version} --builder-gone')}`")


# How a listing notes a version the backend cannot open (damaged files): never switched to.
UNOPENABLE = "cannot be opened"

# The sources of the scratch copies `snapshot create` and `check` make of a version another process
# holds (the embedded engine has one opener); they are dropped when the command ends.
SCRATCH_SOURCES = ("snapshot of ", "check of ")


def is_scratch_in_use(meta: VersionMeta) -> bool:
    """Whether a version is a scratch copy whose command still runs: not a version of the collection
    to list. One left by a killed command is listed (with the drop to run: interrupted_note)."""
    return (meta.state == BUILDING and (meta.source or "").startswith(SCRATCH_SOURCES)
            and process_alive(meta.builder) is not False)


def resume_command(name: str, version: str | None, meta: VersionMeta) -> str:
    """The ingest that resumes an interrupted build: the data folder and adapter it was built
    from (its `source` is "ingest FOLDER" or "vN + ingest FOLDER"), as a command line to copy.
    version None: the same ingest again, into whatever is live (it finds the copy it was filling)."""
    _, found, folder = (meta.source or "").partition("ingest ")
    parts = ["ingest", "--data", shlex.quote(folder) if found and folder else "DIR"]
    if meta.adapter:
        parts += ["--adapter", shlex.quote(meta.adapter)]
    parts += ["--collection", name]
    return next_command(" ".join([*parts, "--version", version] if version else parts))


def interrupted_note(name: str, version: str, meta: VersionMeta) -> str | None:
    """For a version still "building" whose building process is gone: what happened and the next
    step. Nothing is deleted automatically: an interrupted ingest can be resumed into its version,
    and a careful admin decides what to drop."""
    if meta.state != BUILDING or process_alive(meta.builder) is not False:
        return None
    builder = meta.builder or {}
    source = meta.source or ""
    if source.startswith("restore "):
        step = (f"drop it with `{next_command(f'collections drop {name} {version}')}` and run the restore again "
                "(the snapshot is untouched)")
    elif source.startswith(SCRATCH_SOURCES):
        step = (f"a scratch copy left by `{'snapshot create' if source.startswith('snapshot') else 'check'}`: drop "
                f"it with `{next_command(f'collections drop {name} {version}')}`")
    elif meta.seed_copied is not None:  # a copy of the served version (ingest/targets.py)
        step = (f"rerun the same `{resume_command(name, None, meta)}` while {source.split(' ', 1)[0]} is live: "
                "it resumes here and "
                f"switches when complete; or drop it with `{next_command(f'collections drop {name} {version}')}`")
    elif (seeded := _SEEDED_SOURCE.match(source)) is not None:
        # Killed while copying the served version: part of its points, none of its catalog rows. An
        # ingest resumed into it would keep the part as points no catalog row accounts for.
        step = (f"it was stopped while copying {seeded.group(1)}, so it holds part of {seeded.group(1)}'s points "
                f"and none of its catalog rows: drop it with `{next_command(f'collections drop {name} {version}')}` "
                f"and rerun the same `{resume_command(name, None, meta)}` (it copies {seeded.group(1)} again)")
    else:
        step = (f"resume it with `{resume_command(name, version, meta)}`, or drop it "
                f"with `{next_command(f'collections drop {name} {version}')}`")
    return (f"interrupted: the process that was building it (pid {builder.get('pid')}, "
            f"`{builder.get('command') or '?'}`, started {meta.created_at or '?'}) is gone and it was never live; "
            f"{step}")


@dataclass(frozen=True)
class VersionInfo:
    """One physical version of a collection, as `collections list|info` and GET /collections show it."""

    name: str
    version: str
    physical: str
    live: bool
    meta: VersionMeta
    spec: CollectionSpec | None = None
    points: int | None = None  # None when it cannot be counted now (see `note`)
    size_bytes: int | None = None  # bytes on disk (embedded store); None on a server
    note: str | None = None  # e.g. "held by pid 123 (dermground serve)"

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "version": self.version, "physical": self.physical, "live": self.live,
                "state": self.meta.state, "created_at": self.meta.created_at, "source": self.meta.source,
                "adapter": self.meta.adapter, "fingerprint": self.spec.fingerprint if self.spec else None,
                "dim": self.spec.dim if self.spec else None, "points": self.points,
                "size_bytes": self.size_bytes, "note": self.note}


class Collections(abc.ABC):
    """The versions and aliases of every collection in one store. Use as a context manager."""

    # Whether alias_stamp costs next to nothing (a stat), so a reader may check it on every request.
    stamp_is_cheap: bool = False
    # Whether a brand-new collection is made under its bare name (v0). The embedded store can: its
    # alias record overrides a bare folder. A Qdrant alias cannot share a collection's name, so a
    # server starts every collection at v1 behind an alias.
    fresh_version_is_bare: bool = True

    def alias_stamp(self, name: str) -> object:
        """A token that changes when `name` is switched (compare, never interpret)."""
        return self.live_version(name)

    # --- naming --------------------------------------------------------------------------
    @abc.abstractmethod
    def names(self) -> list[str]:
        """Every collection name (an alias, or a bare v0 collection), sorted."""

    @abc.abstractmethod
    def versions(self, name: str) -> list[str]:
        """The versions of `name` that exist, oldest first ("v0", "v1", ...)."""

    @abc.abstractmethod
    def live_version(self, name: str) -> str | None:
        """The version the name points at (the alias target; v0 when there is no alias), or None."""

    def resolve(self, name: str) -> str:
        """The physical collection `name` stands for now (the name itself when nothing is live)."""
        live = self.live_version(name)
        return physical_name(name, live) if live is not None else name

    def require_version(self, name: str, version: str) -> str:
        """The physical name of an existing version; VersionError naming the ones there are."""
        version_number(version)
        found = self.versions(name)
        if version not in found:
            there = ", ".join(found) if found else "none"
            raise VersionError(f"collection {name!r} has no version {version!r} (versions: {there}); "
                               f"see `{next_command(f'collections list {name}')}`")
        return physical_name(name, version)

    # --- versions ------------------------------------------------------------------------
    @abc.abstractmethod
    def create_version(self, name: str, meta: VersionMeta, taken: Iterable[str] = ()) -> str:
        """Reserve the next version of `name` (state `meta.state`) and return it; nothing is live yet.

        `taken`: versions gone from the store whose number must not come back (the catalog keeps a
        dropped version's rows under its physical name: a new version of that name would inherit them)."""

    def holder(self, name: str, version: str) -> Mapping[str, object] | None:
        """The running process holding the version open (pid, host, command, since), told without
        trying to open it (a try costs what loading the version costs); None when none, or where a
        backend has no such holder."""
        return None

    def held_elsewhere(self, name: str, version: str) -> bool:
        """Whether another running process holds the version open (see `holder`)."""
        return self.holder(name, version) is not None

    @abc.abstractmethod
    def open_version(self, name: str, version: str) -> VectorStore:
        """A store on one physical version (raises StoreLockedError when another process holds it)."""

    @abc.abstractmethod
    def read_meta(self, name: str, version: str) -> VersionMeta:
        """What the version was built from (empty fields when unknown)."""

    @abc.abstractmethod
    def write_meta(self, name: str, version: str, meta: VersionMeta) -> None:
        """Record the version's meta (e.g. state "ready" once an ingest or a restore is verified)."""

    @abc.abstractmethod
    def switch(self, name: str, version: str) -> str | None:
        """Point `name` at `version` in one atomic step; returns the version that was live before.

        Refuses a version that does not exist, holds no collection, or is not "ready".
        """

    @abc.abstractmethod
    def drop(self, name: str, version: str, *, builder_gone: bool = False) -> None:
        """Delete a version that is not live (refuses the live one: switch first), nor one a running
        process is building. `builder_gone`: the admin vouches that the process a "building"
        version names has stopped, where that cannot be checked from here (another host)."""

    @abc.abstractmethod
    def info(self, name: str, version: str, held: Mapping[str, VectorStore] | None = None,
             count: bool = True) -> VersionInfo:
        """Points, spec, meta and size of one version. `held`: stores this process already has open,
        by physical name (counted through them: the embedded engine allows one opener). count=False:
        never open a version to count it (a server process must not lock out an ingest); the count
        recorded when the version was made ready is shown instead."""

    def list(self, name: str | None = None, held: Mapping[str, VectorStore] | None = None,
             count: bool = True) -> list[VersionInfo]:
        """Every version of one collection (or of all collections)."""
        names = [name] if name is not None else self.names()
        found = []
        for n in names:
            self.live_version(n)  # an unreadable alias record is an error here, with the switch that repairs it
            for version in self.versions(n):
                if is_scratch_in_use(self.read_meta(n, version)):
                    continue  # a copy `snapshot create` or `check` is reading: gone when it ends
                listed = self._info_if_still_there(n, version, held, count)
                if listed is not None:
                    found.append(listed)
        return found

    def _info_if_still_there(self, name: str, version: str, held: Mapping[str, VectorStore] | None,
                             count: bool, tries: int = 5) -> VersionInfo | None:
        """info(), or None for a version dropped since it was listed (another admin, or the scratch
        copy of a `snapshot create` or `check`). A version dropped and made again under the same
        name meanwhile (the next scratch copy) is looked at again, not taken for an error."""
        for attempt in range(tries):
            try:
                return self.info(name, version, held, count)
            except VersionError:
                if version not in self.versions(name):
                    return None
                if attempt == tries - 1:
                    raise
        return None

    def copy_points(self, name: str, source: str, target: str, page_size: int = 512) -> int:
        """Seed version `target` (created, empty) with every point of `source`; returns the count."""
        with self.open_version(name, source) as src, self.open_version(name, target) as dst:
            dst.ensure_collection(src.require_spec())
            batch = []
            copied = 0
            for point in src.iter_points(page_size=page_size, with_payload=True, with_vectors=True):
                batch.append(point)
                if len(batch) == page_size:
                    dst.upsert(batch)
                    copied += len(batch)
                    batch = []
            dst.upsert(batch)
            return copied + len(batch)

    def check_switchable(self, name: str, version: str) -> CollectionSpec:
        """The version's spec when it may become live; VersionError otherwise."""
        self.require_version(name, version)
        info = self.info(name, version)
        if info.meta.state != READY:
            interrupted = interrupted_note(name, version, info.meta)
            raise VersionError(f"version {version} of {name!r} is still {info.meta.state!r} (an ingest or restore "
                               "did not finish): " + (interrupted or "finish it first, or drop it"))
        if info.spec is None:
            raise VersionError(f"version {version} of {name!r} holds no collection yet")
        if info.note and info.note.startswith(UNOPENABLE):  # live, it would fail every request
            raise VersionError(f"version {version} of {name!r} {info.note}")
        return info.spec

    # --- lifetime ------------------------------------------------------------------------
    def close(self) -> None:
        """Release what the backend holds (a client connection)."""

    def __enter__(self) -> Collections:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


__all__ = ["BUILDING", "SCRATCH_SOURCES", "building_elsewhere", "is_scratch_in_use", "LEGACY_VERSION", "READY", "Collections", "VersionError", "VersionInfo", "VersionTakenError", "VersionMeta", "check_name",
           "interrupted_note", "physical_name", "process_alive", "process_stamp", "split_physical",
           "stamped_for_write", "version_number"]
