"""LiveStore: a store that follows a collection's alias, for a long-running reader (the API).

Each operation first checks the alias (the embedded backend: one stat of the alias record; a
server: at most once per `refresh_s`). When it points at another version, that version is opened
and takes the next requests; requests already running finish on the version they started on, and
the old version is closed when the last of them returns (so `collections drop` can have it).
If the new version cannot be opened (held by another process), the old one keeps serving and the
switch is retried on a later request: a switch never fails a request. On the embedded store a
watcher thread also checks the alias every `refresh_s` while no request comes, so an idle server
lets go of a replaced version at once and `collections drop` right after a switch succeeds. A collection that did not
exist yet is looked for again every `refresh_s`, so an API started first serves it once ingested.
On a server, `collections drop` of the old version cannot wait for its readers: a request that finds
its version gone re-reads the alias at once and runs again on the version live now (a search pinned
to the dropped one too); with no version live it fails with a StoreError that says what to do.
With `wait_while_held` (`serve` started while an ingest writes the live version in place on the
embedded store) the store starts without a version: requests fail with a StoreLockedError naming the
holder (the API's 503) while the watcher tries to open it every `refresh_s`, and once the holder lets
go it serves as usual.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from dermground.platform.next_step import next_command
from dermground.platform.store.base import (
    CollectionMissingError,
    CollectionSpec,
    Hit,
    SearchFilter,
    StoreError,
    StoreLockedError,
    StorePoint,
    VectorSelection,
    VectorStore,
)
from dermground.platform.store.versions import Collections, split_physical

T = TypeVar("T")

log = logging.getLogger("dermground.store")
# While waiting for a held live version, how often the watcher says it still waits, and how often
# it tries to open it although its owner file names a running process (that pid may be reused).
WAIT_NOTE_S = 60.0
WAIT_TRY_ANYWAY_S = 30.0


@dataclass
class _Held:
    physical: str
    store: VectorStore
    users: int = 0
    retired: bool = False


class LiveStore(VectorStore):
    """The live version of `name`, re-resolved before each operation; thread-safe."""

    def __init__(self, collections: Collections, name: str, refresh_s: float = 1.0, *,
                 wait_while_held: bool = False, notify: Callable[[str], None] | None = None) -> None:
        """wait_while_held: when another process holds the live version, start without it and open it
        once it is let go (else StoreLockedError). notify: where the waiting is reported (the log)."""
        self.collection = name
        self._collections = collections
        self._refresh_s = refresh_s
        self._lock = threading.Lock()
        self._refreshing = threading.Lock()
        self._stamp: object = object()  # never equal to a real stamp: the first call resolves
        self._checked_at = 0.0
        self._held: _Held | None = None
        self._closed = threading.Event()
        self._notify = notify or log.warning
        self._waiting: StoreLockedError | None = None  # why no version is open yet
        self._unopenable: str | None = None  # a version the alias names that could not be opened (logged once)
        try:
            self._refresh(force=True)
        except StoreLockedError as exc:
            if not wait_while_held or not collections.stamp_is_cheap:
                raise
            self._waiting = exc
        if self._held is None and self._waiting is None:  # the first open must succeed: nothing else to serve
            raise StoreError(f"cannot open collection {name!r}")
        if collections.stamp_is_cheap:  # the embedded store: one opener, so a replaced version must be let go
            threading.Thread(target=self._watch, name=f"live-store-{name}", daemon=True).start()

    # --- following the alias -------------------------------------------------------------
    @property
    def waiting(self) -> str | None:
        """Why no version is served yet (another process holds the live one), or None."""
        return str(self._waiting) if self._held is None and self._waiting is not None else None

    @property
    def physical(self) -> str:
        """The physical collection serving new requests now."""
        assert self._held is not None
        return self._held.physical

    def held(self) -> dict[str, VectorStore]:
        """The open store by physical name (for counting without a second opener)."""
        held = self._held
        return {held.physical: held.store} if held is not None else {}

    def _refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        # A collection that did not exist when opened is looked for again (an ingest may create it).
        empty = self._held is not None and self._held.store.describe() is None
        due = force or now - self._checked_at >= self._refresh_s
        if not due and (empty or not self._collections.stamp_is_cheap):
            return
        if not self._refreshing.acquire(blocking=force):
            # Another thread (the watcher, or another request) is checking the alias. If the alias
            # has moved, that thread is switching to what this request must see: wait for it, or a
            # request made after a switch finished could still be answered from the old version.
            if not (self._collections.stamp_is_cheap
                    and self._collections.alias_stamp(self.collection) != self._stamp):
                return  # nothing moved: this one uses the current version
            self._refreshing.acquire()
        try:
            if self._closed.is_set():
                return  # closed: open nothing more
            self._checked_at = now
            stamp = self._collections.alias_stamp(self.collection)
            if stamp == self._stamp and self._held is not None and not empty:
                return
            physical = self._collections.resolve(self.collection)
            if self._held is not None and physical == self._held.physical and not empty:
                self._stamp = stamp
                return
            try:
                name, version = split_physical(physical)
                if (self._held is not None and self._unopenable == physical
                        and self._collections.held_elsewhere(name, version)):
                    # Still held (an ingest creating the collection, say), as said already: opened once
                    # let go. Another try would cost a load of the version on every check.
                    return
                store = self._collections.open_version(name, version)
            except StoreError as exc:
                if self._held is None:
                    raise
                if self._unopenable != physical:  # said once, not on every request while it lasts
                    self._unopenable = physical
                    log.warning("collection %r now points at %s, which cannot be opened yet (%s); still serving %s",
                                self.collection, physical, exc, self._held.physical)
                return
            self._unopenable = None
            with self._lock:
                old, self._held = self._held, _Held(physical, store)
                self._stamp = stamp
                close_old = old is not None and old.users == 0
                if old is not None:
                    old.retired = True
            if old is not None:
                log.info("collection %r switched from %s to %s", self.collection, old.physical, physical)
            if close_old and old is not None:
                old.store.close()
        finally:
            self._refreshing.release()

    def _watch(self) -> None:
        """Follow the alias while no request comes (a stat per check), until closed."""
        waiting_since = noted_at = tried_at = time.monotonic()
        while not self._closed.wait(max(self._refresh_s, 0.05)):
            held = self._held
            if held is None and self._waiting is not None:
                anyway = time.monotonic() - tried_at >= WAIT_TRY_ANYWAY_S
                tried_at = time.monotonic() if anyway else tried_at
                if self._open_when_let_go(waiting_since, anyway):
                    continue
                if time.monotonic() - noted_at >= WAIT_NOTE_S:
                    noted_at = time.monotonic()
                    self._notify(f"collection {self.collection!r}: still waiting "
                                 f"({noted_at - waiting_since:.0f} s) for its live version: "
                                 f"{str(self._waiting).split('. Stop', 1)[0]}")
                continue
            if held is None or held.store.describe() is None:
                continue  # a collection not made yet: requests look for it (and say when it is held)
            try:
                self._refresh()
            except Exception as exc:  # noqa: BLE001 - the next request or check retries
                log.warning("checking the alias of collection %r failed: %s", self.collection, exc)

    def _open_when_let_go(self, waiting_since: float, anyway: bool = False) -> bool:
        """One try at opening the live version another process held; True once it is open.
        anyway: try even though its owner file names a running process."""
        try:
            live = self._collections.live_version(self.collection)
            if not anyway and live is not None and self._collections.held_elsewhere(self.collection, live):
                return False  # still held: a failed open would cost a load of the version each round
            self._refresh(force=True)
        except StoreLockedError as exc:
            self._waiting = exc
            return False
        except StoreError as exc:  # noqa: BLE001 - tried again on the next round
            log.warning("opening collection %r failed: %s", self.collection, exc)
            return False
        held = self._held
        if held is None:
            return False
        self._notify(f"collection {self.collection!r}: {held.physical} was let go after "
                     f"{time.monotonic() - waiting_since:.0f} s; serving it now")
        return True

    @contextmanager
    def _use(self) -> Iterator[VectorStore]:
        if self._held is None and self._waiting is not None and not self._closed.is_set():
            # Another process (an ingest writing in place) holds the live version: the watcher opens it
            # once it is let go; until then every request is told why (the API: 503, retry later).
            holder = str(self._waiting).split(". Stop", 1)[0]
            raise StoreLockedError(f"collection {self.collection!r} is not served yet: {holder}. This API "
                                   "serves it as soon as that process lets go of it (an ingest: when it finishes); "
                                   "retry then.")
        self._refresh()
        with self._lock:
            held = self._held
            if held is None:
                raise StoreError(f"collection {self.collection!r} is closed")
            held.users += 1
        try:
            yield held.store
        finally:
            with self._lock:
                held.users -= 1
                close_now = held.retired and held.users == 0
            if close_now:
                held.store.close()

    def pinned(self) -> AbstractContextManager[VectorStore]:
        """The version serving new requests now, kept open until the `with` block ends."""
        return self._use()

    def run_pinned(self, operation: Callable[[VectorStore], T]) -> T:
        """Run `operation` on one version; when that version was dropped meanwhile (a server cannot
        wait for its readers), re-read the alias at once and run it once more on the live one."""
        with self._use() as store:
            try:
                return operation(store)
            except CollectionMissingError as exc:
                gone, reason = store, exc
        self._refresh(force=True)  # outside the `with`: the dropped version's use is released first
        held = self._held
        if held is not None and held.store is not gone:
            log.info("collection %r: %s is gone, running the request again on %s",
                     self.collection, gone.collection, held.physical)
            with self._use() as store:
                try:
                    return operation(store)
                except CollectionMissingError as exc:
                    gone, reason = store, exc
        raise CollectionMissingError(
            f"collection {self.collection!r} has no live version on this Qdrant now ({gone.collection!r} is gone): "
            f"switch it to a version (`{next_command(f'collections switch {self.collection} vN')}`; versions: "
            f"`{next_command(f'collections list {self.collection}')}`) or ingest it again") from reason

    def close(self) -> None:
        self._closed.set()
        with self._refreshing, self._lock:  # no switch is half done when we let go
            held, self._held = self._held, None
        if held is not None:
            held.store.close()

    # --- the store interface, delegated ---------------------------------------------------
    def describe(self) -> CollectionSpec | None:
        return self.run_pinned(lambda store: store.describe())

    def ensure_collection(self, spec: CollectionSpec) -> CollectionSpec:
        return self.run_pinned(lambda store: store.ensure_collection(spec))

    def upsert(self, points: Sequence[StorePoint], wait: bool = True) -> None:
        self.run_pinned(lambda store: store.upsert(points, wait))

    def update_vectors(self, vectors: Mapping[str, Mapping[str, np.ndarray]], wait: bool = True) -> None:
        self.run_pinned(lambda store: store.update_vectors(vectors, wait))

    def set_payload(self, ids: Sequence[str], payload: Mapping[str, object], wait: bool = True) -> None:
        self.run_pinned(lambda store: store.set_payload(ids, payload, wait))

    def delete(self, ids: Sequence[str], wait: bool = True) -> None:
        self.run_pinned(lambda store: store.delete(ids, wait))

    def query(self, vector_name: str, vector: np.ndarray, k: int, filter: SearchFilter | None = None,
              with_payload: bool = True, with_vectors: VectorSelection = False) -> list[Hit]:
        return self.run_pinned(lambda store: store.query(vector_name, vector, k, filter, with_payload, with_vectors))

    def prefetch_rescore(self, prefetch_name: str, prefetch_vector: np.ndarray, b: int,
                         rescore_name: str, rescore_vector: np.ndarray, k: int,
                         filter: SearchFilter | None = None, with_payload: bool = True,
                         with_vectors: VectorSelection = False) -> list[Hit]:
        return self.run_pinned(lambda store: store.prefetch_rescore(
            prefetch_name, prefetch_vector, b, rescore_name, rescore_vector, k, filter, with_payload, with_vectors))

    def retrieve(self, ids: Sequence[str], with_payload: bool = True,
                 with_vectors: VectorSelection = False) -> list[StorePoint]:
        return self.run_pinned(lambda store: store.retrieve(ids, with_payload, with_vectors))

    def scroll(self, filter: SearchFilter | None = None, limit: int = 1000, offset: str | None = None,
               with_payload: bool = True, with_vectors: VectorSelection = False,
               ) -> tuple[list[StorePoint], str | None]:
        return self.run_pinned(lambda store: store.scroll(filter, limit, offset, with_payload, with_vectors))

    def count(self, filter: SearchFilter | None = None) -> int:
        return self.run_pinned(lambda store: store.count(filter))

    def optimize(self) -> bool:
        return self.run_pinned(lambda store: store.optimize())


__all__ = ["LiveStore"]
