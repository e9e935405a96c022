"""A collection version's catalog rows, carried into snapshots and onto new versions.

The catalog's `collection` column names the physical version (`lesions__v2`, or `lesions` for v0),
so `check` compares a version's points with exactly its own rows and ledger. When a version is
restored from a snapshot or seeded from another version, its rows are written again under the new
physical name with the same file names the ingest writer uses (`<collection>--<partition_id>`),
which is how `check` finds a ledger partition's rows. The ingest runs those rows cite are written
again under the new name too (ingest_runs is keyed by collection and run), so the analysts' views
(`collections`, `collection_versions`) name the new version as `collections list` does, and the
source version keeps its own run rows.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dermground.platform.catalog import TABLES, Catalog
from dermground.platform.catalog_files import rows_by_source
from dermground.platform.store.versions import split_physical

# Tables holding per-collection rows whose file names follow the writer's `<collection>--<part>`.
COLLECTION_TABLES: tuple[str, ...] = ("lesions", "ingest_partitions", "quarantine")
RUNS_TABLE = "ingest_runs"
_SEPARATOR = "--"


@dataclass(frozen=True)
class CatalogFile:
    """Rows of one table for one collection, and the file-name suffix they are written under."""

    table: str
    suffix: str
    rows: pa.Table

    @property
    def arcname(self) -> str:
        return f"catalog/{self.table}/{self.suffix}.parquet"


def _files_of(catalog: Catalog, table: str, collection: str) -> Iterable[CatalogFile]:
    folder = catalog.dir / table
    if not folder.is_dir():
        return
    own = f"{collection}{_SEPARATOR}"
    # By the file each row was written in: a compaction's merged rows go back to their partition's
    # file (`check` finds a partition's rows by its name); superseded files are not read.
    for stem, rows in rows_by_source(folder).items():
        # Another writer's file (a test, an older layout) may still hold rows of this collection.
        rows = rows.filter(pc.equal(rows.column("collection"), collection))
        if rows.num_rows:
            suffix = stem[len(own):] if stem.startswith(own) else f"_{stem}"
            yield CatalogFile(table, suffix, rows)


def collection_files(catalog: Catalog, collection: str) -> list[CatalogFile]:
    """Every catalog row of one physical collection, grouped by file, plus the ingest runs they cite."""
    files = [f for table in COLLECTION_TABLES for f in _files_of(catalog, table, collection)]
    run_ids = sorted({r for f in files if "run_id" in f.rows.column_names for r in f.rows.column("run_id").to_pylist()
                      if r is not None})
    if run_ids:
        runs = _own_runs(catalog.query("SELECT * FROM ingest_runs_history WHERE list_contains(?, run_id)", [run_ids]),
                         collection)
        if runs:
            files.append(CatalogFile(RUNS_TABLE, "runs", pa.Table.from_pylist(runs, schema=TABLES[RUNS_TABLE])))
    return files


def _own_runs(rows: list[dict], collection: str) -> list[dict]:
    """Of each run's status rows, those recorded under `collection`. Copies of a run under other
    versions would otherwise be carried too; a run recorded only under another collection (copied
    before runs were written under the copy's name) keeps the rows it has."""
    own = {r["run_id"] for r in rows if r["collection"] == collection}
    return [r for r in rows if r["collection"] == collection or r["run_id"] not in own]


def write_files(dest_dir: Path, files: Iterable[CatalogFile]) -> list[tuple[str, Path]]:
    """Write the files as Parquet under dest_dir; (arcname, path) pairs for a snapshot's attachments."""
    written = []
    for f in files:
        path = dest_dir / f.arcname
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(f.rows, path)
        written.append((f.arcname, path))
    return written


def read_files(attachments: dict[str, Path]) -> list[CatalogFile]:
    """CatalogFiles from a snapshot's attachments (`catalog/<table>/<suffix>.parquet`)."""
    files = []
    for arcname, path in sorted(attachments.items()):
        parts = Path(arcname).parts
        if len(parts) == 3 and parts[0] == "catalog" and parts[1] in (*COLLECTION_TABLES, RUNS_TABLE):
            files.append(CatalogFile(parts[1], Path(parts[2]).stem, pq.read_table(path)))
    return files


def install_files(catalog: Catalog, collection: str, files: Iterable[CatalogFile]) -> int:
    """Write the rows as `collection`'s (file `<collection>--<suffix>`); ingest runs only when
    `collection` lacks them. Returns the lesion rows written."""
    lesions = 0
    for f in files:
        rows = [{**r, "collection": collection} for r in f.rows.to_pylist()]
        if f.table == RUNS_TABLE:
            known = {r["run_id"] for r in catalog.query(
                "SELECT DISTINCT run_id FROM ingest_runs_history WHERE collection = ?", [collection])}
            rows = [r for r in rows if r["run_id"] not in known]
            if rows:
                catalog.append(RUNS_TABLE, rows)
            continue
        catalog.append(f.table, rows, name=f"{collection}{_SEPARATOR}{f.suffix}")
        lesions += len(rows) if f.table == "lesions" else 0
    return lesions


def versions_in_catalog(catalog: Catalog, name: str) -> set[str]:
    """The versions of collection `name` the catalog holds rows of, dropped ones included (dropping
    a version leaves its rows): a new version must not take their number, or it inherits them."""
    rows = catalog.query("SELECT collection FROM lesions UNION SELECT collection FROM ingest_partitions "
                         "UNION SELECT collection FROM quarantine UNION SELECT collection FROM ingest_runs")
    return {version for head, version in (split_physical(str(r["collection"])) for r in rows) if head == name}


def copy_collection_rows(catalog: Catalog, source: str, target: str) -> int:
    """Give physical collection `target` a copy of `source`'s rows; returns the lesion rows copied."""
    return install_files(catalog, target, collection_files(catalog, source))


__all__ = ["COLLECTION_TABLES", "CatalogFile", "collection_files", "copy_collection_rows", "install_files",
           "read_files", "versions_in_catalog", "write_files"]
