"""Versions and aliases on both backends (one contract), the store that follows a switch, and
ingest's choice of version while another process holds the live one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import QdrantClient

from dermground.ingest.targets import open_target
from dermground.platform.attributes import ATTRIBUTES
from dermground.platform.catalog import Catalog
from dermground.platform.settings import Settings
from dermground.platform.store import (
    DEFAULT_VECTOR_NAMES,
    CollectionSpec,
    StoreError,
    StoreLockedError,
    StorePoint,
    VersionError,
    VersionMeta,
    build_payload,
    open_store,
    point_id,
)
from dermground.platform.store.edge_versions import EdgeCollections
from dermground.platform.store.live import LiveStore
from dermground.platform.store.server import ServerStore
from dermground.platform.store.server_versions import ServerCollections
from dermground.platform.store.snapshots import load_snapshot, open_snapshot, write_snapshot
from dermground.platform.store.versions import BUILDING, READY, Collections
from tests.store_holder import held_by_another_process

DIM = 8


def _points(n: int, fp: str, seed: int) -> list[StorePoint]:
    rng = np.random.default_rng(seed)
    points = []
    for i in range(n):
        record = {"isic_id": f"ISIC_{i:07d}", "patient_id": f"IP_{i % 3}", "split": "train",
                  "image_ref": f"/nowhere/{i}.jpg", **{a.name: float(a.low + 1) for a in ATTRIBUTES}}
        vectors = {name: rng.normal(size=DIM).astype(np.float32) for name in DEFAULT_VECTOR_NAMES}
        points.append(StorePoint(point_id(record["isic_id"]), vectors, build_payload(record, fp)))
    return points


def build_version(cols: Collections, name: str, n: int, fp: str = "fp-1", seed: int = 0) -> str:
    version = cols.create_version(name, VersionMeta(source="test", adapter=f"adapter-{fp}", state=BUILDING))
    with cols.open_version(name, version) as store:
        store.ensure_collection(CollectionSpec(dim=DIM, fingerprint=fp))
        store.upsert(_points(n, fp, seed))
    cols.write_meta(name, version, VersionMeta(source="test", adapter=f"adapter-{fp}", state=READY, points=n))
    return version


@pytest.fixture(params=["edge", "server"])
def cols(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "edge":
        backend: Collections = EdgeCollections(tmp_path / "store")
    else:
        backend = ServerCollections(QdrantClient(location=":memory:"))
    with backend:
        yield backend


def test_versions_switch_list_and_drop(cols: Collections) -> None:
    assert cols.live_version("lesions") is None and cols.versions("lesions") == []
    v1 = build_version(cols, "lesions", 5, "fp-1", seed=1)
    v2 = build_version(cols, "lesions", 7, "fp-2", seed=2)
    assert (v1, v2) == ("v1", "v2") and cols.versions("lesions") == ["v1", "v2"]
    assert cols.switch("lesions", v1) is None
    assert cols.resolve("lesions") == "lesions__v1"
    assert cols.switch("lesions", v2) == "v1"
    listed = {i.version: i for i in cols.list("lesions")}
    assert listed["v2"].live and not listed["v1"].live
    assert (listed["v1"].points, listed["v2"].points) == (5, 7)
    assert listed["v2"].spec.fingerprint == "fp-2" and listed["v2"].meta.adapter == "adapter-fp-2"
    assert listed["v1"].meta.created_at
    assert cols.names() == ["lesions"]
    with pytest.raises(VersionError, match="live version.*switch"):
        cols.drop("lesions", "v2")
    cols.drop("lesions", "v1")
    assert cols.versions("lesions") == ["v2"] and cols.live_version("lesions") == "v2"
    with cols.open_version("lesions", "v2") as store:
        assert store.count() == 7


def test_switch_refuses_unknown_unfinished_and_empty_versions(cols: Collections) -> None:
    build_version(cols, "c", 3)
    cols.switch("c", "v1")
    with pytest.raises(VersionError, match="no version 'v9'.*v1"):
        cols.switch("c", "v9")
    unfinished = cols.create_version("c", VersionMeta(state=BUILDING))
    with cols.open_version("c", unfinished) as store:
        store.ensure_collection(CollectionSpec(dim=DIM, fingerprint="fp-1"))
    cols.write_meta("c", unfinished, VersionMeta(state=BUILDING))
    with pytest.raises(VersionError, match="still 'building'"):
        cols.switch("c", unfinished)
    with pytest.raises(ValueError, match="v<number>"):
        cols.switch("c", "latest")
    assert cols.live_version("c") == "v1"


def test_snapshot_restores_into_a_new_version_with_the_same_results(cols: Collections, tmp_path: Path) -> None:
    build_version(cols, "c", 30, seed=3)
    cols.switch("c", "v1")
    with cols.open_version("c", "v1") as store:
        archive = write_snapshot(store, tmp_path / "snaps", "c-v1")
        query = np.random.default_rng(9).normal(size=DIM).astype(np.float32)
        before = [(h.id, round(h.score, 5)) for h in store.query("image", query, 10)]
    snapshot = open_snapshot(archive, tmp_path / "staging")
    target = cols.create_version("c", VersionMeta(state=BUILDING))
    with cols.open_version("c", target) as store:
        assert load_snapshot(snapshot, store) == 30
        assert [(h.id, round(h.score, 5)) for h in store.query("image", query, 10)] == before
    snapshot.cleanup()


def test_a_live_store_follows_the_alias_on_both_backends(cols: Collections) -> None:
    build_version(cols, "c", 5, seed=7)
    build_version(cols, "c", 7, seed=8)
    cols.switch("c", "v1")
    live = LiveStore(cols, "c", refresh_s=0.0)
    assert live.count() == 5 and live.physical == "c__v1"
    cols.switch("c", "v2")
    assert live.count() == 7 and live.physical == "c__v2" and set(live.held()) == {"c__v2"}
    live.close()


def test_a_request_after_a_switch_waits_for_a_check_already_under_way(tmp_path: Path) -> None:
    # The watcher thread may be mid-check (holding the refresh lock) when the switch lands; a request
    # made after the switch must not be answered from the old version because of that.
    cols = EdgeCollections(tmp_path / "qdrant")
    build_version(cols, "c", 5, seed=7)
    build_version(cols, "c", 7, seed=8)
    cols.switch("c", "v1")
    live = LiveStore(cols, "c", refresh_s=0.0)
    answers: list[int] = []
    with live._refreshing:  # the watcher's hold, taken at the moment of the switch
        cols.switch("c", "v2")
        request = threading.Thread(target=lambda: answers.append(live.count()))
        request.start()
        request.join(timeout=2.0)
        assert request.is_alive() and not answers, f"answered {answers} from the old version during the check"
    request.join(timeout=60.0)
    assert answers == [7] and live.physical == "c__v2"
    live.close()


def test_a_live_store_started_before_its_collection_exists_finds_it(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    live = LiveStore(EdgeCollections(settings.store_dir), "later", refresh_s=0.0)
    assert live.describe() is None
    with open_store(settings, "later") as store:  # e.g. the first ingest, while the API runs
        store.ensure_collection(CollectionSpec(dim=DIM, fingerprint="fp-1"))
        store.upsert(_points(3, "fp-1", 0))
    assert live.count() == 3
    live.close()


def test_copy_points_seeds_a_version(cols: Collections) -> None:
    build_version(cols, "c", 12, seed=4)
    target = cols.create_version("c", VersionMeta(state=BUILDING))
    assert cols.copy_points("c", "v1", target) == 12
    with cols.open_version("c", target) as store:
        assert store.count() == 12 and store.describe().fingerprint == "fp-1"


def test_open_store_resolves_the_alias_and_a_bare_collection_is_v0(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    with open_store(settings, "c") as store:  # a collection made without versions
        store.ensure_collection(CollectionSpec(dim=DIM, fingerprint="fp-1"))
        store.upsert(_points(4, "fp-1", 0))
    cols = EdgeCollections(settings.store_dir)
    assert cols.versions("c") == ["v0"] and cols.live_version("c") == "v0"
    build_version(cols, "c", 6)
    cols.switch("c", "v1")
    with open_store(settings, "c") as store:
        assert store.count() == 6
    cols.switch("c", "v0")  # the bare folder is a version like any other
    with open_store(settings, "c") as store:
        assert store.count() == 4


def test_live_store_follows_a_switch_without_failing_concurrent_reads(tmp_path: Path) -> None:
    cols = EdgeCollections(tmp_path / "store")
    build_version(cols, "c", 20, seed=5)
    build_version(cols, "c", 40, seed=6)
    cols.switch("c", "v1")
    live = LiveStore(EdgeCollections(tmp_path / "store"), "c")
    query = np.ones(DIM, dtype=np.float32)
    counts: list[int] = []
    errors: list[BaseException] = []
    done = threading.Barrier(9)
    switched = threading.Event()

    def reader(worker: int) -> None:
        try:
            for i in range(25):  # 8 workers x 25 = 200 reads
                if worker == 0 and i == 10:
                    cols.switch("c", "v2")
                    switched.set()
                hits = live.query("image", query, 50, with_payload=False)
                counts.append(len(hits))
        except BaseException as exc:  # noqa: BLE001 - every failure is a finding
            errors.append(exc)
        finally:
            done.wait(timeout=120)

    threads = [threading.Thread(target=reader, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    done.wait(timeout=120)
    for t in threads:
        t.join(timeout=60)
    assert errors == [] and len(counts) == 200 and switched.is_set()
    assert set(counts) <= {20, 40} and 40 in counts
    assert live.physical == "c__v2" and live.count() == 40
    cols.drop("c", "v1")  # the old version was closed once its last read returned
    live.close()



def test_a_live_store_lets_go_of_the_replaced_version_without_another_request(tmp_path: Path) -> None:
    # `collections switch` then `collections drop` of the old version while the API is idle (no
    # request in between): the API must not keep the replaced version locked.
    cols = EdgeCollections(tmp_path / "store")
    build_version(cols, "c", 5, seed=1)
    build_version(cols, "c", 7, seed=2)
    cols.switch("c", "v1")
    live = LiveStore(EdgeCollections(tmp_path / "store"), "c", refresh_s=0.05)
    try:
        assert live.count() == 5
        cols.switch("c", "v2")
        deadline = time.monotonic() + 30
        while "v1" in cols.versions("c") and time.monotonic() < deadline:
            try:
                cols.drop("c", "v1")
            except StoreLockedError:
                time.sleep(0.05)  # the old version is let go within refresh_s
        assert cols.versions("c") == ["v2"]
        assert live.physical == "c__v2" and live.count() == 7
    finally:
        live.close()


def test_ingest_into_a_served_collection_seeds_a_new_version_and_switches(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    with open_store(settings, "c") as store:
        store.ensure_collection(CollectionSpec(dim=DIM, fingerprint="fp-1"))
        store.upsert(_points(9, "fp-1", 0))
    catalog = Catalog(settings.catalog_dir)
    catalog.append("lesions", [{"isic_id": f"ISIC_{i:07d}", "collection": "c"} for i in range(9)], name="c--p0")
    notes: list[str] = []
    with held_by_another_process(settings.store_dir / "c", "c") as holder:
        target = open_target(settings, "c", catalog, source="data", adapter=None, notify=notes.append)
        try:
            assert (target.version, target.seeded_from, target.switch_after) == ("v1", "v0", True)
            assert target.store.count() == 9
            target.store.upsert(_points(11, "fp-1", 1)[9:])  # what the ingest adds
            points = target.store.count()
            target.store.close()
            assert target.finished(points) == "v0"
        finally:
            target.close()
        with open_store(settings, "c") as store:
            assert store.count() == 11
        rows = catalog.query("SELECT count(*) AS n FROM lesions WHERE collection = 'c__v1'")
        assert rows[0]["n"] == 9  # the seeded version has the live version's catalog rows
        assert any(f"pid {holder.pid}" in n for n in notes)


def test_an_ingest_into_a_served_collection_does_not_undo_a_switch_made_while_it_ran(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    with open_store(settings, "c") as store:
        store.ensure_collection(CollectionSpec(dim=DIM, fingerprint="fp-1"))
        store.upsert(_points(9, "fp-1", 0))
    cols = EdgeCollections(settings.store_dir)
    with held_by_another_process(settings.store_dir / "c", "c"):
        target = open_target(settings, "c", Catalog(settings.catalog_dir), source="data", adapter=None)
        try:
            assert (target.version, target.seeded_from) == ("v1", "v0")
            # Meanwhile the admin makes a version built with a new adapter live.
            rebuilt = build_version(cols, "c", 5, "fp-2", seed=3)
            cols.switch("c", rebuilt)
            target.store.upsert(_points(11, "fp-1", 1)[9:])
            points = target.store.count()
            target.store.close()
            assert target.finished(points) is None
            assert cols.live_version("c") == rebuilt  # the admin's switch stands
            assert target.note is not None and f"collections switch c {target.version}" in target.note
        finally:
            target.close()


def test_an_ingest_says_so_when_the_version_it_wrote_stopped_being_live(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    with open_store(settings, "c") as store:
        store.ensure_collection(CollectionSpec(dim=DIM, fingerprint="fp-1"))
        store.upsert(_points(4, "fp-1", 0))
    cols = EdgeCollections(settings.store_dir)
    target = open_target(settings, "c", Catalog(settings.catalog_dir), source="data", adapter=None)
    try:
        assert target.version == "v0"  # nobody holds it: written in place
        restored = build_version(cols, "c", 5, seed=2)  # meanwhile, e.g. a snapshot restore
        cols.switch("c", restored)
        target.store.upsert(_points(6, "fp-1", 1)[4:])
        points = target.store.count()
        target.store.close()
        assert target.finished(points) is None and cols.live_version("c") == restored
        assert target.note is not None and "not in the live version" in target.note
        assert "collections switch c v0" in target.note
    finally:
        target.close()


def test_a_second_ingest_into_a_collection_another_ingest_writes_is_refused(tmp_path: Path) -> None:
    # Two ingests into one embedded collection (no server): the second used to seed a copy of the
    # first's half-written version and switch to it at its finish, hiding the first's later images.
    settings = Settings(home=tmp_path)
    with open_store(settings, "c") as store:
        store.ensure_collection(CollectionSpec(dim=DIM, fingerprint="fp-1"))
        store.upsert(_points(4, "fp-1", 0))
    catalog = Catalog(settings.catalog_dir)
    first = open_target(settings, "c", catalog, source="batch-a", adapter=None)
    try:
        assert first.version == "v0"
        with pytest.raises(StoreLockedError, match=f"another ingest \\(pid {os.getpid()}.*rerun"):
            open_target(settings, "c", catalog, source="batch-b", adapter=None)
        assert EdgeCollections(settings.store_dir).versions("c") == ["v0"]  # nothing was copied
        beside = open_target(settings, "c", catalog, source="batch-c", adapter=None, new_version=True)
        assert beside.version == "v1"  # a version built beside the live one does not wait
        beside.store.close()
        beside.close()
    finally:
        first.store.close()
        first.close()
    again = open_target(settings, "c", catalog, source="batch-b", adapter=None)  # free once the first is done
    assert again.version == "v0"
    again.store.close()
    again.close()


def test_ingest_checks_the_lock_of_a_named_version_before_anything_else(tmp_path: Path) -> None:
    from dermground.platform.store import StoreLockedError

    settings = Settings(home=tmp_path)
    cols = EdgeCollections(settings.store_dir)
    build_version(cols, "c", 3)
    with held_by_another_process(settings.store_dir / "c__v1", "c") as holder:
        with pytest.raises(StoreLockedError, match=f"pid {holder.pid}"):
            open_target(settings, "c", Catalog(settings.catalog_dir), source="data", adapter=None, version="v1")


def _exited_process_stamp() -> dict[str, object]:
    """The builder stamp of a process that has exited (a killed restore's, as far as a listing can tell)."""
    child = subprocess.run([sys.executable, "-c", "from dermground.platform.store.versions import process_stamp; "
                            "import json; print(json.dumps(process_stamp()))"], capture_output=True, text=True,
                           check=True, timeout=120)
    return json.loads(child.stdout)


def test_a_building_version_whose_process_is_gone_is_reported_with_a_next_step(cols: Collections) -> None:
    version = cols.create_version("lesions", VersionMeta(source="restore /snaps/a.tar", state=BUILDING))
    with cols.open_version("lesions", version) as store:
        store.ensure_collection(CollectionSpec(dim=DIM, fingerprint="fp-1"))
        store.upsert(_points(3, "fp-1", 0))
    cols.write_meta("lesions", version, cols.read_meta("lesions", version))
    meta = cols.read_meta("lesions", version)
    assert meta.builder is not None and meta.builder["pid"] == os.getpid()
    assert cols.info("lesions", version).note is None  # its builder (this process) still runs
    cols.write_meta("lesions", version, VersionMeta(meta.created_at, meta.source, state=BUILDING,
                                                    builder=_exited_process_stamp()))
    (info,) = cols.list("lesions")
    assert info.meta.state == BUILDING and info.points == 3  # reported, never deleted
    assert "interrupted" in info.note and f"collections drop lesions {version}" in info.note
    assert "run the restore again" in info.note
    with pytest.raises(VersionError, match="interrupted"):
        cols.switch("lesions", version)
    cols.write_meta("lesions", version, VersionMeta(meta.created_at, meta.source, state=READY, points=3))
    assert cols.read_meta("lesions", version).builder is None and cols.info("lesions", version).note is None


def test_a_server_version_carries_its_record_from_the_request_that_creates_it() -> None:
    # A restore or ingest killed right after its collection appeared (before any later record) must
    # leave a version that reads as building, never as ready: another process (a new client on the
    # same server) sees the record the creating request wrote.
    client = QdrantClient(location=":memory:")
    builder = ServerCollections(client, owns_client=False)
    version = builder.create_version("lesions", VersionMeta(source="restore /snaps/a.tar", state=BUILDING))
    with builder.open_version("lesions", version) as store:
        store.ensure_collection(CollectionSpec(dim=DIM, fingerprint="fp-1"))  # then the process "dies"
    other = ServerCollections(client, owns_client=False)  # knows nothing of the first one's pending record
    meta = other.read_meta("lesions", version)
    assert meta.state == BUILDING and meta.source == "restore /snaps/a.tar"
    assert meta.builder is not None and meta.builder["pid"] == os.getpid()
    with pytest.raises(VersionError, match="still 'building'"):
        other.switch("lesions", version)


def test_a_server_version_collection_without_a_record_never_reads_as_ready() -> None:
    client = QdrantClient(location=":memory:")
    with ServerStore("lesions__v1", client=client) as store:  # made outside create_version
        store.ensure_collection(CollectionSpec(dim=DIM, fingerprint="fp-1"))
    cols = ServerCollections(client, owns_client=False)
    assert cols.versions("lesions") == ["v1"]
    assert cols.read_meta("lesions", "v1").state == BUILDING
    with pytest.raises(VersionError, match="still 'building'"):
        cols.switch("lesions", "v1")


def test_create_version_skips_the_numbers_it_is_told_are_taken(cols: Collections) -> None:
    build_version(cols, "t", 2)
    cols.switch("t", "v1")
    build_version(cols, "t", 2)
    cols.drop("t", "v2")  # its catalog rows would stay: the caller passes it as taken
    assert cols.create_version("t", VersionMeta(state=BUILDING), taken={"v2"}) == "v3"


def test_a_live_store_on_a_server_follows_a_switch_and_drop_made_before_its_next_check(tmp_path: Path) -> None:
    # `collections switch c v2` then `collections drop c v1` within the API's refresh interval: the
    # server cannot know who still reads v1. The next request (and a search pinned to v1) must be
    # answered from v2, not fail with Qdrant's "collection not found".
    from dermground.platform.search import search
    from dermground.platform.search_request import SearchMode, SearchRequest

    client = QdrantClient(location=":memory:")  # one server: the API and the admin are its clients
    admin = ServerCollections(client, owns_client=False)
    build_version(admin, "c", 5, seed=1)
    build_version(admin, "c", 7, seed=2)
    admin.switch("c", "v1")
    live = LiveStore(ServerCollections(client, owns_client=False), "c", refresh_s=3600.0)  # no check is due
    try:
        assert live.count() == 5 and live.physical == "c__v1"
        admin.switch("c", "v2")
        admin.drop("c", "v1")
        assert live.count() == 7 and live.physical == "c__v2"
        build_version(admin, "c", 9, seed=3)
        admin.switch("c", "v3")
        admin.drop("c", "v2")
        found = search(SearchRequest(SearchMode.image, isic_id="ISIC_0000001", k=3), store=live, embedder=None,
                       settings=Settings(home=tmp_path))  # pinned to v2 when it starts, answered from v3
        assert len(found.hits) == 3 and live.physical == "c__v3"
        client.delete_collection("c__v3")  # deleted with Qdrant's own tools: no live version is left
        with pytest.raises(StoreError, match="no live version.*collections switch"):
            live.count()
    finally:
        live.close()



@pytest.mark.usefixtures("fresh_cli_settings")
def test_an_unreadable_alias_record_is_repaired_by_the_switch_its_error_names(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from dermground.platform.cli import cli
    from tests.version_homes import home_with_versions

    home_with_versions(tmp_path, 2)
    (tmp_path / "qdrant" / ".aliases" / "lesions.json").write_text('{"version": "v')  # a torn or hand-edited record
    listed = CliRunner().invoke(cli, ["--home", str(tmp_path), "collections", "list"])
    assert listed.exit_code == 1 and "collections switch" in listed.output, listed.output
    repaired = CliRunner().invoke(cli, ["--home", str(tmp_path), "collections", "switch", "lesions", "v2"])
    assert repaired.exit_code == 0, repaired.output  # it failed with the same "unreadable" error
    assert EdgeCollections(tmp_path / "qdrant").live_version("lesions") == "v2"


def test_drop_refuses_a_version_a_running_process_builds_while_it_does_not_hold_it(tmp_path: Path) -> None:
    import socket

    from dermground.platform.processes import process_start

    cols = EdgeCollections(tmp_path / "qdrant")
    build_version(cols, "c", 2)
    # A restore between loading the points (the folder let go) and marking the version ready, or an
    # ingest copying the served version into it: it runs, but does not hold the version's folder.
    builder = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        version = cols.create_version("c", VersionMeta(source="restore /snaps/a.tar", state=BUILDING))
        cols.write_meta("c", version, VersionMeta(source="restore /snaps/a.tar", state=BUILDING, builder={
            "pid": builder.pid, "host": socket.gethostname(), "started": process_start(builder.pid),
            "command": "dermground snapshot restore /snaps/a.tar"}))
        with pytest.raises(VersionError, match=f"pid {builder.pid}.*still runs"):
            cols.drop("c", version)  # it deleted the version under the running restore
        assert version in cols.versions("c")
    finally:
        builder.communicate(timeout=60)
    cols.drop("c", version)  # its builder is gone: the version may go
    assert version not in cols.versions("c")


def test_a_live_store_waiting_for_its_collection_to_be_let_go_says_so_once(tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(home=tmp_path)
    live = LiveStore(EdgeCollections(settings.store_dir), "later", refresh_s=0.0)  # the API, started first
    try:
        with open_store(settings, "later") as store:
            store.ensure_collection(CollectionSpec(dim=DIM, fingerprint="fp-1"))
            store.upsert(_points(3, "fp-1", 0))
        with held_by_another_process(settings.store_dir / "later", "later"), caplog.at_level("WARNING"):
            for _ in range(5):  # requests while the first ingest writes it
                assert live.describe() is None
        # It tried to open the held version and warned on every request (once a second in a server).
        assert len([r for r in caplog.records if "cannot be opened yet" in r.getMessage()]) == 1
        assert live.count() == 3  # let go: served
    finally:
        live.close()


_RESUMING_INGEST = """
import sys
from dermground.ingest.targets import open_target
from dermground.platform.catalog import Catalog
from dermground.platform.settings import Settings
settings = Settings(home=sys.argv[1])
target = open_target(settings, "c", Catalog(settings.catalog_dir), source="data", adapter=None, version=sys.argv[2])
print("ready", flush=True)
sys.stdin.readline()
target.store.close()
target.close()
"""


def test_a_version_resumed_with_version_names_its_new_builder(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    cols = EdgeCollections(settings.store_dir)
    build_version(cols, "c", 2)
    killed = cols.create_version("c", VersionMeta(source="ingest data", state=BUILDING))  # an interrupted --new-version
    with cols.open_version("c", killed) as store:
        store.ensure_collection(CollectionSpec(dim=DIM, fingerprint="fp-1"))
    cols.write_meta("c", killed, VersionMeta(source="ingest data", state=BUILDING, builder=_exited_process_stamp()))
    resuming = subprocess.Popen([sys.executable, "-c", _RESUMING_INGEST, str(tmp_path), killed], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        assert resuming.stdout is not None and resuming.stdout.readline().strip() == "ready"
        assert cols.read_meta("c", killed).builder["pid"] == resuming.pid  # type: ignore[index]
        # It kept the killed process's stamp: a listing without the folder's owner (a server) said
        # "interrupted", and a drop waited 10 s and then blamed a `serve`.
        with pytest.raises(VersionError, match=f"pid {resuming.pid}.*still runs"):
            cols.drop("c", killed)
    finally:
        resuming.communicate("\n", timeout=60)


def test_a_new_collections_first_version_records_its_source_and_adapter(tmp_path: Path) -> None:
    """A fresh embedded collection is v0 under its bare name, and it recorded nothing: `collections
    list` said "adapter none" for an ingest with --adapter, and an API that followed a switch back to
    v0 after an `ingest --new-version` with another adapter found no adapter for v0's vectors."""
    settings = Settings(home=tmp_path)
    target = open_target(settings, "c", Catalog(settings.catalog_dir), source="/data/batch-a",
                         adapter="/models/adapter-a")
    try:
        assert target.version == "v0"
        target.store.ensure_collection(CollectionSpec(dim=DIM, fingerprint="fp-1"))
        target.started()  # what the pipeline calls once the collection exists
        target.store.upsert(_points(3, "fp-1", 0))
        points = target.store.count()
        target.store.close()
        assert target.finished(points) is None
    finally:
        target.close()
    with EdgeCollections(settings.store_dir) as cols:
        (info,) = cols.list("c")
    assert (info.version, info.physical, info.live, info.points) == ("v0", "c", True, 3)
    assert (info.meta.adapter, info.meta.source, info.meta.state) == ("/models/adapter-a", "ingest /data/batch-a", READY)
    assert info.meta.created_at is not None


def test_a_home_from_before_versions_is_read_as_v0(tmp_path: Path) -> None:
    """A collection folder with no version record (made before versions existed) stays readable:
    listed as the live v0 with its points, and an ingest writes it in place."""
    settings = Settings(home=tmp_path)
    with open_store(settings, "c") as store:  # what an old release wrote: the bare folder, no version.json
        store.ensure_collection(CollectionSpec(dim=DIM, fingerprint="fp-1"))
        store.upsert(_points(4, "fp-1", 0))
    assert not (settings.store_dir / "c" / "version.json").exists()
    with EdgeCollections(settings.store_dir) as cols:
        (info,) = cols.list("c")
    assert (info.version, info.live, info.points, info.meta.state) == ("v0", True, 4, READY)
    assert info.meta.adapter is None and info.meta.created_at is not None  # the folder's time
    target = open_target(settings, "c", Catalog(settings.catalog_dir), source="/data/more", adapter=None)
    try:
        assert (target.version, target.record_on_start) == ("v0", None)  # in place: nothing made up for it
    finally:
        target.store.close()
        target.close()
