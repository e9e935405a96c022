"""Two processes that reserve a new version of one collection on a Qdrant server at the same moment
(two `ingest --new-version`, an ingest and a `snapshot restore`) get the same number: the server
has no reservation step like the embedded store's folder. The second must not write into the
first's collection. Each ServerCollections stands for one process (its own pending records), both
on one server (one qdrant-client engine)."""

from __future__ import annotations

import socket
import subprocess
import sys

import numpy as np
import pytest
from qdrant_client import QdrantClient

from dermground.platform.store import CollectionSpec, StorePoint, VersionMeta, point_id
from dermground.platform.store.schema import DEFAULT_VECTOR_NAMES
from dermground.platform.store.server_versions import ServerCollections
from dermground.platform.processes import process_start
from dermground.platform.store.versions import BUILDING, READY, VersionError, VersionTakenError

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


def test_a_version_another_process_still_builds_is_not_dropped_on_a_server() -> None:
    # A server has no folder lock a builder holds: `collections drop` of a version an ingest on
    # another container is still writing deleted it under the ingest.
    server = QdrantClient(location=":memory:")
    cols = ServerCollections(server, owns_client=False)
    live = cols.create_version("lesions", VersionMeta(source="ingest /data/a", state=READY))
    with cols.open_version("lesions", live) as store:
        store.ensure_collection(SPEC)
    cols.switch("lesions", live)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        builders = {
            "running here": {"pid": sleeper.pid, "host": socket.gethostname(), "started": process_start(sleeper.pid),
                             "command": "dermground ingest --data /data/b"},
            "another host": {"pid": 4242, "host": "ingest-container-7", "started": None,
                             "command": "dermground ingest --data /data/c"},
            "gone": {"pid": 4242, "host": "ingest-container-7", "started": None, "command": "dermground ingest"},
        }
        versions = {}
        for what, builder in builders.items():
            versions[what] = cols.create_version("lesions", VersionMeta(source="ingest /data/b", state=BUILDING,
                                                                         builder=builder))
            with cols.open_version("lesions", versions[what]) as store:
                store.ensure_collection(SPEC)
        with pytest.raises(VersionError, match="which still runs"):
            cols.drop("lesions", versions["running here"])
        with pytest.raises(VersionError, match="--builder-gone") as refused:
            cols.drop("lesions", versions["another host"])
        assert "ingest-container-7" in str(refused.value) and "/data/c" in str(refused.value)
        assert set(versions.values()) <= set(cols.versions("lesions")), "refused drops keep their versions"
        cols.drop("lesions", versions["gone"], builder_gone=True)  # the admin's word
        assert versions["gone"] not in cols.versions("lesions")
    finally:
        sleeper.kill()
        sleeper.wait(timeout=30)
    cols.drop("lesions", versions["running here"])  # its builder has stopped
    scratch = cols.create_version("lesions", VersionMeta(source="check of v1", state=BUILDING))
    with cols.open_version("lesions", scratch) as store:
        store.ensure_collection(SPEC)
    cols.drop("lesions", scratch)  # built by this very process: a `check` drops its own copy
    assert cols.versions("lesions") == [live, versions["another host"]]
