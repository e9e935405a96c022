"""The analysts' views after a snapshot restore or a seeded version: every view names the version
the rows now belong to exactly as `collections list` does, and the source version keeps its rows.

(A restored or seeded version's ingest runs used to stay under the source's physical collection:
`collections` showed a phantom version and `collection_versions` left the new one out.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dermground.ingest.partitions import ids_hash
from dermground.platform.analyst import connect
from dermground.platform.attributes import ATTRIBUTES
from dermground.platform.catalog import Catalog
from dermground.platform.catalog_copy import copy_collection_rows
from dermground.platform.cli import cli
from dermground.platform.commands import context
from dermground.platform.settings import load_settings
from dermground.platform.store import DEFAULT_VECTOR_NAMES, CollectionSpec, StorePoint, build_payload, open_store, point_id
from tests.version_homes import home_with_versions

N, DIM, FP, NAME = 4, 8, "fp-views", "snap"
ISIC_IDS = [f"ISIC_{i:07d}" for i in range(N)]


# The CLI keeps the settings it loaded for the process: each test's --home must be read afresh.
pytestmark = pytest.mark.usefixtures("fresh_cli_settings")


def _cli(home: Path, *args: str) -> str:
    context._current = None  # each invocation reads its own --home
    result = CliRunner().invoke(cli, ["--home", str(home), *args])
    assert result.exit_code == 0, result.output
    return result.output


def _ingested_home(home: Path) -> None:
    """Collection `snap` v0: points, lesions, a ledger partition and a run (`running`, then `done`)."""
    settings = load_settings(home=home)
    rng = np.random.default_rng(0)
    records = [{"isic_id": i, "patient_id": "IP_1", "split": "train", "image_ref": f"/nowhere/{i}.jpg",
                **{a.name: float(a.low + 1) for a in ATTRIBUTES}} for i in ISIC_IDS]
    with open_store(settings, NAME) as store:
        store.ensure_collection(CollectionSpec(dim=DIM, fingerprint=FP))
        store.upsert([StorePoint(point_id(r["isic_id"]), {n: rng.normal(size=DIM).astype(np.float32)
                                                          for n in DEFAULT_VECTOR_NAMES}, build_payload(r, FP))
                      for r in records])
    catalog = Catalog(settings.catalog_dir)
    run = {"run_id": "r1", "collection": NAME, "fingerprint": FP}
    catalog.append("ingest_runs", [{**run, "status": "running"}])
    catalog.append("ingest_runs", [{**run, "status": "done", "n_ingested": N}])
    catalog.append("lesions", [{"isic_id": i, "patient_id": "IP_1", "split": "train", "collection": NAME,
                                "fingerprint": FP, "run_id": "r1"} for i in ISIC_IDS], name=f"{NAME}--p000000-x")
    catalog.append("ingest_partitions", [{"run_id": "r1", "collection": NAME, "partition_id": "p000000-x",
                                          "n_points": N, "ids_hash": ids_hash(ISIC_IDS)}], name=f"{NAME}--p000000-x")


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """_ingested_home built once for the module; each test works on a copy (`_copy_of`)."""
    home = tmp_path_factory.mktemp("ingested") / "home"
    _ingested_home(home)
    return home


def _copy_of(ingested: Path, home: Path) -> None:
    from dermground.platform.store.edge_versions import copy_sparse

    copy_sparse(ingested, home)


def _view_rows(home: Path, sql: str) -> list[tuple]:
    con = connect(home / "catalog")
    try:
        return con.sql(sql).fetchall()
    finally:
        con.close()


def _versions_everywhere(home: Path) -> dict[str, set[str]]:
    """The versions of `snap` that `collections list` and each analyst view name."""
    listed = {v["version"] for v in json.loads(_cli(home, "collections", "list", NAME, "--json"))}
    where = f"WHERE name = '{NAME}'"
    return {"collections list": listed,
            "collections": {r[0] for r in _view_rows(home, f"SELECT version FROM collections {where}")},
            "collection_versions": {r[0] for r in _view_rows(home, f"SELECT version FROM collection_versions {where}")}}


def _facts(home: Path, collection: str) -> tuple[tuple, tuple, int]:
    """(collections row, collection_versions row, ingest_runs_history rows) of one physical collection."""
    (facts,) = _view_rows(home, f"SELECT lesions, ingest_runs, runs_done, partitions, fingerprints, last_run_id, "
                                f"last_run_status FROM collections WHERE collection = '{collection}'")
    (versions,) = _view_rows(home, f"SELECT fingerprint, ingest_runs, runs_done, ingested, current_lesions "
                                   f"FROM collection_versions WHERE collection = '{collection}'")
    (history,) = _view_rows(home, f"SELECT count(*) FROM ingest_runs_history WHERE collection = '{collection}'")
    return facts, versions, history[0]


def test_a_restored_version_is_named_in_every_view_as_collections_list_names_it(ingested: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    _copy_of(ingested, home)
    source = _facts(home, NAME)
    assert source == ((N, 1, 1, 1, 1, "r1", "done"), (FP, 1, 1, N, N), 2)
    source_runs = _view_rows(home, f"SELECT * FROM ingest_runs WHERE collection = '{NAME}'")
    _cli(home, "snapshot", "create", "--collection", NAME)
    (tar,) = (home / "snapshots" / NAME).glob("*.tar")

    # Into the same home: a new version v1 beside v0.
    assert "version v1 is live" in _cli(home, "snapshot", "restore", str(tar), "--collection", NAME, "--yes")
    assert _versions_everywhere(home) == dict.fromkeys(("collections list", "collections", "collection_versions"),
                                                       {"v0", "v1"})
    assert _facts(home, f"{NAME}__v1") == source  # the restored version's own runs, lesions and ledger
    assert _facts(home, NAME) == source  # the source version's rows are unaffected
    assert _view_rows(home, f"SELECT * FROM ingest_runs WHERE collection = '{NAME}'") == source_runs

    # The restored version's snapshot, into a fresh home: only the version it restores as.
    _cli(home, "snapshot", "create", "--collection", NAME, "--version", "v1")
    (tar_v1,) = (p for p in (home / "snapshots" / NAME).glob("*.tar") if p != tar)
    fresh = tmp_path / "fresh"
    output = _cli(fresh, "snapshot", "restore", str(tar_v1), "--collection", NAME, "--yes")
    (version,) = json.loads(_cli(fresh, "collections", "list", NAME, "--json"))
    assert f"version {version['version']} is live" in output
    assert _versions_everywhere(fresh) == dict.fromkeys(("collections list", "collections", "collection_versions"),
                                                        {version["version"]})
    physical = NAME if version["version"] == "v0" else f"{NAME}__{version['version']}"
    assert _facts(fresh, physical) == source  # carried once: not v0's copies of r1 as well
    assert "store and catalog agree" in _cli(fresh, "check", "--collection", NAME)


def test_a_seeded_version_gets_its_own_copy_of_the_runs_its_rows_came_from(ingested: Path, tmp_path: Path) -> None:
    """What an ingest into a served collection does before it writes the new version
    (ingest/targets.py): copy the live version's rows under the new version's name."""
    home = tmp_path / "home"
    _copy_of(ingested, home)
    source = _facts(home, NAME)
    copy_collection_rows(Catalog(home / "catalog"), NAME, f"{NAME}__v1")
    views = {r[0] for r in _view_rows(home, "SELECT collection FROM collection_versions")}
    assert views == {NAME, f"{NAME}__v1"}
    assert _facts(home, f"{NAME}__v1") == source
    assert _facts(home, NAME) == source


def test_a_version_restored_without_its_runs_still_counts_its_lesions_in_collection_versions(ingested: Path, tmp_path: Path) -> None:
    """A same-home restore by a release before runs were keyed by collection wrote the version's
    lesions and ledger but no ingest_runs rows: collection_versions left the version out (its
    current_lesions summed to less than `collections` counts)."""
    home = tmp_path / "home"
    _copy_of(ingested, home)
    catalog = Catalog(home / "catalog")
    restored = f"{NAME}__v1"
    for table in ("lesions", "ingest_partitions"):  # what that release's install_files wrote
        rows = [{**r, "collection": restored} for r in catalog.query(f"SELECT * FROM {table}")]
        catalog.append(table, rows, name=f"{restored}--p000000-x")
    assert _view_rows(home, f"SELECT fingerprint, ingest_runs, runs_done, ingested, current_lesions "
                            f"FROM collection_versions WHERE collection = '{restored}'") == [(FP, 0, 0, 0, N)]
    assert _view_rows(home, "SELECT collection, sum(current_lesions), count(*) FROM collection_versions GROUP BY ALL "
                            "ORDER BY ALL") == _view_rows(home, "SELECT collection, lesions, fingerprints FROM collections "
                                                                "ORDER BY ALL")
    assert _facts(home, NAME) == ((N, 1, 1, 1, 1, "r1", "done"), (FP, 1, 1, N, N), 2)  # the source is unchanged


def test_a_catalog_compacted_by_a_release_without_row_origins_still_checks_and_restores(ingested: Path, tmp_path: Path) -> None:
    """A compaction before `_source_file`/`_source_row` left merged files that say nothing of the
    partition each row came from: `check` counts those rows together, by number, and a snapshot
    restored from such a catalog checks too (no false finding, no wrong count in the views)."""
    import pyarrow.parquet as pq

    from dermground.platform.catalog_compact import compact
    from dermground.platform.catalog_files import (SOURCE_COLUMN, SOURCE_ROW_COLUMN, SOURCE_WRITTEN_COLUMN,
                                                   live_parts)

    home = tmp_path / "home"
    _copy_of(ingested, home)
    compact(home / "catalog")
    for folder in (home / "catalog").iterdir():  # the merged files as that release wrote them
        for path in live_parts(folder).all if folder.is_dir() else []:
            data = pq.read_table(path)
            origin = [c for c in (SOURCE_COLUMN, SOURCE_ROW_COLUMN, SOURCE_WRITTEN_COLUMN) if c in data.column_names]
            pq.write_table(data.drop_columns(origin), path)
    compact(home / "catalog", keep_s=0)  # its grace period over: the partitions' own files are gone
    assert not list((home / "catalog" / "lesions").glob("*.parquet"))
    assert "store and catalog agree" in _cli(home, "check", "--collection", NAME)
    assert _facts(home, NAME) == ((N, 1, 1, 1, 1, "r1", "done"), (FP, 1, 1, N, N), 2)
    _cli(home, "snapshot", "create", "--collection", NAME)
    (tar,) = (home / "snapshots" / NAME).glob("*.tar")
    fresh = tmp_path / "fresh"
    _cli(fresh, "snapshot", "restore", str(tar), "--collection", NAME, "--yes")
    assert "store and catalog agree" in _cli(fresh, "check", "--collection", NAME)


def test_check_names_a_file_someone_dropped_into_the_catalog_and_checks_the_rest(tmp_path: Path) -> None:
    """A file that is no Parquet in lesions/ crashed `check` with DuckDB's InvalidInputException."""
    home = tmp_path / "home"
    _ingested_home(home)
    (home / "catalog" / "lesions" / "notes.parquet").write_bytes(b"not parquet")
    context._current = None
    result = CliRunner().invoke(cli, ["--home", str(home), "check", "--collection", NAME])
    assert result.exit_code == 1, result.output
    assert ("FINDING files in catalog/lesions that are not catalog files (left out of every view: move them out of "
            "the catalog folder): 1: notes.parquet (not a Parquet file") in result.output
    assert f"store {N} points, catalog {N} rows, ledger 1 partitions / {N} points" in result.output
    assert result.output.count("FINDING") == 1



def test_a_dropped_version_stays_in_the_collections_view_marked_dropped_as_collections_list_leaves_it_out(
        tmp_path: Path) -> None:
    home = tmp_path / "home"
    home_with_versions(home, 2)  # lesions v1 (live) and v2 in the store
    catalog = Catalog(load_settings(home=home).catalog_dir)
    for physical in ("lesions__v1", "lesions__v2"):
        catalog.append("ingest_runs", [{"run_id": "r1", "collection": physical, "fingerprint": FP, "status": "done"}])
        catalog.append("lesions", [{"isic_id": i, "collection": physical, "fingerprint": FP, "run_id": "r1"}
                                   for i in ISIC_IDS])
    where = "FROM collections WHERE name = 'lesions'"
    assert _view_rows(home, f"SELECT version, dropped_at {where} ORDER BY version") == [("v1", None), ("v2", None)]
    assert _cli(home, "collections", "drop", "lesions", "v2", "--yes").strip() == "dropped lesions v2"
    listed = {v["version"] for v in json.loads(_cli(home, "collections", "list", "lesions", "--json"))}
    # The view listed v2 as if it were still there; its history stays, marked dropped.
    kept = _view_rows(home, f"SELECT version {where} AND dropped_at IS NULL")
    assert listed == {r[0] for r in kept} == {"v1"}
    (dropped,) = _view_rows(home, f"SELECT lesions, last_run_status, dropped_at IS NOT NULL {where} AND version = 'v2'")
    assert dropped == (N, "done", True)
