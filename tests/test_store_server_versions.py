"""Two processes that reserve a new version of one collection on a Qdrant server at the same moment
(two `ingest --new-version`, an ingest and a `snapshot restore`) get the same number: the server
has no reservation step like the embedded store's folder. The second must not write into the
first's collection. Each ServerCollections stands for one process (its own pending records), both
on one server (one qdrant-client engine)."""

from __future__ import annotations

import numpy as np
import pytest
from qdrant_client import QdrantClient

from dermground.platform.store import CollectionSpec, StorePoint, VersionMeta, point_id
from dermground.platform.store.schema import DEFAULT_VECTOR_NAMES
from dermground.platform.store.server_versions import ServerCollections
from dermground.platform.store.versions import BUILDING, READY, VersionTakenError

SPEC = CollectionSpec(dim=8, fingerprint="fp-race")


def _points(first: int, n: int) -> list[StorePoint]:
    rng = np.random.default_rng(first)
    return [StorePoint(point_id(f"ISIC_{i:07d}"), {v: rng.normal(size=8).astype(np.float32) for v in DEFAULT_VECTOR_NAMES},
                       {"isic_id": f"ISIC_{i:07d}"}) for i in range(first, first + n)]


def test_a_version_reserved_by_two_processes_at_once_is_written_by_one() -> None:
    server = QdrantClient(location=":memory:")
    first, second = ServerCollections(server, owns_client=False), ServerCollections(server, owns_client=False)
    live = first.create_version("lesions", VersionMeta(source="ingest /data/a", state=READY))
    with first.open_version("lesions", live) as store:
        store.ensure_collection(SPEC)
    first.switch("lesions", live)

    mine = first.create_version("lesions", VersionMeta(source="ingest /data/new-adapter", state=BUILDING))
    theirs = second.create_version("lesions", VersionMeta(source="restore /snaps/b.tar", state=BUILDING))
    assert mine == theirs == "v2"  # neither can see the other's reservation
    with first.open_version("lesions", mine) as store:
        store.ensure_collection(SPEC)
        store.ensure_collection(SPEC)  # again, as an ingest and its writer both do: still its own
        store.upsert(_points(0, 3))
    with second.open_version("lesions", theirs) as store, pytest.raises(VersionTakenError) as refused:
        store.ensure_collection(SPEC)
    assert "restore" not in str(refused.value) and "ingest /data/new-adapter" in str(refused.value)
    assert "Run this again" in str(refused.value)

    with first.open_version("lesions", mine) as store:  # the first process opens its version again
        store.ensure_collection(SPEC)
        assert store.count() == 3
    assert first.read_meta("lesions", mine).source == "ingest /data/new-adapter"
    # The second process, run again, reserves the next number and builds there.
    again = ServerCollections(server, owns_client=False)
    retry = again.create_version("lesions", VersionMeta(source="restore /snaps/b.tar", state=BUILDING))
    with again.open_version("lesions", retry) as store:
        store.ensure_collection(SPEC)
        store.upsert(_points(10, 2))
    assert retry == "v3" and again.read_meta("lesions", retry).source == "restore /snaps/b.tar"
