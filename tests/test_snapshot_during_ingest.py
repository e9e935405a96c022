"""`snapshot create` of a version an ingest is writing: refused while the ingest runs (a snapshot
then would carry the points of a partition whose catalog rows and ledger are not written yet, and
its restore would fail `dermground check`), taken once the ingest is gone. And `check` of a version
another process holds (serve): it checks a copy instead of refusing. Also `collections switch` to a
version an ingest writes (refused), and `serve` started while an ingest writes the live version
(it waits for the ingest, answering 503, then serves)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dermground.ingest.partitions import ids_hash
from dermground.ingest.run_locks import hold_run_lock
from dermground.platform.attributes import ATTRIBUTES
from dermground.platform.catalog import Catalog
from dermground.platform.cli import cli
from dermground.platform.collection_ops import create_snapshot
from dermground.platform.settings import load_settings
from dermground.platform.store import (
    DEFAULT_VECTOR_NAMES,
    CollectionSpec,
    StorePoint,
    build_payload,
    open_collections,
    open_store,
    point_id,
)
from dermground.platform.store.versions import VersionError
from tests.store_holder import health_once_served, held_by_another_process
from tests.version_homes import home_with_versions

DIM, FP, NAME = 8, "fp-snap", "snap"


# The CLI keeps the settings it loaded for the process: each test's --home must be read afresh.
pytestmark = pytest.mark.usefixtures("fresh_cli_settings")


def _cli(home: Path, *args: str):
    return CliRunner().invoke(cli, ["--home", str(home), *args])


def _points(ids: list[str], seed: int) -> list[StorePoint]:
    rng = np.random.default_rng(seed)
    records = [{"isic_id": i, "patient_id": "IP_1", "split": "train", "image_ref": f"/nowhere/{i}.jpg",
                **{a.name: float(a.low + 1) for a in ATTRIBUTES}} for i in ids]
    return [StorePoint(point_id(r["isic_id"]), {n: rng.normal(size=DIM).astype(np.float32) for n in DEFAULT_VECTOR_NAMES},
                       build_payload(r, FP)) for r in records]


def _commit(catalog: Catalog, run_id: str, partition: str, ids: list[str]) -> None:
    """What the ingest writer writes after a partition's upsert: its catalog rows, then its ledger row."""
    name = f"{NAME}--{partition}"
    catalog.append("lesions", [{"isic_id": i, "patient_id": "IP_1", "split": "train", "collection": NAME,
                                "fingerprint": FP, "run_id": run_id} for i in ids], name=name)
    catalog.append("ingest_partitions", [{"run_id": run_id, "collection": NAME, "partition_id": partition,
                                          "n_points": len(ids), "ids_hash": ids_hash(ids)}], name=name)


def _finished_run(settings, catalog: Catalog, ids: list[str]) -> None:
    """A finished ingest run r1 of `ids` in version v0: points, catalog rows and ledger."""
    with open_store(settings, NAME) as store:
        store.ensure_collection(CollectionSpec(dim=DIM, fingerprint=FP))
        store.upsert(_points(ids, 0))
    catalog.append("ingest_runs", [{"run_id": "r1", "collection": NAME, "fingerprint": FP, "status": "done"}])
    _commit(catalog, "r1", "p000000-a", ids)


def test_a_snapshot_is_refused_while_an_ingest_writes_the_version_and_taken_once_it_is_gone(tmp_path: Path) -> None:
    home = tmp_path / "home"
    settings = load_settings(home=home)
    catalog = Catalog(settings.catalog_dir)
    first, second = [f"ISIC_{i:07d}" for i in range(6)], [f"ISIC_{i:07d}" for i in range(6, 10)]
    _finished_run(settings, catalog, first)

    # A second ingest in place, as its writer leaves the version between a partition's upsert and its
    # catalog rows: its run lock held and its `running` row written (ingest/pipeline.py), the points stored.
    lock = hold_run_lock(home, "r2")
    try:
        catalog.append("ingest_runs", [{"run_id": "r2", "collection": NAME, "fingerprint": FP,
                                        "source": "/data/new", "status": "running"}])
        with open_store(settings, NAME) as store:
            store.upsert(_points(second, 1))
        with held_by_another_process(home / "qdrant" / NAME, NAME):  # the running ingest holds the version open
            refused = _cli(home, "snapshot", "create", "--collection", NAME)
        assert refused.exit_code == 1, refused.output
        assert "ingest run r2" in refused.output and "/data/new" in refused.output, refused.output
        assert "snapshot create" in refused.output and "finished" in refused.output, refused.output  # the next step
        assert not list((home / "snapshots" / NAME).glob("*.tar"))
    finally:
        lock.release()

    # The ingest finished its partition and its run: the snapshot restores to a version `check` passes.
    _commit(catalog, "r2", "p000001-b", second)
    catalog.append("ingest_runs", [{"run_id": "r2", "collection": NAME, "fingerprint": FP, "source": "/data/new",
                                    "status": "done"}])
    created = _cli(home, "snapshot", "create", "--collection", NAME)
    assert created.exit_code == 0, created.output
    (tar,) = (home / "snapshots" / NAME).glob("*.tar")
    restored = _cli(home, "snapshot", "restore", str(tar), "--collection", NAME, "--yes")
    assert restored.exit_code == 0, restored.output
    checked = _cli(home, "check", "--collection", NAME)
    assert checked.exit_code == 0 and "store 10 points, catalog 10 rows" in checked.output, checked.output


def test_check_runs_while_serve_holds_the_live_version(tmp_path: Path) -> None:
    home = tmp_path / "home"
    settings = load_settings(home=home)
    catalog = Catalog(settings.catalog_dir)
    _finished_run(settings, catalog, [f"ISIC_{i:07d}" for i in range(4)])
    with held_by_another_process(home / "qdrant" / NAME, NAME):  # `dermground serve`
        checked = _cli(home, "check", "--collection", NAME)
        assert checked.exit_code == 0, checked.output  # it said "in use by pid ...: stop that process"
        assert "store 4 points, catalog 4 rows" in checked.output and "ok:" in checked.output
    with open_collections(settings) as cols:
        assert cols.versions(NAME) == ["v0"]  # the copy it checked is gone


def test_a_snapshot_during_which_an_ingest_began_writing_the_version_is_discarded(tmp_path: Path) -> None:
    home = tmp_path / "home"
    settings = load_settings(home=home)
    catalog = Catalog(settings.catalog_dir)
    _finished_run(settings, catalog, [f"ISIC_{i:07d}" for i in range(3)])

    def an_ingest_starts(points: int) -> None:  # called while the points are exported
        catalog.append("ingest_runs", [{"run_id": "r2", "collection": NAME, "fingerprint": FP, "status": "running"}])

    with pytest.raises(VersionError, match="while its snapshot was taken, so the snapshot was discarded"):
        create_snapshot(settings, NAME, progress=an_ingest_starts)
    assert not list((home / "snapshots" / NAME).glob("*.tar"))


def test_the_scratch_copy_of_a_snapshot_of_a_served_version_is_not_listed(tmp_path: Path) -> None:
    home = tmp_path / "home"
    settings = load_settings(home=home)
    _finished_run(settings, Catalog(settings.catalog_dir), [f"ISIC_{i:07d}" for i in range(3)])
    seen: list[tuple[list[str], str]] = []

    def list_meanwhile(points: int) -> None:  # called while the scratch copy of the held version is exported
        with open_collections(settings) as cols:
            listed = [info.version for info in cols.list(NAME, count=False)]
        seen.append((listed, _cli(home, "collections", "list", NAME).output))

    with held_by_another_process(home / "qdrant" / NAME, NAME):  # `dermground serve`
        create_snapshot(settings, NAME, progress=list_meanwhile)
    assert seen, "the export reported no progress"
    for listed, printed in seen:
        assert listed == ["v0"], listed  # the copy being exported is the snapshot's business, not a version
        assert "v1" not in printed and "snapshot of" not in printed, printed


def test_switch_refuses_a_version_an_ingest_writes_with_version(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home_with_versions(home, 2)  # v1 live, v2 ready
    lock = hold_run_lock(home, "r7")  # `dermground ingest --version v2` is adding images to v2
    try:
        Catalog(load_settings(home=home).catalog_dir).append("ingest_runs", [
            {"run_id": "r7", "collection": "lesions__v2", "fingerprint": "fp", "source": "/data/more",
             "status": "running"}])
        refused = _cli(home, "collections", "switch", "lesions", "v2")
        assert refused.exit_code == 1, refused.output
        assert "ingest run r7" in refused.output and "/data/more" in refused.output, refused.output
        assert "finished" in refused.output, refused.output  # the next step
        # ... of this home: it said `dermground sql "..."`, which reads the default home's catalog.
        assert f"`dermground --home {home} sql 'SELECT * FROM ingest_runs'`" in refused.output, refused.output
        with open_collections(load_settings(home=home)) as cols:
            assert cols.live_version("lesions") == "v1"
    finally:
        lock.release()
    switched = _cli(home, "collections", "switch", "lesions", "v2")  # its driver is gone (killed, or finished)
    assert switched.exit_code == 0, switched.output


# `dermground ingest` writing the live version in place: it holds the collection's ingest lock and the version.
_INGEST_IN_PLACE = """
import sys
from dermground.ingest.collection_lock import hold_collection_lock
from dermground.platform.store.edge import EdgeStore
lock = hold_collection_lock(sys.argv[1], sys.argv[3])
store = EdgeStore(sys.argv[2], sys.argv[3])
print("ready", flush=True)
sys.stdin.readline()
store.close()
lock.release()
"""


def test_serve_started_while_an_ingest_writes_the_live_version_in_place_serves_it_once_the_ingest_ends(
        tmp_path: Path) -> None:
    import subprocess
    import sys

    from fastapi.testclient import TestClient

    from dermground.ingest.collection_lock import hold_collection_lock
    from dermground.platform.api import create_app
    from dermground.platform.commands.serve import open_served_store
    from dermground.platform.store import StoreLockedError

    home = tmp_path / "home"
    settings = load_settings(home=home).model_copy(update={"collection": NAME})
    _finished_run(settings, Catalog(settings.catalog_dir), [f"ISIC_{i:07d}" for i in range(5)])
    # Another serve holds the version while an ingest writes a copy of it: refused, naming that serve.
    lock = hold_collection_lock(home, NAME)
    try:
        with held_by_another_process(home / "qdrant" / NAME, NAME) as other_serve:
            with pytest.raises(StoreLockedError, match=f"pid {other_serve.pid}"):
                open_served_store(settings)
    finally:
        lock.release()

    ingest = subprocess.Popen([sys.executable, "-c", _INGEST_IN_PLACE, str(home), str(home / "qdrant" / NAME), NAME],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert ingest.stdout is not None and ingest.stdout.readline().strip() == "ready"
        store = open_served_store(settings)  # it said "in use by pid ...: stop that process" and exited
        client = TestClient(create_app(settings, store=store))
        waiting = client.get("/health")
        assert waiting.status_code == 503, waiting.text
        assert f"pid {ingest.pid}" in waiting.json()["detail"] and "as soon as" in waiting.json()["detail"]
    finally:
        ingest.communicate("\n", timeout=60)
    try:
        assert health_once_served(client)["points"] == 5
    finally:
        store.close()


def test_check_of_a_version_an_ingest_is_writing_names_the_ingest_instead_of_reporting_findings(
        tmp_path: Path) -> None:
    home = tmp_path / "home"
    settings = load_settings(home=home)
    catalog = Catalog(settings.catalog_dir)
    _finished_run(settings, catalog, [f"ISIC_{i:07d}" for i in range(4)])
    lock = hold_run_lock(home, "r3")  # an ingest in place, between a partition's upsert and its catalog rows
    try:
        catalog.append("ingest_runs", [{"run_id": "r3", "collection": NAME, "fingerprint": FP,
                                        "source": "/data/more", "status": "running"}])
        with open_store(settings, NAME) as store:
            store.upsert(_points([f"ISIC_{i:07d}" for i in range(4, 7)], 1))
        checked = _cli(home, "check", "--collection", NAME)
        assert checked.exit_code == 1, checked.output
        # It reported the partition in progress as phantom points of "an interrupted ingest: rerun it".
        assert "FINDING" not in checked.output and "interrupted" not in checked.output, checked.output
        assert "ingest run r3" in checked.output and "once that ingest has finished" in checked.output
        # It said "Run `dermground check` again": the default home's default collection.
        assert f"Run `dermground --home {home} check --collection {NAME}` again" in checked.output, checked.output
    finally:
        lock.release()
