"""Opening the catalog: connect() binds each table's files once, and the views it makes read
what the files hold (benchmarks/catalog_connect.py times it)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import duckdb
import pytest

from dermground.platform.analyst import connect
from dermground.platform.catalog import Catalog, _create_views
from dermground.platform.catalog_readonly_fs import PREFIX, ReadOnlyCatalogFileSystem

PARTITIONS = 6


class CountingCatalogFileSystem(ReadOnlyCatalogFileSystem):
    """The analyst's read-only file system, counting the opens of each file."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.opened: Counter[str] = Counter()

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        local = Path(self._strip_protocol(path))
        self.opened[f"{local.parent.name}/{local.name}"] += 1
        return super()._open(path, mode, **kwargs)


def _catalog(tmp_path: Path) -> Catalog:
    cat = Catalog(tmp_path / "catalog")
    for p in range(PARTITIONS):
        name = f"c1--p{p:04d}"
        cat.append("lesions", [{"isic_id": f"ISIC_{p}{i}", "patient_id": f"P{i}", "split": "train",
                                "collection": "c1", "fingerprint": "fp", "run_id": "r1", "areaMM2": float(i)}
                               for i in range(3)], name=name)
        cat.append("ingest_partitions", [{"run_id": "r1", "collection": "c1", "partition_id": f"p{p:04d}",
                                          "n_points": 3, "ids_hash": "h"}], name=name)
    cat.append("ingest_runs", [{"run_id": "r1", "collection": "c1", "fingerprint": "fp", "status": "done",
                                "n_ingested": 3 * PARTITIONS}])
    return cat


def test_building_the_views_reads_each_catalog_file_once(tmp_path: Path) -> None:
    """Every view on lesions (lesions, attributes_long, collections, collection_versions) used to
    bind its files again when it was created: 6 reads of each lesions file instead of 1."""
    cat = _catalog(tmp_path)
    files = CountingCatalogFileSystem(cat.dir)
    con = duckdb.connect(":memory:")
    con.register_filesystem(files)
    _create_views(con, cat.dir.resolve(), PREFIX)
    con.close()
    lesion_files = {f"lesions/c1--p{p:04d}.parquet" for p in range(PARTITIONS)}
    assert lesion_files <= set(files.opened)
    assert max(files.opened.values()) == 1, files.opened


def test_the_views_built_in_one_pass_read_the_files(tmp_path: Path) -> None:
    cat = _catalog(tmp_path)
    con = connect(cat.dir)
    try:
        assert con.sql("SELECT lesions, partitions, runs_done FROM collections").fetchall() == [(3 * PARTITIONS,
                                                                                                PARTITIONS, 1)]
        assert con.sql("SELECT count(*) FROM attributes_long WHERE attribute = 'areaMM2'").fetchall() == [
            (3 * PARTITIONS,)]
        assert con.sql("SELECT current_lesions FROM collection_versions").fetchall() == [(3 * PARTITIONS,)]
        assert con.sql("DESCRIBE lesions").fetchall() == Catalog(cat.dir).connect().sql("DESCRIBE lesions").fetchall()
    finally:
        con.close()


def test_own_data_joins_the_views_through_register_as_documented(tmp_path: Path) -> None:
    import pandas as pd

    cat = _catalog(tmp_path)
    my_frame = pd.DataFrame({"isic_id": ["ISIC_00", "ISIC_51"], "note": ["a", "b"]})
    con = connect(cat.dir)
    try:
        with pytest.raises(duckdb.CatalogException):  # the variable by name: off, as catalog.py says
            con.sql("SELECT * FROM my_frame").fetchall()
        con.register("mine", my_frame)
        assert con.sql("SELECT m.note, l.areaMM2 FROM mine m JOIN lesions l USING (isic_id) "
                       "ORDER BY m.note").fetchall() == [("a", 0.0), ("b", 1.0)]
    finally:
        con.close()
